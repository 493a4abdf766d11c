"""Answers decoded together: one forward pass of the model gives each answer of a batch its next token.

CPU decode reads every weight once per forward pass whatever the batch, so a batch of 4 answers
gets about twice the tokens per second of one (docs/serve.md). onnxruntime-genai 0.14.1's
request Engine (og.Engine, og.Request) batches *statically*, and only that works here:

- The answers added before its first step form one batch of at most 4 (`static_batch_size`, a
  constant in src/engine/scheduler.cpp); genai_config's `engine.static_batching.max_batch_size`
  is never read, and giving it aborts the process (an unset std::optional in config.cpp).
- No answer joins a batch until every answer in it is done, and `remove_request` frees nothing
  before then; so each batch gets its own Engine, and answers that arrive meanwhile start
  another batch at once instead of waiting for this one to end.
- `dynamic_batching` (paged KV cache) needs a paged-attention model: a ModelBuilder int4 CPU
  model's decoder refuses its packed input ("Invalid rank for input: input_ids").
- An answer that ends with its end-of-turn token never shows that token (done, no unseen token),
  and `step()` raises "Expected at least one request to be ready" when all of a step's answers
  end that way.

Each decode here has `step()` -> [(row, token, text)] for the answers that got a token, and
(row, None, reason) once for an answer the runtime ended without one; and `close()`.
"""

from __future__ import annotations

from typing import Optional

from phi3e2e.infer.engines.genai import GenaiEngine
from phi3e2e.infer.generation import GenerationOptions

MAX_BATCH = 4  # the Engine's own limit (see above)

Step = list[tuple[int, Optional[int], str]]


class BatchDecode:
    """Up to MAX_BATCH answers on one og.Engine, for the batch's whole life."""

    def __init__(self, engine: GenaiEngine, answers: list[tuple[list[int], GenerationOptions]]):
        import numpy as np
        import onnxruntime_genai as og

        if not 0 < len(answers) <= MAX_BATCH:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH} answers, not {len(answers)}")
        self.engine = engine
        self._batch = og.Engine(engine.model)
        self._requests, self._texts, self._room = [], [], []
        for prompt, options in answers:
            request = og.Request(engine.generator_params(len(prompt), options))
            request.add_tokens(np.asarray(prompt, dtype=np.int32))
            self._batch.add_request(request)
            self._requests.append(request)
            self._texts.append(engine.tokenizer.create_stream())
            self._room.append(min(engine.context_length, len(prompt) + options.max_new_tokens) - len(prompt))
        self._ended = [False] * len(answers)

    def step(self) -> Step:
        rows = [row for row, ended in enumerate(self._ended) if not ended]
        if any(not self._requests[row].is_done() for row in rows):
            self._forward()
        events: Step = []
        for row in rows:
            request = self._requests[row]
            if request.has_unseen_tokens():
                token = request.get_unseen_token()
                self._room[row] -= 1
                events.append((row, token, "" if self.engine.is_end(token) else self._texts[row].decode(token)))
            elif request.is_done():  # its end of turn, unseen; or the last token of its max_length, seen before
                self._ended[row] = True
                events.append((row, None, "length" if self._room[row] <= 0 else "stop"))
        return events

    def _forward(self) -> None:
        try:
            self._batch.step()  # runs the model for the whole batch; returns one answer that got a token
        except RuntimeError as e:
            if "none were found" in str(e):  # every answer of this step ended at its end of turn
                return
            raise
        # The Engine queues each answer that got a token and hands one out per step(): empty its queue,
        # so that the next step() runs the model again. (The tokens are read from the requests themselves.)
        for _ in range(sum(request.has_unseen_tokens() for request in self._requests) - 1):
            self._batch.step()

    def close(self) -> None:
        """Frees the batch's KV cache (its Engine and requests go with the last reference)."""
        self._batch = None
        self._requests = []
        self.engine.use_huge_pages()


class SingleDecode:
    """One answer on its own og.Generator (`chat`'s path): an answer that starts alone, every answer with batching
    off (--max-batch 1), and every answer on a GPU, where the batched path is not checked yet."""

    def __init__(self, engine: GenaiEngine, prompt: list[int], options: GenerationOptions):
        self._tokens = engine.stream_tokens(prompt, options)

    def step(self) -> Step:
        try:
            token, text = next(self._tokens)
        except StopIteration:  # the Generator reached max_length
            return [(0, None, "length")]
        return [(0, token, text)]

    def close(self) -> None:
        self._tokens.close()  # frees the generator and its KV cache now
