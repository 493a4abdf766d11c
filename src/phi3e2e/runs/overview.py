"""`phi3e2e runs`: what is in gen-model/ — a row per run, one run in full, two runs side by side.

Records are read only through phi3e2e.runs; a run folder whose run.json is missing or broken
becomes a row that says so, never an error that hides the other runs. A run being built
(gen-model/.<run>.partial/ whose lock a live process holds, runs.in_progress) shows as
"running" and cannot be removed; a .partial/ nobody holds was interrupted (`finetune --resume`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from phi3e2e import runs
from phi3e2e.errors import UserError
from phi3e2e.project import Project
from phi3e2e.storage import disk_bytes, shipped_bytes

RUNNING, INTERRUPTED, BROKEN = "running", "interrupted", "broken"


@dataclass
class RunRow:
    """One line of `phi3e2e runs`: what a person compares runs by."""

    name: str
    status: str
    folder: str
    algo: Optional[str] = None
    target: Optional[str] = None
    base_model: Optional[str] = None
    dataset: Optional[str] = None
    steps: Optional[int] = None
    train_loss_first: Optional[float] = None
    train_loss_last: Optional[float] = None
    eval_loss_base: Optional[float] = None
    eval_loss_fine_tuned: Optional[float] = None
    duration_s: Optional[float] = None
    when: Optional[str] = None  # finished, else submitted, else the folder's last change (UTC, ISO)
    problem: Optional[str] = None  # why a broken row could not be read
    ships: Optional[str] = None  # the int4 form it ships: "merged" (onnx-int4/) or "adapter" (onnx-adapter/)
    ships_bytes: Optional[int] = None  # that form's bytes in the run folder (an adapter's base is shared, not counted)
    shared_base: Optional[str] = None  # an adapter run's int4 base in model-cache/

    def as_json(self) -> dict:
        return asdict(self)


@dataclass
class RunDetails:
    """`phi3e2e runs show RUN`."""

    row: RunRow
    record: runs.RunRecord
    files: list[tuple[str, int]] = field(default_factory=list)  # (name under the run folder, bytes)
    evaluation: Optional[dict] = None


def list_runs(project: Project) -> list[RunRow]:
    """Every run folder in gen-model/, newest first: finished, failed, dry-run, submitted, running, broken."""
    gen_model = project.gen_model
    if not gen_model.is_dir():
        return []
    finish_removals(gen_model)
    rows = []
    for folder in gen_model.iterdir():
        if not folder.is_dir():
            continue
        if folder.name.startswith("."):
            if folder.name.endswith(".partial"):
                name = folder.name[1 : -len(".partial")]
                status = RUNNING if runs.in_progress(gen_model, name) else INTERRUPTED
                rows.append(RunRow(name, status, project.relative(folder), when=_mtime(folder)))
            continue
        rows.append(_row(project, folder))
    rows.sort(key=lambda row: row.when or "", reverse=True)
    return rows


def _row(project: Project, folder: Path) -> RunRow:
    try:
        record = runs.read_record(folder)
    except UserError as e:
        problem = str(e).replace(str(folder / runs.RUN_FILE), project.relative(folder / runs.RUN_FILE))
        return RunRow(folder.name, BROKEN, project.relative(folder), when=_mtime(folder), problem=problem)
    row = RunRow(
        name=folder.name,  # a failed run's folder is <name>.failed: the name `runs show` takes
        status=record.status,
        folder=project.relative(folder),
        algo=record.algo,
        target=record.target,
        base_model=record.base_model,
        dataset=record.dataset,
        steps=_steps(folder),
        duration_s=record.duration_s,
        when=record.finished_at or record.submitted_at or _mtime(folder),
    )
    if record.train_loss:
        row.train_loss_first, row.train_loss_last = record.train_loss.first, record.train_loss.last
    if record.status == "succeeded":
        form = runs.shipped_form(folder)
        row.ships = "adapter" if form == runs.ONNX_ADAPTER else "merged"
        row.ships_bytes = shipped_bytes(folder / form) if (folder / form).is_dir() else None
        if form == runs.ONNX_ADAPTER:
            row.shared_base = project.relative(runs.adapter_base_dir(folder / form, must_exist=False))
    evaluation = read_evaluation(folder)
    int4 = (evaluation or {}).get("losses", {}).get("int4") or {}
    row.eval_loss_base = (int4.get("base") or {}).get("loss")
    row.eval_loss_fine_tuned = (int4.get("fine_tuned") or {}).get("loss")
    return row


def _steps(folder: Path) -> Optional[int]:
    """Optimizer steps trained: the last step in train-log.jsonl."""
    try:
        lines = (folder / runs.TRAIN_LOG).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def read_evaluation(folder: Path) -> Optional[dict]:
    """eval.json, or None when the run was not evaluated (or the file is unreadable)."""
    try:
        data = json.loads((folder / runs.EVAL_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _mtime(folder: Path) -> str:
    return datetime.fromtimestamp(folder.stat().st_mtime, timezone.utc).isoformat(timespec="milliseconds")


def find_run_folder(project: Project, run: str) -> Path:
    """A run by its name under gen-model/ (a failed or interrupted one also by the name it was started with),
    `latest`, or a unique prefix of its name."""
    gen_model = project.gen_model
    run = runs.match_run(run, [row.name for row in list_runs(project)])
    for candidate in (gen_model / run, runs.failed_dir(gen_model, run), runs.partial_dir(gen_model, run)):
        if candidate.is_dir() and not run.startswith("."):
            return candidate
    names = ", ".join(row.name for row in list_runs(project)[:5]) or "none yet"
    raise UserError(f"no run {run!r} in {project.relative(project.gen_model)}/ (newest: {names}; see `phi3e2e runs`)")


def check_not_running(project: Project, folder: Path) -> None:
    name = _run_name(folder)
    if pid := runs.in_progress(project.gen_model, name):
        raise UserError(f"run {name!r} is being built by process {pid} ({project.relative(folder)}/); wait for it to end")


def _run_name(folder: Path) -> str:
    """The name a run was started with (its lock's name), from any of its folder names."""
    name = folder.name.removesuffix(".failed")
    return name[1 : -len(".partial")] if name.startswith(".") and name.endswith(".partial") else name


def run_details(project: Project, run: str) -> RunDetails:
    folder = find_run_folder(project, run)
    record = runs.read_record(folder)  # `show` of a broken run: the one line naming the file and field
    files = sorted((entry.name, disk_bytes(entry)) for entry in folder.iterdir())
    return RunDetails(_row(project, folder), record, files, read_evaluation(folder))




# The settings sections an algorithm does not read: a LoRA run never quantizes (qlora.*).
UNUSED_SECTIONS = {"lora": ("qlora",), "qlora": ()}
NOT_USED = "(not used)"  # a setting the other run's algorithm does not read, in `runs compare`


def flat_settings(record: runs.RunRecord) -> dict[str, object]:
    """What the run was asked to do, as `--set`-style keys (plus the run's own choices); only the sections its
    algorithm reads."""
    flat: dict[str, object] = {
        "algo": record.algo,
        "target": record.target,
        "profile": record.profile,
        "base_model": record.base_model,
        "dataset": record.dataset,
    }
    for section, values in record.settings.model_dump(mode="json").items():
        if section in UNUSED_SECTIONS.get(record.algo, ()):
            continue
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat


@dataclass
class Comparison:
    names: tuple[str, str]
    differing: list[tuple[str, object, object]]  # (setting, value in A, value in B)
    measures: list[tuple[str, Optional[float], Optional[float]]]  # (what, A, B)


def compare_runs(project: Project, first: str, second: str) -> Comparison:
    a, b = run_details(project, first), run_details(project, second)
    settings_a, settings_b = flat_settings(a.record), flat_settings(b.record)
    differing = [
        (key, settings_a.get(key, NOT_USED), settings_b.get(key, NOT_USED))
        for key in dict.fromkeys([*settings_a, *settings_b])
        if settings_a.get(key, NOT_USED) != settings_b.get(key, NOT_USED)
    ]
    measures = [
        (label, getattr(a.row, attr), getattr(b.row, attr))
        for label, attr in (
            ("steps", "steps"),
            ("training loss, first", "train_loss_first"),
            ("training loss, last", "train_loss_last"),
            ("held-out loss, base int4", "eval_loss_base"),
            ("held-out loss, fine-tuned int4", "eval_loss_fine_tuned"),
            ("duration", "duration_s"),
        )
    ]
    return Comparison((a.row.name, b.row.name), differing, measures)


REMOVING = ".removing-"  # gen-model/.NAME.removing-PID: a removal in progress (or killed)


def finish_removals(gen_model: Path) -> None:
    """Finish the removals whose process is gone (killed halfway): the user asked for those runs to go."""
    for folder in gen_model.glob(f".*{REMOVING}*"):
        pid = folder.name.rpartition(REMOVING)[2]
        if pid.isdigit() and not runs.process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Removed:
    folder: Path
    base_kept: Optional[Path] = None  # the adapter run's shared int4 base, kept for the runs listed
    base_users: list[str] = field(default_factory=list)
    base_removed: Optional[Path] = None  # ... or removed, no other run using it


def adapter_base_users(project: Project, base_dir: Path, leaving_out: Optional[Path] = None) -> list[str]:
    """The runs whose onnx-adapter/ answers on `base_dir` (every run folder, failed ones too: resumable)."""
    users = []
    for folder in sorted(project.gen_model.iterdir()) if project.gen_model.is_dir() else []:
        pointer = folder / runs.ONNX_ADAPTER / runs.BASE_POINTER
        if folder != leaving_out and pointer.is_file():
            try:
                if runs.adapter_base_dir(folder / runs.ONNX_ADAPTER, must_exist=False) == base_dir.resolve():
                    users.append(folder.name)
            except UserError:
                continue  # a broken base.json names no base
    return users


def remove_run(project: Project, run: str) -> Removed:
    """Delete a run folder (and its resume checkpoints): renamed out of the way first, so it is gone
    at once or not at all. A run still being built is refused. An adapter run's shared int4 base goes
    with it only when no other run answers on it."""
    finish_removals(project.gen_model)
    folder = find_run_folder(project, run)
    check_not_running(project, folder)
    name = _run_name(folder)
    removed = Removed(folder)
    base_dir = None
    if (folder / runs.ONNX_ADAPTER / runs.BASE_POINTER).is_file():
        try:
            base_dir = runs.adapter_base_dir(folder / runs.ONNX_ADAPTER, must_exist=False)
        except UserError:
            base_dir = None  # a broken base.json names no base: nothing else is removed
    with runs.run_lock(project.gen_model, name):  # no build of this name can start while it goes
        # A removal interrupted halfway leaves only hidden folders, never a half-deleted run; the next
        # `runs` or `runs rm` finishes it (finish_removals).
        doomed = [(folder, folder.parent / f".{name}{REMOVING}{os.getpid()}"),
                  (runs.checkpoints_dir(project.gen_model, name),
                   folder.parent / f".{name}.checkpoints{REMOVING}{os.getpid()}"),
                  (runs.olive_cache_dir(project.gen_model, name),
                   folder.parent / f".{name}.olive-cache{REMOVING}{os.getpid()}")]  # fmt: skip
        doomed = [(path, away) for path, away in doomed if path.is_dir()]
        for path, away in doomed:
            path.rename(away)
    for _, away in doomed:
        shutil.rmtree(away)
    if base_dir is not None and base_dir.is_dir():
        removed.base_users = adapter_base_users(project, base_dir)
        if removed.base_users:
            removed.base_kept = base_dir
        else:  # the last run on it: its base goes too (renamed first, like the run)
            away = base_dir.with_name(f".{base_dir.name}{REMOVING}{os.getpid()}")
            base_dir.rename(away)
            shutil.rmtree(away)
            removed.base_removed = base_dir
    return removed
