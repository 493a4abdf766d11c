"""The whole `phi3e2e finetune`: the fine-tune, the closing eval, then the target's own last step.

Above train/ and evaluate/ (siblings that never import each other): this is the one place that
runs them in sequence, so the CLI only parses and prints.
"""

from __future__ import annotations

from typing import Callable

from phi3e2e.errors import UserError
from phi3e2e.project import Project
from phi3e2e.train.finetune import run_spec
from phi3e2e.train.plan import FinetuneResult
from phi3e2e.train.spec import RunSpec


def finetune_and_evaluate(project: Project, spec: RunSpec, say: Callable[[str], None]) -> FinetuneResult:
    result = run_spec(project, spec, say)
    if result.dry_run:
        say(f"Workflow rendered and validated: {project.relative(result.config_file)}")
        return result
    if result.record.status == "submitted":  # --target aml --no-wait: the job runs on; `phi3e2e jobs` follows it
        return result
    loss = result.record.train_loss
    say(f"Done in {result.record.duration_s:.0f}s: {project.relative(result.run_dir)}/")
    say("  adapter/    LoRA adapter (PEFT)")
    say("  merged/     base model with the adapter merged in")
    if result.record.ships == "adapter":
        say(f"  onnx-adapter/  int4 ONNX Runtime GenAI adapter, on {result.record.adapter_base}/ (shared)")
    else:
        say("  onnx-int4/  int4 ONNX Runtime GenAI model")
    if loss:
        say(f"  training loss {loss.first:.3f} -> {loss.last:.3f} (curve: loss.png)")
    closing_eval(project, result, say)
    from phi3e2e.train.targets import get_target

    get_target(result.record.target).after_eval(project, result.run_dir, spec, say)
    say('Next:    phi3e2e chat --prompt "..."')
    return result


def closing_eval(project: Project, result: FinetuneResult, say: Callable[[str], None]) -> None:
    """Evidence right away: held-out loss, base vs fine-tuned int4 (full comparison: `phi3e2e eval`)."""
    from phi3e2e.evaluate.evaluation import build_warning, closing_eval_options, evaluate_run, summary_lines
    from phi3e2e.runs import EVAL_REPORT

    try:
        options, note = closing_eval_options(result.run_dir, samples=2, max_rows=200)
        evaluation = evaluate_run(project, result.run_dir, options, say=say)
    except (UserError, RuntimeError, OSError, KeyboardInterrupt) as e:  # the run itself is complete and verified
        # No eval split: the reason already says how to import one; `phi3e2e eval` would fail the same way.
        eval_file = project.resolve(result.record.dataset) / "eval.jsonl"
        retry = f" (try `phi3e2e eval {result.run_dir.name}`)" if eval_file.is_file() and eval_file.stat().st_size else ""
        say(f"Eval skipped: {' '.join(str(e).split()) or 'interrupted'}{retry}")
        return
    say(f"Held-out loss on {evaluation['eval_rows']} eval rows (lower is better):")
    for line in summary_lines(evaluation):
        say(line)
    for line in (note, build_warning(evaluation, result.run_dir, project)):
        if line:
            say(line)
    say(f"Report:  {project.relative(result.run_dir / EVAL_REPORT)}")
