"""`phi3e2e finetune`: check the run spec, plan the run, then write it (--dry-run) or hand it to its target."""

from __future__ import annotations

from typing import Callable, Optional

from phi3e2e import runs
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
    ships: str = "merged",
) -> FinetuneResult:
    spec = RunSpec.of(algo=algo, target=target, model=model, data=data, run_name=run_name,
                      set_args=tuple(set_args or ()), dry_run=dry_run, verbose=verbose, resume=resume,
                      target_options=aml_options, ships=ships)  # fmt: skip
    return run_spec(project, spec, say)


def run_spec(project: Project, spec: RunSpec, say: Callable[[str], None] = print) -> FinetuneResult:
    if spec.resume:
        return resume_run(project, spec, say)
    target = spec.on_target
    target.check(spec)
    plan = plan_run(project, spec, target.inputs(project, spec))
    target.check_plan(plan, say)
    if spec.dry_run:
        return write_dry_run(project, plan, say)
    return target.run(project, plan, say, spec.verbose)


def resume_run(project: Project, spec: RunSpec, say: Callable[[str], None]) -> FinetuneResult:
    """A failed or interrupted run, continued by the target it ran on (an Azure ML run stays in gen-model/RUN/
    while its job is out there: a stopped job goes on as a new one)."""
    run_dir = project.gen_model / runs.check_run_name(spec.resume)
    record = runs.try_read_record(run_dir) if run_dir.is_dir() else None
    if record is None or record.target == "local":
        _, record = kept_run(project, spec.resume)
    return get_target(record.target).resume(project, spec, say)
