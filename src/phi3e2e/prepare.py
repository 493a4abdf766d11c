"""`phi3e2e prepare`: a base model into model-cache/ and a dataset into datasets/."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from phi3e2e.dataset_import import import_dataset
from phi3e2e.errors import UserError
from phi3e2e.models import (
    DEFAULT_MODEL,
    TINY_MODEL_DIR,
    check_model_folder,
    download_model,
    is_tiny_model,
    looks_like_local_path,
)
from phi3e2e.project import Project
from phi3e2e.resources import sample_dataset

SAMPLE_DATASET_NAME = "sample"


@dataclass
class Prepared:
    model_dir: Path
    dataset_dir: Path
    dataset_summary: Optional[dict]


def prepare(
    project: Project,
    *,
    model: Optional[str] = None,
    tiny: bool = False,
    data: Optional[Path] = None,
    dataset_name: Optional[str] = None,
    revision: Optional[str] = None,
    say: Callable[[str], None] = print,
) -> Prepared:
    if tiny and model:
        raise UserError("--tiny and --model exclude each other: --tiny writes its own model")
    recorded = project.read_choices()

    summary = None
    if data is not None or not _still_there(project, recorded.get("dataset")):
        source = data or sample_dataset()
        say(f"Importing {source} ...")
        name = dataset_name or (source.stem if data else SAMPLE_DATASET_NAME)
        imported = import_dataset(source, project.datasets, name=name)
        dataset_dir, summary = imported.dataset_dir, imported.summary
    else:
        dataset_dir = project.resolve(recorded["dataset"])
    project.record_choices(dataset=dataset_dir)

    if tiny:
        model_dir = _write_tiny(project, dataset_dir, say)
    elif model and looks_like_local_path(model):
        model_dir = Path(model).expanduser().resolve()
        check_model_folder(model_dir)
    elif model or not _still_there(project, recorded.get("model")):
        repo_id = model or DEFAULT_MODEL
        say(f"Downloading {repo_id} into {project.relative(project.model_cache)}/ (resumes if interrupted) ...")
        model_dir = download_model(repo_id, project.model_cache, revision=revision)
    else:
        model_dir = project.resolve(recorded["model"])
    project.record_choices(model=model_dir)
    return Prepared(model_dir, dataset_dir, summary)


def _still_there(project: Project, recorded_path: Optional[str]) -> bool:
    return bool(recorded_path) and project.resolve(recorded_path).exists()


def _write_tiny(project: Project, dataset_dir: Path, say: Callable[[str], None]) -> Path:
    """The tiny model; its tokenizer learns from the dataset so that text tokenizes compactly."""
    from phi3e2e.tiny_model import write_tiny_model

    model_dir = project.model_cache / TINY_MODEL_DIR
    if is_tiny_model(model_dir):
        say(f"Tiny model already in {project.relative(model_dir)}/")
        return model_dir
    say(f"Writing a tiny random-weight Phi-3 model into {project.relative(model_dir)}/ ...")
    corpus = []
    for split_file in sorted(dataset_dir.glob("*.jsonl")) + [sample_dataset()]:
        with open(split_file, encoding="utf-8") as f:
            corpus.extend(" ".join(str(v) for v in json.loads(line).values()) for line in f if line.strip())
    corpus.append("<|system|>\nYou are helpful.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n")
    write_tiny_model(model_dir, corpus)
    return model_dir
