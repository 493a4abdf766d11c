"""`phi3e2e finetune --resume RUN` for an Azure ML run: a new job that goes on from the stopped job's checkpoints.

A job that hit its time limit, was cancelled or failed keeps its checkpoints in its `checkpoints` output.
The new job is the run's own job file (same code, settings, inputs and compute) with that output as one
more input (mounted read-only: nothing is downloaded here) and `--resume-from` on its command line; the entry
copies the newest intact checkpoint into the new job's own output and the trainer resumes there.
The run folder stays the same; run.json names the new job and keeps the earlier ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import yaml

from phi3e2e import runs
from phi3e2e.errors import UserError
from phi3e2e.project import Project
from phi3e2e.train.aml.job import JOB_FILE, load_job_file, options_of, write_job_file
from phi3e2e.train.aml.results import DONE_BAD, DONE_OK, download_run, get_job, stream_log
from phi3e2e.train.aml.staging import CHECKPOINTS_OUTPUT, CODE_DIR, CONFIG_FILE
from phi3e2e.train.aml.submit import first_line
from phi3e2e.train.aml.workspace import connect
from phi3e2e.train.plan import FinetuneResult
from phi3e2e.train.spec import RunSpec

PREVIOUS_CHECKPOINTS = "previous_checkpoints"


def stopped_run(project: Project, name: str) -> tuple[Path, runs.RunRecord]:
    """The Azure ML run `name` whose job can be continued: submitted and not downloaded as finished."""
    run_dir = project.gen_model / runs.check_run_name(name)
    if not run_dir.is_dir() and runs.failed_dir(project.gen_model, name).is_dir():
        raise UserError(f"--resume {name}: submitting it failed, so no job ran; submit a new run instead")
    record = runs.try_read_record(run_dir) if run_dir.is_dir() else None
    if record is None or record.target != "aml":
        raise UserError(f"--resume {name}: no Azure ML run by that name in {project.relative(project.gen_model)}/")
    if record.status == "succeeded":
        raise UserError(f"--resume {name}: finished, nothing to resume (its models are in {project.relative(run_dir)})")
    if not (record.aml and record.aml.job_name):
        raise UserError(f"--resume {name}: its job was never submitted; submit a new run instead")
    if not (run_dir / JOB_FILE).is_file():
        raise UserError(f"--resume {name}: {project.relative(run_dir / JOB_FILE)} is missing; submit a new run")
    return run_dir, record


def resume_job(project: Project, spec: RunSpec, say: Callable[[str], None], credential=None) -> FinetuneResult:
    run_dir, record = stopped_run(project, spec.resume)
    options = options_of(spec)
    ml_client = connect(options.workspace, (project.root, Path.cwd()), credential)
    previous = get_job(ml_client, record.aml.job_name)
    if previous.status in DONE_OK:
        raise UserError(f"--resume {run_dir.name}: job {previous.name} finished; fetch its models with "
                        f"`phi3e2e jobs download {run_dir.name}`")  # fmt: skip
    if previous.status not in DONE_BAD:
        raise UserError(f"--resume {run_dir.name}: job {previous.name} is {previous.status}; a preempted job resumes by "
                        f"itself (cancel it in the studio first to start it over as a new job)")  # fmt: skip
    source = checkpoints_of(ml_client, previous)
    job_file = write_resumed_job(run_dir, source)
    job = load_job_file(job_file)
    say(f"Resuming {run_dir.name}: a new job from the checkpoints of {previous.name} ({previous.status}) ...")
    try:
        submitted = ml_client.jobs.create_or_update(job)
    except Exception as e:
        raise UserError(f"submitting the resumed job failed: {first_line(e)} "
                        f"[{project.relative(run_dir)} still names {previous.name}]") from None  # fmt: skip
    record.aml.earlier_jobs = (record.aml.earlier_jobs or []) + [previous.name]
    record.aml.job_name, record.status, record.reason = submitted.name, "submitted", None
    record.submitted_at = runs.now()
    runs.write_record(run_dir, record)
    say(f"Submitted job {submitted.name} ({project.relative(run_dir)}/), going on from {previous.name}'s checkpoints")
    if submitted.studio_url:
        say(f"  Studio: {submitted.studio_url}")
    if not options.wait:
        say(f"Follow it: phi3e2e jobs status {run_dir.name} | phi3e2e jobs logs {run_dir.name}")
        return FinetuneResult(run_dir, run_dir / CODE_DIR / CONFIG_FILE, False, record)
    stream_log(ml_client, submitted.name, say)
    record = download_run(ml_client, project, run_dir, say)
    return FinetuneResult(run_dir, run_dir / CODE_DIR / CONFIG_FILE, False, record)


def checkpoints_of(ml_client, job) -> str:
    """Where the job's checkpoints output lies: as Azure ML reports it, else its default place (the workspace's
    default datastore, azureml/<job>/<output>/: Azure ML's path for a named output given no path)."""
    output = (getattr(job, "outputs", None) or {}).get(CHECKPOINTS_OUTPUT)
    if path := getattr(output, "path", None):
        return path
    datastore = ml_client.datastores.get_default().name
    return f"azureml://datastores/{datastore}/paths/azureml/{job.name}/{CHECKPOINTS_OUTPUT}/"


def write_resumed_job(run_dir: Path, checkpoints: str) -> Path:
    """The run's job file with the earlier checkpoints as an input; the first job's file is kept beside it."""
    job_file = run_dir / JOB_FILE
    spec = yaml.safe_load(job_file.read_text())
    first = run_dir / f"{job_file.stem}.first{job_file.suffix}"
    if not first.exists():
        first.write_text(job_file.read_text())
    spec["inputs"][PREVIOUS_CHECKPOINTS] = {"type": "uri_folder", "path": checkpoints, "mode": "ro_mount"}
    flag = "--resume-from ${{inputs." + PREVIOUS_CHECKPOINTS + "}}"
    if flag not in spec["command"]:
        spec["command"] += " " + flag
    return write_job_file(run_dir, spec)

