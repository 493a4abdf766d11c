"""`phi3e2e finetune`: settings -> rendered Olive workflow -> `olive run` -> verified run folder."""

from __future__ import annotations

import json
import shutil
import string
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional

from phi3e2e import runs
from phi3e2e.errors import UserError
from phi3e2e.prepare.models import check_model_folder, is_tiny_model
from phi3e2e.project import Project
from phi3e2e.workflow.render import Algo, Target, WorkflowPaths, render_workflow
from phi3e2e.workflow.settings import ExportSettings, FinetuneSettings, build_settings, parse_override

CONFIG_FILE = "olive-config.json"
# Olive's working folders inside a run, relative to the config so the folder can be re-run.
OLIVE_OUTPUT, OLIVE_CACHE, CHECKPOINTS = "olive-output", ".olive-cache", ".checkpoints"
STACK = ("olive-ai", "torch", "transformers", "peft", "onnxruntime-genai", "onnxruntime")


@dataclass
class FinetuneResult:
    run_dir: Path
    config_file: Path
    dry_run: bool
    record: dict


@dataclass
class Inputs:
    model_dir: Path
    dataset_dir: Path
    train_file: Path
    eval_file: Optional[Path]


def resolve_inputs(project: Project, model: Optional[str], data: Optional[str]) -> Inputs:
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
    return Inputs(model_dir, dataset_dir, train_file, eval_file if has_eval else None)


def choose_settings(inputs: Inputs, set_args: list[str]) -> tuple[str, FinetuneSettings]:
    """Recipe defaults, the profile for this model, the dataset's text template, then --set."""
    profile = "tiny" if is_tiny_model(inputs.model_dir) else "phi3-mini"
    overrides: dict[str, object] = {}
    summary_file = inputs.dataset_dir / "summary.json"
    if summary_file.is_file():
        template = json.loads(summary_file.read_text()).get("text_template")
        if template:
            overrides["data.text_template"] = template
    overrides.update(parse_override(arg) for arg in set_args)
    settings = build_settings(profile, overrides)
    check_template_columns(settings.data.text_template, inputs.train_file)
    return profile, settings


def check_template_columns(text_template: str, train_file: Path) -> None:
    with open(train_file, encoding="utf-8") as f:
        first = json.loads(f.readline())
    wanted = [name for _, name, _, _ in string.Formatter().parse(text_template) if name]
    missing = [name for name in wanted if name not in first]
    if missing:
        raise UserError(
            f"data.text_template uses {', '.join('{' + m + '}' for m in missing)} but {train_file} has columns "
            f"{', '.join(first)}"
        )


def require_cuda_for_qlora(algo: Algo, target: Target) -> None:
    if algo != "qlora" or target != "local":
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "QLoRA needs a CUDA GPU (bitsandbytes 4-bit has no CPU path) and none was found: "
            "use --algo lora here, or --target aml to run QLoRA on Azure ML GPU compute"
        )


def finetune(
    project: Project,
    *,
    algo: Algo,
    target: Target,
    model: Optional[str] = None,
    data: Optional[str] = None,
    run_name: Optional[str] = None,
    set_args: Optional[list[str]] = None,
    dry_run: bool = False,
    verbose: bool = False,
    say: Callable[[str], None] = print,
    aml_options=None,
) -> FinetuneResult:
    if target == "aml":  # an Azure ML command job runs `olive run` there; see phi3e2e/aml/
        from phi3e2e.train.aml.submit import AmlOptions, finetune_on_aml

        return finetune_on_aml(
            project, algo=algo, options=aml_options or AmlOptions(), model=model, data=data,
            run_name=run_name, set_args=set_args, dry_run=dry_run, say=say,
        )  # fmt: skip
    inputs = resolve_inputs(project, model, data)
    profile, settings = choose_settings(inputs, set_args or [])
    builds_for_cpu = algo != "qlora"  # QLoRA runs on CUDA and builds its int4 model for CUDA too
    settings.export = _int4_export_settings(settings.export, inputs.model_dir, builds_for_cpu)
    if not dry_run:
        require_cuda_for_qlora(algo, target)

    name = runs.check_run_name(run_name) if run_name else runs.new_run_name(algo)
    paths = WorkflowPaths(
        model=str(inputs.model_dir),
        train_file=str(inputs.train_file),
        eval_file=str(inputs.eval_file) if inputs.eval_file else None,
        output=OLIVE_OUTPUT,
        cache=OLIVE_CACHE,
        checkpoints=CHECKPOINTS,
    )
    config = render_workflow(algo, target, settings, paths, project_templates=project.templates).config
    record = {
        "name": name,
        "algo": algo,
        "target": target,
        "profile": profile,
        "base_model": project.relative(inputs.model_dir),
        "dataset": project.relative(inputs.dataset_dir),
        "settings": settings.model_dump(),
        "versions": _versions(),
    }
    if dry_run:
        return _write_dry_run(project, name, config, record)

    staging = runs.start_run(project.gen_model, name)
    config_file = staging / CONFIG_FILE
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    say(f"Fine-tuning {inputs.model_dir.name} with {algo.upper()} ({profile} profile) on {inputs.dataset_dir.name}")
    say(f"  workflow: {project.relative(config_file)}  (full log: olive.log)")
    start = time.monotonic()
    try:
        from phi3e2e.train.olive_runner import collect_forms, missing_outputs, run_olive

        history = run_olive(config_file, staging / "olive.log", say, verbose=verbose)
        _write_history(staging, history)
        collect_forms(staging / OLIVE_OUTPUT, staging)
        if missing := missing_outputs(staging):
            raise UserError(f"run produced incomplete models, missing {', '.join(missing)}; see olive.log")
        if builds_for_cpu:
            record["cpu_int4"] = _tune_for_cpu(staging / "onnx-int4", settings)
        for scratch in (OLIVE_OUTPUT, OLIVE_CACHE, CHECKPOINTS):
            shutil.rmtree(staging / scratch, ignore_errors=True)
        record["duration_s"] = runs.elapsed(start)
        record["train_loss"] = _loss_summary(history)
        run_dir = runs.finish_run(staging, name, record)
    except KeyboardInterrupt:
        failed = runs.fail_run(staging, name, record, "interrupted")
        raise UserError(f"interrupted; the unfinished run is kept for inspection in {project.relative(failed)}")
    except UserError as e:
        failed = runs.fail_run(staging, name, record, str(e))
        raise UserError(f"{e} [run kept in {project.relative(failed)}]") from None
    return FinetuneResult(run_dir, run_dir / CONFIG_FILE, False, record)


def _int4_export_settings(export: ExportSettings, model_dir: Path, builds_for_cpu: bool) -> ExportSettings:
    """CPU builds get phi3e2e's measured int4 defaults for unset options; CUDA builds keep ModelBuilder's."""
    from phi3e2e.workflow.int4_options import check_block_size, cpu_int4_options

    if not builds_for_cpu:
        check_block_size(export.int4_block_size, model_dir)
        return export
    return ExportSettings(**cpu_int4_options(export.model_dump(), model_dir))


def _tune_for_cpu(onnx_dir: Path, settings: FinetuneSettings) -> dict:
    """Decode on every physical core (written into genai_config.json); what was chosen, for run.json."""
    from phi3e2e.infer.threads import use_all_cores

    threads = use_all_cores(onnx_dir)
    options = settings.export.model_dump(exclude={"precision"})
    return {"build_options": options, "intra_op_num_threads": threads, "chosen_by": "docs/performance.md"}


def _write_dry_run(project: Project, name: str, config: dict, record: dict) -> FinetuneResult:
    run_dir = project.gen_model / name
    if run_dir.exists() and runs.read_run_record(run_dir).get("status") != "dry-run":
        raise UserError(f"{run_dir} already exists; choose another --run-name")
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / CONFIG_FILE
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    runs.write_run_record(run_dir, record | {"status": "dry-run"})
    return FinetuneResult(run_dir, config_file, True, record)


def _write_history(run_dir: Path, history: list[dict]) -> None:
    with open(run_dir / "train-log.jsonl", "w") as f:
        for entry in history:
            f.write(json.dumps(entry) + "\n")
    losses = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]
    if losses:
        from phi3e2e.plots import plot_training_loss

        plot_training_loss(losses, run_dir / "loss.png")


def _loss_summary(history: list[dict]) -> dict:
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return {"first": losses[0], "last": losses[-1], "logged": len(losses)} if losses else {}


def _versions() -> dict:
    found = {}
    for package in STACK:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found
