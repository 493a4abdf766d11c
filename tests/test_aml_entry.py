"""What runs on the Azure ML compute: the staged entry script fills the job's mount paths into the
Olive config, runs the real `olive run`, and leaves adapter/, merged/, onnx-int4/ in the output.

Here the "mounts" are the tiny project's folders and the workflow is rendered for this CPU
(the compute's is the same config with CUDA); everything else is what the job runs.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import pytest

from phi3e2e.runs import missing_outputs
from phi3e2e.train.aml.compute_entry import WORK_DIR, fill_placeholders, use_fp16
from phi3e2e.train.aml.job import JOB_FILE, AmlOptions
from phi3e2e.train.aml.staging import ENTRY_SCRIPT, checkpoints_to_output, stage_job_files
from phi3e2e.train.finetune import finetune
from phi3e2e.train.plan import CHECKPOINTS, OLIVE_CACHE, OLIVE_OUTPUT
from phi3e2e.workflow.render import WorkflowPaths, render_workflow
from phi3e2e.workflow.settings import build_settings


def test_placeholders_are_filled_everywhere_and_only_there():
    config = {
        "model_path": "${{inputs.model}}",
        "files": ["${{inputs.data}}/train.jsonl", "${{ inputs.data }}/e"],
        "n": 3,
    }
    filled = fill_placeholders(config, {"${{inputs.model}}": "/mnt/m", "${{inputs.data}}": "/mnt/d"})
    assert filled == {"model_path": "/mnt/m", "files": ["/mnt/d/train.jsonl", "/mnt/d/e"], "n": 3}


def test_unbound_placeholder_stops_the_job_with_a_clear_message(tmp_path):
    run_dir = tmp_path / "run"
    staged = stage_job_files(run_dir, {"input_model": {"model_path": "${{inputs.model}}"}})
    result = subprocess.run(
        [sys.executable, ENTRY_SCRIPT, "--models-out", str(tmp_path / "out")],
        cwd=staged.code_dir, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0 and "uses ${{inputs.model}} but the command binds no such path" in result.stderr


@pytest.mark.e2e
def test_staged_job_on_a_node_without_a_gpu_ends_in_one_line_within_a_minute(tiny_project, tmp_path):
    """The dry-run job's own command, run here (no NVIDIA driver, CPU-only torch): it must not train."""
    from azure.ai.ml import load_job

    result = finetune(
        tiny_project, algo="qlora", target="aml", dry_run=True, run_name="nogpu",
        aml_options=AmlOptions(compute="gpu-a100"), say=lambda _: None,
    )  # fmt: skip
    job = load_job(result.run_dir / JOB_FILE)
    mounts = {f"${{{{inputs.{name}}}}}": str((result.run_dir / item.path).resolve()) for name, item in job.inputs.items()}
    mounts |= {f"${{{{outputs.{name}}}}}": str(tmp_path / "outputs" / name) for name in job.outputs}
    command = job.command
    for placeholder, path in mounts.items():
        command = command.replace(placeholder, path)
    assert command.startswith("python ") and "${{" not in command
    started = time.monotonic()
    ran = subprocess.run(
        [sys.executable, *shlex.split(command)[1:]], cwd=result.run_dir / "aml-code", capture_output=True, text=True,
        env={**os.environ, "PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin"}, timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert ran.returncode == 2 and elapsed < 60, (elapsed, ran.stdout[-2000:], ran.stderr[-2000:])
    assert ran.stderr.strip().splitlines() == [
        "phi3e2e_job: error: no NVIDIA GPU on this node (no nvidia-smi, no CUDA device): pick a GPU compute, "
        "e.g. Standard_NC24ads_A100_v4 (docs/azure.md lists the supported sizes)"
    ]
    assert not (tmp_path / "outputs" / "models").exists() or not any((tmp_path / "outputs" / "models").iterdir())


def test_without_native_bf16_the_fine_tune_trains_in_fp16_and_says_why(capsys):
    config = {"passes": {"finetune": {"type": "QLoRA", "torch_dtype": "bfloat16", "compute_dtype": "bfloat16"},
                         "int4": {"type": "ModelBuilder", "precision": "int4"}}}  # fmt: skip
    changed = use_fp16(config, "Tesla V100 (sm_70) has no native bfloat16")
    assert changed["passes"]["finetune"]["torch_dtype"] == changed["passes"]["finetune"]["compute_dtype"] == "float16"
    assert "Tesla V100 (sm_70) has no native bfloat16: torch_dtype and compute_dtype" in capsys.readouterr().out


def test_staged_checkpoints_go_to_the_job_output():
    settings = build_settings("phi3-mini", {})
    paths = WorkflowPaths(
        model="${{inputs.model}}", train_file="${{inputs.train_file}}", eval_file=None,
        output=OLIVE_OUTPUT, cache=OLIVE_CACHE, checkpoints=CHECKPOINTS,
    )  # fmt: skip
    args = checkpoints_to_output(render_workflow("qlora", True, settings, paths).config)["passes"]["finetune"][
        "training_args"
    ]
    assert args["output_dir"] == "${{outputs.checkpoints}}" and args["save_strategy"] == "steps"
    assert args["save_steps"] == settings.training.save_steps and not args["overwrite_output_dir"]


# Where a reclaimed node can stop the job, as its log and outputs show it: "step" after a logged training step,
# "save" the moment a checkpoint folder appears (mid-save), "saved" once one is complete, "merge" / "int4" when
# Olive starts that pass. `make test` kills at 3 points; `make test-chaos` (PHI3E2E_CHAOS_KILLS=10) at 10.
CHAOS = {3: ["saved", "step", "int4"],
         10: ["step", "save", "saved", "step", "save", "step", "saved", "merge", "int4", "int4"]}  # fmt: skip
# How long after its point a kill may land (seconds): the tiny model trains ~40 steps a second, so a later kill in
# training could let it finish, and the next training point would never come.
LATEST_KILL = {"step": 0.05, "save": 0.0, "saved": 0.0, "merge": 0.3, "int4": 0.3}
# Steps per kill mode: room for every training point even when each save or saved kill costs a checkpoint
# interval (20 steps) and a save kill lands after the save completed.
CHAOS_STEPS = {3: 60, 10: 100}


@dataclass
class Attempt:
    point: Optional[str]  # the kill point it was stopped at; None: left to finish
    killed: bool
    returncode: int
    log: str
    intact_before: list[int]  # the complete checkpoints in the output when it started
    resume_epoch: float  # the newest one's epoch (0: none)


def intact_checkpoints(folder: Path) -> list[int]:
    from phi3e2e.train.aml.compute_entry import checkpoint_problem

    return sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*")
                  if re.fullmatch(r"checkpoint-\d+", p.name) and checkpoint_problem(p) is None)  # fmt: skip


def reached(point: str, log: str, checkpoints: Path, before: set[str]) -> bool:
    folders = {p.name for p in checkpoints.glob("checkpoint-*")} - before
    return {"step": lambda: "'loss':" in log, "save": lambda: bool(folders),
            "saved": lambda: any((checkpoints / name / "trainer_state.json").is_file() for name in folders),
            "merge": lambda: "Running pass merge:" in log, "int4": lambda: "Running pass int4:" in log}[point]()


def run_node(command, code_dir, env, log_file: Path, checkpoints: Path, point, rng) -> Attempt:
    """One start of the emulated node, SIGKILLed (as a reclaimed node: no cleanup) at `point`."""
    intact, before = intact_checkpoints(checkpoints), {p.name for p in checkpoints.glob("checkpoint-*")}
    state = checkpoints / f"checkpoint-{intact[-1]}" / "trainer_state.json" if intact else None
    resume_epoch = json.loads(state.read_text())["epoch"] if state else 0.0
    with open(log_file, "w") as log:
        node = subprocess.Popen(command, cwd=code_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 600
    while node.poll() is None:
        assert time.monotonic() < deadline, f"stuck before {point}: " + log_file.read_text()[-2000:]
        if point and reached(point, log_file.read_text(errors="replace"), checkpoints, before):
            time.sleep(rng.uniform(0, LATEST_KILL[point]))  # a random moment after it
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()
            break
        time.sleep(0.02)
    shutil.rmtree(code_dir / WORK_DIR, ignore_errors=True)  # the restarted job lands on a fresh node
    return Attempt(point, node.returncode == -signal.SIGKILL, node.returncode, log_file.read_text(errors="replace"),
                   intact, resume_epoch)  # fmt: skip


@pytest.fixture(scope="module")
def restarted_job(tiny_template, tmp_path_factory):
    """The staged entry killed at the chaos points and restarted over the same outputs each time (the node's
    local disk wiped in between), then left to finish; MLflow tracking to a local folder."""
    tmp = tmp_path_factory.mktemp("restarted-job")
    # 60 steps (100 with 10 kills), not the tiny profile's 140: a checkpoint every 20, so restarts resume, train
    # on, evaluate each epoch and save again (the suite stays under 15 minutes).
    kills = int(os.environ.get("PHI3E2E_CHAOS_KILLS", "3"))
    settings = build_settings("tiny", {"training.max_steps": CHAOS_STEPS[kills]})
    paths = WorkflowPaths(
        model="${{inputs.model}}", train_file="${{inputs.train_file}}", eval_file="${{inputs.eval_file}}",
        output=OLIVE_OUTPUT, cache=OLIVE_CACHE, checkpoints=CHECKPOINTS,
    )  # fmt: skip
    staged = stage_job_files(tmp / "run", render_workflow("lora", False, settings, paths).config)
    outputs = tmp / "outputs"
    (outputs / "checkpoints").mkdir(parents=True)
    sample = tiny_template.datasets / "sample"
    command = [
        sys.executable, ENTRY_SCRIPT, "--config", "olive-config.json", "--models-out", str(outputs / "models"),
        "--bind", f"inputs.model={tiny_template.model_cache / 'tiny-phi3'}",
        "--bind", f"inputs.train_file={sample / 'train.jsonl'}", "--bind", f"inputs.eval_file={sample / 'eval.jsonl'}",
        "--bind", f"outputs.checkpoints={outputs / 'checkpoints'}", "--allow-cpu",
    ]  # fmt: skip
    # MLFLOW_ALLOW_FILE_STORE: MLflow 3 refuses a folder store unless asked; Azure ML's is a workspace URI.
    env = {**os.environ, "MLFLOW_TRACKING_URI": (tmp / "mlruns").as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true",
           "MLFLOW_EXPERIMENT_NAME": "phi3e2e"}  # fmt: skip
    points = CHAOS[kills]
    seed = int(os.environ.get("PHI3E2E_CHAOS_SEED", "0"))
    rng, attempts = random.Random(seed), []
    for number, point in enumerate([*points, None]):
        attempts.append(run_node(command, staged.code_dir, env, tmp / f"attempt-{number}.log", outputs / "checkpoints",
                                 point, rng))  # fmt: skip
    return SimpleNamespace(outputs=outputs, attempts=attempts, mlruns=tmp / "mlruns", settings=settings, seed=seed)


@pytest.mark.e2e
def test_a_job_killed_at_any_moment_ends_with_three_models_when_restarted(restarted_job):
    *killed, last = restarted_job.attempts
    summary = [(a.point, a.killed, a.intact_before) for a in restarted_job.attempts]
    assert all(a.killed for a in killed), f"seed {restarted_job.seed}: a kill point was never reached: {summary}"
    assert last.returncode == 0, last.log[-3000:]
    for attempt in restarted_job.attempts:
        if attempt.intact_before:  # every start with a complete checkpoint in the output resumes from the newest
            newest = attempt.intact_before[-1]
            assert f"phi3e2e_job: resuming from checkpoint-{newest} in the checkpoints output" in attempt.log, summary
            epochs = [float(e) for e in re.findall(r"'epoch': '?([0-9.]+)", attempt.log)]
            assert not epochs or epochs[0] > attempt.resume_epoch, summary  # training went on from there
        else:
            assert "resuming from" not in attempt.log, summary
    assert any(a.intact_before for a in restarted_job.attempts[1:]), summary  # a restart did resume
    final = intact_checkpoints(restarted_job.outputs / "checkpoints")
    # >=: transformers, resumed from the checkpoint at max_steps (a kill after training), takes one more step.
    assert final[-1] >= restarted_job.settings.training.max_steps
    # The job ends as an uninterrupted one does: the three forms in the `models` output.
    models_out = restarted_job.outputs / "models"
    assert missing_outputs(models_out) == []
    assert json.loads((models_out / "adapter" / "adapter_config.json").read_text())["r"] == restarted_job.settings.lora.r
    assert json.loads((models_out / "onnx-int4" / "genai_config.json").read_text())["model"]["decoder"]["num_hidden_layers"]


def test_the_entry_script_names_forms_as_phi3e2e_does():
    """The staged script runs without phi3e2e installed, so it keeps its own copy of these names."""
    from phi3e2e.build.olive_outputs import FORM_FROM_PASS
    from phi3e2e.runs import REQUIRED_FILES
    from phi3e2e.train.aml import compute_entry

    assert compute_entry.REQUIRED_FILES == REQUIRED_FILES
    assert compute_entry.FORM_FROM_PASS == FORM_FROM_PASS


@pytest.mark.e2e
def test_training_and_eval_loss_reach_mlflow(restarted_job, monkeypatch):
    """Azure ML sets MLFLOW_TRACKING_URI in a job; here it is a local folder, read back with MLflow's client."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")

    last = restarted_job.attempts[-1]
    assert last.returncode == 0, last.log[-3000:]
    client = MlflowClient(tracking_uri=restarted_job.mlruns.as_uri())
    experiment = client.get_experiment_by_name("phi3e2e")
    runs = client.search_runs([experiment.experiment_id])
    steps = {
        metric: sorted(m.step for run in runs for m in client.get_metric_history(run.info.run_id, metric))
        for metric in ("loss", "eval_loss")
    }
    logging_steps = restarted_job.settings.training.logging_steps
    assert steps["loss"] and all(step % logging_steps == 0 for step in steps["loss"])
    resumed_at = min(a.intact_before[-1] for a in restarted_job.attempts if a.intact_before)
    assert steps["loss"][-1] > resumed_at  # the resumed attempts logged too
    assert len(steps["eval_loss"]) >= 2  # once per epoch (the tiny profile's eval_strategy)


@pytest.mark.parametrize(
    "smi_line, message",
    [
        ("470.57.02, Tesla K80", "NVIDIA driver 470.57.02 on Tesla K80 is too old for the job's CUDA 12 torch "
                                 "(needs >= 525.60.13)"),
        ("550.54.15, NVIDIA A100 80GB PCIe", "CUDA is not usable on NVIDIA A100 80GB PCIe (driver 550.54.15, torch "),
    ],
)  # fmt: skip
def test_a_node_whose_driver_or_cuda_is_unusable_ends_in_one_line(tmp_path, smi_line, message):
    """A stand-in nvidia-smi (the node's driver) on PATH; this machine's torch has no CUDA."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\necho '{smi_line}'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    staged = stage_job_files(tmp_path / "run", {"input_model": {"type": "HfModel", "model_path": "m"}})
    ran = subprocess.run(
        [sys.executable, ENTRY_SCRIPT, "--models-out", str(tmp_path / "out")], cwd=staged.code_dir,
        capture_output=True, text=True, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 2 and len(ran.stderr.strip().splitlines()) == 1, ran.stderr
    assert ran.stderr.startswith(f"phi3e2e_job: error: {message}")


@pytest.mark.parametrize("name, capability, refused", [
    ("Tesla V100-PCIE-16GB", (7, 0), None), ("NVIDIA H100 80GB HBM3", (9, 0), None),
    ("Tesla M60", (5, 2), "older than Volta"), ("NVIDIA GB200", (10, 0), "newer than the job's CUDA 12.6 torch"),
    ("NVIDIA RTX PRO 6000 Blackwell", (12, 0), "(sm_120) is newer"),
])  # fmt: skip
def test_the_node_refuses_a_gpu_its_torch_build_has_no_kernels_for(name, capability, refused):
    from phi3e2e.train.aml.compute_entry import capability_problem

    problem = capability_problem(name, capability)
    assert (problem is None) if refused is None else (refused in problem and "\n" not in problem)


def test_the_node_runs_olive_through_the_staged_lean_int4_and_lm_head_fix(tmp_path):
    """The job carries the modules through which phi3e2e runs Olive, and they stand alone: they import with no
    site-packages at all (no phi3e2e installed, as on the node), from the staged folder, and the entry's Olive
    command uses them."""
    from phi3e2e.train.aml.compute_entry import olive_command

    staged = stage_job_files(tmp_path / "run", {"input_model": {"model_path": "${{inputs.model}}"}})
    probe = ("import phi3e2e.build.lean_int4 as lean, phi3e2e.build.lm_head_fix as fix; "
             "print(lean.__file__); print(fix.__file__)")  # fmt: skip
    result = subprocess.run([sys.executable, "-S", "-c", probe], env={"PYTHONPATH": str(staged.code_dir)},
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert all(line.startswith(str(staged.code_dir / "phi3e2e" / "build")) for line in result.stdout.splitlines())
    env = {"PYTHONPATH": "/elsewhere"}
    node_entry = staged.code_dir / ENTRY_SCRIPT
    command = subprocess.run([sys.executable, "-c", "import json, sys, phi3e2e_job as entry; env = {'PYTHONPATH': "
                              "'/elsewhere'}; print(json.dumps([entry.olive_command(env), env]))"],
                             cwd=staged.code_dir, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert command.returncode == 0, command.stderr
    argv, node_env = json.loads(command.stdout)
    assert argv[1:4] == ["-m", "phi3e2e.build.lean_int4", "run"]
    assert node_env["PYTHONPATH"].split(os.pathsep) == [str(node_entry.parent.resolve()), "/elsewhere"]
    assert olive_command(env)[1:3] == ["-m", "phi3e2e.build.lean_int4"]  # the same function, imported here


def test_resume_carries_the_earlier_jobs_newest_intact_checkpoint_over(tmp_path, capsys):
    from phi3e2e.train.aml.compute_entry import carry_over

    def checkpoint(folder, step, intact=True):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        if intact:
            (folder / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))

    earlier, own = tmp_path / "earlier", tmp_path / "own"
    checkpoint(earlier, 20)
    checkpoint(earlier, 40, intact=False)  # the stopped job was cut off while saving
    own.mkdir()
    (own / "checkpoint-20.copying").mkdir()  # a node reclaimed while carrying over
    carry_over(earlier, own)
    assert sorted(p.name for p in own.iterdir()) == ["checkpoint-20"]
    assert sorted(p.name for p in earlier.iterdir()) == ["checkpoint-20", "checkpoint-40"]  # read-only: untouched
    checkpoint(own, 60)  # this job went on and was restarted itself: its own checkpoints win
    carry_over(earlier, own)
    assert sorted(p.name for p in own.iterdir()) == ["checkpoint-20", "checkpoint-60"]
    assert capsys.readouterr().out.count("carried checkpoint-20 over") == 1
