"""`phi3e2e finetune --target aml`: render the workflow, stage the job, submit it, wait, download.

Order matters: everything that can be checked here (sources, settings, the rendered config,
the job YAML against the SDK's schema) is checked before the workspace is contacted; then the
workspace, credentials, compute and remote data are checked before anything is uploaded.
`--dry-run` stops after writing the job files and needs neither network nor credentials.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from phi3e2e import runs
from phi3e2e.errors import UserError
from phi3e2e.project import Project
from phi3e2e.train.aml.job import JOB_FILE, load_job_file, local_uploads
from phi3e2e.train.aml.results import download_run, stream_log
from phi3e2e.train.aml.sources import DataSource, JobInput, ModelSource, asset_of, datastore_of
from phi3e2e.train.aml.workspace import connect
from phi3e2e.train.plan import FinetuneResult, RunPlan, render_plan_workflow, stage_plan


def submit_run(project: Project, plan: RunPlan, say: Callable[[str], None] = print, credential=None) -> FinetuneResult:
    options = plan.aml
    model_src, data_src = plan.inputs.job_sources
    ml_client = connect(options.workspace, (project.root, Path.cwd()), credential)
    check_compute(ml_client, options.compute, plan.algo, say)
    if (checked := check_remote_sources(ml_client, model_src, data_src)) is not data_src:
        # A folder data asset is bound as a folder: the workflow reads its train.jsonl.
        plan.inputs.job_sources = (model_src, checked)
        plan.inputs.train_file, plan.inputs.eval_file = checked.train_file, checked.eval_file
        plan.workflow = render_plan_workflow(project, plan.algo, plan.target, plan.settings, plan.inputs)
    record = plan.record
    staging = runs.start_run(project.gen_model, plan.name)
    config_file = stage_plan(project, plan, staging, say, dry_run=False)
    try:
        job = load_job_file(staging / JOB_FILE)
        uploads = local_uploads(job)
        size_mb = sum(path.stat().st_size for path in uploads) / 1e6
        say(f"Submitting to compute {options.compute}: uploading {len(uploads)} files ({size_mb:.1f} MB) ...")
        submitted = ml_client.jobs.create_or_update(job)
    except KeyboardInterrupt:
        failed = runs.fail_run(staging, record, "interrupted before the job was submitted")
        raise UserError(f"interrupted; nothing was submitted (files kept in {project.relative(failed)})") from None
    except Exception as e:
        failed = runs.fail_run(staging, record, f"submit failed: {e}")
        raise UserError(
            f"submitting the job failed: {_first_line(e)} [run kept in {project.relative(failed)}]"
        ) from None

    record.status, record.submitted_at = "submitted", runs.now()
    record.aml.job_name = submitted.name
    runs.write_record(staging, record)
    run_dir = project.gen_model / plan.name
    staging.rename(run_dir)
    config_file = run_dir / config_file.relative_to(staging)
    say(f"Submitted job {submitted.name} ({project.relative(run_dir)}/)")
    if submitted.studio_url:
        say(f"  Studio: {submitted.studio_url}")
    if not options.wait:
        say(f"Follow it: phi3e2e jobs status {plan.name} | phi3e2e jobs logs {plan.name} | "
            f"phi3e2e jobs download {plan.name}")  # fmt: skip
        return FinetuneResult(run_dir, config_file, False, record)
    stream_log(ml_client, submitted.name, say)
    record = download_run(ml_client, project, run_dir, say)
    return FinetuneResult(run_dir, config_file, False, record)


def is_gpu_size(vm_size: str) -> bool:
    """Azure's GPU VM families are the N series: NC, ND, NV, NG (Standard_NC24ads_A100_v4, ...)."""
    return vm_size.lower().removeprefix("standard_").startswith("n")


def check_compute(ml_client, name: str, algo: str, say: Callable[[str], None]) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        compute = ml_client.compute.get(name)
    except ResourceNotFoundError:
        names = sorted(item.name for item in ml_client.compute.list())
        raise UserError(
            f"compute {name!r} not found in the workspace; it has: {', '.join(names) or 'no computes'} "
            "(create a GPU cluster in Azure ML studio > Compute)"
        ) from None
    size = getattr(compute, "size", None) or ""
    if size and not is_gpu_size(size):
        if algo == "qlora":
            raise UserError(
                f"compute {name!r} is {size}, a CPU-only VM: QLoRA needs a CUDA GPU (bitsandbytes 4-bit); "
                "pick a GPU compute (NC/ND series, e.g. Standard_NC24ads_A100_v4)"
            )
        say(f"warning: compute {name} ({size}) has no GPU; LoRA will train very slowly there")


def check_remote_sources(ml_client, model_src: ModelSource, data_src: DataSource) -> DataSource:
    """Datastores and assets the job names must exist; a folder data asset is bound as a folder."""
    from azure.core.exceptions import ResourceNotFoundError

    for job_input, option in [(model_src.job_input, "--model"), *[(item, "--data") for item in data_src.inputs]]:
        if job_input is None or job_input.local:
            continue
        try:
            if datastore := datastore_of(job_input.path):
                ml_client.datastores.get(datastore)
            elif asset := asset_of(job_input.path):
                assets = ml_client.models if job_input.name == "model" else ml_client.data
                name, version = asset
                found = assets.get(name, version=version) if version else assets.get(name, label="latest")
                if option == "--data" and getattr(found, "type", None) == "uri_folder":
                    folder = JobInput("data", "uri_folder", job_input.path, local=False)
                    data_src = DataSource(data_src.label, [folder], folder.placeholder + "/train.jsonl")
        except ResourceNotFoundError:
            raise UserError(f"{option} {job_input.path}: data path not found in the workspace") from None
    return data_src


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return (text.splitlines() or [type(error).__name__])[0][:300]
