"""Where an Azure ML job's model and training data come from, in the job's terms.

- model: a Hugging Face Hub id (downloaded on the compute), an Azure ML model/data asset
  (`azureml:name:version`), a datastore path (`azureml://datastores/.../paths/...`), or a
  local model folder (uploaded with the job).
- data: a prepared dataset (its train.jsonl and eval.jsonl are uploaded), a datastore path
  or data asset (a .json/.jsonl file, or a folder holding train.jsonl).

Each becomes a job input, named in the Olive config by the placeholder "${{inputs.NAME}}".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from phi3e2e.errors import UserError
from phi3e2e.prepare.models import DEFAULT_MODEL, check_model_folder, is_tiny_model
from phi3e2e.train.inputs import RunInputs
from phi3e2e.workflow.model_family import profile_for

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DATASTORE = re.compile(r"^azureml://datastores/(?P<datastore>[^/]+)/paths/(?P<path>.+)$")
_ASSET = re.compile(r"^azureml:(?P<name>[A-Za-z0-9_.-]+)(?::(?P<version>[A-Za-z0-9_.-]+)|@latest)?$")
# A model shared through an Azure ML registry (e.g. the azureml system registry's Phi-3 models).
_REGISTRY_MODEL = re.compile(
    r"^azureml://registries/[A-Za-z0-9_-]+/models/[A-Za-z0-9_.-]+/(versions/[A-Za-z0-9_.-]+|labels/latest)$"
)
DATA_FILE_SUFFIXES = (".json", ".jsonl")


@dataclass(frozen=True)
class JobInput:
    """One input of the job: `path` is what the job YAML says (a local path or an azureml URI)."""

    name: str
    type: str  # uri_file or uri_folder
    path: str
    local: bool

    @property
    def placeholder(self) -> str:
        return "${{inputs." + self.name + "}}"


@dataclass
class ModelSource:
    label: str  # what the user gave, for messages and the run record
    hub_id: Optional[str] = None
    job_input: Optional[JobInput] = None
    local_dir: Optional[Path] = None

    @property
    def model_path(self) -> str:
        """What the Olive config's input_model.model_path says."""
        return self.hub_id or self.job_input.placeholder

    @property
    def profile(self) -> str:
        """From the local model's config; a Hub id or Azure ML asset is not here to read: the recipe's."""
        if not self.local_dir:
            return "phi3-mini"
        return "tiny" if is_tiny_model(self.local_dir) else profile_for(self.local_dir)


@dataclass
class DataSource:
    label: str
    inputs: list[JobInput] = field(default_factory=list)
    train_file: str = ""  # as the Olive config names it (with placeholders)
    eval_file: Optional[str] = None
    local_dir: Optional[Path] = None  # a prepared dataset: settings read its summary.json


def is_azureml_uri(value: str) -> bool:
    return value.startswith("azureml:")


def datastore_of(uri: str) -> Optional[str]:
    match = _DATASTORE.match(uri)
    return match["datastore"] if match else None


def asset_of(uri: str) -> Optional[tuple[str, Optional[str]]]:
    match = _ASSET.match(uri)
    return (match["name"], match["version"]) if match else None


def refuse_tabular(value: str, option: str) -> None:
    """The workflow loads JSON Lines; a CSV would only fail on the compute, after the image build."""
    if value.rstrip("/").lower().endswith((".csv", ".tsv", ".parquet")):
        raise UserError(f"{option} {value!r}: the job reads JSON Lines; import the file with "
                        "`phi3e2e prepare --data FILE` (it writes train.jsonl / eval.jsonl) and pass that dataset")  # fmt: skip


def check_azureml_uri(value: str, option: str) -> None:
    refuse_tabular(value, option)
    if option == "--model" and _REGISTRY_MODEL.match(value):
        return
    if not (_DATASTORE.match(value) or _ASSET.match(value)):
        raise UserError(
            f"{option} {value!r}: not an Azure ML path; use azureml://datastores/NAME/paths/PATH "
            "or azureml:ASSET:VERSION"
        )


def model_source(model: Optional[str], recorded: Optional[str], project_root: Path) -> ModelSource:
    """--model, else what `prepare` recorded, else the recipe's hub model."""
    value = model or recorded or DEFAULT_MODEL
    if is_azureml_uri(value):
        check_azureml_uri(value, "--model")
        # a registered model asset (in the workspace or a registry), or a datastore folder
        kind = "custom_model" if asset_of(value) or _REGISTRY_MODEL.match(value) else "uri_folder"
        return ModelSource(value, job_input=JobInput("model", kind, value, local=False))
    local = Path(value).expanduser()
    local = local if local.is_absolute() else project_root / local
    if local.exists():
        check_model_folder(local)
        return ModelSource(value, job_input=JobInput("model", "uri_folder", str(local), local=True), local_dir=local)
    if _HUB_ID.match(value):
        return ModelSource(value, hub_id=value)
    raise UserError(f"--model {value!r}: no such local folder, and not a Hugging Face Hub id (owner/name)")


def data_source(data: Optional[str], recorded: Optional[str], project_root: Path, datasets_dir: Path) -> DataSource:
    """--data, else the prepared dataset."""
    value = data or recorded
    if not value:
        raise UserError("no dataset prepared: run `phi3e2e prepare --data FILE` first, or pass --data")
    if is_azureml_uri(value):
        check_azureml_uri(value, "--data")
        if value.rstrip("/").endswith(DATA_FILE_SUFFIXES) or asset_of(value):
            # A single file (a data asset is taken as one too: register folders as datastore paths).
            train = JobInput("train_file", "uri_file", value, local=False)
            return DataSource(value, [train], train.placeholder)
        folder = JobInput("data", "uri_folder", value, local=False)
        return DataSource(value, [folder], folder.placeholder + "/train.jsonl")
    dataset_dir = Path(value).expanduser()
    dataset_dir = dataset_dir if dataset_dir.is_absolute() else project_root / dataset_dir
    if not dataset_dir.is_dir() and (datasets_dir / value).is_dir():
        dataset_dir = datasets_dir / value
    if dataset_dir.is_file() and dataset_dir.suffix in DATA_FILE_SUFFIXES:
        train = JobInput("train_file", "uri_file", str(dataset_dir), local=True)
        return DataSource(value, [train], train.placeholder)
    train_file, eval_file = dataset_dir / "train.jsonl", dataset_dir / "eval.jsonl"
    if not train_file.is_file() or train_file.stat().st_size == 0:
        raise UserError(f"--data {value}: data path not found ({train_file} missing or empty)")
    source = DataSource(value, [JobInput("train_file", "uri_file", str(train_file), local=True)], local_dir=dataset_dir)
    source.train_file = source.inputs[0].placeholder
    if eval_file.is_file() and eval_file.stat().st_size > 0:
        source.inputs.append(JobInput("eval_file", "uri_file", str(eval_file), local=True))
        source.eval_file = source.inputs[1].placeholder
    return source


def job_inputs(project, model: Optional[str], data: Optional[str]) -> RunInputs:
    """--model and --data (else what `prepare` recorded) as job inputs, named in the workflow by placeholders."""
    recorded = project.read_choices()
    model_src = model_source(model, recorded.get("model"), project.root)
    data_src = data_source(data, recorded.get("dataset"), project.root, project.datasets)
    train = data_src.inputs[0]
    return RunInputs(
        model_path=model_src.model_path,
        train_file=data_src.train_file,
        eval_file=data_src.eval_file,
        model_label=project.relative(model_src.local_dir) if model_src.local_dir else model_src.label,
        dataset_label=project.relative(data_src.local_dir) if data_src.local_dir else data_src.label,
        profile=model_src.profile,
        model_dir=model_src.local_dir,
        dataset_dir=data_src.local_dir,
        local_train_file=Path(train.path) if train.local and train.type == "uri_file" else None,
        job_sources=(model_src, data_src),
    )
