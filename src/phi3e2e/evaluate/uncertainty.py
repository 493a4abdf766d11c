"""How sure a held-out loss change is: a paired bootstrap over the eval rows, and the verdict it allows.

Both models are measured on the same rows, so each resample draws rows (with replacement) and takes
the change of the token-weighted mean loss on those rows; the 2.5th and 97.5th percentiles of the
changes are the 95% interval. With few rows the interval is wide and says so; under MIN_ROWS rows the
verdict does not call a winner at all.
"""

from __future__ import annotations

from phi3e2e.prepare.dataset_import import MIN_EVAL_ROWS as MIN_ROWS

ROUNDS = 2000


def change_interval(base_nll: list[float], tuned_nll: list[float], tokens: list[int], seed: int = 0) -> list[float]:
    """The 95% bootstrap interval of (tuned loss - base loss), resampling rows; [low, high]."""
    import numpy as np

    base, tuned, counts = (np.asarray(values, dtype=np.float64) for values in (base_nll, tuned_nll, tokens))
    picks = np.random.default_rng(seed).integers(0, len(counts), size=(ROUNDS, len(counts)))
    changes = (tuned[picks].sum(1) - base[picks].sum(1)) / counts[picks].sum(1)
    low, high = np.percentile(changes, [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def verdict(change: float, interval: list[float], rows: int) -> str:
    """better / worse when the interval leaves no doubt, else why not."""
    if rows < MIN_ROWS:
        return f"too few eval rows to tell ({rows} < {MIN_ROWS})"
    if interval[1] < 0:
        return "better"
    if interval[0] > 0:
        return "worse"
    return "no clear change (the interval spans 0)"


def kept_share(int4_change: float, merged_change: float) -> float | None:
    """How much of the merged model's held-out gain the int4 build keeps (1.0 = all); None: no gain to keep."""
    if merged_change >= 0:
        return None
    return round(int4_change / merged_change, 3) or 0.0  # not -0.0
