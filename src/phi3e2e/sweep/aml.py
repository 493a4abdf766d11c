"""A sweep on Azure ML: one sweep job whose trial is the command job `finetune --target aml` writes.

The trial is that very job (train/aml/job.py stages it: code, conda file, inputs, outputs), with one
`--override PATH=${{search_space.NAME}}` per dimension on its command line: the node's entry script
(train/aml/compute_entry.py) writes the trial's value into the staged Olive config at PATH. Each PATH is
found by rendering the workflow with two values of the setting and seeing which config value changes,
so a project's own templates are followed too.

The objective is `eval_loss`, the held-out loss the trainer reports to MLflow at each evaluation (Azure
ML sets MLFLOW_TRACKING_URI; compute_entry.report_to_mlflow): its series over steps is what the median
early-termination policy compares. The int4 model's held-out loss, what the local sweep ranks by, is not
measured on the node: `phi3e2e eval` measures it on a downloaded trial. docs/azure.md has the evidence.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import yaml

from phi3e2e.errors import UserError
from phi3e2e.project import Project
from phi3e2e.sweep.record import SweepRecord, write_sweep
from phi3e2e.sweep.space import Dimension, SearchSpace

SWEEP_JOB_FILE = "aml-sweep.yml"
SCHEMA = "https://azuremlschemas.azureedge.net/latest/sweepJob.schema.json"
PRIMARY_METRIC = "eval_loss"  # transformers' MLflowCallback logs the Trainer's eval logs under their own names
SAMPLING = {"grid": "grid", "random": "random", "tpe": "bayesian"}  # Azure ML has no TPE; Bayesian is its model-based one
MAX_CONCURRENT_TRIALS = 4
# Azure ML's median stopping policy: after each evaluation (the trainer logs eval_loss per evaluation), from the
# second on, cancel a trial whose best so far is worse than the median of the running averages of the others.
EARLY_TERMINATION = {"type": "median_stopping", "evaluation_interval": 1, "delay_evaluation": 1}


def write_sweep_job(project: Project, record: SweepRecord, options, say: Callable[[str], None]) -> SweepRecord:
    """gen-model/<sweep>/ with the trial's job files and aml-sweep.yml (checked by the SDK's own schema, offline);
    the sweep recorded as a dry-run."""
    record, _, job_file = stage_sweep_job(project, record, options, say)
    say(f"  submit it: phi3e2e sweep ... without --dry-run, or az ml job create -f {project.relative(job_file)} "
        "-g RG -w WS")
    return record


def submit_sweep_job(project: Project, record: SweepRecord, options, say: Callable[[str], None],
                     credential=None) -> SweepRecord:  # fmt: skip
    """The sweep job staged, its compute and memory plan checked, then submitted. Its folder gen-model/<sweep>/
    then stands for the sweep job: `phi3e2e jobs status|logs|download <sweep>` follow it, and download fetches the
    best trial's models (the SDK downloads a sweep job's outputs from its best child)."""
    from pathlib import Path

    from phi3e2e import runs
    from phi3e2e.train.aml.job import load_job_file
    from phi3e2e.train.aml.submit import check_where, first_line
    from phi3e2e.train.aml.workspace import connect

    record, plan, job_file = stage_sweep_job(project, record, options, say)
    ml_client = connect(options.workspace, (project.root, Path.cwd()), credential)
    check_where(ml_client, plan, options, say)
    job = load_job_file(job_file)
    say(f"Submitting the sweep job ({record.space.trials} trials) ...")
    try:
        submitted = ml_client.jobs.create_or_update(job)
    except Exception as e:
        raise UserError(f"submitting the sweep job failed: {first_line(e)} "
                        f"[files kept in {project.relative(job_file.parent)}]") from None  # fmt: skip
    run_dir = job_file.parent
    run_record = runs.read_record(run_dir)
    run_record.status, run_record.submitted_at = "submitted", runs.now()
    run_record.aml.job_name = submitted.name
    runs.write_record(run_dir, run_record)
    record.status, record.job_name = "submitted", submitted.name
    write_sweep(project.gen_model, record)
    say(f"Submitted sweep job {submitted.name} ({project.relative(run_dir)}/)")
    if submitted.studio_url:
        say(f"  Studio: {submitted.studio_url}")
    say(f"Follow it: phi3e2e jobs status {record.name} | phi3e2e jobs logs {record.name} | "
        f"phi3e2e jobs download {record.name} (the best trial's models)")  # fmt: skip
    return record


def stage_sweep_job(project: Project, record: SweepRecord, options, say: Callable[[str], None]):
    """(the sweep recorded as a dry-run, the first trial's plan, aml-sweep.yml): the trial's job files and the
    sweep job around them, checked by the SDK's own schema offline."""
    from phi3e2e.train.aml.job import JOB_FILE, load_job_file
    from phi3e2e.train.plan import plan_run, write_dry_run
    from phi3e2e.train.spec import RunSpec

    space = record.space
    first = {d.key: d.values[0] if d.values is not None else _bound(d, d.low) for d in space.dimensions}
    spec = RunSpec.of(algo=record.algo, target="aml", model=record.model, data=record.data, run_name=record.name,
                      set_args=tuple(space.set_args(first)), dry_run=True, target_options=options)  # fmt: skip
    target = spec.on_target
    target.check(spec)
    inputs = target.inputs(project, spec)
    plan = plan_run(project, spec, inputs)
    # The memory plan of the trial that needs the most: every numeric dimension at its largest value.
    heaviest = {d.key: _largest(d) for d in space.dimensions}
    heavy_spec = RunSpec.of(algo=record.algo, target="aml", model=record.model, data=record.data,
                            run_name=record.name, set_args=tuple(space.set_args(heaviest)), dry_run=True,
                            target_options=options)  # fmt: skip
    target.check_plan(plan_run(project, heavy_spec, inputs), say)
    paths = {d.key: config_paths(project, spec, plan, d) for d in space.dimensions}
    result = write_dry_run(project, plan, say=lambda line: None)  # the trial's job files, checked by the SDK
    command_job = yaml.safe_load((result.run_dir / JOB_FILE).read_text())
    job = sweep_job_spec(command_job, space, paths, options.timeout_h)
    job_file = result.run_dir / SWEEP_JOB_FILE
    header = ("# Azure ML sweep job written by `phi3e2e sweep --target aml`. Submit it by hand with:\n"
              f"#   az ml job create -f {SWEEP_JOB_FILE} --resource-group RG --workspace-name WS\n")  # fmt: skip
    job_file.write_text(header + yaml.safe_dump(job, sort_keys=False, width=1000))
    load_job_file(job_file)  # the SDK's own schema, offline
    record.status = "dry-run"
    write_sweep(project.gen_model, record)
    say(f"Azure ML sweep job written: {project.relative(job_file)}  (trial: {project.relative(result.run_dir)}/"
        f"{JOB_FILE}, code: aml-code/)")  # fmt: skip
    say(f"  {space.trials} trials, {SAMPLING[space.search]} sampling, at most {job['limits']['max_concurrent_trials']} "
        f"at once; objective: minimize {PRIMARY_METRIC} (the trainer's held-out loss, logged to MLflow)")  # fmt: skip
    return record, plan, job_file


def sweep_job_spec(command_job: dict, space: SearchSpace, paths: dict[str, list[str]], timeout_h: float) -> dict:
    """The sweep job as the CLI v2 YAML schema spells it, around the command job `command_job`."""
    job = dict(command_job)
    trial = {key: job.pop(key) for key in ("code", "command", "environment", "environment_variables") if key in job}
    trial["command"] += "".join(
        f" --override {path}=${{{{search_space.{parameter_name(key)}}}}}" for key, found in paths.items() for path in found
    )
    job.pop("limits", None)
    trial_timeout = int(timeout_h * 3600)
    concurrent = min(space.trials, MAX_CONCURRENT_TRIALS)
    spec = {
        "$schema": SCHEMA,
        "type": "sweep",
        **{key: job.pop(key) for key in ("display_name", "experiment_name", "description", "tags") if key in job},
        "trial": trial,
        **{key: value for key, value in job.items() if key != "$schema" and key != "type"},
        "sampling_algorithm": SAMPLING[space.search],
        "search_space": {parameter_name(d.key): search_distribution(d) for d in space.dimensions},
        "objective": {"goal": "minimize", "primary_metric": PRIMARY_METRIC},
        "limits": {
            "max_total_trials": space.trials,
            "max_concurrent_trials": concurrent,
            "trial_timeout": trial_timeout,
            "timeout": trial_timeout * math.ceil(space.trials / concurrent),
        },
    }
    spec["description"] = spec.get("description", "") + f"; sweep of {', '.join(d.key for d in space.dimensions)}"
    if space.search != "tpe":  # Azure ML's Bayesian sampling takes no early termination policy
        spec["early_termination"] = dict(EARLY_TERMINATION)
    return spec


def parameter_name(key: str) -> str:
    return key.replace(".", "_")


def search_distribution(d: Dimension) -> dict:
    if d.values is not None:
        return {"type": "choice", "values": list(d.values)}
    if d.integer:  # whole numbers between the bounds (the node writes 16.0 as 16 where the config holds an int)
        return {"type": "quniform", "min_value": int(d.low), "max_value": int(d.high), "q": 1}
    if d.log:  # Azure ML's loguniform bounds are natural logarithms
        return {"type": "loguniform", "min_value": math.log(d.low), "max_value": math.log(d.high)}
    return {"type": "uniform", "min_value": d.low, "max_value": d.high}


def config_paths(project: Project, spec, plan, d: Dimension) -> list[str]:
    """Where setting `d.key` lands in the rendered Olive config (dotted paths, list items by index)."""
    from phi3e2e.train.plan import render_plan_workflow

    section, _, field = d.key.partition(".")
    samples = list(d.values[:2]) if d.values is not None else [_bound(d, d.low), _bound(d, d.high)]
    configs = []
    for value in samples:
        settings = plan.settings.model_copy(deep=True)
        setattr(getattr(settings, section), field, value)
        configs.append(render_plan_workflow(project, spec, settings, plan.inputs, plan.name).config)
    changed = _differences(configs[0], configs[1])
    verbatim = [path for path in changed if _at(configs[1], path) == samples[1]]
    if not verbatim or len(verbatim) != len(changed):
        raise UserError(f"--set {d.key}: not a value the Olive workflow holds as it is, so an Azure ML sweep cannot "
                        "set it per trial; sweep it locally, or fix it for every trial")  # fmt: skip
    return verbatim


def _largest(d: Dimension) -> Any:
    """The dimension's value that needs the most memory, as far as a number says (r, max_length, batch size)."""
    if d.values is None:
        return _bound(d, d.high)
    numbers = [v for v in d.values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return max(numbers) if len(numbers) == len(d.values) else d.values[0]


def _bound(d: Dimension, value: float) -> Any:
    return int(value) if d.integer else value


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return [p for key in a for p in _differences(a[key], b[key], f"{path}.{key}" if path else str(key))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and any(isinstance(x, (dict, list)) for x in a):
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in _differences(x, y, f"{path}.{i}" if path else str(i))]
    return [] if a == b else [path]


def _at(config: Any, path: str) -> Any:
    for part in path.split("."):
        config = config[int(part)] if isinstance(config, list) else config[part]
    return config
