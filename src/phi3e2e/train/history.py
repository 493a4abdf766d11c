"""The training-loss history of a run: train-log.jsonl, its plot, and the summary in run.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from phi3e2e.runs import LOSS_PLOT, TRAIN_LOG, LossSummary


def write_history(run_dir: Path, history: list[dict]) -> None:
    with open(run_dir / TRAIN_LOG, "w") as f:
        for entry in history:
            f.write(json.dumps(entry) + "\n")
    losses = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]
    if losses:
        plot_training_loss(losses, run_dir / LOSS_PLOT)


def history_until(checkpoint: Path) -> list[dict]:
    """The training and eval losses logged up to `checkpoint` (its trainer_state.json), as train-log.jsonl has
    them: what a resumed run keeps of the attempt before."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return []
    return [entry for entry in state.get("log_history", []) if "loss" in entry or "eval_loss" in entry]


def loss_summary(history: list[dict]) -> Optional[LossSummary]:
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return LossSummary(first=losses[0], last=losses[-1], logged=len(losses)) if losses else None


def plot_training_loss(losses: list[tuple[int, float]], png: Path, title: str = "Training loss") -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers or CI
    import matplotlib.pyplot as plt

    steps, values = zip(*losses)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, values, marker="o", markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png
