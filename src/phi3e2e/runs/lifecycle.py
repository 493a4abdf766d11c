"""A run's life on disk: started in staging, reopened to resume, finished or failed by a rename.

A run is built in gen-model/.<run>.partial/ and renamed to gen-model/<run>/ only once its outputs
are verified, with run.json saying "succeeded"; a failed one becomes gen-model/<run>.failed/ (its
logs kept for reading). Callers hold the run's lock (locks.run_lock).
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from typing import Optional

from phi3e2e.errors import UserError
from phi3e2e.runs.layout import OLIVE_LOG, checkpoints_dir, failed_dir, partial_dir
from phi3e2e.runs.record import RunRecord, now, read_record, write_record
from phi3e2e.storage import publish


def start_run(gen_model: Path, name: str) -> Path:
    """A fresh staging folder for run `name` (hold run_lock); refuses to overwrite a finished run."""
    final = gen_model / name
    if final.exists():
        raise UserError(f"{final} already exists; choose another --run-name")
    staging = partial_dir(gen_model, name)
    for stale in (staging, checkpoints_dir(gen_model, name)):  # a new run never resumes an old one's steps
        if stale.exists():
            shutil.rmtree(stale)
    staging.mkdir(parents=True)
    return staging


def reopen_run(gen_model: Path, name: str) -> tuple[Path, RunRecord]:
    """An interrupted (.partial) or failed run back in staging for `--resume` (hold run_lock)."""
    staging, failed = partial_dir(gen_model, name), failed_dir(gen_model, name)
    if not staging.exists() and not failed.exists():
        if (gen_model / name).exists():
            raise UserError(f"{gen_model / name}: run {name!r} is not failed or interrupted; nothing to resume")
        raise UserError(f"no failed or interrupted run {name!r} in {gen_model}/ to resume")
    if not staging.exists():
        failed.rename(staging)
    record = read_record(staging)
    log = staging / OLIVE_LOG
    if log.exists():
        log.rename(staging / f"olive-before-resume-{datetime.now():%H%M%S}.log")
    return staging, record


def last_checkpoint(gen_model: Path, name: str) -> Optional[Path]:
    """The newest complete checkpoint-N/ of run `name`; half-written ones (killed mid-save) are removed."""
    folder = checkpoints_dir(gen_model, name)
    found = []
    for checkpoint in folder.glob("checkpoint-*") if folder.is_dir() else []:
        step = checkpoint.name.removeprefix("checkpoint-")
        if step.isdigit() and (checkpoint / "trainer_state.json").is_file():
            found.append((int(step), checkpoint))
        else:
            shutil.rmtree(checkpoint, ignore_errors=True)
    if folder.is_dir() and not found:
        shutil.rmtree(folder)  # Olive refuses a non-empty output_dir without a checkpoint
    return max(found)[1] if found else None


def finish_run(staging: Path, record: RunRecord) -> Path:
    """Mark the staged run succeeded and move it to its final name (the last step)."""
    record.status, record.finished_at = "succeeded", now()
    write_record(staging, record)
    return publish(staging, staging.parent / record.name)


def fail_run(staging: Path, record: RunRecord, reason: str, scratch: tuple[str, ...] = ()) -> Path:
    """Keep a failed run's logs and record under <name>.failed/; its `scratch` folders (model copies) go."""
    for folder in scratch:
        shutil.rmtree(staging / folder, ignore_errors=True)
    record.status, record.reason, record.finished_at = "failed", reason, now()
    try:
        write_record(staging, record)
    except OSError:  # disk full: the record written when the run started stays, and the folder is still moved
        pass
    failed = failed_dir(staging.parent, record.name)
    return publish(staging, failed, replace=True)
