"""`phi3e2e eval`: held-out loss of base vs fine-tuned, sample answers, and a report."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from phi3e2e.cli.options import RunArgument, current_project, say


def eval(  # the command is called `eval`
    run: RunArgument = None,
    forms: Annotated[
        str, typer.Option("--forms", help="Model forms to compare, comma-separated: int4 (the one the run "
                                          "ships), int4-adapter, merged, adapter.")
    ] = "int4",
    samples: Annotated[int, typer.Option("--samples", help="Eval questions answered side by side (int4).")] = 3,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest sample answer, in tokens.")] = 64,
    max_rows: Annotated[
        Optional[int], typer.Option("--max-rows", help="Measure on the first N eval rows only (default: all).")
    ] = None,
) -> None:
    """Show whether the fine-tune helped: held-out loss and perplexity, base vs fine-tuned.

    Measures the eval split on the int4 ONNX models you ship (and, if asked, on the merged
    model and the adapter), answers a few eval questions with both models, and writes
    gen-model/RUN/eval.json and eval-report.md (with a loss plot).

    Examples:

    \b
      phi3e2e eval
      phi3e2e eval 20250101-120000-lora --samples 5
      phi3e2e eval --forms int4,merged,adapter
    """
    from phi3e2e.evaluate.evaluation import EvalOptions, build_warning, evaluate_run, summary_lines
    from phi3e2e.runs import EVAL_REPORT, find_finished_run

    project = current_project()
    run_dir = find_finished_run(project, run)
    options = EvalOptions(
        forms=tuple(form.strip() for form in forms.split(",") if form.strip()),
        samples=max(samples, 0),
        max_new_tokens=max_new_tokens,
        max_rows=max_rows,
    )
    result = evaluate_run(project, run_dir, options, say=say)
    say(f"Held-out loss on {result['eval_rows']} eval rows (lower is better):")
    for line in summary_lines(result):
        say(line)
    if warning := build_warning(result, run_dir, project):
        say(warning)
    for i, sample in enumerate(result["samples"], 1):
        say(f"Sample {i}: {_one_line(sample['question'])}")
        say(f"  base:       {_one_line(sample['base'])}")
        say(f"  fine-tuned: {_one_line(sample['fine_tuned'])}")
    say(f"Report:  {project.relative(run_dir / EVAL_REPORT)}")


def _one_line(text: str, width: int = 100) -> str:
    text = " ".join(text.split()) or "(empty: the model ended its turn at once)"
    return text if len(text) <= width else text[: width - 3] + "..."
