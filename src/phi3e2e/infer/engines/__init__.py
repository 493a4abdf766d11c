"""One engine per model form, all speaking the same small interface to `ChatSession`.

An engine turns text into token ids and streams an answer's text one generated token at a
time; `ChatSession` owns the chat format, the history and the timing, so every form chats
and is measured the same way.
"""

from __future__ import annotations

from typing import Iterator, Optional, Protocol

from phi3e2e.infer.generation import GenerationOptions


class Engine(Protocol):
    form: str  # "onnx", "merged" or "adapter"
    device: str
    context_length: int

    def encode(self, text: str) -> list[int]: ...

    def stream(self, prompt_tokens: list[int], options: GenerationOptions) -> Iterator[Optional[str]]:
        """Yield the text of each generated token until done; an end-of-turn token yields None (and is last).

        None rather than "": a token with no text of its own is not the end, and `chat` tells an
        answer the model ended from one cut at the length limit."""
        ...
