"""Shared fixtures and the test tiers; the helpers the tests share live in helpers.py.

No network: the tiny model is made locally and the sample dataset ships with the repo.
The fine-tune runs the real `olive run` once per test session (~20 s on 2 cores).

Tiers (`make test-fast` runs neither; `make test`, what CI runs, runs everything):
- e2e: trains or builds (a real `olive run`, ModelBuilder, the base int4 build). Marked by
  construction for every test that uses `finished_run` (directly or through another fixture), and
  by hand (`pytestmark` or `@pytest.mark.e2e`) where a test trains or builds by itself.
- browser: drives Debian's chromium (the playground).
"""

from __future__ import annotations

import shutil

import pytest
from helpers import quiet

from phi3e2e.prepare.prepare_project import prepare
from phi3e2e.project import Project
from phi3e2e.train.finetune import finetune


def pytest_collection_modifyitems(items):
    for item in items:
        if "finished_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)


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


