"""Run folders: gen-model/<run>/ is the unit of truth for one fine-tune.

This module names the run folder's files and model forms, and owns run.json, the run record
(a typed, versioned pydantic model). A run is built in gen-model/.<run>.partial/ and renamed
to gen-model/<run>/ only once its outputs are verified, with run.json saying "succeeded". A
failed run is renamed to gen-model/<run>.failed/ (its logs kept for reading); nothing but a
succeeded run is ever picked by `chat`.

One writer per run: whoever builds, resumes or dry-runs a run holds its lock
(gen-model/.locks/<run>.lock, an flock the kernel drops when the holder dies, so a killed
run's lock is simply taken over). Scratch lives outside the folder that gets renamed:
training checkpoints in gen-model/.checkpoints/<run>/ (what `finetune --resume` goes on from;
deleted when the run succeeds or a new run takes the name) and Olive's step cache in
gen-model/.olive-cache/ (shared by every run, so a rerun reuses finished steps; safe to delete).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError, computed_field

from phi3e2e.errors import UserError
from phi3e2e.workflow.settings import FinetuneSettings

# The files of a run folder.
RUN_FILE = "run.json"
CONFIG_FILE = "olive-config.json"
OLIVE_LOG = "olive.log"
TRAIN_LOG = "train-log.jsonl"
LOSS_PLOT = "loss.png"
EVAL_FILE = "eval.json"
EVAL_REPORT = "eval-report.md"
EVAL_PLOT = "eval-loss.png"

# The three model forms a finished run holds, and the files each must have.
ADAPTER, MERGED, ONNX_INT4 = "adapter", "merged", "onnx-int4"
FORMS = (ADAPTER, MERGED, ONNX_INT4)
REQUIRED_FILES = {
    ADAPTER: ["adapter_config.json", "adapter_model.safetensors"],
    MERGED: ["config.json", "*.safetensors", "tokenizer.json"],
    ONNX_INT4: ["genai_config.json", "model.onnx", "tokenizer.json"],
}

SCHEMA_VERSION = 1
Status = Literal["dry-run", "staged", "running", "submitted", "succeeded", "failed"]
_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")


class LossSummary(BaseModel):
    first: float
    last: float
    logged: int


class AmlRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    compute: Optional[str] = None
    image: Optional[str] = None
    job_file: Optional[str] = None
    job_name: Optional[str] = None
    registered: Optional[list[str]] = None  # model assets "name:version" (--register)


class ResumePoint(BaseModel):
    """Where `finetune --resume` went on from: the checkpoint's optimizer step (0: none was saved)."""

    step: int
    checkpoint: Optional[str] = None
    previous_status: Optional[str] = None
    at: str


class RunRecord(BaseModel):
    """run.json. Paths (base_model, dataset) are relative to the project where they lie inside it."""

    # Keys a newer phi3e2e added are kept when this version rewrites the record.
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    schema_version: int = SCHEMA_VERSION
    name: str
    algo: Literal["lora", "qlora"]
    target: Literal["local", "aml"]
    profile: str
    base_model: str
    dataset: str
    settings: FinetuneSettings
    versions: dict[str, Optional[str]] = {}
    status: Status = "staged"
    reason: Optional[str] = None
    submitted_at: Optional[str] = None
    finished_at: Optional[str] = None
    duration_s: Optional[float] = None
    train_loss: Optional[LossSummary] = None
    cpu_int4: Optional[dict] = None  # the CPU build's options and threads (local LoRA runs)
    data_sha256: Optional[dict[str, str]] = None  # {"train.jsonl": hex, "eval.jsonl": hex} as trained on
    resumed_from: Optional[ResumePoint] = None
    aml: Optional[AmlRecord] = None

    @computed_field
    @property
    def trained_modules(self) -> str:
        """What the adapter really trains: Olive's QLoRA pass replaces target_modules with every 4-bit
        linear layer (olive/passes/pytorch/lora.py), so run.json says so rather than repeat the setting."""
        if self.algo == "qlora":
            return "every 4-bit linear layer (Olive's QLoRA ignores lora.target_modules)"
        return ", ".join(self.settings.lora.target_modules)

    def to_json(self) -> str:
        data = {key: value for key, value in self.model_dump(mode="json").items() if value is not None}
        return json.dumps(data, indent=2) + "\n"


def new_run_name(algo: str) -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{algo}"


def check_run_name(name: str) -> str:
    if not _NAME.match(name) or name.endswith((".failed", ".partial")):
        raise UserError(f"--run-name {name!r}: use letters, digits, '.', '_' or '-' (max 100), not a path")
    return name


def partial_dir(gen_model: Path, name: str) -> Path:
    return gen_model / f".{name}.partial"


def failed_dir(gen_model: Path, name: str) -> Path:
    return gen_model / f"{name}.failed"


def checkpoints_dir(gen_model: Path, name: str) -> Path:
    return gen_model / ".checkpoints" / name


def olive_cache_dir(gen_model: Path) -> Path:
    return gen_model / ".olive-cache"


def _lock_file(gen_model: Path, name: str) -> Path:
    return gen_model / ".locks" / f"{name}.lock"


@contextlib.contextmanager
def run_lock(gen_model: Path, name: str):
    """Hold run `name` for this process, or fail at once naming the process that holds it."""
    lock_file = _lock_file(gen_model, name)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise UserError(
                f"run {name!r} is in use by process {holder}; wait for it to end or choose another --run-name"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)  # the kernel drops the lock itself when the file closes, or the process dies


def in_progress(gen_model: Path, name: str) -> Optional[int]:
    """The PID of the process building run `name`, or None when no one holds it."""
    lock_file = _lock_file(gen_model, name)
    try:
        f = open(lock_file)
    except FileNotFoundError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = f.read().strip()
            return int(text) if text.isdigit() else -1
        return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def data_fingerprint(dataset_dir: Path) -> dict[str, str]:
    """sha256 of the dataset's split files, so eval can tell when they changed since training."""
    return {
        split: file_sha256(dataset_dir / split)
        for split in ("train.jsonl", "eval.jsonl")
        if (dataset_dir / split).is_file()
    }


def write_record(folder: Path, record: RunRecord) -> None:
    """Write run.json next to itself and rename, so a crash never leaves half a record."""
    partial = folder / (RUN_FILE + ".partial")
    partial.write_text(record.to_json())
    os.replace(partial, folder / RUN_FILE)


def read_record(folder: Path) -> RunRecord:
    """The run's record, or one line naming the file and the field at fault."""
    run_file = folder / RUN_FILE
    try:
        data = json.loads(run_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{run_file}: missing; not a phi3e2e run folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{run_file}: not a readable run record ({str(e).splitlines()[0]})") from None
    try:
        return RunRecord.model_validate(data)
    except ValidationError as e:
        error = e.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        raise UserError(f"{run_file}: {field}: {error['msg']}") from None


def try_read_record(folder: Path) -> Optional[RunRecord]:
    """The record, or None when it is missing or broken: one bad run never hides the others."""
    try:
        return read_record(folder)
    except UserError:
        return None


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
    final = staging.parent / record.name
    staging.rename(final)
    return final


def fail_run(staging: Path, record: RunRecord, reason: str, scratch: tuple[str, ...] = ()) -> Path:
    """Keep a failed run's logs and record under <name>.failed/; its `scratch` folders (model copies) go."""
    for folder in scratch:
        shutil.rmtree(staging / folder, ignore_errors=True)
    record.status, record.reason, record.finished_at = "failed", reason, now()
    try:
        write_record(staging, record)
    except OSError:  # disk full: the record written when the run started stays, and the folder is still moved
        (staging / (RUN_FILE + ".partial")).unlink(missing_ok=True)
    failed = failed_dir(staging.parent, record.name)
    if failed.exists():
        shutil.rmtree(failed)
    staging.rename(failed)
    return failed


def run_folders(gen_model: Path) -> list[tuple[Path, RunRecord]]:
    """Every run folder with a readable record (finished, failed, dry-run, submitted)."""
    if not gen_model.is_dir():
        return []
    found = []
    for folder in gen_model.iterdir():
        if folder.is_dir() and not folder.name.startswith("."):
            record = try_read_record(folder)
            if record is not None:
                found.append((folder, record))
    return found


def finished_runs(gen_model: Path) -> list[Path]:
    """Succeeded runs, newest first."""
    finished = [(folder, record) for folder, record in run_folders(gen_model) if record.status == "succeeded"]
    finished.sort(key=lambda pair: pair[1].finished_at or "", reverse=True)
    return [folder for folder, _ in finished]


def find_finished_run(project, run: str | None) -> Path:
    """A succeeded run by name under gen-model/ or by folder; the newest one when none is named."""
    if not run:
        finished = finished_runs(project.gen_model)
        if not finished:
            raise UserError(
                f"no finished fine-tune in {project.relative(project.gen_model)}/; run `phi3e2e finetune` first"
            )
        return finished[0]
    run_dir = project.gen_model / run if (project.gen_model / run).is_dir() else project.resolve(run)
    if not run_dir.is_dir():
        raise UserError(f"no run {run!r} in {project.relative(project.gen_model)}/ (no such run)")
    status = read_record(run_dir).status
    if status != "succeeded":
        raise UserError(f"{run_dir / RUN_FILE}: status is {status}, not a finished run")
    return run_dir


def newest_onnx_model(gen_model: Path) -> Path:
    for run in finished_runs(gen_model):
        if (run / ONNX_INT4 / "genai_config.json").is_file():
            return run / ONNX_INT4
    raise UserError(f"no finished fine-tune in {gen_model}; run `phi3e2e finetune` first, or pass --model DIR")


def missing_outputs(run_dir: Path) -> list[str]:
    """Files a finished run must have but this one lacks (relative paths or glob patterns)."""
    return [
        f"{form}/{pattern}"
        for form, patterns in REQUIRED_FILES.items()
        for pattern in patterns
        if not any((run_dir / form).glob(pattern))
    ]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def elapsed(start: float) -> float:
    return round(time.monotonic() - start, 1)
