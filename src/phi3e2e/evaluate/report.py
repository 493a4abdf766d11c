"""The eval report of a run: eval-report.md with the loss plot, the numbers and sample answers."""

from __future__ import annotations

import json
from pathlib import Path

from phi3e2e.runs import EVAL_PLOT, EVAL_REPORT, TRAIN_LOG


def write_report(run_dir: Path, result: dict) -> Path:
    history = _history(run_dir / TRAIN_LOG)
    plot = plot_losses(history, result, run_dir / EVAL_PLOT)
    lines = [
        f"# Evaluation of run `{result['run']}`",
        "",
        f"Held-out data: {result['eval_rows']} rows of the eval split of `{result['dataset']}` "
        f"({result['eval_tokens']} predicted tokens, rows cut at {result['max_length']} tokens as in training). "
        "Loss is the mean next-token negative log-likelihood; lower is better. Perplexity = exp(loss).",
        "",
        "| model form | rows | base loss | fine-tuned loss | change | 95% interval of the change | verdict "
        "| base perplexity | fine-tuned perplexity |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for form, numbers in result["losses"].items():
        base, tuned = numbers["base"], numbers["fine_tuned"]
        low, high = numbers["change_interval_95"]
        lines.append(
            f"| {form} | {numbers['rows']} | {base['loss']:.4f} | {tuned['loss']:.4f} | {numbers['change']:+.4f} "
            f"| {low:+.4f} to {high:+.4f} | {numbers['verdict']} | {base['perplexity']:g} | {tuned['perplexity']:g} |"
        )
    lines += ["", "The interval: a paired bootstrap over the eval rows (2,000 resamples); a verdict needs at least "
              "20 rows and an interval on one side of 0."]  # fmt: skip
    if keeps := result.get("int4_keeps"):
        share = "no gain to keep" if keeps["share"] is None else f"{keeps['share']:.0%}"
        lines += ["", f"int4 build vs merged model, on the first {keeps['rows']} rows: int4 change "
                  f"{keeps['int4_change']:+.4f}, merged change {keeps['merged_change']:+.4f}; the int4 build keeps "
                  f"{share} of the gain" + ("." if keeps["enough"] else " (under 80%: chat with merged/ instead).")]
    lines += ["", "## Loss during training", ""]
    if plot:
        lines.append(f"![training and held-out loss]({plot.name})")
    else:
        lines.append("No training-loss history was logged for this run (train-log.jsonl is missing or empty).")
    if result["samples"]:
        lines += ["", "## Sample answers (int4, greedy)", ""]
        for i, sample in enumerate(result["samples"], 1):
            lines += [
                f"### Sample {i}: {' '.join(sample['question'].split())[:120]}",
                "",
                "Prompt as the model saw it:",
                "",
            ]
            lines += [_block(sample["prompt"]), "", "Reference answer:", ""]
            lines += [_block(sample["reference"]), "", "Base model:", "", _block(sample["base"]), ""]
            lines += ["Fine-tuned model:", "", _block(sample["fine_tuned"]), ""]
    lines += ["", f"Measured in {result['seconds']:.0f} s at {result['evaluated_at']}. Numbers: `eval.json`."]
    report = run_dir / EVAL_REPORT
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def _block(text: str) -> str:
    fence = "````" if "```" in text else "```"
    return f"{fence}text\n{text or '(empty)'}\n{fence}"


def _history(log_file: Path) -> list[dict]:
    if not log_file.is_file():
        return []
    with open(log_file, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_losses(history: list[dict], result: dict, png: Path):
    """Training loss and the trainer's eval loss by step, with the int4 held-out losses as lines."""
    train = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]
    evals = [(entry["step"], entry["eval_loss"]) for entry in history if "eval_loss" in entry]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers or CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(*zip(*train), marker="o", markersize=3, label="training loss")
    if evals:
        ax.plot(*zip(*evals), marker="s", markersize=4, label="eval loss (trainer)")
    int4 = result["losses"].get("int4")
    if int4:
        ax.axhline(int4["base"]["loss"], color="gray", linestyle="--", label="held-out loss, base int4")
        ax.axhline(int4["fine_tuned"]["loss"], color="green", linestyle="--", label="held-out loss, fine-tuned int4")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(f"Run {result['run']}: loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png
