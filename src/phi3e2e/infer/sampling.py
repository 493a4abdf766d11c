"""Choosing one answer's next token from its logits, with that answer's own settings.

A batch of answers shares one onnxruntime-genai Generator, whose search settings are the batch's, not each
answer's: the batch picks each row's token here and hands it to the runtime (engines/genai_batch.py).
The same meaning as the runtime's own sampler: temperature 0 is greedy; otherwise the logits are divided
by the temperature, cut to the `top_k` most likely tokens, then to the smallest set whose probability
reaches `top_p`, and one token is drawn from what is left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Optional

from phi3e2e.infer.generation import GenerationOptions

if TYPE_CHECKING:
    import numpy as np


def new_random(options: GenerationOptions) -> Optional[np.random.Generator]:
    """The answer's own random stream: a `seed` repeats its draws whatever else shares the batch."""
    import numpy as np

    return np.random.default_rng(options.seed) if options.do_sample else None


def choose(logits: np.ndarray, options: GenerationOptions, random: Optional[np.random.Generator],
           generated: int, end_ids: Iterable[int]) -> int:
    """The next token for an answer that has `generated` tokens so far; the end of turn is held back until
    `min_new_tokens`."""
    import numpy as np

    logits = np.array(logits, dtype=np.float64)  # a copy: the caller's row stays as the runtime gave it
    if generated < options.min_new_tokens:
        logits[[token for token in end_ids if 0 <= token < len(logits)]] = -np.inf
    if not options.do_sample:
        return int(np.argmax(logits))
    logits /= options.temperature
    likely = np.exp(logits - logits.max())
    likely /= likely.sum()
    if 0 < options.top_k < len(likely):
        likely[np.argpartition(-likely, options.top_k - 1)[options.top_k:]] = 0.0
        likely /= likely.sum()
    if options.top_p < 1.0:
        likely = _nucleus(likely, options.top_p)
    return int(random.choice(len(likely), p=likely))


def _nucleus(likely: np.ndarray, top_p: float) -> np.ndarray:
    """The smallest set of most likely tokens whose probability reaches top_p (the one that crosses it stays),
    renormalized; looked for among the 64, then 1024 most likely before sorting the whole vocabulary."""
    import numpy as np

    for size in (64, 1024):
        if size < len(likely):
            top = np.argpartition(-likely, size - 1)[:size]
            if likely[top].sum() >= top_p:
                return _first_reaching(likely, top[np.argsort(-likely[top], kind="stable")], top_p)
    return _first_reaching(likely, np.argsort(-likely, kind="stable"), top_p)


def _first_reaching(likely: np.ndarray, most_likely_first: np.ndarray, top_p: float) -> np.ndarray:
    import numpy as np

    keep = most_likely_first[:int(np.searchsorted(np.cumsum(likely[most_likely_first]), top_p)) + 1]
    nucleus = np.zeros_like(likely)
    nucleus[keep] = likely[keep]
    return nucleus / nucleus.sum()
