"""`phi3e2e finetune`: plan the run, then write it (--dry-run), run it here, or submit it to Azure ML."""

from __future__ import annotations

from typing import Callable, Optional

from phi3e2e.project import Project
from phi3e2e.train.plan import FinetuneResult, plan_run, write_dry_run
from phi3e2e.workflow.render import Algo, Target


def finetune(
    project: Project,
    *,
    algo: Algo,
    target: Target,
    model: Optional[str] = None,
    data: Optional[str] = None,
    run_name: Optional[str] = None,
    set_args: Optional[list[str]] = None,
    dry_run: bool = False,
    verbose: bool = False,
    say: Callable[[str], None] = print,
    aml_options=None,
) -> FinetuneResult:
    if target == "aml":
        from phi3e2e.train.aml.job import AmlOptions, check_options
        from phi3e2e.train.aml.sources import job_inputs

        aml_options = aml_options or AmlOptions()
        check_options(aml_options)
        inputs = job_inputs(project, model, data)
    else:
        from phi3e2e.train.local import local_inputs

        inputs = local_inputs(project, model, data)
    plan = plan_run(project, inputs, algo=algo, target=target, run_name=run_name, set_args=set_args or [],
                    aml=aml_options)  # fmt: skip
    if dry_run:
        return write_dry_run(project, plan, say)
    if target == "aml":
        from phi3e2e.train.aml.submit import submit_run

        return submit_run(project, plan, say)
    from phi3e2e.train.local import run_locally

    return run_locally(project, plan, say, verbose)
