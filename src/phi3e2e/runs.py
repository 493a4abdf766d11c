"""Run folders: gen-model/<run>/ is the unit of truth for one fine-tune.

A run is built in gen-model/.<run>.partial/ and renamed to gen-model/<run>/ only once its
outputs are verified, with run.json saying "succeeded". A failed run is renamed to
gen-model/<run>.failed/ (its logs kept for reading); nothing but a succeeded run is ever picked
by `chat`.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from phi3e2e.errors import UserError

RUN_FILE = "run.json"
FORMS = ("adapter", "merged", "onnx-int4")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def new_run_name(algo: str) -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{algo}"


def check_run_name(name: str) -> str:
    if not _NAME.match(name) or name.endswith((".failed", ".partial")):
        raise UserError(f"--run-name {name!r}: use letters, digits, '.', '_' or '-' (max 100), not a path")
    return name


def partial_dir(gen_model: Path, name: str) -> Path:
    return gen_model / f".{name}.partial"


def start_run(gen_model: Path, name: str) -> Path:
    """A fresh staging folder for run `name`; refuses to overwrite a finished run."""
    final = gen_model / name
    if final.exists():
        raise UserError(f"{final} already exists; choose another --run-name")
    staging = partial_dir(gen_model, name)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def write_run_record(folder: Path, record: dict) -> None:
    (folder / RUN_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")


def read_run_record(folder: Path) -> dict:
    try:
        return json.loads((folder / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def finish_run(staging: Path, name: str, record: dict) -> Path:
    """Mark the staged run succeeded and move it to its final name (the last step)."""
    write_run_record(staging, record | {"status": "succeeded", "finished_at": _now()})
    final = staging.parent / name
    staging.rename(final)
    return final


def fail_run(staging: Path, name: str, record: dict, reason: str) -> Path:
    """Keep a failed run's logs under <name>.failed/ so the user can read what happened."""
    write_run_record(staging, record | {"status": "failed", "reason": reason, "finished_at": _now()})
    failed = staging.parent / f"{name}.failed"
    if failed.exists():
        shutil.rmtree(failed)
    staging.rename(failed)
    return failed


def finished_runs(gen_model: Path) -> list[Path]:
    """Succeeded runs, newest first."""
    if not gen_model.is_dir():
        return []
    runs = [
        folder
        for folder in gen_model.iterdir()
        if folder.is_dir() and not folder.name.startswith(".") and read_run_record(folder).get("status") == "succeeded"
    ]
    return sorted(runs, key=lambda folder: read_run_record(folder).get("finished_at", ""), reverse=True)


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
    status = read_run_record(run_dir).get("status")
    if status != "succeeded":
        raise UserError(f"{run_dir / RUN_FILE}: status is {status or 'missing'}, not a finished run")
    return run_dir


def newest_onnx_model(gen_model: Path) -> Path:
    for run in finished_runs(gen_model):
        if (run / "onnx-int4" / "genai_config.json").is_file():
            return run / "onnx-int4"
    raise UserError(f"no finished fine-tune in {gen_model}; run `phi3e2e finetune` first, or pass --model DIR")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def elapsed(start: float) -> float:
    return round(time.monotonic() - start, 1)
