"""Answers decoded together: one og.Generator with a row per answer, so one forward pass of the model gives
each answer its next token.

CPU decode reads every weight once per forward pass whatever the batch, so a batch of 16 answers gets about
2.6 times the tokens per second of one (docs/serve.md), up to the int4 kernels' compute: the prompt rate.

Why a Generator and not onnxruntime-genai 0.14.1's request Engine (og.Engine, og.Request), which this used
before: the Engine batches at most 4 answers (`static_batch_size`, a constant in src/engine/scheduler.cpp;
`engine.static_batching.max_batch_size` is never read there and setting it aborts) and has no adapter API.
A Generator takes any `batch_size` and an adapter (`set_active_adapter`), and what it lacks is done here:

- **Prompts of different lengths.** The Generator masks pad tokens at the end of a row and onnxruntime's
  GroupQueryAttention places each row's keys and values by its own length (the sum of its mask), so
  prompts are padded on the right, as the Engine does (src/engine/decoders/static_batch_decoder_io.cpp).
  (Left padding does not work: GroupQueryAttention counts a row's tokens from its start.) A prompt that
  ends in the pad token would lose it, so it is never batched (`can_join`).
- **Each answer's first token.** The runtime's own next token for a row is the model's output at the
  batch's last position, a pad of every shorter prompt; the batch takes each row's logits at its own last
  prompt token from the full output instead.
- **Each answer's settings.** The Generator's search settings are one per batch: it runs greedy, and each
  row's token is chosen here (infer/sampling.py: its temperature, top_p, top_k, seed, min_tokens) and
  handed to it as logits that allow only that token (`set_logits`).

Rows stay in the batch's forward passes until the batch is closed: the Generator cannot drop a row, and
its KV cache (rows x the longest prompt + max_tokens) is allocated when it starts.

Each decode here has `step()` -> [(row, token, text)] for the answers that got a token (an end-of-turn token
comes with text ""), and (row, None, "length") once for an answer at its max_tokens; and `close()`.
"""

from __future__ import annotations

from typing import Optional

from phi3e2e.infer.engines.genai import GenaiEngine
from phi3e2e.infer.generation import GenerationOptions
from phi3e2e.infer.sampling import choose, new_random

DEFAULT_BATCH = 16  # answers per batch unless `serve --max-batch` says otherwise: measured, docs/serve.md
MAX_BATCH = 64  # the most `--max-batch` takes
PROMPT_TOKENS = 2048  # a batch's padded prompt tokens (rows x its longest prompt) at most: see `can_join`

Step = list[tuple[int, Optional[int], str]]


def can_join(engine: GenaiEngine, rows: list[tuple[list[int], GenerationOptions]]) -> bool:
    """Whether these answers may decode as one batch.

    - The prompt, padded to the longest, costs the longest prompt's time per row and holds logits for every
      position (rows x longest x vocabulary x 4 bytes): long prompts gain nothing from a batch (a prompt is
      compute-bound alone) and would hold up every other answer's tokens, so they go alone.
    - The Generator's max_length (longest prompt + most new tokens) must give every row its own room within
      the context (and below a long-context Phi-3's 4097, genai.py).
    - A prompt that ends in the pad token would lose it (above); a model without one cannot pad.
    """
    longest = max(len(prompt) for prompt, _ in rows)
    most_new = max(options.max_new_tokens for _, options in rows)
    return (len(rows) * longest <= PROMPT_TOKENS and longest + most_new <= engine.batch_length_limit
            and engine.pad_token_id is not None
            and all(prompt and prompt[-1] != engine.pad_token_id for prompt, _ in rows))


class BatchDecode:
    """Answers to one model (or one adapter of it) on one og.Generator, for the batch's whole life."""

    def __init__(self, engine: GenaiEngine, answers: list[tuple[list[int], GenerationOptions]]):
        import onnxruntime_genai as og

        if len(answers) < 2 or not can_join(engine, answers):
            raise ValueError(f"these {len(answers)} answers cannot decode as one batch (can_join)")
        self.engine = engine
        self._prompts = [prompt for prompt, _ in answers]
        self._options = [options for _, options in answers]
        self._random = [new_random(options) for options in self._options]
        self._longest = max(len(prompt) for prompt in self._prompts)
        params = og.GeneratorParams(engine.model)
        max_length = self._longest + max(options.max_new_tokens for options in self._options)
        params.set_search_options(batch_size=len(answers), max_length=max_length, do_sample=False)
        self._generator = engine.new_generator(params)  # allocates the KV cache for every row
        self._texts = [engine.tokenizer.create_stream() for _ in answers]
        self._generated = [0] * len(answers)
        self._ended = [False] * len(answers)  # its end of turn or its max_tokens: no more of its tokens are read
        self._started = False

    def step(self) -> Step:
        import numpy as np

        generator = self._generator
        events: Step = []
        for row, options in enumerate(self._options):
            if not self._ended[row] and self._generated[row] >= options.max_new_tokens:
                self._ended[row] = True
                events.append((row, None, "length"))
        if all(self._ended):
            return events
        if not self._started:
            self._started = True
            padded = np.full((len(self._prompts), self._longest), self.engine.pad_token_id, dtype=np.int32)
            for row, prompt in enumerate(self._prompts):
                padded[row, :len(prompt)] = prompt
            generator.append_tokens(padded)  # the prompt pass, every row at once
            output = np.asarray(generator.get_output("logits"))
            logits = output[np.arange(len(self._prompts)), [len(prompt) - 1 for prompt in self._prompts]]
            del output
        else:
            logits = np.asarray(generator.get_logits()).reshape(len(self._prompts), -1)
        tokens = [0 if self._ended[row] else  # (a row that is over is still computed; its token is never read)
                  choose(logits[row], self._options[row], self._random[row], self._generated[row], self.engine.end_ids)
                  for row in range(len(self._prompts))]
        only = np.full(logits.shape, -np.inf, dtype=np.float32)
        only[np.arange(len(tokens)), tokens] = 0.0
        generator.set_logits(only)
        generator.generate_next_token()  # greedy over `only`: the chosen tokens; their keys and values next pass
        for row, token in enumerate(tokens):
            if self._ended[row]:
                continue
            self._generated[row] += 1
            self._ended[row] = self.engine.is_end(token)
            events.append((row, token, "" if self._ended[row] else self._texts[row].decode(token)))
        return events

    def close(self) -> None:
        """Frees the batch's KV cache."""
        self._generator = None
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
