"""Finding runs: every run folder with a readable record, the finished ones, one by name."""

from __future__ import annotations

from pathlib import Path

from phi3e2e.errors import UserError
from phi3e2e.runs.layout import ADAPTER_FILE, RUN_FILE, shipped_form
from phi3e2e.runs.record import RunRecord, read_record, try_read_record


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
    finished = finished_runs(project.gen_model)
    if run:
        run = match_run(run, [folder.name for folder in finished])
    if not run or run == LATEST:
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
        form = run / shipped_form(run)  # onnx-int4/, or onnx-adapter/ (a run shipped as an adapter)
        if (form / "genai_config.json").is_file() or (form / ADAPTER_FILE).is_file():
            return form
    raise UserError(f"no finished fine-tune in {gen_model}; run `phi3e2e finetune` first, or pass --model DIR")


LATEST = "latest"


def match_run(text: str, names_newest_first: list[str]) -> str:
    """What a RUN argument names among `names`: `latest` (the newest), an exact name, or a unique prefix
    (`2026`, `20261204-10`). Ambiguous: one line listing the matches. Unknown: `text` as it is, so the
    caller's own message says what is missing."""
    if text == LATEST and names_newest_first:
        return names_newest_first[0]
    if text in names_newest_first or "/" in text:
        return text
    found = [name for name in names_newest_first if name.startswith(text)]
    if len(found) > 1:
        shown = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
        raise UserError(f"run {text!r} matches {len(found)} runs ({shown}): give more of the name")
    return found[0] if found else text
