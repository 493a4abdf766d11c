"""Files that ship with phi3e2e: Jinja templates and the sample dataset.

An installed wheel carries them inside the package (see pyproject's force-include);
a source checkout (editable install, tests) reads them from the repository's top level.
"""

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_ROOT = _PACKAGE_DIR.parents[1]


def _shipped(packaged: str, in_repo: str) -> Path:
    path = _PACKAGE_DIR / packaged
    return path if path.exists() else _REPO_ROOT / in_repo


def templates_dir() -> Path:
    return _shipped("templates", "templates")


def sample_dataset() -> Path:
    return _shipped("sample_data/sample-qa.jsonl", "datasets/sample-qa.jsonl")


def aml_conda_env() -> Path:
    """The Azure ML job's environment (setup/conda.yaml)."""
    return _shipped("aml/conda.yaml", "setup/conda.yaml")


def requirements_file() -> Path:
    """setup/requirements.txt, the pinned stack: in a source checkout only (a wheel does not carry it)."""
    return _REPO_ROOT / "setup" / "requirements.txt"


def azure_requirements_file() -> Path:
    """setup/requirements-azure.txt (source checkout only), the pins for --target aml and `phi3e2e jobs`."""
    return _REPO_ROOT / "setup" / "requirements-azure.txt"
