"""`--target aml`: the plan as an Azure ML command job on GPU compute (job.py stages it, submit.py sends it)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from phi3e2e.project import Project
from phi3e2e.train.inputs import RunInputs
from phi3e2e.train.plan import CHECKPOINTS, OLIVE_CACHE, FinetuneResult, RunPlan
from phi3e2e.train.spec import RunSpec


class AzureMLTarget:
    name = "aml"
    gpu_compute = True  # CUDA compute only: the workflow and its int4 build are for CUDA
    olive_cache = OLIVE_CACHE  # inside the job's working folder
    checkpoints = CHECKPOINTS  # the entry binds it to the job's checkpoints output (compute_entry.py)

    def check(self, spec: RunSpec) -> None:
        from phi3e2e.train.aml.job import check_options, options_of

        check_options(options_of(spec))

    def check_plan(self, plan: RunPlan, say: Callable[[str], None]) -> None:
        from phi3e2e.train.aml.job import options_of
        from phi3e2e.train.aml.memory_plan import check_fit

        options = options_of(plan.spec)
        if options.instance_type:
            check_fit(plan, options.instance_type, f"--instance-type {options.instance_type}", say,
                      refuse=options.memory_check)
        else:  # a compute's VM size is the workspace's to tell: checked again at submit (submit.py)
            check_fit(plan, None, f"compute {options.compute}", say)

    def inputs(self, project: Project, spec: RunSpec) -> RunInputs:
        from phi3e2e.train.aml.sources import job_inputs

        return job_inputs(project, spec.model, spec.data)

    def stage(self, project: Project, plan: RunPlan, folder: Path, say: Callable[[str], None], dry_run: bool) -> Path:
        from phi3e2e.train.aml.job import stage_job

        return stage_job(project, plan, folder, say, dry_run=dry_run)

    def run(self, project: Project, plan: RunPlan, say: Callable[[str], None], verbose: bool) -> FinetuneResult:
        from phi3e2e.train.aml.submit import submit_run

        return submit_run(project, plan, say)

    def resume(self, project: Project, spec: RunSpec, say: Callable[[str], None]) -> FinetuneResult:
        from phi3e2e.train.aml.resume import resume_job

        return resume_job(project, spec, say)

    def after_eval(self, project: Project, run_dir: Path, spec: RunSpec, say: Callable[[str], None]) -> None:
        from phi3e2e.train.aml.job import options_of

        options = options_of(spec)
        if options.register:  # after the eval, so the model asset's tags carry its held-out loss
            from phi3e2e.train.aml.registry import register_run

            register_run(project, run_dir, options, say)


AZURE_ML = AzureMLTarget()
