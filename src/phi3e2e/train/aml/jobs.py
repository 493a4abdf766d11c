"""What `phi3e2e jobs` does: find a run's job and report on it, follow it, or fetch its models."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from phi3e2e import runs
from phi3e2e.project import Project
from phi3e2e.train.aml.results import aml_runs, download_run, find_run, get_job, job_name_of, stream_log


def list_runs(project: Project, ml_client=None) -> list[str]:
    """One line per Azure ML run: name, job, recorded status, and the live status when online."""
    found = aml_runs(project)
    if not found:
        return [f"No Azure ML runs in {project.relative(project.gen_model)}/ (phi3e2e finetune --target aml ...)"]
    lines = [f"{'RUN':<32} {'JOB':<28} {'RECORDED':<10} {'AZURE ML' if ml_client else ''}".rstrip()]
    for run_dir in found:
        record = runs.read_record(run_dir)
        live = get_job(ml_client, job_name_of(run_dir)).status if ml_client else ""
        lines.append(f"{run_dir.name:<32} {job_name_of(run_dir):<28} {record.status:<10} {live}".rstrip())
    return lines


def run_status(project: Project, ml_client, run: Optional[str]) -> list[str]:
    run_dir = find_run(project, run)
    job = get_job(ml_client, job_name_of(run_dir))
    record = runs.read_record(run_dir)
    lines = [f"{run_dir.name}: job {job.name} is {job.status} on {record.aml.compute}"]
    if job.studio_url:
        lines.append(f"  Studio: {job.studio_url}")
    if record.status != "succeeded" and job.status in ("Completed", "Finished"):
        lines.append(f"  Next: phi3e2e jobs download {run_dir.name}")
    return lines


def follow_logs(project: Project, ml_client, run: Optional[str], say: Callable[[str], None]) -> str:
    return stream_log(ml_client, job_name_of(find_run(project, run)), say)


def download_models(project: Project, ml_client, run: Optional[str], say: Callable[[str], None],
                    checkpoints: bool = False) -> Path:  # fmt: skip
    run_dir = find_run(project, run)
    download_run(ml_client, project, run_dir, say, checkpoints=checkpoints)
    return run_dir
