"""`phi3e2e finetune`: check the run spec, plan the run, then write it (--dry-run) or hand it to its target."""

from __future__ import annotations

from typing import Callable, Optional

from phi3e2e.project import Project
from phi3e2e.train.plan import FinetuneResult, kept_run, plan_run, write_dry_run
from phi3e2e.train.spec import RunSpec
from phi3e2e.train.targets import get_target
from phi3e2e.workflow.settings import Algo


def finetune(
    project: Project,
    *,
    algo: Algo = "lora",
    target: Optional[str] = None,
    model: Optional[str] = None,
    data: Optional[str] = None,
    run_name: Optional[str] = None,
    set_args: Optional[list[str]] = None,
    dry_run: bool = False,
    verbose: bool = False,
    say: Callable[[str], None] = print,
    aml_options=None,
    resume: Optional[str] = None,
) -> FinetuneResult:
    spec = RunSpec.of(algo=algo, target=target, model=model, data=data, run_name=run_name,
                      set_args=tuple(set_args or ()), dry_run=dry_run, verbose=verbose, resume=resume,
                      target_options=aml_options)  # fmt: skip
    return run_spec(project, spec, say)


def run_spec(project: Project, spec: RunSpec, say: Callable[[str], None] = print) -> FinetuneResult:
    if spec.resume:
        return resume_run(project, spec.resume, say, spec.verbose)
    target = spec.on_target
    target.check(spec)
    plan = plan_run(project, spec, target.inputs(project, spec))
    if spec.dry_run:
        return write_dry_run(project, plan, say)
    return target.run(project, plan, say, spec.verbose)


def resume_run(project: Project, name: str, say: Callable[[str], None], verbose: bool) -> FinetuneResult:
    """A failed or interrupted run, continued by the target it ran on."""
    _, previous = kept_run(project, name)
    return get_target(previous.target).resume(project, name, say, verbose)
