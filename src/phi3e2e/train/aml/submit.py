"""`phi3e2e finetune --target aml`: render the workflow, stage the job, submit it, wait, download.

Order matters: everything that can be checked here (sources, settings, the rendered config,
the job YAML against the SDK's schema) is checked before the workspace is contacted; then the
workspace, credentials, compute and remote data are checked before anything is uploaded.
`--dry-run` stops after writing the job files and needs neither network nor credentials.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Optional

from phi3e2e import runs
from phi3e2e.errors import UserError
from phi3e2e.project import Project
from phi3e2e.storage import publish
from phi3e2e.train.aml.job import JOB_FILE, load_job_file, local_uploads, options_of
from phi3e2e.train.aml.memory_plan import check_fit
from phi3e2e.train.aml.registry import register_local_data
from phi3e2e.train.aml.results import download_run, stream_log
from phi3e2e.train.aml.sources import DataSource, JobInput, ModelSource, asset_of, datastore_of, refuse_tabular
from phi3e2e.train.aml.vm_sizes import UNKNOWN, gpu_of
from phi3e2e.train.aml.workspace import connect
from phi3e2e.train.plan import FinetuneResult, RunPlan, render_plan_workflow, stage_plan


def submit_run(project: Project, plan: RunPlan, say: Callable[[str], None] = print, credential=None) -> FinetuneResult:
    options = options_of(plan.spec)
    model_src, data_src = plan.inputs.job_sources
    ml_client = connect(options.workspace, (project.root, Path.cwd()), credential)
    check_where(ml_client, plan, options, say)
    checked = register_local_data(ml_client, check_remote_sources(ml_client, model_src, data_src), say)
    if checked is not data_src:
        # A folder data asset is bound as a folder (the workflow reads its train.jsonl); local data
        # is now a registered data asset.
        plan.inputs.job_sources = (model_src, checked)
        plan.inputs.train_file, plan.inputs.eval_file = checked.train_file, checked.eval_file
        plan.workflow = render_plan_workflow(project, plan.spec, plan.settings, plan.inputs)
    record = plan.record
    staging = runs.start_run(project.gen_model, plan.name)
    config_file = stage_plan(project, plan, staging, say, dry_run=False)
    try:
        job = load_job_file(staging / JOB_FILE)
        uploads = local_uploads(job)
        size_mb = sum(path.stat().st_size for path in uploads) / 1e6
        where = f"compute {options.compute}" if options.compute else f"serverless {options.instance_type}"
        say(f"Submitting to {where}: uploading {len(uploads)} files ({size_mb:.1f} MB) ...")
        submitted = ml_client.jobs.create_or_update(job)
    except KeyboardInterrupt:
        failed = runs.fail_run(staging, record, "interrupted before the job was submitted")
        raise UserError(f"interrupted; nothing was submitted (files kept in {project.relative(failed)})") from None
    except Exception as e:
        failed = runs.fail_run(staging, record, f"submit failed: {e}")
        raise UserError(
            f"submitting the job failed: {first_line(e)} [run kept in {project.relative(failed)}]"
        ) from None

    record.status, record.submitted_at = "submitted", runs.now()
    record.aml.job_name = submitted.name
    runs.write_record(staging, record)
    run_dir = publish(staging, project.gen_model / plan.name)
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


def check_where(ml_client, plan: RunPlan, options, say: Callable[[str], None]) -> None:
    """The compute (or serverless size) has a GPU the job can use, and the plan fits its memory."""
    if options.compute:
        if size := check_compute(ml_client, options.compute, say):
            check_fit(plan, size, f"compute {options.compute!r} is {size}", say, refuse=options.memory_check)
    else:
        check_vm_size(ml_client, options.instance_type, f"--instance-type {options.instance_type}", say)


# VM families whose GPUs the job's CUDA 12.6 torch cannot train on (Azure's family names, as
# list_sizes reports them): AMD Radeon (NVv4, NGads V620), AMD Instinct (ND MI300X), Maxwell
# NV/NVv3 (sm_52, below the job's Volta floor). Everything else with GPUs: docs/azure.md.
UNSUPPORTED_GPU_FAMILIES = {
    "standardnvsv4family": "AMD Radeon Instinct MI25 (no CUDA)",
    "standardngadsv620v1family": "AMD Radeon PRO V620 (no CUDA)",
    "standardndmi300xv5family": "AMD Instinct MI300X (no CUDA)",
    "standardnvfamily": "NVIDIA Tesla M60 (Maxwell, older than the job's Volta floor)",
    "standardnvsv3family": "NVIDIA Tesla M60 (Maxwell, older than the job's Volta floor)",
}


# GPUs the job's CUDA 12.6 torch has no kernels for, by the VM size's name (Azure names its Blackwell sizes
# after the GPU: Standard_ND128isr_NDR_GB200_v6, ..._GB300_v6, ..._B200_v6): sm_100 needs a CUDA 12.8 build.
BLACKWELL = re.compile(r"_(?:NDR_)?G?B[23]00_", re.IGNORECASE)
NO_BLACKWELL = ("NVIDIA Blackwell (sm_100): the job's CUDA 12.6 torch has no kernels for it; "
                "pick an NC/ND size with an A100, H100, A10, T4 or V100")  # fmt: skip
def check_vm_size(ml_client, size: str, what: str, say: Callable[[str], None]) -> None:
    """The VM size's GPU count and family, from the workspace region's own VM size list (by its name when the
    user's role may not read that list)."""
    from azure.core.exceptions import HttpResponseError

    if BLACKWELL.search(size):
        raise UserError(f"{what} is {size} ({NO_BLACKWELL})")
    try:
        sizes = {item.name.lower(): item for item in ml_client.compute.list_sizes() if item.name}
    except HttpResponseError as e:
        if e.status_code not in (401, 403):
            raise
        check_size_by_name(size, what, say)
        return
    info = sizes.get(size.lower())
    if info is None:
        say(f"warning: {what}: {size} is not in the workspace region's VM size list; its GPU is not checked")
        return
    if not info.gpus:
        raise UserError(f"{what} is {size}, a VM with no GPU: the job trains on an NVIDIA GPU "
                        "(e.g. Standard_NC24ads_A100_v4; docs/azure.md lists the supported sizes)")  # fmt: skip
    family = (info.family or "").lower()
    if family in UNSUPPORTED_GPU_FAMILIES:
        raise UserError(f"{what} is {size} ({UNSUPPORTED_GPU_FAMILIES[family]}): the job's CUDA 12 torch cannot "
                        "train there; pick an NC/ND size with an A100, H100, A10, T4 or V100")  # fmt: skip


def check_size_by_name(size: str, what: str, say: Callable[[str], None]) -> None:
    """The GPU a VM size's name promises, when the region's size list is out of the user's role (one warning)."""
    gpu = gpu_of(size)
    if gpu is None:
        raise UserError(f"{what} is {size}, a VM with no GPU: the job trains on an NVIDIA GPU "
                        "(e.g. Standard_NC24ads_A100_v4; docs/azure.md lists the supported sizes)")  # fmt: skip
    said = f"checked by its name: {gpu.name}" if gpu is not UNKNOWN else "its GPU is not checked (checked on the node)"
    say(f"warning: {what}: your role may not list the region's VM sizes (a subscription-scope read, 403); "
        f"{size} {said}")


def check_compute(ml_client, name: str, say: Callable[[str], None]) -> Optional[str]:
    """The compute's VM size (None when it reports none), checked for a usable GPU."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        compute = ml_client.compute.get(name)
    except ResourceNotFoundError:
        names = sorted(item.name for item in ml_client.compute.list())
        raise UserError(
            f"compute {name!r} not found in the workspace; it has: {', '.join(names) or 'no computes'} "
            "(create a GPU cluster in Azure ML studio > Compute)"
        ) from None
    if size := getattr(compute, "size", None):
        check_vm_size(ml_client, size, f"compute {name!r}", say)
    else:  # e.g. an attached Kubernetes compute: its nodes are not described here
        say(f"warning: compute {name} reports no VM size; its GPU is only checked when the job starts")
    return size


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
                if option == "--data":
                    refuse_tabular(str(getattr(found, "path", "") or ""), f"--data {job_input.path}: its file")
                if option == "--data" and getattr(found, "type", None) == "uri_folder":
                    folder = JobInput("data", "uri_folder", job_input.path, local=False)
                    data_src = DataSource(data_src.label, [folder], folder.placeholder + "/train.jsonl")
        except ResourceNotFoundError:
            raise UserError(f"{option} {job_input.path}: data path not found in the workspace") from None
    return data_src


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return (text.splitlines() or [type(error).__name__])[0][:300]
