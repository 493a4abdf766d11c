"""Where a fine-tune runs: the Target interface and the registry of targets by `--target` name.

A target decides how the plan's inputs are named on its machine, where Olive keeps its cache and
checkpoints there, what a run folder holds before it runs (the staged files), how the plan runs
(or is resumed), and what follows the closing eval. Everything else (settings, the rendered
workflow, the run record) is the same plan for every target (plan.py). A new target (a deploy
or sweep target) is a new module and a line in TARGETS, not a branch in the callers.

This registry and each target's own module are the only ways `train/` reaches `train/aml/`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Optional, Protocol

from phi3e2e.errors import UserError

if TYPE_CHECKING:
    from phi3e2e.project import Project
    from phi3e2e.train.inputs import RunInputs
    from phi3e2e.train.plan import FinetuneResult, RunPlan
    from phi3e2e.train.spec import RunSpec

DEFAULT_TARGET = "local"
# name -> "module:attribute", imported on first use (Azure ML's module pulls in the azure SDK's pieces)
TARGETS = {"local": "phi3e2e.train.local:LOCAL", "aml": "phi3e2e.train.aml.target:AZURE_ML"}
TargetName = Literal[tuple(TARGETS)]  # what `--target` accepts; --help lists it


class Target(Protocol):
    name: str  # what `--target` takes and run.json records
    gpu_compute: bool  # its machines train on CUDA (so the workflow and the int4 build are for CUDA)
    olive_cache: str  # Olive's step cache, relative to the folder holding the workflow; {name} is the run's name
    checkpoints: str  # the trainer's checkpoints, likewise; {name} is the run's name

    def check(self, spec: "RunSpec") -> None:
        """What can be refused before anything is read (its options)."""

    def check_plan(self, plan: "RunPlan", say: Callable[[str], None]) -> None:
        """What can be refused once the plan is known, before anything is written (Azure ML: the memory plan)."""

    def inputs(self, project: "Project", spec: "RunSpec") -> "RunInputs":
        """The base model and dataset, named as the machine that runs Olive sees them."""

    def stage(self, project: "Project", plan: "RunPlan", folder: Path, say: Callable[[str], None],
              dry_run: bool) -> Path:
        """Write what runs the plan into `folder`; the Olive config file."""

    def run(self, project: "Project", plan: "RunPlan", say: Callable[[str], None], verbose: bool) -> "FinetuneResult":
        """Run (or submit) the plan."""

    def resume(self, project: "Project", spec: "RunSpec", say: Callable[[str], None]) -> "FinetuneResult":
        """Continue the failed or interrupted run `spec.resume` of this target."""

    def after_eval(self, project: "Project", run_dir: Path, spec: "RunSpec", say: Callable[[str], None]) -> None:
        """What follows the closing eval (Azure ML: register the model asset)."""


def get_target(name: Optional[str]) -> Target:
    """The target called `name` (`--target`), or one line listing the targets."""
    where = TARGETS.get(name or DEFAULT_TARGET)
    if where is None:
        raise UserError(f"--target {name}: choose from {', '.join(TARGETS)}")
    module, attribute = where.split(":")
    return getattr(importlib.import_module(module), attribute)
