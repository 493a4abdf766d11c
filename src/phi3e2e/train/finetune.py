"""`phi3e2e finetune`: plan the run, then write it (--dry-run), run it here, or submit it to Azure ML."""

from __future__ import annotations

from typing import Callable, Optional

from phi3e2e.project import Project
from phi3e2e.train.plan import FinetuneResult, RunPlan, plan_run, write_dry_run
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
    resume: Optional[str] = None,
) -> FinetuneResult:
    if resume:
        from phi3e2e.train.local import run_locally

        return run_locally(project, resume_plan(project, resume), say, verbose, resume=True)
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


def resume_plan(project: Project, name: str) -> RunPlan:
    """A failed or interrupted local run's plan, from its own recorded model, dataset and settings."""
    from phi3e2e import runs
    from phi3e2e.errors import UserError
    from phi3e2e.train.local import local_inputs

    name = runs.check_run_name(name)
    kept = [folder for folder in (runs.partial_dir(project.gen_model, name), runs.failed_dir(project.gen_model, name))
            if folder.is_dir()]  # fmt: skip
    if not kept:
        state = "finished, nothing to resume" if (project.gen_model / name).is_dir() else "no failed or interrupted run"
        raise UserError(f"--resume {name}: {state} in {project.relative(project.gen_model)}/")
    previous = runs.read_record(kept[0])
    if previous.target != "local":
        raise UserError(f"{kept[0] / runs.RUN_FILE}: an Azure ML run; --resume continues local runs")
    inputs = local_inputs(project, previous.base_model, previous.dataset)
    plan = plan_run(project, inputs, algo=previous.algo, target="local", run_name=name, set_args=[],
                    recorded=previous.settings)  # fmt: skip
    if previous.data_sha256 and plan.record.data_sha256 != previous.data_sha256:
        raise UserError(f"{inputs.dataset_label}: changed since run {name!r} started (sha256 differs from "
                        f"{project.relative(kept[0] / runs.RUN_FILE)}); start a new run on it instead")  # fmt: skip
    return plan
