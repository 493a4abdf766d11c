"""`phi3e2e finetune --target aml`: render the workflow, stage the job, submit it, wait, download.

Order matters: everything that can be checked here (sources, settings, the rendered config,
the job YAML against the SDK's schema) is checked before the workspace is contacted; then the
workspace, credentials, compute and remote data are checked before anything is uploaded.
`--dry-run` stops after writing the job files and needs neither network nor credentials.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from phi3e2e import runs
from phi3e2e.errors import UserError
from phi3e2e.project import Project
from phi3e2e.train.aml.job import (
    DEFAULT_IMAGE,
    JOB_FILE,
    JobOptions,
    job_spec,
    load_job_file,
    local_uploads,
    write_job_file,
)
from phi3e2e.train.aml.results import download_run, stream_log
from phi3e2e.train.aml.sources import (
    DataSource,
    JobInput,
    ModelSource,
    asset_of,
    data_source,
    datastore_of,
    model_source,
)
from phi3e2e.train.aml.staging import stage_job_files
from phi3e2e.train.aml.workspace import WorkspaceRef, connect
from phi3e2e.train.local import (
    CHECKPOINTS,
    OLIVE_CACHE,
    OLIVE_OUTPUT,
    FinetuneResult,
    _versions,
    check_template_columns,
)
from phi3e2e.workflow.render import Algo, WorkflowPaths, render_workflow
from phi3e2e.workflow.settings import FinetuneSettings, build_settings, parse_override

_COMPUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,31}$")
_SECRET_NAME = re.compile(r"^[A-Za-z0-9-]{1,127}$")  # Key Vault secret names


@dataclass
class AmlOptions:
    compute: Optional[str] = None
    image: str = DEFAULT_IMAGE
    wait: bool = True
    hf_token_secret: Optional[str] = None
    workspace: WorkspaceRef = field(default_factory=WorkspaceRef)


def finetune_on_aml(
    project: Project,
    *,
    algo: Algo,
    options: AmlOptions,
    model: Optional[str] = None,
    data: Optional[str] = None,
    run_name: Optional[str] = None,
    set_args: Optional[list[str]] = None,
    dry_run: bool = False,
    say: Callable[[str], None] = print,
    credential=None,
) -> FinetuneResult:
    check_options(options)
    recorded = project.read_choices()
    model_src = model_source(model, recorded.get("model"), project.root)
    data_src = data_source(data, recorded.get("dataset"), project.root, project.datasets)
    name = runs.check_run_name(run_name) if run_name else runs.new_run_name(algo)
    settings = aml_settings(model_src.profile, data_src, set_args or [])
    if dry_run:
        run_dir = _dry_run_folder(project, name)
        return _stage(project, run_dir, name, algo, options, model_src, data_src, settings, dry_run=True, say=say)

    ml_client = connect(options.workspace, (project.root, Path.cwd()), credential)
    check_compute(ml_client, options.compute, algo, say)
    data_src = check_remote_sources(ml_client, model_src, data_src)
    staging = runs.start_run(project.gen_model, name)
    result = _stage(project, staging, name, algo, options, model_src, data_src, settings, dry_run=False, say=say)
    try:
        job = load_job_file(result.run_dir / JOB_FILE)
        uploads = local_uploads(job)
        size_mb = sum(path.stat().st_size for path in uploads) / 1e6
        say(f"Submitting to compute {options.compute}: uploading {len(uploads)} files ({size_mb:.1f} MB) ...")
        submitted = ml_client.jobs.create_or_update(job)
    except KeyboardInterrupt:
        failed = runs.fail_run(staging, name, result.record, "interrupted before the job was submitted")
        raise UserError(f"interrupted; nothing was submitted (files kept in {project.relative(failed)})") from None
    except Exception as e:
        failed = runs.fail_run(staging, name, result.record, f"submit failed: {e}")
        raise UserError(
            f"submitting the job failed: {_first_line(e)} [run kept in {project.relative(failed)}]"
        ) from None

    record = result.record | {"status": "submitted", "submitted_at": runs._now()}
    record["aml"] = record["aml"] | {"job_name": submitted.name}
    runs.write_run_record(staging, record)
    run_dir = project.gen_model / name
    staging.rename(run_dir)
    say(f"Submitted job {submitted.name} ({project.relative(run_dir)}/)")
    if submitted.studio_url:
        say(f"  Studio: {submitted.studio_url}")
    if not options.wait:
        say(f"Follow it: phi3e2e jobs status {name} | phi3e2e jobs logs {name} | phi3e2e jobs download {name}")
        return FinetuneResult(run_dir, run_dir / "aml-code" / "olive-config.json", False, record)
    stream_log(ml_client, submitted.name, say)
    record = download_run(ml_client, project, run_dir, say)
    return FinetuneResult(run_dir, run_dir / "aml-code" / "olive-config.json", False, record)


def check_options(options: AmlOptions) -> None:
    if not options.compute:
        raise UserError("--target aml needs --compute NAME: the Azure ML GPU compute to run on (e.g. gpu-a100)")
    if not _COMPUTE_NAME.match(options.compute):
        raise UserError(f"--compute {options.compute!r}: not an Azure ML compute name (letters, digits, '-')")
    if options.hf_token_secret and not _SECRET_NAME.match(options.hf_token_secret):
        raise UserError(
            f"--hf-token-secret {options.hf_token_secret!r}: a Key Vault secret name (letters, digits, '-')"
        )
    if not options.image or any(char.isspace() for char in options.image):
        raise UserError(f"--image {options.image!r}: expected a container image reference such as {DEFAULT_IMAGE}")


def aml_settings(profile: str, data_src: DataSource, set_args: list[str]) -> FinetuneSettings:
    """Recipe defaults, the model's profile, the dataset's text template, then --set."""
    import json

    overrides: dict[str, object] = {}
    if data_src.local_dir and (data_src.local_dir / "summary.json").is_file():
        template = json.loads((data_src.local_dir / "summary.json").read_text()).get("text_template")
        if template:
            overrides["data.text_template"] = template
    overrides.update(parse_override(arg) for arg in set_args)
    settings = build_settings(profile, overrides)
    train = data_src.inputs[0]
    if train.local and train.type == "uri_file":
        check_template_columns(settings.data.text_template, Path(train.path))
    return settings


def _stage(
    project: Project,
    run_dir: Path,
    name: str,
    algo: Algo,
    options: AmlOptions,
    model_src: ModelSource,
    data_src: DataSource,
    settings: FinetuneSettings,
    *,
    dry_run: bool,
    say: Callable[[str], None],
) -> FinetuneResult:
    paths = WorkflowPaths(
        model=model_src.model_path,
        train_file=data_src.train_file,
        eval_file=data_src.eval_file,
        output=OLIVE_OUTPUT,
        cache=OLIVE_CACHE,
        checkpoints=CHECKPOINTS,
    )
    config = render_workflow(algo, "aml", settings, paths, project_templates=project.templates).config
    staged = stage_job_files(run_dir, config)
    job_options = JobOptions(options.compute, options.image, hf_token_secret=options.hf_token_secret)
    job_file = write_job_file(run_dir, job_spec(name, algo, job_options, model_src, data_src, staged))
    record = {
        "name": name,
        "algo": algo,
        "target": "aml",
        "profile": model_src.profile,
        "base_model": str(model_src.local_dir) if model_src.local_dir else model_src.label,
        "dataset": str(data_src.local_dir) if data_src.local_dir else data_src.label,
        "settings": settings.model_dump(),
        "versions": _versions(),
        "aml": {"compute": options.compute, "image": options.image, "job_file": JOB_FILE},
    }
    if dry_run:
        _validate_offline(job_file, say)
        runs.write_run_record(run_dir, record | {"status": "dry-run"})
        say(f"Azure ML job written: {project.relative(job_file)}  (code: {project.relative(staged.code_dir)}/)")
        say(f"  submit it with phi3e2e finetune --target aml --compute {options.compute} (without --dry-run),")
        say(f"  or by hand: az ml job create -f {project.relative(job_file)} -g RG -w WS")
    else:
        runs.write_run_record(run_dir, record | {"status": "staged"})
    return FinetuneResult(run_dir, staged.config_file, dry_run, record)


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


def _dry_run_folder(project: Project, name: str) -> Path:
    run_dir = project.gen_model / name
    if run_dir.exists() and runs.read_run_record(run_dir).get("status") != "dry-run":
        raise UserError(f"{run_dir} already exists; choose another --run-name")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


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
