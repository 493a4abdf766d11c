"""A run's life on disk: started in staging, reopened to resume, finished or failed by a rename.

A run is built in gen-model/.<run>.partial/ and renamed to gen-model/<run>/ only once its outputs
are verified, with run.json saying "succeeded"; a failed one becomes gen-model/<run>.failed/ (its
logs kept for reading). Callers hold the run's lock (locks.run_lock).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Optional

from phi3e2e.errors import UserError
from phi3e2e.runs.layout import OLIVE_LOG, checkpoints_dir, failed_dir, olive_cache_dir, partial_dir
from phi3e2e.runs.record import RunRecord, now, read_record, write_record
from phi3e2e.storage import publish


def start_run(gen_model: Path, name: str) -> Path:
    """A fresh staging folder for run `name` (hold run_lock); refuses to overwrite a finished run."""
    final = gen_model / name
    if final.exists():
        raise UserError(f"{final} already exists; choose another --run-name")
    staging = partial_dir(gen_model, name)
    # A new run never resumes an old one's steps, nor reads its step cache.
    for stale in (staging, checkpoints_dir(gen_model, name), olive_cache_dir(gen_model, name)):
        if stale.exists():
            shutil.rmtree(stale)
    staging.mkdir(parents=True)
    return staging


def reopen_run(gen_model: Path, name: str) -> tuple[Path, RunRecord, float]:
    """An interrupted (.partial) or failed run back in staging for `--resume` (hold run_lock), with its record
    and the seconds its attempts so far ran."""
    staging, failed = partial_dir(gen_model, name), failed_dir(gen_model, name)
    if not staging.exists() and not failed.exists():
        if (gen_model / name).exists():
            raise UserError(f"{gen_model / name}: run {name!r} is not failed or interrupted; nothing to resume")
        raise UserError(f"no failed or interrupted run {name!r} in {gen_model}/ to resume")
    if not staging.exists():
        failed.rename(staging)
    record = read_record(staging)
    log = staging / OLIVE_LOG
    spent = (record.resumed_from.earlier_s if record.resumed_from else 0.0) + attempt_seconds(record, log)
    if log.exists():
        log.rename(staging / f"olive-before-resume-{datetime.now():%H%M%S}.log")
    return staging, record, spent


def attempt_seconds(record: RunRecord, log: Path) -> float:
    """How long the attempt `record` describes ran: to its end, or, killed (no end written), to its log's last
    write."""
    if record.submitted_at is None:
        return 0.0
    started = datetime.fromisoformat(record.submitted_at).timestamp()
    if record.finished_at is not None:
        ended = datetime.fromisoformat(record.finished_at).timestamp()
    elif log.exists():
        ended = log.stat().st_mtime
    else:
        return 0.0
    return round(max(0.0, ended - started), 1)


def last_checkpoint(gen_model: Path, name: str) -> Optional[Path]:
    """The newest intact checkpoint-N/ of run `name`; damaged ones (killed mid-save, a truncated or broken
    file) are removed, so Olive's trainer, which takes the highest-numbered folder, resumes from an intact one."""
    folder = checkpoints_dir(gen_model, name)
    found = []
    for checkpoint in folder.glob("checkpoint-*") if folder.is_dir() else []:
        step = checkpoint.name.removeprefix("checkpoint-")
        if step.isdigit() and checkpoint_problem(checkpoint) is None:
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


# The same checks run on the Azure ML node (train/aml/compute_entry.py keeps a copy: it runs without phi3e2e).
def checkpoint_problem(checkpoint: Path) -> Optional[str]:
    """Why training cannot resume from `checkpoint` (None: it can). The trainer writes trainer_state.json last."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_bytes())
    except FileNotFoundError:
        return "no trainer_state.json (saving was cut off)"
    except (OSError, ValueError) as e:
        return f"trainer_state.json unreadable ({e})"
    if not isinstance(state, dict) or "global_step" not in state:
        return "trainer_state.json has no global_step"
    for path in sorted(checkpoint.iterdir()):
        if problem := _weights_problem(path):
            return f"{path.name}: {problem}"
    return None


def _weights_problem(path: Path) -> Optional[str]:
    """A truncated or broken safetensors file, or a torch file whose zip directory is gone."""
    if path.suffix == ".safetensors":
        size = path.stat().st_size
        try:
            with open(path, "rb") as f:
                header_size = int.from_bytes(f.read(8), "little")
                if size < 8 or header_size > size - 8:
                    return "truncated header"
                header = json.loads(f.read(header_size))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            return f"unreadable header ({e})"
        return f"truncated ({size} of {8 + header_size + end} bytes)" if 8 + header_size + end > size else None
    if path.suffix in (".pt", ".bin", ".pth") and not zipfile.is_zipfile(path):
        return "not a complete torch file"
    return None
