"""Faults a long fine-tune meets, on the real pipeline with the tiny model: SIGKILL then --resume,
a second writer for the same run name, SIGTERM, a closed stdout, two runs and two evals at once,
a full disk. Each test starts real `phi3e2e` processes, as a user (or systemd, or CI) would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_cli

from phi3e2e import runs
from phi3e2e.project import Project

pytestmark = pytest.mark.e2e  # every test here starts real fine-tunes and evals


def start(*args: str, project: Project, out: Path) -> subprocess.Popen:
    env = dict(os.environ, PHI3E2E_PROJECT_DIR=str(project.root))
    with open(out, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "phi3e2e", *args], stdout=f, stderr=subprocess.STDOUT, env=env)


def wait_for(condition, process: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"ended (exit {process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.2)


def processes_running(*fragments: str) -> list[int]:
    """Live (not zombie) processes whose command line holds every fragment."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if all(fragment in cmdline for fragment in fragments) and state != "Z":
            found.append(int(proc.name))
    return found


def olive_processes(config_dir: Path) -> list[int]:
    """Live (not zombie) processes running Olive on a config in `config_dir`."""
    return processes_running("olive", str(config_dir))


def no_olive_left(config_dir: Path, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while olive_processes(config_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not olive_processes(config_dir)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_a_run_killed_after_a_checkpoint_resumes_from_it_and_its_name_is_refused_meanwhile(tiny_project, tmp_path):
    gen_model = tiny_project.gen_model
    # The tiny profile saves a checkpoint every 20 steps (training.save_steps); --resume must keep max_steps.
    first = start("finetune", "--run-name", "r", "--set", "training.max_steps=60", project=tiny_project,
                  out=tmp_path / "first.out")  # fmt: skip
    checkpoints, staging = runs.checkpoints_dir(gen_model, "r"), runs.partial_dir(gen_model, "r")
    wait_for(lambda: (checkpoints / "checkpoint-20" / "trainer_state.json").is_file(), first, 400, "a checkpoint")
    for pid in olive_processes(staging):  # paused, so training cannot end while we look
        os.kill(pid, signal.SIGSTOP)

    # While it trains: the name is taken, by this process; a dry-run of it is refused too.
    assert runs.in_progress(gen_model, "r") == first.pid
    second = run_cli("finetune", "--run-name", "r", project=tiny_project)
    assert f"in use by process {first.pid}" in one_error_line(second)
    dry_run = run_cli("finetune", "--dry-run", "--run-name", "r", project=tiny_project)
    assert f"process {first.pid}" in one_error_line(dry_run)
    assert not (gen_model / "r").exists()

    first.kill()  # SIGKILL: no cleanup runs in phi3e2e; Olive must die with it
    first.wait()
    assert no_olive_left(staging), "olive outlived a SIGKILLed phi3e2e"
    assert runs.in_progress(gen_model, "r") is None  # the kernel dropped the lock
    assert runs.read_record(staging).status == "running"  # the killed run still says what it was
    last = runs.last_checkpoint(gen_model, "r")
    step = int(last.name.removeprefix("checkpoint-"))
    state_at_checkpoint = json.loads((last / "trainer_state.json").read_text())
    epoch_at_checkpoint = state_at_checkpoint["epoch"]

    resumed = run_cli("finetune", "--resume", "r", project=tiny_project)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Resuming r from step {step}" in resumed.stdout
    run_dir = gen_model / "r"
    record = runs.read_record(run_dir)
    assert record.status == "succeeded" and not runs.missing_outputs(run_dir)
    assert record.resumed_from.step == step and record.resumed_from.previous_status == "running"
    assert record.settings.training.max_steps == 60
    # Training went on from that step: the Trainer loaded the checkpoint, and this attempt's first logged
    # loss is past the checkpoint's epoch (a fresh start would log epoch ~0.4 first).
    assert f"Resuming training at {last}" in (run_dir / runs.OLIVE_LOG).read_text()
    history = [json.loads(line) for line in (run_dir / runs.TRAIN_LOG).read_text().splitlines()]
    before = [entry for entry in history if entry["step"] <= step]
    after = [entry for entry in history if entry["step"] > step]
    assert after and after[0]["epoch"] > epoch_at_checkpoint  # train-log counts on from the checkpoint ...
    # ... after the killed attempt's losses up to it: the run's totals are the whole run's, not the last part's.
    assert before and before == state_at_checkpoint["log_history"][: len(before)]
    loss_steps = [entry["step"] for entry in history if "loss" in entry]
    assert loss_steps == sorted(set(loss_steps)) and loss_steps[0] == 5 and loss_steps[-1] == 60
    assert record.train_loss.first == history[0]["loss"] and record.train_loss.logged == 12
    assert record.resumed_from.earlier_s > 0 and record.duration_s > record.resumed_from.earlier_s
    # Scratch is gone once the run succeeded; the log of the killed attempt is kept beside the new one.
    assert not checkpoints.exists() and not (run_dir / "olive-output").exists()
    assert list(run_dir.glob("olive-before-resume-*.log"))


def test_sigterm_stops_olive_and_keeps_the_run_as_failed_with_its_record(tiny_project, tmp_path):
    gen_model = tiny_project.gen_model
    run = start("finetune", "--run-name", "t", project=tiny_project, out=tmp_path / "t.out")
    log = runs.partial_dir(gen_model, "t") / runs.OLIVE_LOG
    wait_for(lambda: log.is_file() and "Running pass finetune" in log.read_text(errors="replace"), run, 300,
             "the fine-tune pass")  # fmt: skip
    run.send_signal(signal.SIGTERM)  # what kill, systemd, a container stop and a CI timeout send
    assert run.wait(timeout=60) == 2
    output = (tmp_path / "t.out").read_text()
    assert "Traceback" not in output and "error: interrupted" in output
    failed = runs.failed_dir(gen_model, "t")
    assert no_olive_left(runs.partial_dir(gen_model, "t")) and no_olive_left(failed)
    record = runs.read_record(failed)
    assert record.status == "failed" and record.reason == "interrupted"
    assert (failed / runs.OLIVE_LOG).is_file() and not (failed / "olive-output").exists()
    assert not runs.partial_dir(gen_model, "t").exists() and runs.in_progress(gen_model, "t") is None


def test_two_runs_at_once_succeed_one_with_a_closed_stdout_and_two_evals_at_once_share_the_base_build(
    tiny_project, tmp_path
):
    """Also: `eval` after a 3-step fine-tune exits normally (it died of SIGFPE on an empty answer)."""
    env = dict(os.environ, PHI3E2E_PROJECT_DIR=str(tiny_project.root))
    quick = ["--set", "training.max_steps=3"]
    piped = subprocess.Popen(  # `phi3e2e finetune ... | head -1`: stdout closes after one line
        f"{sys.executable} -m phi3e2e finetune --run-name one {' '.join(quick)} | head -1",
        shell=True, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    other = start("finetune", "--run-name", "two", *quick, project=tiny_project, out=tmp_path / "two.out")
    assert other.wait(timeout=600) == 0, (tmp_path / "two.out").read_text()
    piped.communicate(timeout=600)
    for name in ("one", "two"):
        record = runs.read_record(tiny_project.gen_model / name)
        assert record.status == "succeeded" and not runs.missing_outputs(tiny_project.gen_model / name)

    shutil.rmtree(tiny_project.model_cache / ".onnx-int4", ignore_errors=True)  # both evals build it
    evals = [start("eval", name, "--samples", "2", project=tiny_project, out=tmp_path / f"eval-{name}.out")
             for name in ("one", "two")]  # fmt: skip
    for name, process in zip(("one", "two"), evals):
        assert process.wait(timeout=600) == 0, (tmp_path / f"eval-{name}.out").read_text()
        result = json.loads((tiny_project.gen_model / name / runs.EVAL_FILE).read_text())
        assert result["dataset_since_training"] == "as trained" and len(result["samples"]) == 2
    assert len(list((tiny_project.model_cache / ".onnx-int4").glob("*/genai_config.json"))) == 1


def test_eval_says_when_the_dataset_changed_since_training(finished_run, tmp_path):
    project, run_dir = finished_run
    copy = Project(tmp_path / "copy")
    shutil.copytree(project.root, copy.root, symlinks=True)
    record = runs.read_record(copy.gen_model / run_dir.name)
    eval_file = copy.resolve(record.dataset) / "eval.jsonl"
    eval_file.write_text("\n".join(eval_file.read_text().splitlines()[:-1]) + "\n")  # one row fewer
    result = run_cli("eval", run_dir.name, "--samples", "0", "--max-rows", "3", project=copy)
    assert result.returncode == 0, result.stderr
    assert "changed since training (eval.jsonl differ" in result.stdout
    measured = json.loads((copy.gen_model / run_dir.name / runs.EVAL_FILE).read_text())
    assert measured["dataset_since_training"].startswith("changed since training")
    assert measured["dataset_sha256"]["eval.jsonl"] != record.data_sha256["eval.jsonl"]


def test_the_base_build_dies_with_eval(finished_run, tmp_path):
    """eval builds the base model as int4 in a child process: killed eval, no build left running (minutes of
    CPU and GBs for Phi-3-mini), and the next eval builds it whole. SIGKILL leaves eval no way to clean up; the
    child dies through PR_SET_PDEATHSIG, which any end of eval (SIGTERM's default action included) triggers."""
    stop = signal.SIGKILL
    project, run_dir = finished_run
    copy = Project(tmp_path / "copy")
    shutil.copytree(project.root, copy.root, symlinks=True)
    shutil.rmtree(copy.model_cache / ".onnx-int4", ignore_errors=True)
    evaluating = start("eval", run_dir.name, "--samples", "0", "--max-rows", "2", project=copy, out=tmp_path / "eval.out")
    building = ("phi3e2e.build.base_int4", str(copy.model_cache))
    wait_for(lambda: processes_running(*building), evaluating, 120, "the base build")
    evaluating.send_signal(stop)
    evaluating.wait(timeout=30)
    deadline = time.monotonic() + 10
    while processes_running(*building) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_running(*building) == []
    again = run_cli("eval", run_dir.name, "--samples", "0", "--max-rows", "2", project=copy)
    assert again.returncode == 0, again.stderr
    assert [p.name for p in (copy.model_cache / ".onnx-int4").iterdir() if p.name.endswith(".partial")] == []


@pytest.fixture
def small_disk(tmp_path):
    """A 600 KiB tmpfs: room for a run's record and log, not for its models (root only)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_keeps_the_run_as_failed_with_its_record(tiny_project, small_disk):
    gen_model = tiny_project.gen_model
    shutil.rmtree(gen_model, ignore_errors=True)
    gen_model.symlink_to(small_disk)
    result = run_cli("finetune", "--run-name", "full", "--set", "training.max_steps=2", project=tiny_project)
    line = one_error_line(result)
    failed = runs.failed_dir(gen_model, "full")
    assert f"{failed.name}/" in line and ".full.partial" not in line  # points at the moved log
    assert runs.read_record(failed).status in ("failed", "running")
    assert (failed / runs.OLIVE_LOG).is_file() and not runs.partial_dir(gen_model, "full").exists()
