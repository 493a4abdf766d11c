"""Coming back to a submitted job: its status, its log, and its models downloaded into the run folder.

A run folder of an Azure ML run says "submitted" in run.json (with the job name) until its
models are downloaded and verified; only then does it say "succeeded", the last step, so
`phi3e2e chat` never picks a half-downloaded run.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Callable, Optional

from phi3e2e import runs
from phi3e2e.errors import UserError
from phi3e2e.project import Project
from phi3e2e.train.aml.job import OUTPUT as MODELS_OUTPUT
from phi3e2e.train.aml.staging import CHECKPOINTS_OUTPUT  # gigabytes: only with `jobs download --checkpoints`

DOWNLOAD_DIR = ".download"
JOB_LOG = "job-log.txt"
DONE_OK = ("Completed", "Finished")
DONE_BAD = ("Failed", "Canceled", "NotResponding")

_GUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
_ARM_PATH = re.compile(r"/subscriptions/[^/\s]+/resource[Gg]roups/[^/\s]+(/providers/[^/\s]+/workspaces/[^/\s?&]+)?")
_TOKENISH = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|sig=[^&\s]+|Bearer [A-Za-z0-9._-]+)")


def redact(text: str) -> str:
    """Workspace IDs, SAS signatures and tokens out of a log before it is kept under gen-model/."""
    text = _ARM_PATH.sub("/subscriptions/<redacted>", text)
    text = _TOKENISH.sub("<redacted>", text)
    return _GUID.sub("<id>", text)


def aml_runs(project: Project) -> list[Path]:
    """Run folders that recorded an Azure ML job, newest first."""
    if not project.gen_model.is_dir():
        return []
    found = [
        folder
        for folder in project.gen_model.iterdir()
        if folder.is_dir() and not folder.name.startswith(".") and job_name_of(folder)
    ]
    return sorted(found, key=lambda folder: folder.stat().st_mtime, reverse=True)


def job_name_of(run_dir: Path) -> Optional[str]:
    record = runs.try_read_record(run_dir)
    return record.aml.job_name if record and record.aml else None


def find_run(project: Project, run: Optional[str]) -> Path:
    """A run folder by name (default: the newest Azure ML run)."""
    found = aml_runs(project)
    if run is not None:
        run = runs.match_run(run, [folder.name for folder in found])
    if run is None or run == runs.LATEST:
        if not found:
            raise UserError(f"no Azure ML runs in {project.gen_model}; submit one with `phi3e2e finetune --target aml`")
        return found[0]
    for candidate in (project.gen_model / run, project.gen_model / f"{run}.failed"):
        if candidate.is_dir() and job_name_of(candidate):
            return candidate
    raise UserError(f"{project.gen_model / run}: no Azure ML run by that name (see `phi3e2e jobs list`)")


def get_job(ml_client, job_name: str):
    """The job as Azure ML reports it. Its studio_url carries workspace IDs: print it, never store it."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return ml_client.jobs.get(job_name)
    except ResourceNotFoundError:
        raise UserError(f"job {job_name} not found in this workspace (is it the workspace you submitted to?)") from None


def job_duration(job) -> Optional[float]:
    """Seconds from submission to the job's last change (its end, once finished)."""
    try:
        context = job.creation_context
        return round((context.last_modified_at - context.created_at).total_seconds(), 1)
    except (AttributeError, TypeError):
        return None


def stream_log(ml_client, job_name: str, say: Callable[[str], None]) -> str:
    """Stream the job's log until it ends (Azure ML prints it); return the final status."""
    say(f"Streaming the log of {job_name} (Ctrl+C stops watching; the job keeps running) ...")
    try:
        ml_client.jobs.stream(job_name)
    except KeyboardInterrupt:
        raise UserError(
            f"stopped watching; job {job_name} keeps running: `phi3e2e jobs status` / `jobs download`"
        ) from None
    except Exception as e:  # the SDK raises a plain JobException when the job itself failed
        if type(e).__name__ != "JobException":
            raise
    return get_job(ml_client, job_name).status


def download_run(ml_client, project: Project, run_dir: Path, say: Callable[[str], None],
                 checkpoints: bool = False) -> runs.RunRecord:  # fmt: skip
    """Download a finished job's models (and its log; its checkpoints when asked) into its run folder, verify
    them, and mark the run succeeded."""
    from phi3e2e.train.history import loss_summary, write_history

    record = runs.read_record(run_dir)
    job_name = record.aml.job_name
    if record.status == "succeeded" and not runs.missing_outputs(run_dir):
        say(f"{project.relative(run_dir)} already holds the downloaded models")
        if checkpoints:
            _download_checkpoints(ml_client, project, run_dir, job_name, say)
        return record
    job = get_job(ml_client, job_name)
    status = job.status
    if status in DONE_BAD:
        record.status, record.reason = "failed", f"Azure ML job {status}"
        runs.write_record(run_dir, record)
        raise UserError(
            f"job {job_name} ended {status} on Azure ML; read its log with `phi3e2e jobs logs {run_dir.name}`"
        )
    if status not in DONE_OK:
        raise UserError(f"job {job_name} is {status}, not finished; follow it with `phi3e2e jobs logs {run_dir.name}`")

    download = run_dir / DOWNLOAD_DIR
    shutil.rmtree(download, ignore_errors=True)
    say(f"Downloading the models of {job_name} into {project.relative(run_dir)}/ ...")
    ml_client.jobs.download(job_name, download_path=download)  # the job's logs
    ml_client.jobs.download(job_name, download_path=download, output_name=MODELS_OUTPUT)
    models = download / "named-outputs" / MODELS_OUTPUT
    if missing := runs.missing_outputs(models):
        raise UserError(f"job {job_name} left incomplete models, missing {', '.join(missing)} (kept in {download})")
    for form in runs.FORMS:
        shutil.rmtree(run_dir / form, ignore_errors=True)
        shutil.move(str(models / form), run_dir / form)
    history = _keep_log(download, run_dir, record)
    if history:
        write_history(run_dir, history)
        record.train_loss = loss_summary(history)
    shutil.rmtree(download, ignore_errors=True)
    record.status, record.finished_at = "succeeded", runs.now()
    record.duration_s = job_duration(job) or 0.0
    runs.write_record(run_dir, record)  # last: from here on the run counts as finished
    if checkpoints:
        _download_checkpoints(ml_client, project, run_dir, job_name, say)
    return record


def _download_checkpoints(ml_client, project: Project, run_dir: Path, job_name: str, say: Callable[[str], None]):
    """The job's checkpoints output into RUN/checkpoints/ (whole, or not there)."""
    target = run_dir / CHECKPOINTS_OUTPUT
    staging = run_dir / (DOWNLOAD_DIR + "-checkpoints")
    shutil.rmtree(staging, ignore_errors=True)
    say(f"Downloading the checkpoints of {job_name} into {project.relative(target)}/ ...")
    ml_client.jobs.download(job_name, download_path=staging, output_name=CHECKPOINTS_OUTPUT)
    shutil.rmtree(target, ignore_errors=True)
    shutil.move(str(staging / "named-outputs" / CHECKPOINTS_OUTPUT), target)
    shutil.rmtree(staging, ignore_errors=True)


def _keep_log(download: Path, run_dir: Path, record: runs.RunRecord) -> list[dict]:
    """The job's user log, redacted, as job-log.txt; and the training-loss history read from it."""
    from phi3e2e.build.olive_runner import ProgressReader

    logs = sorted((download / "artifacts").rglob("std_log*.txt")) if (download / "artifacts").is_dir() else []
    if not logs:
        return []
    text = redact("\n".join(log.read_text(encoding="utf-8", errors="replace") for log in logs))
    (run_dir / JOB_LOG).write_text(text, encoding="utf-8")
    reader = ProgressReader(lambda _line: None, record.settings.training.logging_steps)
    for line in re.split(r"[\r\n]", text):
        reader.feed(line)
    return reader.history
