"""What the user asks of one answer (the same for every model form) and what came back."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Optional

# Why an answer ended: the model's end of turn, the length limit (--max-length or the context),
# or Ctrl-C. OpenAI's names for the first two, so `chat --json` and `serve` agree.
FinishReason = Literal["stop", "length", "interrupted"]


@dataclass(frozen=True)
class GenerationOptions:
    """One meaning everywhere (chat, serve, eval): temperature 0 is greedy decoding, above 0 samples with
    top_p / top_k; `seed` makes sampling repeatable and greedy ignores it."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 50
    # Benchmarks force a fixed answer length; chat leaves it at 0 (stop at end of turn).
    min_new_tokens: int = 0
    seed: Optional[int] = None

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0


@dataclass
class Answer:
    text: str
    tokens: int
    seconds: float
    first_token_seconds: Optional[float]
    stopped: bool = False
    prompt_tokens: int = 0
    finish_reason: FinishReason = "stop"

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        """Speed after the first token: prompt processing (prefill) left out."""
        if self.first_token_seconds is None or self.tokens < 2:
            return 0.0
        decode_seconds = self.seconds - self.first_token_seconds
        return (self.tokens - 1) / decode_seconds if decode_seconds > 0 else 0.0

    def as_json(self) -> dict:
        data = asdict(self)
        data["tokens_per_second"] = round(self.tokens_per_second, 2)
        data["decode_tokens_per_second"] = round(self.decode_tokens_per_second, 2)
        data["seconds"] = round(self.seconds, 4)
        if self.first_token_seconds is not None:
            data["first_token_seconds"] = round(self.first_token_seconds, 4)
        return data
