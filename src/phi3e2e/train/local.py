"""A run plan on this machine: `olive run` -> the three model forms -> a verified run folder.

The run holds its name's lock throughout (runs.run_lock). SIGTERM and SIGHUP end it like
Ctrl-C: Olive's process group is stopped and the run is kept as <run>.failed/ with its record.
A closed stdout (`phi3e2e finetune | head`) only stops the progress lines; the run goes on.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from phi3e2e import runs
from phi3e2e.build.options import tune_for_cpu
from phi3e2e.errors import UserError
from phi3e2e.prepare.dataset_import import check_dataset_folder
from phi3e2e.prepare.models import check_model_folder, is_tiny_model
from phi3e2e.project import Project
from phi3e2e.train.inputs import RunInputs
from phi3e2e.train.plan import (
    CHECKPOINTS,
    OLIVE_CACHE,
    OLIVE_OUTPUT,
    FinetuneResult,
    RunPlan,
    kept_run,
    plan_run,
    stage_plan,
)
from phi3e2e.train.spec import RunSpec
from phi3e2e.workflow.model_family import profile_for


class LocalTarget:
    """`--target local`: Olive on this machine, the run built in gen-model/.<run>.partial/."""

    name = "local"
    gpu_compute = False  # QLoRA still trains on CUDA here when the machine has a GPU (RunSpec)
    # The run's config lies in gen-model/.<run>.partial/: its checkpoints and Olive's step cache lie
    # beside it in gen-model/ (runs.checkpoints_dir, runs.olive_cache_dir), so they outlive a failed run
    # and `--resume` renders the very same workflow (Olive's cache then reuses the finished steps).
    # Per run: a finished run's forms are moved out of the cache, so its entries would point at nothing for the
    # next run of that name and settings (Olive then fails copying from them); it goes with the finished run.
    olive_cache = "../.olive-cache/{name}"
    checkpoints = "../.checkpoints/{name}"

    def check(self, spec: RunSpec) -> None:
        pass  # nothing beyond the spec's own rules

    def check_plan(self, plan: RunPlan, say: Callable[[str], None]) -> None:
        pass  # this machine's memory is the user's own to see; the tiny model fits anywhere

    def inputs(self, project: Project, spec: RunSpec) -> RunInputs:
        return local_inputs(project, spec.model, spec.data)

    def stage(self, project: Project, plan: RunPlan, folder: Path, say: Callable[[str], None], dry_run: bool) -> Path:
        config_file = folder / runs.CONFIG_FILE
        config_file.write_text(json.dumps(plan.workflow.config, indent=2) + "\n")
        return config_file

    def run(self, project: Project, plan: RunPlan, say: Callable[[str], None], verbose: bool) -> FinetuneResult:
        return run_locally(project, plan, say, verbose)

    def resume(self, project: Project, spec: RunSpec, say: Callable[[str], None]) -> FinetuneResult:
        return run_locally(project, resume_plan(project, spec.resume), say, spec.verbose, resume=True)

    def after_eval(self, project: Project, run_dir: Path, spec: RunSpec, say: Callable[[str], None]) -> None:
        pass  # the run folder is the result


LOCAL = LocalTarget()


def resume_plan(project: Project, name: str) -> RunPlan:
    """A failed or interrupted local run's plan, from its own recorded model, dataset and settings."""
    kept, previous = kept_run(project, name)
    inputs = local_inputs(project, previous.base_model, previous.dataset)
    spec = RunSpec.of(algo=previous.algo, run_name=name)  # the recorded algo meets the spec's rules here too
    plan = plan_run(project, spec, inputs, recorded=previous.settings)
    if previous.data_sha256 and plan.record.data_sha256 != previous.data_sha256:
        raise UserError(f"{inputs.dataset_label}: changed since run {name!r} started (sha256 differs from "
                        f"{project.relative(kept / runs.RUN_FILE)}); start a new run on it instead")  # fmt: skip
    return plan


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
    train_file = check_dataset_folder(dataset_dir)
    eval_file = dataset_dir / "eval.jsonl"
    has_eval = eval_file.is_file() and eval_file.stat().st_size > 0
    return RunInputs(
        model_path=str(model_dir),
        train_file=str(train_file),
        eval_file=str(eval_file) if has_eval else None,
        model_label=project.relative(model_dir),
        dataset_label=project.relative(dataset_dir),
        profile="tiny" if is_tiny_model(model_dir) else profile_for(model_dir),
        model_dir=model_dir,
        dataset_dir=dataset_dir,
        local_train_file=train_file,
    )


def run_locally(
    project: Project, plan: RunPlan, say: Callable[[str], None], verbose: bool = False, resume: bool = False
) -> FinetuneResult:
    say = _quiet_when_closed(say)
    with runs.run_lock(project.gen_model, plan.name), _signals_as_interrupt():
        return _run_locked(project, plan, say, verbose, resume)


def _run_locked(project: Project, plan: RunPlan, say: Callable[[str], None], verbose: bool, resume: bool):
    gen_model, record = project.gen_model, plan.record
    if resume:
        staging, previous, earlier_s = runs.reopen_run(gen_model, plan.name)
        for scratch in SCRATCH:  # a killed run's half-written outputs
            shutil.rmtree(staging / scratch, ignore_errors=True)
        checkpoint = runs.last_checkpoint(gen_model, plan.name)
        step = int(checkpoint.name.removeprefix("checkpoint-")) if checkpoint else 0
        record.resumed_from = runs.ResumePoint(
            step=step, checkpoint=project.relative(checkpoint) if checkpoint else None,
            previous_status=previous.status, at=runs.now(), earlier_s=earlier_s,
        )  # fmt: skip
        say(f"Resuming {plan.name} from " + (f"step {step} ({project.relative(checkpoint)})" if checkpoint
            else "the start (no checkpoint was saved; Olive's cache reuses finished steps)"))  # fmt: skip
    else:
        staging = runs.start_run(gen_model, plan.name)
    start = time.monotonic()
    try:
        record.status, record.submitted_at = "running", runs.now()
        runs.write_record(staging, record)  # a killed run still says what it was
        config_file = stage_config(project, plan, staging, say)
        from phi3e2e.build.olive_outputs import collect_forms
        from phi3e2e.build.olive_runner import run_olive
        from phi3e2e.train.history import history_until, loss_summary, write_history

        log_file = staging / runs.OLIVE_LOG
        # A resumed run's history is the whole run's: the checkpoint's log up to it, then this attempt's.
        resumed = record.resumed_from
        earlier = history_until(project.resolve(resumed.checkpoint)) if resumed and resumed.checkpoint else []
        history = earlier + run_olive(config_file, log_file, say, verbose=verbose,
                                      start_step=resumed.step if resumed else 0, on_eval=plan.on_eval)  # fmt: skip
        write_history(staging, history)
        collect_forms(staging / OLIVE_OUTPUT, staging, log_file)
        if missing := runs.missing_outputs(staging):
            raise UserError(f"run produced incomplete models, missing {', '.join(missing)}; see olive.log")
        if plan.build_device == "cpu":
            # Saved prepacked weights (infer/prepacked.py) take twice the model's size on disk: a sweep
            # saves them for its best trial only, and an adapter run ships no onnx-int4/ to save them for.
            record.cpu_int4 = tune_for_cpu(staging / runs.ONNX_INT4, plan.settings.export,
                                           prepack=plan.record.sweep is None and record.ships != "adapter")
        if record.ships == "adapter":
            _ship_adapter(project, record, staging, say, verbose)
        for scratch in (OLIVE_OUTPUT, OLIVE_CACHE, CHECKPOINTS):
            shutil.rmtree(staging / scratch, ignore_errors=True)
        record.duration_s = round(runs.elapsed(start) + (resumed.earlier_s if resumed else 0), 1)  # all attempts
        record.train_loss = loss_summary(history)
        run_dir = runs.finish_run(staging, record)
    except KeyboardInterrupt:
        failed = runs.fail_run(staging, record, "interrupted", SCRATCH)
        raise UserError(f"interrupted; the run is kept in {project.relative(failed)} "
                        f"(go on with `phi3e2e finetune --resume {plan.name}`)") from None  # fmt: skip
    except (UserError, OSError) as e:
        reason = _os_error(e) if isinstance(e, OSError) else str(e)
        failed = runs.fail_run(staging, record, reason, SCRATCH)
        reason = reason.replace(str(staging), str(failed))  # the log moved with the folder
        raise UserError(f"{reason} [run kept in {project.relative(failed)}; continue it from its last "
                        f"checkpoint with `phi3e2e finetune --resume {plan.name}`]") from None  # fmt: skip
    shutil.rmtree(runs.checkpoints_dir(gen_model, plan.name), ignore_errors=True)
    shutil.rmtree(runs.olive_cache_dir(gen_model, plan.name), ignore_errors=True)
    return FinetuneResult(run_dir, run_dir / runs.CONFIG_FILE, False, record)


def _ship_adapter(project: Project, record: runs.RunRecord, staging: Path, say: Callable[[str], None],
                  verbose: bool) -> None:
    """--ship adapter: onnx-adapter/ on the shared int4 base replaces the merged onnx-int4/ (build/adapter_int4.py)."""
    from phi3e2e.build.adapter_int4 import build_adapter_form
    from phi3e2e.build.options import recorded_int4_options

    form = build_adapter_form(project, project.resolve(record.base_model), staging / runs.ADAPTER,
                              recorded_int4_options(record), staging, say, verbose)
    record.adapter_base = project.relative(form.base_dir)
    shutil.rmtree(staging / runs.ONNX_INT4)
    if missing := runs.missing_outputs(staging, ships="adapter"):
        raise UserError(f"run produced incomplete models, missing {', '.join(missing)}; see olive.log")


# What a failed run does not keep: Olive's copies of the models (gigabytes for Phi-3-mini).
SCRATCH = (OLIVE_OUTPUT, OLIVE_CACHE, CHECKPOINTS)


def _os_error(error: OSError) -> str:
    where = error.filename or "the run folder"
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"{where}: disk full ({error.strerror}); free some space and resume"
    return f"{where}: {error.strerror or error}"


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def _signals_as_interrupt():
    """SIGTERM (kill, systemd, a container stop, a CI timeout) and SIGHUP end the run like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _quiet_when_closed(say: Callable[[str], None]) -> Callable[[str], None]:
    """Progress lines stop when stdout is gone (a closed pipe); the run itself must not."""
    closed = False

    def tolerant(line: str) -> None:
        nonlocal closed
        if closed:
            return
        try:
            say(line)
        except (BrokenPipeError, ValueError):  # ValueError: write to a closed file
            closed = True

    return tolerant


def stage_config(project: Project, plan: RunPlan, staging: Path, say: Callable[[str], None]) -> Path:
    config_file = stage_plan(project, plan, staging, say, dry_run=False)
    inputs = plan.inputs
    say(f"Fine-tuning {Path(inputs.model_label).name} with {plan.algo.upper()} ({inputs.profile} profile) "
        f"on {Path(inputs.dataset_label).name}")  # fmt: skip
    say(f"  workflow: {project.relative(config_file)}  (template: {plan.workflow.template_note(project.root)}; "
        f"full log: {runs.OLIVE_LOG})")  # fmt: skip
    return config_file
