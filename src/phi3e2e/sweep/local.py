"""A sweep on this machine: its trials one after another, each an ordinary local fine-tune and its eval.

The sweep holds its lock (runs.run_lock on "<sweep>.sweep") while it runs; each trial holds its run's
as any fine-tune does. After every change of a trial, gen-model/<sweep>.sweep.json is rewritten whole.
Ctrl-C (or SIGTERM) stops the current trial as it stops `finetune` (the run kept as <run>.failed/) and
marks the sweep interrupted; `sweep --resume NAME` continues that trial from its last checkpoint, then
runs the trials not started. A trial killed outright (SIGKILL, power loss) is resumed the same way.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from phi3e2e import runs
from phi3e2e.errors import UserError
from phi3e2e.project import Project
from phi3e2e.sweep.ranking import MedianPruner, best_trial, eval_losses, objective_of
from phi3e2e.sweep.record import ENDED, SweepRecord, TrialRecord, trial_run_name, write_sweep
from phi3e2e.sweep.space import optuna_values

# The eval after each trial: the closing eval's rows (train/../pipeline.py), the int4 form only (the objective),
# no sample answers (`phi3e2e eval RUN` gives them for the trial you pick).
EVAL_MAX_ROWS = 200


def run_sweep(project: Project, record: SweepRecord, say: Callable[[str], None], verbose: bool = False) -> SweepRecord:
    """Run every trial of `record` not ended yet; the record, finished."""
    gen_model = project.gen_model
    with runs.run_lock(gen_model, f"{record.name}.sweep"), noting_ctrl_c() as ctrl_c:
        record.status = "running"
        write_sweep(gen_model, record)
        for number in range(1, record.space.trials + 1):
            trial = record.trial(number) or add_trial(record, number)
            if trial.status in ENDED:
                continue
            if ctrl_c:  # pressed, but its KeyboardInterrupt was swallowed (see noting_ctrl_c): stop before the next
                _interrupted(gen_model, record, trial, status="pending")
            say(f"Trial {number}/{record.space.trials} ({trial.run}): "
                + "  ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                            for key, value in trial.values.items()))  # fmt: skip
            trial.status, trial.started_at, trial.reason = "running", runs.now(), None
            write_sweep(gen_model, record)
            try:
                trial.objective = _run_trial(project, record, trial, say, verbose)
                trial.status = "succeeded"
                say(f"  trial {number}: int4 held-out loss {trial.objective:.4f}")
            except KeyboardInterrupt:
                _interrupted(gen_model, record, trial)
            except UserError as e:
                reason = _run_reason(gen_model, trial.run) or str(e)
                if reason == "interrupted":
                    _interrupted(gen_model, record, trial)
                trial.status = "pruned" if reason.startswith("pruned") else "failed"
                trial.reason = reason
                say(f"  trial {number} {trial.status}: {reason}")
            trial.finished_at = runs.now()
            record.best = best_trial(record, gen_model)
            write_sweep(gen_model, record)
        record.status, record.finished_at = "finished", runs.now()
        record.best = best_trial(record, gen_model)
        write_sweep(gen_model, record)
    from phi3e2e.infer import prepacked

    best = record.trial(record.best) if record.best is not None and prepacked.wanted() else None
    if best and (gen_model / best.run / runs.ONNX_INT4 / "genai_config.json").is_file():
        prepacked.save_prepacked(gen_model / best.run / runs.ONNX_INT4)  # chosen: for the trial people chat with
    return record


def add_trial(record: SweepRecord, number: int) -> TrialRecord:
    space = record.space
    if space.search == "grid":
        values = space.grid_point(number)
    else:
        history = [(t.values, t.status, t.objective) for t in record.trials if t.status in ENDED]
        values = optuna_values(space, history, number)
    trial = TrialRecord(number=number, run=trial_run_name(record.name, number), values=values)
    record.trials.append(trial)
    return trial


def _run_trial(project: Project, record: SweepRecord, trial: TrialRecord, say: Callable[[str], None],
               verbose: bool) -> float:  # fmt: skip
    """Train (or continue training) the trial's run, then measure its objective."""
    from phi3e2e.evaluate.evaluation import EvalOptions, evaluate_run
    from phi3e2e.train.local import resume_plan, run_locally

    gen_model = project.gen_model
    run_dir = gen_model / trial.run
    if not run_dir.is_dir():  # else: trained, killed in its eval
        resume = runs.partial_dir(gen_model, trial.run).is_dir() or runs.failed_dir(gen_model, trial.run).is_dir()
        plan = resume_plan(project, trial.run) if resume else trial_plan(project, record, trial.values, trial.run)
        plan.record.sweep = runs.SweepTrial(sweep=record.name, trial=trial.number)
        plan.on_eval = MedianPruner(_finished_eval_losses(record, gen_model))
        run_dir = run_locally(project, plan, say, verbose, resume=resume).run_dir
    try:
        evaluate_run(project, run_dir, EvalOptions(forms=("int4",), samples=0, max_rows=EVAL_MAX_ROWS), say=say)
    except (RuntimeError, OSError) as e:
        raise UserError(f"eval failed: {' '.join(str(e).split())[:300]}") from None
    objective = objective_of(run_dir)
    if objective is None:
        raise UserError(f"eval wrote no int4 held-out loss to {project.relative(run_dir / runs.EVAL_FILE)}")
    return objective


def trial_plan(project: Project, record: SweepRecord, values: dict[str, Any], run_name: str):
    """The plan of one local trial: the sweep's model, data and fixed settings, and the trial's values."""
    from phi3e2e.train.local import LOCAL
    from phi3e2e.train.plan import plan_run
    from phi3e2e.train.spec import RunSpec

    spec = RunSpec.of(algo=record.algo, target="local", model=record.model, data=record.data, run_name=run_name,
                      set_args=tuple(record.space.set_args(values)))  # fmt: skip
    LOCAL.check(spec)
    return plan_run(project, spec, LOCAL.inputs(project, spec))


def _finished_eval_losses(record: SweepRecord, gen_model: Path) -> list[dict[int, float]]:
    return [eval_losses(gen_model / t.run) for t in record.trials if t.status == "succeeded"]


def _run_reason(gen_model: Path, run: str) -> Optional[str]:
    """Why the trial's run ended, as its kept record says (a failed or interrupted run)."""
    failed = runs.try_read_record(runs.failed_dir(gen_model, run)) if runs.failed_dir(gen_model, run).is_dir() else None
    return failed.reason if failed else None


def _interrupted(gen_model: Path, record: SweepRecord, trial: TrialRecord, status: str = "interrupted") -> None:
    trial.status, trial.reason = status, "interrupted" if status == "interrupted" else None
    record.status = "interrupted"
    write_sweep(gen_model, record)
    raise UserError(f"interrupted in trial {trial.number} ({trial.run}); the sweep is kept: go on with "
                    f"`phi3e2e sweep --resume {record.name}`")  # fmt: skip


@contextlib.contextmanager
def noting_ctrl_c():
    """Ctrl-C raises KeyboardInterrupt as always, and is also noted (the list it yields becomes non-empty): Python
    ignores an exception raised while it runs an at-fork hook or a finalizer, so a Ctrl-C that lands as the trial
    forks Olive would otherwise be lost; the sweep then stops before its next trial."""
    pressed: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield pressed
        return

    def note(signum, frame):
        pressed.append(True)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)
