"""What a run reads: the base model and the dataset, named as the machine running Olive sees them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


@dataclass
class RunInputs:
    """The base model and the dataset, as the machine running `olive run` will name them."""

    model_path: str  # input_model.model_path: a folder, a Hub id, or a job-input placeholder
    train_file: str
    eval_file: Optional[str]
    model_label: str  # for run.json and messages: project-relative where local
    dataset_label: str
    profile: str
    model_dir: Optional[Path] = None  # a local model folder (checks read its config.json)
    dataset_dir: Optional[Path] = None  # a prepared dataset (its summary.json names the text template)
    local_train_file: Optional[Path] = None  # to check the template's columns before anything runs
    job_sources: tuple = field(default=())  # --target aml: (ModelSource, DataSource) for the job's inputs
