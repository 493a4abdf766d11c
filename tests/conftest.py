"""Shared fixtures: a project with the tiny model, and one real fine-tune on it.

No network: the tiny model is made locally and the sample dataset ships with the repo.
The fine-tune runs the real `olive run` once per test session (~20 s on 2 cores).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from phi3e2e.prepare.prepare_project import prepare
from phi3e2e.project import Project
from phi3e2e.train.finetune import finetune

REPO = Path(__file__).resolve().parents[1]
# The recipe's real dataset lives in shared/ beside the checkout (CI lays a copy there too);
# it is not copied into the repo.
TRUTHFUL_QA = next(
    (path for path in (REPO.parent / "shared" / "datasets" / "TruthfulQA.csv", Path("/work/shared/datasets/TruthfulQA.csv"))
     if path.is_file()),
    REPO.parent / "shared" / "datasets" / "TruthfulQA.csv",
)


def quiet(_message: str) -> None:
    pass


@pytest.fixture(scope="session")
def tiny_template(tmp_path_factory) -> Project:
    """A prepared project (tiny model + sample dataset), made once; copy it, don't modify it."""
    project = Project(tmp_path_factory.mktemp("tiny-template"))
    prepare(project, tiny=True, say=quiet)
    return project


@pytest.fixture
def tiny_project(tiny_template, tmp_path, monkeypatch) -> Project:
    """A fresh copy of the prepared tiny project, also set as the CLI's current project."""
    root = tmp_path / "project"
    shutil.copytree(tiny_template.root, root, symlinks=True)
    monkeypatch.setenv("PHI3E2E_PROJECT_DIR", str(root))
    return Project(root)


@pytest.fixture(scope="session")
def finished_run(tiny_template, tmp_path_factory):
    """One real LoRA fine-tune of the tiny model: (project, run_dir). Read-only for tests."""
    root = tmp_path_factory.mktemp("finished") / "project"
    shutil.copytree(tiny_template.root, root, symlinks=True)
    project = Project(root)
    result = finetune(project, algo="lora", target="local", run_name="e2e", say=quiet)
    return project, result.run_dir


def run_cli(
    *args: str, project: Project | None = None, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run the real `phi3e2e` entry point in a subprocess, as a user would (`env` adds variables)."""
    env = dict(os.environ, **(env or {}))
    if project is not None:
        env["PHI3E2E_PROJECT_DIR"] = str(project.root)
    return subprocess.run(
        [sys.executable, "-m", "phi3e2e", *args], capture_output=True, text=True, env=env, timeout=timeout
    )
