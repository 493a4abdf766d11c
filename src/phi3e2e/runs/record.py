"""run.json: the run record, a typed, versioned pydantic model, written whole or not at all."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError, computed_field

from phi3e2e.errors import UserError, invalid_record
from phi3e2e.runs.layout import RUN_FILE
from phi3e2e.storage import atomic_write
from phi3e2e.workflow.settings import Algo, FinetuneSettings

SCHEMA_VERSION = 1
Status = Literal["dry-run", "staged", "running", "submitted", "succeeded", "failed"]


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
    earlier_jobs: Optional[list[str]] = None  # jobs this run's job went on from (`finetune --resume`), oldest first


class ResumePoint(BaseModel):
    """Where `finetune --resume` went on from: the checkpoint's optimizer step (0: none was saved)."""

    step: int
    checkpoint: Optional[str] = None
    previous_status: Optional[str] = None
    at: str
    earlier_s: float = 0.0  # the seconds the attempts before this one ran (duration_s counts them in)


class SweepTrial(BaseModel):
    """A run that is a trial of `phi3e2e sweep` (gen-model/<sweep>.sweep.json)."""

    sweep: str
    trial: int


class PushRecord(BaseModel):
    """One `phi3e2e push`: where a model form of the run went (the token is never recorded)."""

    to: Literal["hf"] = "hf"
    repo_id: str
    revision: str
    commit: Optional[str] = None
    form: str
    url: Optional[str] = None
    at: str


class DeployRecord(BaseModel):
    """One `phi3e2e deploy`: the endpoint and deployment that serve the run (the endpoint's key is never recorded)."""

    to: Literal["aml"] = "aml"
    endpoint: str
    deployment: str
    base_url: str  # what an openai client takes
    traffic: int  # this deployment's share (percent) when the deploy ended
    model: str  # the registered asset, name:version
    at: str


class RunRecord(BaseModel):
    """run.json. Paths (base_model, dataset) are relative to the project where they lie inside it."""

    # Keys a newer phi3e2e added are kept when this version rewrites the record.
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    schema_version: int = SCHEMA_VERSION
    name: str
    algo: Algo
    target: str  # a --target name (train/targets.py)
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
    sweep: Optional[SweepTrial] = None
    pushes: Optional[list[PushRecord]] = None  # `phi3e2e push`, oldest first
    deploys: Optional[list[DeployRecord]] = None  # `phi3e2e deploy`, oldest first
    ships: Optional[Literal["merged", "adapter"]] = None  # the int4 form it ships (None: merged, onnx-int4/)
    adapter_base: Optional[str] = None  # onnx-adapter/'s shared int4 base in model-cache/ (build/adapter_int4.py)

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
    atomic_write(folder / RUN_FILE, record.to_json())


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
        raise invalid_record(run_file, e) from None


def try_read_record(folder: Path) -> Optional[RunRecord]:
    """The record, or None when it is missing or broken: one bad run never hides the others."""
    try:
        return read_record(folder)
    except UserError:
        return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def elapsed(start: float) -> float:
    return round(time.monotonic() - start, 1)
