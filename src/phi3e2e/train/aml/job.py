"""The Azure ML command job: a CLI v2 job YAML, loaded into the SDK's job entity.

The YAML written into the run folder is the job itself: `phi3e2e finetune --target aml` submits
exactly what `load_job` reads from it, and a user can inspect it or submit it by hand with
`az ml job create -f gen-model/<run>/aml-job.yml`. It holds no workspace IDs and no secrets:
the workspace comes from the MLClient, the HF token from Key Vault on the compute.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import yaml

from phi3e2e.errors import UserError
from phi3e2e.runs import AmlRecord
from phi3e2e.storage import atomic_write
from phi3e2e.train.aml.sources import DataSource, ModelSource
from phi3e2e.train.aml.staging import CHECKPOINTS_OUTPUT, CONFIG_FILE, ENTRY_SCRIPT, StagedFiles, stage_job_files
from phi3e2e.train.aml.workspace import WorkspaceRef

JOB_FILE = "aml-job.yml"
SCHEMA = "https://azuremlschemas.azureedge.net/latest/commandJob.schema.json"
# Azure ML's CUDA 12 base image (Ubuntu 24.04, OpenMPI 5), at a dated tag so a job rebuilds the
# same environment; --image picks another. Its CUDA 12.6 matches the job's torch cu126 build.
DEFAULT_IMAGE = "mcr.microsoft.com/azureml/openmpi5.0-cuda12.6-ubuntu24.04:20260621.v1"
# A job's wall-clock limit: a Phi-3-mini QLoRA epoch takes hours, a node that cannot train
# should not bill for days. --timeout changes it.
DEFAULT_TIMEOUT_H = 48
# Azure ML's job lifetime limits ("Manage and increase quotas", Azure Machine Learning compute: a job runs at
# most 21 days on a dedicated node, 7 on a low-priority one; Azure may change them). A longer --timeout would be
# cut there anyway: refused, so the user splits the run (`finetune --resume` goes on from the checkpoints).
MAX_TIMEOUT_H = {"dedicated": 21 * 24, "low priority": 7 * 24}
EXPERIMENT = "phi3e2e"
OUTPUT = "models"
_COMPUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,31}$")
_SECRET_NAME = re.compile(r"^[A-Za-z0-9-]{1,127}$")  # Key Vault secret names
_VM_SIZE = re.compile(r"^Standard_[A-Za-z0-9_]{2,60}$", re.IGNORECASE)
_ASSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")


@dataclass
class AmlOptions:
    """The finetune command's Azure flags."""

    compute: Optional[str] = None
    image: str = DEFAULT_IMAGE
    wait: bool = True
    hf_token_secret: Optional[str] = None
    workspace: WorkspaceRef = field(default_factory=WorkspaceRef)
    instance_type: Optional[str] = None  # serverless compute: a VM size instead of --compute
    timeout_h: float = DEFAULT_TIMEOUT_H
    low_priority: bool = False
    register: Optional[str] = None  # model asset name for the downloaded int4 (and merged) model
    memory_check: bool = True  # False (--ignore-memory-plan): a plan that seems not to fit is only a warning


def options_of(spec) -> AmlOptions:
    """The run spec's Azure ML options (the defaults when none were given)."""
    return spec.target_options or AmlOptions()


def check_options(options: AmlOptions) -> None:
    if options.compute and options.instance_type:
        raise UserError("--compute and --instance-type: pick one (a compute in the workspace, or serverless)")
    if not options.compute and not options.instance_type:
        raise UserError(
            "--target aml needs --compute NAME (an Azure ML GPU compute, e.g. gpu-a100) "
            "or --instance-type SIZE (serverless, e.g. Standard_NC24ads_A100_v4)"
        )
    if options.instance_type and not _VM_SIZE.match(options.instance_type):
        raise UserError(f"--instance-type {options.instance_type!r}: expected an Azure VM size such as "
                        "Standard_NC24ads_A100_v4")  # fmt: skip
    if options.low_priority and options.compute:
        # queue_settings.job_tier applies to serverless jobs; a cluster's priority is the cluster's own.
        raise UserError("--low-priority is for serverless jobs (--instance-type); for --compute, create the cluster "
                        "with low-priority VMs: its preempted jobs are requeued and resume the same way")  # fmt: skip
    priority = "low priority" if options.low_priority else "dedicated"
    if not 0 < options.timeout_h <= MAX_TIMEOUT_H[priority]:
        raise UserError(f"--timeout {options.timeout_h:g}: hours, more than 0 and at most {MAX_TIMEOUT_H[priority]} "
                        f"(Azure ML ends a job on a {priority} node after {MAX_TIMEOUT_H[priority] // 24} days)")
    if options.register and not _ASSET_NAME.match(options.register):
        raise UserError(f"--register {options.register!r}: an Azure ML asset name (letters, digits, '-', '_', '.')")
    if options.compute and not _COMPUTE_NAME.match(options.compute):
        raise UserError(f"--compute {options.compute!r}: not an Azure ML compute name (letters, digits, '-')")
    if options.hf_token_secret and not _SECRET_NAME.match(options.hf_token_secret):
        raise UserError(
            f"--hf-token-secret {options.hf_token_secret!r}: a Key Vault secret name (letters, digits, '-')"
        )
    if not options.image or any(char.isspace() for char in options.image):
        raise UserError(f"--image {options.image!r}: expected a container image reference such as {DEFAULT_IMAGE}")


@dataclass(frozen=True)
class JobOptions:
    compute: Optional[str]
    image: str = DEFAULT_IMAGE
    experiment: str = EXPERIMENT
    hf_token_secret: Optional[str] = None
    instance_type: Optional[str] = None
    timeout_h: float = DEFAULT_TIMEOUT_H
    low_priority: bool = False


def job_command(model: ModelSource, data: DataSource, hf_token_secret: Optional[str]) -> str:
    inputs = ([model.job_input] if model.job_input else []) + data.inputs
    parts = [f"python {ENTRY_SCRIPT} --config {CONFIG_FILE}", "--models-out ${{outputs." + OUTPUT + "}}"]
    parts += [f"--bind inputs.{item.name}={item.placeholder}" for item in inputs]
    parts.append(f"--bind outputs.{CHECKPOINTS_OUTPUT}=${{{{outputs.{CHECKPOINTS_OUTPUT}}}}}")
    if hf_token_secret:
        parts.append(f"--hf-token-secret {hf_token_secret}")
    return " ".join(parts)


def job_spec(
    run_name: str, algo: str, options: JobOptions, model: ModelSource, data: DataSource, staged: StagedFiles
) -> dict:
    """The job as the CLI v2 YAML schema spells it; local paths relative to the run folder."""
    run_dir = staged.code_dir.parent
    inputs = {}
    for item in ([model.job_input] if model.job_input else []) + data.inputs:
        path = os.path.relpath(item.path, run_dir) if item.local else item.path
        inputs[item.name] = {
            "type": item.type,
            "path": path,
            "mode": "download" if item.type == "uri_file" else "ro_mount",
        }
    spec = {
        "$schema": SCHEMA,
        "type": "command",
        "display_name": run_name,
        "experiment_name": options.experiment,
        "description": f"phi3e2e {algo}: fine-tune {model.label}, merge the adapter, build int4 ONNX (CUDA)",
        "tags": {"phi3e2e.run": run_name, "phi3e2e.algo": algo},
        "code": os.path.relpath(staged.code_dir, run_dir),
        "command": job_command(model, data, options.hf_token_secret),
        "environment": {
            "image": options.image,
            "conda_file": os.path.relpath(staged.conda_file, run_dir),
        },
        "environment_variables": {"OLIVE_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"},
        "inputs": inputs,
        # checkpoints: an output survives a preempted node, so the restarted job resumes from it.
        "outputs": {name: {"type": "uri_folder", "mode": "rw_mount"} for name in (OUTPUT, CHECKPOINTS_OUTPUT)},
        "limits": {"timeout": int(options.timeout_h * 3600)},
    }
    if options.compute:
        spec["compute"] = f"azureml:{options.compute}"
    else:  # serverless: Azure ML picks a node of this size for the job alone
        spec["resources"] = {"instance_type": options.instance_type, "instance_count": 1}
    if options.low_priority:
        # Spot (low-priority) capacity: cheaper, may be preempted; Azure ML requeues the job and it resumes.
        spec["queue_settings"] = {"job_tier": "spot"}
    if options.hf_token_secret:
        # The compute's managed identity reads the token from the workspace Key Vault.
        spec["identity"] = {"type": "managed"}
    return spec


def write_job_file(run_dir: Path, spec: dict) -> Path:
    job_file = run_dir / JOB_FILE
    header = (
        "# Azure ML command job written by phi3e2e. Submit by hand with:\n"
        f"#   az ml job create -f {JOB_FILE} --resource-group RG --workspace-name WS\n"
    )
    atomic_write(job_file, header + yaml.safe_dump(spec, sort_keys=False, width=1000))
    return job_file


def stage_job(project, plan, run_dir: Path, say: Callable[[str], None], dry_run: bool) -> Path:
    """The plan as an Azure ML job in run_dir: aml-code/ (config + entry), conda.yaml, aml-job.yml.

    Returns the staged Olive config. A dry-run also checks the YAML with the SDK's own schema.
    """
    options = options_of(plan.spec)
    model_src, data_src = plan.inputs.job_sources
    staged = stage_job_files(run_dir, plan.workflow.config, project.root / "setup" / "conda.yaml")
    job_options = JobOptions(
        options.compute, options.image, hf_token_secret=options.hf_token_secret, instance_type=options.instance_type,
        timeout_h=options.timeout_h, low_priority=options.low_priority,
    )  # fmt: skip
    job_file = write_job_file(run_dir, job_spec(plan.name, plan.algo, job_options, model_src, data_src, staged))
    plan.record.aml = AmlRecord(
        compute=options.compute or f"serverless {options.instance_type}", image=options.image, job_file=JOB_FILE
    )
    if dry_run:
        _validate_offline(job_file, say)
        say(f"Azure ML job written: {project.relative(job_file)}  (code: {project.relative(staged.code_dir)}/)")
        where = f"--compute {options.compute}" if options.compute else f"--instance-type {options.instance_type}"
        say(f"  submit it with phi3e2e finetune --algo {plan.algo} --target aml {where} (without --dry-run),")
        say(f"  or by hand: az ml job create -f {project.relative(job_file)} -g RG -w WS")
    return staged.config_file


def _validate_offline(job_file: Path, say: Callable[[str], None]) -> None:
    """The SDK's own schema check, if azure-ai-ml is installed; it needs no network."""
    try:
        import azure.ai.ml  # noqa: F401
    except ImportError:
        say(
            "  (azure-ai-ml is not installed: the job YAML was not checked against its schema;"
            " pip install -r setup/requirements-azure.txt)"
        )
        return
    load_job_file(job_file)


def load_job_file(job_file: Path):
    """The SDK's job entity for the YAML (validated by the SDK's own schema)."""
    import logging

    from azure.ai.ml import load_job
    from marshmallow.exceptions import ValidationError

    # The SDK logs a line per experimental schema class it touches; not the user's business.
    logging.getLogger("azure.ai.ml").setLevel(logging.ERROR)
    try:
        return load_job(job_file)
    except ValidationError as e:
        raise UserError(f"{job_file}: rejected by the Azure ML job schema: {' '.join(str(e).split())[:300]}") from None


def local_uploads(job) -> list[Path]:
    """The local files the SDK uploads when the job is created: its code folder and local inputs."""
    base = Path(job.base_path)
    roots = [base / (job.trial.code if job.type == "sweep" else job.code)]  # a sweep job's code is its trial's
    for job_input in job.inputs.values():
        path = getattr(job_input, "path", None)
        if path and not str(path).startswith(("azureml:", "http:", "https:")) and (base / path).exists():
            roots.append(base / path)
    files = []
    for root in roots:
        files += sorted(p.resolve() for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root.resolve()]
    return files
