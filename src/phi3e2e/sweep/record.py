"""gen-model/<sweep>.sweep.json: what a sweep searches, its trials and their outcome, its best trial.

Written through a temporary file and a rename (storage.atomic_write) every time it changes, so a
killed sweep leaves the record before or after a change, never half of one: `sweep --resume` reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from phi3e2e.errors import UserError, invalid_record
from phi3e2e.runs import check_run_name, failed_dir, partial_dir
from phi3e2e.storage import atomic_write
from phi3e2e.sweep.space import SearchSpace
from phi3e2e.workflow.settings import Algo

SCHEMA_VERSION = 1
SUFFIX = ".sweep.json"
OBJECTIVE = "held-out loss of the int4 model (eval.json: losses.int4.fine_tuned.loss), lower is better"
TrialStatus = Literal["pending", "running", "interrupted", "succeeded", "pruned", "failed"]
SweepStatus = Literal["running", "interrupted", "finished", "dry-run", "submitted"]
ENDED = ("succeeded", "pruned", "failed")  # a resumed sweep runs every other trial


class TrialRecord(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    number: int
    run: str  # gen-model/<run>/: an ordinary run
    values: dict[str, Any]
    status: TrialStatus = "pending"
    objective: Optional[float] = None
    reason: Optional[str] = None
    started_at: Optional[str] = None
    finished_at: Optional[str] = None


class SweepRecord(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    schema_version: int = SCHEMA_VERSION
    name: str
    target: str
    algo: Algo
    model: Optional[str] = None  # as given (None: the prepared model)
    data: Optional[str] = None
    space: SearchSpace
    objective: str = OBJECTIVE
    status: SweepStatus = "running"
    created_at: str
    finished_at: Optional[str] = None
    best: Optional[int] = None  # the best trial's number
    job_name: Optional[str] = None  # --target aml: the submitted sweep job
    trials: list[TrialRecord] = []

    def trial(self, number: int) -> Optional[TrialRecord]:
        return next((t for t in self.trials if t.number == number), None)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


def trial_run_name(sweep: str, number: int) -> str:
    return f"{sweep}-t{number}"


def sweep_file(gen_model: Path, name: str) -> Path:
    return gen_model / f"{name}{SUFFIX}"


def write_sweep(gen_model: Path, record: SweepRecord) -> Path:
    gen_model.mkdir(parents=True, exist_ok=True)
    path = sweep_file(gen_model, record.name)
    atomic_write(path, record.to_json())
    return path


def read_sweep(gen_model: Path, name: str) -> SweepRecord:
    """The sweep's record, or one line naming the file and the field at fault."""
    path = sweep_file(gen_model, check_sweep_name(name))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = sorted(p.name[: -len(SUFFIX)] for p in gen_model.glob(f"*{SUFFIX}")) if gen_model.is_dir() else []
        hint = f" (sweeps: {', '.join(known)})" if known else ""
        raise UserError(f"no sweep {name!r} in {gen_model}/ ({path.name} is missing){hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable sweep record ({str(e).splitlines()[0]})") from None
    try:
        return SweepRecord.model_validate(data)
    except ValidationError as e:
        raise invalid_record(path, e) from None


def check_sweep_name(name: str) -> str:
    """A sweep name that its trials' run names can carry."""
    try:
        check_run_name(trial_run_name(name, 1))
        check_run_name(name)
    except UserError:
        raise UserError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (max 95), not a path") from None
    return name


def check_new_sweep(gen_model: Path, name: str, trials: int) -> None:
    """Refuse a name a sweep or one of its trial runs already has."""
    check_sweep_name(name)
    if sweep_file(gen_model, name).exists():
        raise UserError(f"--name {name}: a sweep of that name exists ({sweep_file(gen_model, name)}); "
                        f"continue it with `phi3e2e sweep --resume {name}` or choose another --name")  # fmt: skip
    for number in range(1, trials + 1):
        run = trial_run_name(name, number)
        if any(p.exists() for p in (gen_model / run, partial_dir(gen_model, run), failed_dir(gen_model, run))):
            raise UserError(f"--name {name}: run {run!r} exists in {gen_model}/ (a trial's name); choose another --name")
