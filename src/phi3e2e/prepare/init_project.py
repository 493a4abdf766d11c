"""`phi3e2e init`: scaffold the recipe's project folder.

datasets/, model-cache/, gen-model/ (what `prepare` and `finetune` fill), templates/ (editable
copies of the shipped Olive workflow templates, which then win over the shipped ones), setup/
(the Azure ML job's conda file), a .gitignore for the model folders and a README of the folder.

Never overwrites: where a project already is, nothing changes. The scaffold is built in a
temporary folder and renamed into place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from phi3e2e.errors import UserError
from phi3e2e.project import PROJECT_FILE
from phi3e2e.resources import aml_conda_env, templates_dir

DATA_FOLDERS = ("datasets", "model-cache", "gen-model")
# Any of these means a project is already here (prepare makes the first three and phi3e2e.json).
PROJECT_MARKERS = (*DATA_FOLDERS, "templates", "setup", PROJECT_FILE)
# Common in any folder (a fresh git repo has both): kept as they are, never a reason to refuse.
USER_FILES = (".gitignore", "README.md")

GITIGNORE = """\
# Written by `phi3e2e init`. Base models and fine-tune runs are large and can be rebuilt.
model-cache/*
gen-model/*
# Versioned on purpose: templates/ (your workflow), setup/, phi3e2e.json (the base model and
# dataset `prepare` chose) and datasets/ (your data: add datasets/ here if it is private or large).
"""

README = """\
# A phi3e2e project

Made by `phi3e2e init`. Run phi3e2e from this folder (or point `PHI3E2E_PROJECT_DIR` at it):

```
phi3e2e prepare                 # base model into model-cache/, your data into datasets/
phi3e2e finetune --algo lora    # Olive: LoRA -> merge -> int4 ONNX, into gen-model/<run>/
phi3e2e chat                    # talk to the newest fine-tuned model
```

| folder | what it holds |
| --- | --- |
| `datasets/` | imported datasets (`phi3e2e prepare --data FILE`): train/eval splits and a summary |
| `model-cache/` | base models (git-ignored) |
| `gen-model/` | one folder per fine-tune run: `olive-config.json`, `adapter/`, `merged/`, `onnx-int4/` (git-ignored) |
| `templates/` | Olive workflows: `lora.json.j2`, `qlora.json.j2`, `model-builder.json.j2`, `adapter-int4.json.j2` |
| `setup/` | `conda.yaml`: the Python environment phi3e2e's Azure ML job installs |

## Editing the workflow

`finetune` renders `templates/lora.json.j2` or `templates/qlora.json.j2` (QLoRA extends the LoRA
file) at every run, and `export` renders `templates/model-builder.json.j2`, whose ModelBuilder
pass is also the fine-tune's int4 step; `--ship adapter` renders `templates/adapter-int4.json.j2`
(that ModelBuilder pass with the run's adapter, then ExtractAdapters).
An edit is picked up on the next command; no reinstall.
`phi3e2e finetune --dry-run` renders and checks the workflow without running it: a mistake
fails naming the template file and its line or the Olive field. Delete a file here to fall
back to the copy phi3e2e ships.
"""


@dataclass
class InitResult:
    root: Path
    created: list[str] = field(default_factory=list)  # what init wrote, e.g. "templates/"
    kept: list[str] = field(default_factory=list)  # the user's own README.md / .gitignore, left alone
    found: list[str] = field(default_factory=list)  # project markers already there: nothing was written


def init_project(root: Path) -> InitResult:
    """Scaffold a project in `root` (created if missing; its parent must exist)."""
    root = Path(root).absolute()
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} is a file; give a folder to create the project in")
    if not root.parent.is_dir():
        raise UserError(f"{root.parent} does not exist; create it first, or give another folder")
    found = [_label(root / name) for name in PROJECT_MARKERS if (root / name).exists()]
    if found:
        return InitResult(root, found=found)

    # Built beside root (or in it), on the same file system, so the renames below are atomic.
    staging = (root if root.exists() else root.parent) / f".{root.name}.init-{os.getpid()}"
    try:
        staging.mkdir()  # plain mkdir, unlike mkdtemp's 0700: the project gets the user's usual permissions
        _write_scaffold(staging)
        if not root.exists():
            staging.rename(root)  # one step: the project appears complete or not at all
            return InitResult(root, created=[_label(p) for p in _items(root)])
        return _move_into(staging, root)
    except OSError as e:
        raise UserError(f"could not create the project in {root} ({e}); nothing was written") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_scaffold(folder: Path) -> None:
    for name in DATA_FOLDERS:
        (folder / name).mkdir()
    templates = folder / "templates"
    templates.mkdir()
    for template in sorted(templates_dir().glob("*.j2")):
        shutil.copyfile(template, templates / template.name)
    (folder / "setup").mkdir()
    shutil.copyfile(aml_conda_env(), folder / "setup" / "conda.yaml")
    (folder / ".gitignore").write_text(GITIGNORE)
    (folder / "README.md").write_text(README)


def _move_into(staging: Path, root: Path) -> InitResult:
    """Rename each scaffold item into an existing folder; undo them all if one fails."""
    result = InitResult(root)
    moved: list[Path] = []
    try:
        for item in _items(staging):
            target = root / item.name
            if item.name in USER_FILES and target.exists():
                result.kept.append(item.name)
                continue
            item.rename(target)
            moved.append(target)
    except BaseException:
        for target in moved:  # only what this call created a moment ago
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        raise
    result.created = [_label(p) for p in moved]
    return result


def _items(folder: Path) -> list[Path]:
    order = (*DATA_FOLDERS, "templates", "setup", *USER_FILES)
    return [folder / name for name in order if (folder / name).exists()]


def _label(path: Path) -> str:
    return f"{path.name}/" if path.is_dir() else path.name
