"""One engine per model form, all speaking the same small interface to `ChatSession`.

An engine turns text into token ids and streams an answer's text one generated token at a
time; `ChatSession` owns the chat format, the history and the timing, so every form chats
and is measured the same way.
"""

from __future__ import annotations

from typing import Iterator, Protocol

from phi3e2e.infer.generation import GenerationOptions


class Engine(Protocol):
    form: str  # "onnx", "merged" or "adapter"
    device: str
    context_length: int

    def encode(self, text: str) -> list[int]: ...

    def stream(self, prompt_tokens: list[int], options: GenerationOptions) -> Iterator[str]:
        """Yield the text of each generated token (end-of-turn tokens yield "") until done."""
        ...
