"""`phi3e2e sweep`: check the whole request, record the sweep, then run its trials here or write its Azure ML job.

Everything that can be refused is refused before gen-model/<sweep>.sweep.json is written: the search space,
the name, and the first trial's whole plan (model, dataset, settings, the rendered workflow).
"""

from __future__ import annotations

from datetime import datetime
from typing import Callable, Optional

from phi3e2e import runs
from phi3e2e.errors import UserError
from phi3e2e.project import Project
from phi3e2e.sweep.record import SweepRecord, TrialRecord, check_new_sweep, read_sweep, write_sweep
from phi3e2e.sweep.space import parse_space
from phi3e2e.workflow.settings import Algo


def sweep(
    project: Project,
    set_args: list[str],
    *,
    algo: Algo = "lora",
    search: Optional[str] = None,
    trials: Optional[int] = None,
    name: Optional[str] = None,
    target: Optional[str] = None,
    model: Optional[str] = None,
    data: Optional[str] = None,
    dry_run: bool = False,
    verbose: bool = False,
    aml_options=None,
    say: Callable[[str], None] = print,
) -> SweepRecord:
    target = target or "local"
    if target not in ("local", "aml"):
        raise UserError(f"--target {target}: choose from local, aml")
    if dry_run and target == "local":
        raise UserError("--dry-run: writes the Azure ML sweep job; with --target local, run the sweep "
                        "(or `phi3e2e finetune --dry-run --set ...` to check one trial's workflow)")  # fmt: skip
    space = parse_space(list(set_args), search, trials)
    name = name or f"sweep-{datetime.now():%Y%m%d-%H%M%S}"
    check_new_sweep(project.gen_model, name, space.trials)
    record = SweepRecord(name=name, target=target, algo=algo, model=model, data=data, space=space,
                         created_at=runs.now())  # fmt: skip
    if target == "aml":
        from phi3e2e.sweep.aml import submit_sweep_job, write_sweep_job

        write = write_sweep_job if dry_run else submit_sweep_job
        return write(project, record, aml_options, say)

    from phi3e2e.sweep.local import add_trial, run_sweep, trial_plan

    # grid: every point, in order; random, TPE: the first (each next one is asked for when its turn comes)
    for number in range(1, (space.trials if space.search == "grid" else 1) + 1):
        add_trial(record, number)
    trial_plan(project, record, record.trials[0].values, record.trials[0].run)  # refused now, or never
    say(f"Sweep {name}: {space.trials} trials, {space.search} search over "
        + "; ".join(d.describe() for d in space.dimensions))
    say(f"  objective: the int4 model's held-out loss (lower is better); record: "
        f"{project.relative(project.gen_model)}/{name}.sweep.json")
    write_sweep(project.gen_model, record)
    return finish(project, run_sweep(project, record, say, verbose), say)


def resume(project: Project, name: str, say: Callable[[str], None] = print, verbose: bool = False) -> SweepRecord:
    """Continue an interrupted sweep: its unfinished trial from its checkpoint, then the trials not run."""
    from phi3e2e.sweep.local import run_sweep

    record = read_sweep(project.gen_model, name)
    if record.target != "local":
        raise UserError(f"--resume {name}: an Azure ML sweep ({record.status}); Azure ML runs its trials itself")
    left = [t for t in record.trials if t.status not in ("succeeded", "pruned", "failed")]
    todo = len(left) + record.space.trials - len(record.trials)
    if not todo:
        raise UserError(f"--resume {name}: every trial has ended, nothing to resume (`phi3e2e runs --sweep {name}`)")
    say(f"Resuming sweep {name}: {todo} of {record.space.trials} trials to run")
    return finish(project, run_sweep(project, record, say, verbose), say)


def finish(project: Project, record: SweepRecord, say: Callable[[str], None]) -> SweepRecord:
    counts = {status: sum(t.status == status for t in record.trials) for status in ("succeeded", "pruned", "failed")}
    say(f"Sweep {record.name} done: " + ", ".join(f"{n} {status}" for status, n in counts.items() if n))
    best: Optional[TrialRecord] = record.trial(record.best) if record.best else None
    if best:
        say(f"  best: trial {best.number} ({best.run}), int4 held-out loss {best.objective:.4f}")
    say(f"Ranking: phi3e2e runs --sweep {record.name}")
    if best:
        say(f'Next:    phi3e2e chat --model {project.relative(project.gen_model / best.run)} --prompt "..."')
    return record
