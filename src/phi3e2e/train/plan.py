"""The run plan: what one fine-tune will do, the same for every target.

the run spec + inputs (model, dataset) -> settings (recipe defaults, the model's profile, the
dataset's text template, --set) -> the rendered, validated Olive workflow -> the run record. The
target (targets.py) only decides where the plan runs and how its inputs and working folders are
named. A dry-run writes the plan and stops (write_dry_run).
"""

from __future__ import annotations

import json
import math
import string
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional

from phi3e2e import runs
from phi3e2e.build.options import Device, build_device, run_export_settings
from phi3e2e.errors import UserError
from phi3e2e.project import Project
from phi3e2e.train.inputs import RunInputs
from phi3e2e.train.spec import RunSpec
from phi3e2e.train.targets import Target
from phi3e2e.workflow.render import RenderedWorkflow, WorkflowPaths, render_workflow
from phi3e2e.workflow.settings import Algo, FinetuneSettings, build_settings, parse_override

# Olive's working folders. Olive resolves them against its current folder, not the config's
# (olive/engine/engine.py), so phi3e2e starts it in the config's folder; by hand:
# `cd gen-model/RUN && olive run --config olive-config.json` (an Azure ML job's own).
# Where the cache and checkpoints lie is the target's (Target.olive_cache, Target.checkpoints).
OLIVE_OUTPUT, OLIVE_CACHE, CHECKPOINTS = "olive-output", ".olive-cache", ".checkpoints"
STACK = ("olive-ai", "torch", "transformers", "peft", "onnxruntime-genai", "onnxruntime")


@dataclass
class RunPlan:
    name: str
    spec: RunSpec
    inputs: RunInputs
    settings: FinetuneSettings
    workflow: RenderedWorkflow
    record: runs.RunRecord
    notes: tuple[str, ...] = ()  # what phi3e2e chose for the user, said before the run
    # Told each eval loss during a local training (step, loss, total steps); what it raises stops the run:
    # a sweep's median rule (sweep/ranking.py).
    on_eval: Optional[Callable[[int, float, int], None]] = None

    @property
    def algo(self) -> Algo:
        return self.spec.algo

    @property
    def target(self) -> Target:
        return self.spec.on_target

    @property
    def build_device(self) -> Device:
        return build_device(self.spec.trains_on_cuda)


@dataclass
class FinetuneResult:
    run_dir: Path
    config_file: Path
    dry_run: bool
    record: runs.RunRecord


def plan_run(
    project: Project, spec: RunSpec, inputs: RunInputs, recorded: Optional[FinetuneSettings] = None
) -> RunPlan:
    """`recorded`: a resumed run's own settings, used as they are."""
    name = runs.check_run_name(spec.run_name) if spec.run_name else f"new-{spec.algo}"  # until all else is checked
    notes: tuple[str, ...] = ()
    if recorded is not None:
        settings = recorded
    else:
        set_args = list(spec.set_args)
        settings = choose_settings(inputs, set_args)
        notes = tuple(filter(None, [fit_tiny_budget(settings, inputs, set_args)]))
        if settings.training.eval_strategy != "epoch" and settings.training.eval_steps is None:
            settings.training.eval_steps = affordable_eval_steps(settings, inputs)
        settings.export = run_export_settings(settings.export, inputs.model_dir, spec.trains_on_cuda)
    workflow = render_plan_workflow(project, spec, settings, inputs, name)
    if not spec.run_name:  # a valid plan: now take a name from the clock (it reserves the name in gen-model/)
        name = runs.new_run_name(project.gen_model, spec.algo)
        workflow = render_plan_workflow(project, spec, settings, inputs, name)
    record = runs.RunRecord(
        name=name,
        algo=spec.algo,
        target=spec.on_target.name,
        profile=inputs.profile,
        base_model=inputs.model_label,
        dataset=inputs.dataset_label,
        settings=settings,
        versions=stack_versions(),
        data_sha256=runs.data_fingerprint(inputs.dataset_dir) if inputs.dataset_dir else None,
        ships="adapter" if spec.ships == "adapter" else None,
    )
    return RunPlan(name, spec, inputs, settings, workflow, record, notes)


def render_plan_workflow(
    project: Project, spec: RunSpec, settings: FinetuneSettings, inputs: RunInputs, name: str = ""
) -> RenderedWorkflow:
    target = spec.on_target
    paths = WorkflowPaths(
        model=inputs.model_path,
        train_file=inputs.train_file,
        eval_file=inputs.eval_file,
        output=OLIVE_OUTPUT,
        cache=target.olive_cache.format(name=name),
        checkpoints=target.checkpoints.format(name=name),
    )
    return render_workflow(spec.algo, spec.trains_on_cuda, settings, paths, project_templates=project.templates)


def choose_settings(inputs: RunInputs, set_args: list[str]) -> FinetuneSettings:
    """Recipe defaults, the profile for this model, the dataset's text template, then --set."""
    from phi3e2e.workflow.model_family import model_overrides

    overrides: dict[str, object] = model_overrides(inputs.model_dir, inputs.profile) if inputs.model_dir else {}
    template = dataset_summary(inputs).get("text_template")
    # Q&A rows take the model's own chat format (above); a chat dataset's rendered "{text}" stays.
    if template and not ("data.text_template" in overrides and QA_COLUMNS <= template_columns(template)):
        overrides["data.text_template"] = template
    overrides.update(parse_override(arg) for arg in set_args)
    settings = build_settings(inputs.profile, overrides)
    if inputs.local_train_file:
        check_template_columns(settings.data.text_template, inputs.local_train_file)
    if inputs.model_dir:  # before anything runs: a target the model lacks would train nothing there
        from phi3e2e.workflow.model_family import check_max_length, check_target_modules

        check_target_modules(inputs.model_dir, settings.lora.target_modules)
        check_max_length(inputs.model_dir, settings.data.max_length)
    return settings


QA_COLUMNS = {"Question", "Best Answer"}


def dataset_summary(inputs: RunInputs) -> dict:
    """The prepared dataset's summary.json ({} for a dataset phi3e2e did not prepare)."""
    summary = inputs.dataset_dir / "summary.json" if inputs.dataset_dir else None
    return json.loads(summary.read_text()) if summary and summary.is_file() else {}


def template_columns(text_template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text_template) if name}


def fit_tiny_budget(settings: FinetuneSettings, inputs: RunInputs, set_args: list[str]) -> Optional[str]:
    """The tiny profile on a dataset larger than the sample: cap the steps (settings.TINY_MAX_STEPS)."""
    from phi3e2e.workflow.settings import TINY_MAX_STEPS

    chosen = {parse_override(arg)[0] for arg in set_args}
    if inputs.profile != "tiny" or not inputs.local_train_file or chosen & {"training.max_steps", "training.num_train_epochs"}:
        return None
    training = settings.training
    with open(inputs.local_train_file, "rb") as f:
        rows = sum(1 for line in f if line.strip())
    per_step = training.per_device_train_batch_size * training.gradient_accumulation_steps
    steps = math.ceil(rows / per_step) * training.num_train_epochs
    if training.max_steps != -1 or steps <= TINY_MAX_STEPS:
        return None
    training.max_steps = TINY_MAX_STEPS
    return (f"  tiny profile: {rows} training rows x {training.num_train_epochs:g} epochs would be {steps:.0f} steps; "
            f"training stops at {TINY_MAX_STEPS} to fit about a minute (--set training.max_steps=N to choose)")  # fmt: skip


# Evaluation during training should cost at most this share of the training compute. A training step is
# about 3 forward passes per row (forward and backward), an evaluation 1 per eval row; with Olive's own
# default (every logging step, the whole split) a 10k-row dataset spent 8x its training compute evaluating.
EVAL_SHARE = 0.1


def affordable_eval_steps(settings: FinetuneSettings, inputs: RunInputs) -> int:
    """Evaluate at checkpoints (a multiple of save_steps), rarely enough that evaluation stays under EVAL_SHARE
    of training: every N steps with N x rows per step x 3 x EVAL_SHARE >= the rows one evaluation reads."""
    training = settings.training
    rows = training.eval_max_rows or math.inf
    try:
        eval_rows = dataset_summary(inputs).get("eval_rows")
    except (OSError, ValueError):
        eval_rows = None
    if isinstance(eval_rows, int):
        rows = min(rows, eval_rows)
    if rows == math.inf:  # every row, unknown how many (an Azure ML data asset): at checkpoints
        return training.save_steps
    per_step = training.per_device_train_batch_size * training.gradient_accumulation_steps
    needed = math.ceil(rows / (3 * per_step * EVAL_SHARE))
    return max(1, math.ceil(needed / training.save_steps)) * training.save_steps


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


def write_dry_run(project: Project, plan: RunPlan, say: Callable[[str], None]) -> FinetuneResult:
    """gen-model/<run>/ with the rendered workflow (and the job files for Azure ML) and a dry-run record."""
    run_dir = project.gen_model / plan.name
    with runs.run_lock(project.gen_model, plan.name):  # never beside a real run of that name
        existing = runs.try_read_record(run_dir) if run_dir.exists() else None
        if run_dir.exists() and (existing is None or existing.status != "dry-run"):
            raise UserError(f"{run_dir} already exists; choose another --run-name")
        for kept in (runs.partial_dir(project.gen_model, plan.name), runs.failed_dir(project.gen_model, plan.name)):
            if kept.exists():
                raise UserError(f"{kept} holds a failed or interrupted run {plan.name!r}: resume it with "
                                f"`phi3e2e finetune --resume {plan.name}`, or choose another --run-name")  # fmt: skip
        run_dir.mkdir(parents=True, exist_ok=True)
        config_file = stage_plan(project, plan, run_dir, say, dry_run=True)
        plan.record.status = "dry-run"
        runs.write_record(run_dir, plan.record)
    return FinetuneResult(run_dir, config_file, True, plan.record)


def stage_plan(project: Project, plan: RunPlan, folder: Path, say: Callable[[str], None], dry_run: bool) -> Path:
    """Write what runs the plan into `folder`; returns the Olive config file."""
    for note in plan.notes:
        say(note)
    return plan.target.stage(project, plan, folder, say, dry_run)


def kept_run(project: Project, name: str) -> tuple[Path, runs.RunRecord]:
    """A failed or interrupted run's folder and record (what `--resume` continues)."""
    name = runs.check_run_name(name)
    kept = [folder for folder in (runs.partial_dir(project.gen_model, name), runs.failed_dir(project.gen_model, name))
            if folder.is_dir()]  # fmt: skip
    if not kept:
        state = "finished, nothing to resume" if (project.gen_model / name).is_dir() else "no failed or interrupted run"
        raise UserError(f"--resume {name}: {state} in {project.relative(project.gen_model)}/")
    return kept[0], runs.read_record(kept[0])


def stack_versions() -> dict:
    found = {}
    for package in STACK:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found
