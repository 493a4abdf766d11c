"""The project folder: where models, datasets and runs live, and what `prepare` chose.

A project is $PHI3E2E_PROJECT_DIR, else the nearest folder at or above the current one that
holds phi3e2e.json or the project layout (model-cache/ and gen-model/), else the current folder
(where `prepare` or `init` starts one). `prepare` records the model and dataset it set up in
phi3e2e.json, so `finetune` needs no flags afterwards.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from phi3e2e.errors import UserError
from phi3e2e.storage import atomic_write

PROJECT_FILE = "phi3e2e.json"


def is_project(folder: Path) -> bool:
    return (folder / PROJECT_FILE).is_file() or all((folder / name).is_dir() for name in ("model-cache", "gen-model"))


@dataclass(frozen=True)
class Project:
    root: Path

    @classmethod
    def current(cls) -> "Project":
        if os.environ.get("PHI3E2E_PROJECT_DIR"):
            return cls(Path(os.environ["PHI3E2E_PROJECT_DIR"]).resolve())
        here = Path.cwd().resolve()
        # From any subfolder (`cd docs && phi3e2e chat`), the project is the folder above that holds it.
        return cls(next((folder for folder in (here, *here.parents) if is_project(folder)), here))

    @property
    def model_cache(self) -> Path:
        return self.root / "model-cache"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def gen_model(self) -> Path:
        return self.root / "gen-model"

    @property
    def templates(self) -> Path:
        """The project's own copies of the workflow templates (optional; `phi3e2e init` writes them)."""
        return self.root / "templates"

    @property
    def project_file(self) -> Path:
        return self.root / PROJECT_FILE

    def read_choices(self) -> dict:
        """What `prepare` recorded: {"model": path, "dataset": path} (relative to root)."""
        if not self.project_file.exists():
            return {}
        try:
            recorded = json.loads(self.project_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{self.project_file}:{e.lineno}: not valid JSON ({e.msg}); fix or delete it") from None
        except (UnicodeDecodeError, ValueError, RecursionError, OSError) as e:
            raise UserError(f"{self.project_file}: not readable ({type(e).__name__}); fix or delete it") from None
        if not isinstance(recorded, dict):
            raise UserError(f"{self.project_file}: expected an object like {{\"model\": ..., \"dataset\": ...}}, "
                            f"found {type(recorded).__name__}; fix or delete it")  # fmt: skip
        for key in ("model", "dataset"):
            if key in recorded and not isinstance(recorded[key], str):
                raise UserError(f"{self.project_file}: {key}: expected a path string, found {recorded[key]!r:.40}")
        return recorded

    def record_choices(self, **choices: Path) -> None:
        recorded = self.read_choices()
        for key, path in choices.items():
            recorded[key] = self.relative(path)
        atomic_write(self.project_file, json.dumps(recorded, indent=2) + "\n")

    def relative(self, path: Path) -> str:
        path = Path(path).resolve()
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def resolve(self, path: str | Path) -> Path:
        path = Path(path)
        return path if path.is_absolute() else self.root / path
