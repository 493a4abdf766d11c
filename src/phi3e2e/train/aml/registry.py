"""Azure ML assets: the downloaded models as registered model assets, the local dataset as data assets.

A registered model is what the rest of Azure ML (deployments, the model catalog, other jobs) picks
up, with the facts to choose it by as tags. A local dataset is uploaded as a versioned data asset
whose version is its content's hash, so the same file is uploaded once and every job that
trained on it names it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Callable

from phi3e2e import runs
from phi3e2e.errors import UserError
from phi3e2e.train.aml.job import OUTPUT as MODELS_OUTPUT
from phi3e2e.train.aml.sources import DataSource, JobInput


def model_tags(run_dir: Path, record: runs.RunRecord) -> dict[str, str]:
    """Base model, dataset fingerprint, algo and (once `phi3e2e eval` ran) the held-out loss."""
    tags = {"phi3e2e.run": record.name, "algo": record.algo, "base_model": str(record.base_model)}
    if record.data_sha256:
        tags["dataset_sha256"] = ",".join(f"{name}={digest[:16]}" for name, digest in sorted(record.data_sha256.items()))
    eval_file = run_dir / runs.EVAL_FILE
    if eval_file.is_file():
        losses = json.loads(eval_file.read_text()).get("losses", {}).get("int4", {})
        if "fine_tuned" in losses:
            tags["heldout_loss_int4"] = f"{losses['fine_tuned']['loss']:.4f}"
            tags["heldout_loss_base_int4"] = f"{losses['base']['loss']:.4f}"
    return tags


def register_models(
    ml_client, run_dir: Path, name: str, say: Callable[[str], None], merged: bool = False
) -> list[str]:
    """onnx-int4/ as model asset NAME (and merged/ as NAME-merged); returns the "name:version"s."""
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model

    record = runs.read_record(run_dir)
    if record.status != "succeeded" or runs.missing_outputs(run_dir):
        raise UserError(f"{run_dir.name}: no verified models to register yet (`phi3e2e jobs download {run_dir.name}`)")
    tags = model_tags(run_dir, record)
    job_name = record.aml.job_name if record.aml else None
    # A job's int4 build is for CUDA (build.options); a local run's for CPU (`phi3e2e deploy` registers those too).
    forms = [("onnx-int4", name, f"int4 ONNX Runtime GenAI model ({'CUDA' if job_name else 'CPU'})")]
    if merged:
        forms.append(("merged", f"{name}-merged", "base model with the LoRA adapter merged (Hugging Face)"))
    registered = []
    for form, asset_name, what in forms:
        # The job's own output when there is one: no upload, and the asset's lineage leads to the job.
        path = f"azureml://jobs/{job_name}/outputs/{MODELS_OUTPUT}/paths/{form}/" if job_name else str(run_dir / form)
        model = Model(
            name=asset_name, path=path, type=AssetTypes.CUSTOM_MODEL, tags={**tags, "form": form},
            description=f"phi3e2e {record.algo} fine-tune of {record.base_model}: {what}",
        )  # fmt: skip
        say(f"Registering {form}/ as model {asset_name} ...")
        created = ml_client.models.create_or_update(model)
        registered.append(f"{created.name}:{created.version}")
    if record.aml:  # an Azure ML run records its assets; a local run's deploy records its own (deploy/)
        record.aml.registered = registered
        runs.write_record(run_dir, record)
    say(f"Registered: {', '.join(registered)} (Azure ML studio > Models)")
    return registered


def data_asset_name(label: str, split: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"phi3e2e-{Path(label).name}-{split}")[:255]


def file_version(path: Path) -> str:
    """The file's content hash: the same data is the same version, a changed file a new one."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def register_local_data(ml_client, data_src: DataSource, say: Callable[[str], None]) -> DataSource:
    """Each local data file as a versioned uri_file data asset; the job then reads the asset."""
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Data
    from azure.core.exceptions import ResourceNotFoundError

    if not any(item.local for item in data_src.inputs):
        return data_src
    inputs: list[JobInput] = []
    for item in data_src.inputs:
        if not item.local or item.type != "uri_file":
            inputs.append(item)
            continue
        name, version = data_asset_name(data_src.label, item.name.removesuffix("_file")), file_version(Path(item.path))
        try:
            asset = ml_client.data.get(name, version=version)
        except ResourceNotFoundError:
            say(f"Uploading {Path(item.path).name} as data asset {name}:{version} ...")
            asset = ml_client.data.create_or_update(
                Data(name=name, version=version, path=item.path, type=AssetTypes.URI_FILE,
                     description=f"phi3e2e dataset {data_src.label}", tags={"sha256_16": version})
            )  # fmt: skip
        inputs.append(JobInput(item.name, "uri_file", f"azureml:{asset.name}:{asset.version}", local=False))
    return DataSource(
        data_src.label, inputs, data_src.train_file, eval_file=data_src.eval_file, local_dir=data_src.local_dir
    )


def register_run(project, run_dir: Path, options, say: Callable[[str], None]) -> list[str]:
    """`finetune --target aml --register NAME`: register the downloaded run's int4 model."""
    from phi3e2e.train.aml.workspace import connect

    ml_client = connect(options.workspace, (project.root, Path.cwd()))
    return register_models(ml_client, run_dir, options.register, say)
