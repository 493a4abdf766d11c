"""A conversation in the model's own chat format with any model form, streaming tokens.

The history kept within the model's context, Ctrl-C handling and the timing
live here once; the engines (engines/genai.py, engines/hf.py) only encode and generate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from phi3e2e.chat_format import ChatFormat
from phi3e2e.errors import UserError
from phi3e2e.infer.engines import Engine
from phi3e2e.infer.generation import Answer, GenerationOptions

__all__ = ["Answer", "ChatSession", "GenerationOptions"]

TRIM_NOTICE = "[oldest turn dropped to stay within the model's context]"


@dataclass
class ChatSession:
    """A conversation with one model; keeps history within the model's context length.

    `engine` is normally opened from `model_dir` (any form, see model_forms.py); pass an
    already loaded one to reuse it.
    """

    model_dir: Path
    options: GenerationOptions = field(default_factory=GenerationOptions)
    system: Optional[str] = None
    device: str = "cpu"
    base: Optional[Path] = None
    threads: Optional[int] = None
    engine: Optional[Engine] = None
    turns: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self):
        if self.engine is None:
            from phi3e2e.infer.forms import open_model

            self.engine = open_model(Path(self.model_dir), self.device, self.base, self.threads)
        self.context_length = self.engine.context_length
        # The model's own chat template: the HF engine's tokenizer carries it, an int4 folder has its file.
        template = getattr(getattr(self.engine, "tokenizer", None), "chat_template", None)
        self.chat_format = ChatFormat(template) if isinstance(template, str) else ChatFormat.of_folder(
            self.model_dir, getattr(self.engine, "model_dir", None))  # an onnx-adapter/'s template is its base's

    @property
    def form(self) -> str:
        return self.engine.form

    def new_conversation(self) -> None:
        self.turns.clear()

    def prompt_tokens(self, user: str, notice: Callable[[str], None] = lambda _: None) -> list[int]:
        """The prompt for `user`'s turn, dropping the oldest turns until it leaves room for an answer."""
        check_text(user, "the question")
        room = self.context_length - self.options.max_new_tokens
        while True:
            tokens = self.engine.encode(self.chat_format.prompt(self.turns, user, self.system))
            if len(tokens) <= room or not self.turns:
                break
            self.turns.pop(0)
            notice(TRIM_NOTICE)
        if len(tokens) > room:
            raise UserError(
                f"prompt is {len(tokens)} tokens; this model's context of {self.context_length} leaves room for "
                f"{max(room, 0)} with {self.options.max_new_tokens} for the answer: shorten it or lower --max-length"
            )
        return tokens

    def ask(self, user: str, on_text: Callable[[str], None] = lambda _: None, notice=lambda _: None) -> Answer:
        prompt_tokens = self.prompt_tokens(user, notice)
        pieces: list[str] = []
        count, first, stopped = 0, None, False
        finish_reason = "length"  # unless the model ends its turn before the limit
        start = time.perf_counter()
        try:
            for piece in self.engine.stream(prompt_tokens, self.options):
                count += 1
                if first is None:
                    first = time.perf_counter() - start
                if piece is None:
                    finish_reason = "stop"
                elif piece:
                    pieces.append(piece)
                    on_text(piece)
        except KeyboardInterrupt:
            stopped, finish_reason = True, "interrupted"  # Ctrl-C ends this answer, not the session
        seconds = time.perf_counter() - start
        text = "".join(pieces).strip()
        self.turns.append((user, text))
        return Answer(text, count, seconds, first, stopped, len(prompt_tokens), finish_reason)


def check_text(text: str, what: str) -> None:
    """Text a tokenizer can take. Python hands over invalid UTF-8 from argv or a terminal as lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start].encode("utf-8", "surrogateescape") if 0xDC80 <= ord(text[e.start]) <= 0xDCFF else b""
        byte = f"byte 0x{bad.hex()}" if bad else "a lone surrogate"
        raise UserError(f"{what} is not valid UTF-8 text ({byte} at character {e.start}): "
                        "check the terminal's or file's encoding") from None
