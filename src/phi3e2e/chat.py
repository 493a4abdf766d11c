"""Chat with an ONNX Runtime GenAI model in the Phi-3 chat format, streaming tokens."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from phi3e2e.errors import UserError


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    do_sample: bool = False


@dataclass
class Answer:
    text: str
    tokens: int
    seconds: float
    first_token_seconds: Optional[float]
    stopped: bool = False

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def phi3_prompt(turns: list[tuple[str, str]], user: str, system: Optional[str] = None) -> str:
    """Phi-3's chat format, ending where the assistant's answer starts."""
    parts = [f"<|system|>\n{system}<|end|>\n"] if system else []
    for past_user, past_answer in turns:
        parts.append(f"<|user|>\n{past_user}<|end|>\n<|assistant|>\n{past_answer}<|end|>\n")
    parts.append(f"<|user|>\n{user}<|end|>\n<|assistant|>\n")
    return "".join(parts)


@dataclass
class ChatSession:
    """A conversation with one model; keeps history within the model's context length."""

    model_dir: Path
    options: GenerationOptions = field(default_factory=GenerationOptions)
    system: Optional[str] = None
    turns: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self):
        if not (self.model_dir / "genai_config.json").is_file():
            raise UserError(f"{self.model_dir}: not an ONNX Runtime GenAI model (no genai_config.json)")
        import onnxruntime_genai as og

        self._og = og
        try:
            self._model = og.Model(str(self.model_dir))
        except Exception as e:  # the runtime raises plain RuntimeError/OSError with its reason
            raise UserError(f"{self.model_dir}: cannot load model: {str(e).splitlines()[0]}") from None
        self._tokenizer = og.Tokenizer(self._model)
        self.context_length = json.loads((self.model_dir / "genai_config.json").read_text())["model"]["context_length"]

    def _prompt_tokens(self, user: str, notice: Callable[[str], None]):
        room = self.context_length - self.options.max_new_tokens
        while True:
            tokens = self._tokenizer.encode(phi3_prompt(self.turns, user, self.system))
            if len(tokens) <= room or not self.turns:
                break
            self.turns.pop(0)
            notice("[oldest turn dropped to stay within the model's context]")
        if len(tokens) > room:
            raise UserError(
                f"prompt is {len(tokens)} tokens; this model fits {room} with {self.options.max_new_tokens} "
                "for the answer: shorten it or lower --max-length"
            )
        return tokens

    def ask(self, user: str, on_text: Callable[[str], None] = lambda _: None, notice=lambda _: None) -> Answer:
        og = self._og
        prompt_tokens = self._prompt_tokens(user, notice)
        params = og.GeneratorParams(self._model)
        params.set_search_options(
            max_length=min(self.context_length, len(prompt_tokens) + self.options.max_new_tokens),
            do_sample=self.options.do_sample,
            temperature=self.options.temperature,
            top_p=self.options.top_p,
            top_k=self.options.top_k,
        )
        generator = og.Generator(self._model, params)
        stream = self._tokenizer.create_stream()
        pieces: list[str] = []
        count, first, stopped = 0, None, False
        start = time.perf_counter()
        try:
            generator.append_tokens(prompt_tokens)
            while not generator.is_done():
                generator.generate_next_token()
                token = generator.get_next_tokens()[0]
                count += 1
                if first is None:
                    first = time.perf_counter() - start
                piece = stream.decode(token)
                pieces.append(piece)
                on_text(piece)
        except KeyboardInterrupt:
            stopped = True  # Ctrl-C ends this answer, not the session
        seconds = time.perf_counter() - start
        text = "".join(pieces).strip()
        self.turns.append((user, text))
        return Answer(text, count, seconds, first, stopped)
