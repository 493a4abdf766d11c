"""A run plan on this machine: `olive run` -> the three model forms -> a verified run folder."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable, Optional

from phi3e2e import runs
from phi3e2e.errors import UserError
from phi3e2e.prepare.models import check_model_folder, is_tiny_model
from phi3e2e.project import Project
from phi3e2e.train.inputs import RunInputs
from phi3e2e.train.plan import CHECKPOINTS, OLIVE_CACHE, OLIVE_OUTPUT, FinetuneResult, RunPlan


def local_inputs(project: Project, model: Optional[str], data: Optional[str]) -> RunInputs:
    """The base model and dataset: flags first, then what `prepare` recorded."""
    recorded = project.read_choices()
    model = model or recorded.get("model")
    if not model:
        raise UserError("no model prepared: run `phi3e2e prepare` (or `phi3e2e prepare --tiny`) first, or pass --model")
    model_dir = project.resolve(model)
    check_model_folder(model_dir)

    data = data or recorded.get("dataset")
    if not data:
        raise UserError("no dataset prepared: run `phi3e2e prepare --data FILE` first, or pass --data")
    dataset_dir = project.resolve(data)
    if not dataset_dir.is_dir() and (project.datasets / data).is_dir():
        dataset_dir = project.datasets / data
    train_file = dataset_dir / "train.jsonl"
    if not train_file.is_file() or train_file.stat().st_size == 0:
        raise UserError(f"{dataset_dir}: no training data (train.jsonl); import it with `phi3e2e prepare --data FILE`")
    eval_file = dataset_dir / "eval.jsonl"
    has_eval = eval_file.is_file() and eval_file.stat().st_size > 0
    return RunInputs(
        model_path=str(model_dir),
        train_file=str(train_file),
        eval_file=str(eval_file) if has_eval else None,
        model_label=project.relative(model_dir),
        dataset_label=project.relative(dataset_dir),
        profile="tiny" if is_tiny_model(model_dir) else "phi3-mini",
        model_dir=model_dir,
        dataset_dir=dataset_dir,
        local_train_file=train_file,
    )


def require_cuda_for_qlora(algo: str) -> None:
    if algo != "qlora":
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "QLoRA needs a CUDA GPU (bitsandbytes 4-bit has no CPU path) and none was found: "
            "use --algo lora here, or --target aml to run QLoRA on Azure ML GPU compute"
        )


def run_locally(project: Project, plan: RunPlan, say: Callable[[str], None], verbose: bool = False) -> FinetuneResult:
    require_cuda_for_qlora(plan.algo)
    record = plan.record
    staging = runs.start_run(project.gen_model, plan.name)
    config_file = stage_config(project, plan, staging, say)
    start = time.monotonic()
    try:
        from phi3e2e.train.history import loss_summary, write_history
        from phi3e2e.train.olive_outputs import collect_forms
        from phi3e2e.train.olive_runner import run_olive

        log_file = staging / runs.OLIVE_LOG
        history = run_olive(config_file, log_file, say, verbose=verbose)
        write_history(staging, history)
        collect_forms(staging / OLIVE_OUTPUT, staging, log_file)
        if missing := runs.missing_outputs(staging):
            raise UserError(f"run produced incomplete models, missing {', '.join(missing)}; see olive.log")
        if plan.builds_for_cpu:
            record.cpu_int4 = _tune_for_cpu(staging / runs.ONNX_INT4, plan)
        for scratch in (OLIVE_OUTPUT, OLIVE_CACHE, CHECKPOINTS):
            shutil.rmtree(staging / scratch, ignore_errors=True)
        record.duration_s = runs.elapsed(start)
        record.train_loss = loss_summary(history)
        run_dir = runs.finish_run(staging, record)
    except KeyboardInterrupt:
        failed = runs.fail_run(staging, record, "interrupted")
        raise UserError(f"interrupted; the unfinished run is kept for inspection in {project.relative(failed)}")
    except UserError as e:
        failed = runs.fail_run(staging, record, str(e))
        raise UserError(f"{e} [run kept in {project.relative(failed)}]") from None
    return FinetuneResult(run_dir, run_dir / runs.CONFIG_FILE, False, record)


def stage_config(project: Project, plan: RunPlan, staging: Path, say: Callable[[str], None]) -> Path:
    from phi3e2e.train.plan import stage_plan

    config_file = stage_plan(project, plan, staging, say, dry_run=False)
    inputs = plan.inputs
    say(f"Fine-tuning {Path(inputs.model_label).name} with {plan.algo.upper()} ({inputs.profile} profile) "
        f"on {Path(inputs.dataset_label).name}")  # fmt: skip
    say(f"  workflow: {project.relative(config_file)}  (template: {project.relative(plan.workflow.template)}; "
        f"full log: {runs.OLIVE_LOG})")  # fmt: skip
    return config_file


def _tune_for_cpu(onnx_dir: Path, plan: RunPlan) -> dict:
    """Decode on every physical core (written into genai_config.json); what was chosen, for run.json."""
    from phi3e2e.infer.threads import use_all_cores

    threads = use_all_cores(onnx_dir)
    options = plan.settings.export.model_dump(exclude={"precision"})
    return {"build_options": options, "intra_op_num_threads": threads, "chosen_by": "docs/performance.md"}
