"""Ranked by what ships: a trial's objective, the median rule that stops a poor trial early, the ranking.

The objective is the held-out loss of the trial's int4 model, measured by the eval that follows each
trial (eval.json: losses.int4.fine_tuned.loss). The median rule compares a trial's eval loss during
training with the finished trials' eval losses at the same step (their train-log.jsonl).
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from phi3e2e import runs
from phi3e2e.errors import UserError
from phi3e2e.project import Project
from phi3e2e.sweep.record import SweepRecord, TrialRecord, read_sweep

SWEEP_PLOT = "{name}.sweep.png"
# "Clearly worse": above the median of the finished trials at that step by more than this share.
PRUNE_MARGIN = 0.05
PRUNE_MIN_TRIALS = 2  # finished trials evaluated at the same step before the rule applies


class TrialPruned(UserError):
    """The median rule stopped the trial (a UserError, so the run ends as a failed run says why)."""


def objective_of(run_dir: Path) -> Optional[float]:
    """The int4 model's held-out loss from the run's eval.json; None when it was not evaluated."""
    try:
        evaluation = json.loads((run_dir / runs.EVAL_FILE).read_text(encoding="utf-8"))
        return float(evaluation["losses"]["int4"]["fine_tuned"]["loss"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def eval_losses(run_dir: Path) -> dict[int, float]:
    """The eval losses logged during training, by step (train-log.jsonl)."""
    found = {}
    try:
        lines = (run_dir / runs.TRAIN_LOG).read_text(encoding="utf-8").splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            entry = json.loads(line)
            if "eval_loss" in entry:
                found[int(entry["step"])] = float(entry["eval_loss"])
        except (ValueError, KeyError, TypeError):
            continue
    return found


def median_rule(step: int, loss: float, finished: list[dict[int, float]], total_steps: int = 0) -> Optional[str]:
    """Why a trial at `step` with eval `loss` should stop (None: it goes on). Never at step 0 (nothing is
    trained yet) nor at the last step (stopping then saves nothing)."""
    if step <= 0 or (total_steps and step >= total_steps):
        return None
    peers = [losses[step] for losses in finished if step in losses]
    if len(peers) < PRUNE_MIN_TRIALS:
        return None
    median = statistics.median(peers)
    if loss > median + PRUNE_MARGIN * abs(median):
        return (f"pruned at step {step}: eval loss {loss:.4f} is more than {PRUNE_MARGIN:.0%} above the median "
                f"{median:.4f} of {len(peers)} finished trials at that step")  # fmt: skip
    return None


class MedianPruner:
    """ProgressReader's on_eval hook for one trial: raises TrialPruned when the median rule says stop."""

    def __init__(self, finished: list[dict[int, float]]):
        self.finished = finished

    def __call__(self, step: int, loss: float, total_steps: int = 0) -> None:
        if reason := median_rule(step, loss, self.finished, total_steps):
            raise TrialPruned(reason)


# --- the ranking ------------------------------------------------------------------------------


@dataclass
class RankedTrial:
    rank: Optional[int]  # None: no objective (pruned, failed, not run yet)
    trial: TrialRecord
    objective: Optional[float]
    best: bool = False

    def as_json(self) -> dict:
        return {"rank": self.rank, "best": self.best, "objective": self.objective, **self.trial.model_dump(mode="json")}


def rank_trials(record: SweepRecord, gen_model: Path) -> list[RankedTrial]:
    """Trials with an objective first, lowest first (the best marked); then the rest in trial order. The objective
    is read from each trial's eval.json when there is one (a later `phi3e2e eval` counts), else as recorded."""
    rows = []
    for trial in record.trials:
        objective = objective_of(gen_model / trial.run) if trial.status == "succeeded" else None
        rows.append(RankedTrial(None, trial, objective if objective is not None else trial.objective))
    scored = sorted((r for r in rows if r.objective is not None and r.trial.status == "succeeded"),
                    key=lambda r: (r.objective, r.trial.number))  # fmt: skip
    for rank, row in enumerate(scored, 1):
        row.rank = rank
    if scored:
        scored[0].best = True
    return scored + [r for r in rows if r.rank is None]


def best_trial(record: SweepRecord, gen_model: Path) -> Optional[int]:
    ranked = rank_trials(record, gen_model)
    return ranked[0].trial.number if ranked and ranked[0].best else None


@dataclass
class SweepView:
    record: SweepRecord
    ranked: list[RankedTrial]
    plot: Optional[Path]


def sweep_view(project: Project, name: str) -> SweepView:
    """`phi3e2e runs --sweep NAME`: the trials ranked, and the plot of the objective against each dimension."""
    record = read_sweep(project.gen_model, name)
    ranked = rank_trials(record, project.gen_model)
    scored = [row for row in ranked if row.rank is not None]
    plot = plot_sweep(record, scored, project.gen_model / SWEEP_PLOT.format(name=name)) if scored else None
    return SweepView(record, ranked, plot)


def plot_sweep(record: SweepRecord, scored: list[RankedTrial], png: Path) -> Path:
    """One panel per dimension: each finished trial's objective against its value; the best one starred."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers or CI
    import matplotlib.pyplot as plt

    dims = record.space.dimensions
    fig, axes = plt.subplots(1, len(dims), figsize=(4.2 * len(dims), 3.5), dpi=100, squeeze=False)
    for ax, dim in zip(axes[0], dims):
        values = [row.trial.values.get(dim.key) for row in scored]
        categorical = dim.values is not None and not all(isinstance(v, (int, float)) for v in dim.values)
        xs = [dim.values.index(v) if categorical else v for v in values]
        ax.scatter(xs, [row.objective for row in scored], color="tab:blue")
        best = [(x, row.objective) for x, row in zip(xs, scored) if row.best]
        if best:
            ax.scatter(*zip(*best), marker="*", s=220, color="tab:red", label="best", zorder=3)
            ax.legend(loc="best")
        if categorical:
            ax.set_xticks(range(len(dim.values)), [str(v) for v in dim.values])
        elif dim.log or (dim.values and min(dim.values) > 0 and max(dim.values) / min(dim.values) >= 10):
            ax.set_xscale("log")
        ax.set_xlabel(dim.key)
        ax.set_ylabel("int4 held-out loss")
        ax.grid(alpha=0.3)
    fig.suptitle(f"sweep {record.name}: {len(scored)} trials (lower is better)")
    fig.tight_layout()
    temp = png.with_name(f".{png.stem}.partial.png")  # a reader never sees half a picture
    fig.savefig(temp)
    plt.close(fig)
    os.replace(temp, png)
    return png
