"""`phi3e2e prepare`: a base model into model-cache/ and a dataset into datasets/.

The order matters: the data file is read and checked first (a bad file fails before any
download, and nothing is written), then the model is fetched or made (the tiny model's
tokenizer learns from the data), and only then is the dataset written, with token counts
from that model's own tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from phi3e2e.chat_format import ChatFormat
from phi3e2e.errors import UserError
from phi3e2e.prepare.dataset_import import LoadedDataset, check_name, default_name, load_dataset, write_dataset
from phi3e2e.prepare.models import (
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


@dataclass
class ImportOptions:
    """How to read the user's data file (all optional: detected from the content)."""

    fmt: Optional[str] = None
    encoding: Optional[str] = None
    question_col: Optional[str] = None
    answer_col: Optional[str] = None
    eval_split: float = 0.1
    seed: int = 42
    max_length: Optional[int] = None  # default: the fine-tune profile's data.max_length
    force: bool = False  # replace a dataset that runs were trained on


def prepare(
    project: Project,
    *,
    model: Optional[str] = None,
    tiny: bool | str = False,
    data: Optional[Path] = None,
    dataset_name: Optional[str] = None,
    revision: Optional[str] = None,
    options: Optional[ImportOptions] = None,
    say: Callable[[str], None] = print,
) -> Prepared:
    if tiny and model:
        raise UserError("--tiny and --model exclude each other: --tiny writes its own model")
    options = options or ImportOptions()
    recorded = project.read_choices()

    loaded, name = None, None
    if data is not None or not _still_there(project, recorded.get("dataset")):
        source = Path(data) if data is not None else sample_dataset()
        name = check_name(dataset_name) if dataset_name else (default_name(source) if data else SAMPLE_DATASET_NAME)
        if not options.force:
            check_not_trained_on(project, project.datasets / name)
        say(f"Reading {source} ...")
        loaded = load_dataset(
            source,
            fmt=options.fmt,
            encoding=options.encoding,
            question_col=options.question_col,
            answer_col=options.answer_col,
        )

    if tiny:
        twin = "phi3-mini" if tiny is True else tiny
        model_dir = _write_tiny(project, twin, loaded, project.resolve(recorded.get("dataset") or "."), say)
    elif model and looks_like_local_path(model):
        model_dir = Path(model).expanduser().resolve()
        check_model_folder(model_dir)
    elif model or not _still_there(project, recorded.get("model")):
        repo_id = model or DEFAULT_MODEL
        say(f"Downloading {repo_id} into {project.relative(project.model_cache)}/ (resumes if interrupted) ...")
        model_dir = download_model(repo_id, project.model_cache, revision=revision)
    else:
        model_dir = project.resolve(recorded["model"])

    summary = None
    if loaded is not None:
        imported = _write(project, loaded, name, model_dir, options, say)
        dataset_dir, summary = imported.dataset_dir, imported.summary
    else:
        dataset_dir = project.resolve(recorded["dataset"])
    project.record_choices(dataset=dataset_dir, model=model_dir)
    return Prepared(model_dir, dataset_dir, summary)


def check_not_trained_on(project: Project, dataset_dir: Path) -> None:
    """Replacing a dataset that finished runs were trained on changes what `eval` measures them on: --force."""
    from phi3e2e import runs

    if not dataset_dir.is_dir():
        return
    trained = sorted(folder.name for folder, record in runs.run_folders(project.gen_model)
                     if record.status == "succeeded" and record.dataset
                     and project.resolve(record.dataset) == dataset_dir.resolve())
    if trained:
        shown = ", ".join(trained[:5]) + (f" and {len(trained) - 5} more" if len(trained) > 5 else "")
        which = f"run {shown} was" if len(trained) == 1 else f"runs {shown} were"
        raise UserError(f"{project.relative(dataset_dir)}: {which} trained on it; pass --force to replace "
                        f"it (their evals then use the new rows), or choose another --name")


def _write(project: Project, loaded: LoadedDataset, name: str, model_dir: Path, options: ImportOptions, say):
    from phi3e2e.workflow.model_family import profile_for
    from phi3e2e.workflow.settings import build_settings
    from phi3e2e.workflow.training_text import load_tokenizer

    max_length = options.max_length
    if max_length is None:
        max_length = build_settings("tiny" if is_tiny_model(model_dir) else profile_for(model_dir), {}).data.max_length
    loaded = loaded.in_format(ChatFormat.of_folder(model_dir))  # the model's own chat format
    try:
        tokenizer = load_tokenizer(model_dir)
    except Exception as e:  # a model folder whose tokenizer transformers cannot read
        raise UserError(f"{model_dir}: cannot load its tokenizer to count tokens: {str(e).splitlines()[0]}") from None
    return write_dataset(
        loaded,
        project.datasets,
        name,
        tokenizer=tokenizer,
        max_length=max_length,
        eval_split=options.eval_split,
        seed=options.seed,
        say=say,
    )


def _still_there(project: Project, recorded_path: Optional[str]) -> bool:
    return bool(recorded_path) and project.resolve(recorded_path).exists()


def _write_tiny(project: Project, twin: str, loaded: Optional[LoadedDataset], dataset_dir: Path, say) -> Path:
    """The tiny model (a twin of `twin`); its tokenizer learns from the dataset so that text tokenizes compactly."""
    from phi3e2e.prepare.tiny_model import write_tiny_model
    from phi3e2e.workflow.model_family import MEMBERS

    if twin not in MEMBERS:
        raise UserError(f"--twin {twin!r}: no such twin; choose one of {', '.join(MEMBERS)}")
    model_dir = project.model_cache / tiny_model_dir(twin)
    if is_tiny_model(model_dir):
        say(f"Tiny model already in {project.relative(model_dir)}/")
        return model_dir
    say(f"Writing a tiny random-weight twin of {MEMBERS[twin].hub_id} into {project.relative(model_dir)}/ ...")
    corpus = [" ".join(row.values()) for row in loaded.rows] if loaded else []
    files = [sample_dataset()] + ([] if loaded else sorted(dataset_dir.glob("*.jsonl")))
    for split_file in files:
        with open(split_file, encoding="utf-8") as f:
            corpus.extend(" ".join(str(v) for v in json.loads(line).values()) for line in f if line.strip())
    # Chat markup in the twin's own format, so its tokenizer learns the merges around it.
    greeting = [("system", "You are helpful."), ("user", "Hi"), ("assistant", "Hello!")]
    corpus.append(ChatFormat(MEMBERS[twin].chat_template).conversation_text(greeting))
    write_tiny_model(model_dir, corpus, twin=twin)
    return model_dir


def tiny_model_dir(twin: str) -> str:
    """model-cache/tiny-phi3 for phi3-mini (as before twins existed), tiny-<twin> for the others."""
    return TINY_MODEL_DIR if twin == "phi3-mini" else f"tiny-{twin}"
