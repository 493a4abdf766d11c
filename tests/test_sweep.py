"""User story: sweep LoRA rank x learning rate on the tiny model, stop it with Ctrl-C in trial 3, resume it, and
get the trials ranked by their int4 model's held-out loss; each trial is an ordinary run that chats.

The pure logic (search space, grid, Optuna's next values, the median rule, the ranking, the node's overrides) is
tested without training. The real sweep runs once (module fixture, 4 tiny trials of 2 steps); several tests read
it. Nothing is replaced: the Azure ML sweep job is only written and loaded offline with the SDK's own load_job.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import quiet, run_cli

from phi3e2e.build.olive_runner import ProgressReader
from phi3e2e.errors import UserError
from phi3e2e.project import Project
from phi3e2e.sweep.ranking import MedianPruner, TrialPruned, median_rule, rank_trials
from phi3e2e.sweep.record import SweepRecord, TrialRecord, read_sweep, sweep_file, write_sweep
from phi3e2e.sweep.space import optuna_values, parse_space
from phi3e2e.train.aml.compute_entry import apply_overrides

GRID = ["--set", "lora.r=4,8", "--set", "training.learning_rate=1e-3,5e-3", "--set", "training.max_steps=2"]


# --- the search space -------------------------------------------------------------------------


def test_comma_lists_are_dimensions_and_the_grid_walks_them_in_order():
    space = parse_space(["lora.r=8,16,64", "training.learning_rate=1e-4,3e-4", "training.max_steps=5"], None, None)
    assert space.search == "grid" and space.trials == 6 and space.fixed == ["training.max_steps=5"]
    assert [d.values for d in space.dimensions] == [[8, 16, 64], [1e-4, 3e-4]]  # typed as the settings hold them
    points = [space.grid_point(n) for n in range(1, 7)]
    assert points[0] == {"lora.r": 8, "training.learning_rate": 1e-4}
    assert points[5] == {"lora.r": 64, "training.learning_rate": 3e-4}
    assert len({tuple(p.values()) for p in points}) == 6
    assert space.set_args(points[1]) == ["training.max_steps=5", "lora.r=8", "training.learning_rate=0.0003"]


def test_ranges_choose_tpe_and_learning_rates_are_log_scaled():
    space = parse_space(["lora.r=8..64", "training.learning_rate=1e-5..1e-3", "lora.target_modules=[qkv_proj]"],
                        None, 3)  # fmt: skip
    rank, rate = space.dimensions
    assert space.search == "tpe" and space.fixed == ["lora.target_modules=[qkv_proj]"]  # a list is never split
    assert (rank.integer, rank.log, rate.integer, rate.log) == (True, False, False, True)
    history = []
    for number in (1, 2, 3):
        values = optuna_values(space, history, number)
        assert isinstance(values["lora.r"], int) and 8 <= values["lora.r"] <= 64
        assert 1e-5 <= values["training.learning_rate"] <= 1e-3
        history.append((values, "succeeded", float(number)))
    # The seed is the trial number: a resumed sweep asks Optuna the same question again.
    assert optuna_values(space, history[:1], 2) == history[1][0]


@pytest.mark.parametrize("set_args, search, trials, fragments", [
    (["lora.rank=8,16"], None, None, ["lora.rank", "lora.r"]),
    (["lora.r=8,sixteen"], None, None, ["lora.r", "integer"]),
    (["lora.r=8..x"], None, 2, ["lora.r=8..x", "two numbers"]),
    (["lora.r=64..8"], None, 2, ["lora.r=64..8", "low end"]),
    (["lora.r=8.5..16"], None, 2, ["lora.r", "whole"]),
    (["training.learning_rate=0..1e-3"], "random", 2, ["training.learning_rate"]),
    (["lora.r=8..64"], "grid", None, ["lora.r", "range", "random or tpe"]),
    (["lora.r=8,16"], None, 3, ["--trials 3", "only 2 points"]),
    (["lora.r=8..64"], "random", None, ["--trials", "random"]),
    (["training.max_steps=5"], None, None, ["nothing to sweep"]),
    (["lora.r=8,16", "lora.r=32"], None, None, ["lora.r", "both fixed and swept"]),
])  # fmt: skip
def test_bad_space_is_one_line_naming_the_field(set_args, search, trials, fragments):
    with pytest.raises(UserError) as error:
        parse_space(set_args, search, trials)
    assert "\n" not in str(error.value)
    for fragment in fragments:
        assert fragment in str(error.value)


# --- the median rule and the ranking ----------------------------------------------------------


def test_median_rule_stops_only_a_clearly_worse_trial():
    finished = [{10: 2.0, 20: 1.5}, {10: 2.2, 20: 1.7}, {10: 2.4}]
    assert median_rule(10, 2.6, finished, total_steps=40)  # median 2.2, +5% is 2.31
    assert median_rule(10, 2.3, finished, total_steps=40) is None  # within the margin
    assert median_rule(20, 9.0, finished[:1], total_steps=40) is None  # one peer at step 20 is too few
    assert median_rule(0, 9.0, [{0: 1.0}, {0: 1.0}]) is None  # nothing trained yet
    assert median_rule(40, 9.0, [{40: 1.0}, {40: 1.0}], total_steps=40) is None  # the last step: nothing to save


def test_the_progress_reader_hands_eval_losses_to_the_pruner_which_stops_the_run():
    reader = ProgressReader(quiet, logging_steps=5, on_eval=MedianPruner([{10: 2.0}, {10: 2.1}]))
    for line in ["Running pass finetune:lora", "  2%|▏         | 1/20 [00:00<00:08,  7.12it/s]",
                 "{'loss': '7.55', 'epoch': '0.25'}", "{'loss': '7.1', 'epoch': '0.5'}"]:  # fmt: skip
        reader.feed(line)
    reader.feed("{'eval_loss': '2.05', 'eval_runtime': '0.1', 'epoch': '0.5'}")  # step 10, near the median: go on
    with pytest.raises(TrialPruned, match="pruned at step 10"):
        reader.feed("{'eval_loss': '3.5', 'eval_runtime': '0.1', 'epoch': '0.5'}")


def _trial(gen_model, number, status, loss=None):
    run = f"s-t{number}"
    if loss is not None:
        (gen_model / run).mkdir(parents=True)
        (gen_model / run / "eval.json").write_text(json.dumps({"losses": {"int4": {"fine_tuned": {"loss": loss}}}}))
    return TrialRecord(number=number, run=run, values={"lora.r": number}, status=status, objective=loss)


def test_ranking_sorts_by_the_int4_loss_marks_the_best_and_lists_unscored_trials_last(tmp_path):
    space = parse_space(["lora.r=1,2,3,4,5"], None, None)
    trials = [_trial(tmp_path, 1, "succeeded", 3.0), _trial(tmp_path, 2, "pruned"), _trial(tmp_path, 3, "succeeded", 2.5),
              _trial(tmp_path, 4, "failed"), _trial(tmp_path, 5, "succeeded", 2.9)]  # fmt: skip
    record = SweepRecord(name="s", target="local", algo="lora", space=space, created_at="now", trials=trials)
    ranked = rank_trials(record, tmp_path)
    assert [(r.rank, r.trial.number, r.best) for r in ranked] == [
        (1, 3, True), (2, 5, False), (3, 1, False), (None, 2, False), (None, 4, False)]  # fmt: skip
    # sweep.json is replaced whole: the record reads back as written, no temporary file beside it.
    write_sweep(tmp_path, record)
    assert read_sweep(tmp_path, "s") == record
    assert [p.name for p in tmp_path.glob("s.sweep*")] == ["s.sweep.json"]


def test_the_node_writes_a_trial_value_into_the_config():
    config = {"passes": {"finetune": {"r": 16, "training_args": {"learning_rate": 0.001}}}, "data_configs": [{"x": 1}]}
    apply_overrides(config, ["passes.finetune.r=32.0", "passes.finetune.training_args.learning_rate=3e-4",
                             "data_configs.0.x=2"])  # fmt: skip
    assert config == {"passes": {"finetune": {"r": 32, "training_args": {"learning_rate": 3e-4}}},
                      "data_configs": [{"x": 2}]}  # fmt: skip
    assert type(config["passes"]["finetune"]["r"]) is int  # Azure ML's quniform gives 32.0; LoRA's r is whole


# --- the command line: refusals and the Azure ML sweep job ------------------------------------


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_requests_fail_in_one_line_and_write_nothing(tiny_project):
    before = sorted(p.name for p in tiny_project.gen_model.iterdir()) if tiny_project.gen_model.exists() else []
    assert_one_line_error(run_cli("sweep", "--set", "lora.r=8..64", "--set", "training.max_steps=2", "--search",
                                  "grid", project=tiny_project), "lora.r", "random or tpe")  # fmt: skip
    assert_one_line_error(run_cli("sweep", "--set", "lora.r=8,16", "--trials", "5", project=tiny_project),
                          "--trials 5", "only 2")  # fmt: skip
    after = sorted(p.name for p in tiny_project.gen_model.iterdir()) if tiny_project.gen_model.exists() else []
    assert [name for name in after if name not in before and name != ".locks"] == []
    # A name a sweep already has is refused, and that sweep's record is left as it was.
    existing = SweepRecord(name="taken", target="local", algo="lora", created_at="now",
                           space=parse_space(["lora.r=8,16"], None, None))  # fmt: skip
    write_sweep(tiny_project.gen_model, existing)
    text = sweep_file(tiny_project.gen_model, "taken").read_text()
    assert_one_line_error(run_cli("sweep", "--set", "lora.r=8,16", "--name", "taken", project=tiny_project),
                          "--name taken", "exists", "--resume taken")  # fmt: skip
    assert sweep_file(tiny_project.gen_model, "taken").read_text() == text


def test_aml_dry_run_writes_a_sweep_job_that_loads_offline(tiny_project):
    from azure.ai.ml import load_job

    result = run_cli("sweep", "--set", "lora.r=8,16,64", "--set", "training.learning_rate=1e-4,3e-4", "--name", "az",
                     "--target", "aml", "--compute", "gpu-a100", "--dry-run", project=tiny_project)  # fmt: skip
    assert result.returncode == 0, result.stderr
    job_file = tiny_project.gen_model / "az" / "aml-sweep.yml"
    job = load_job(job_file)
    assert job.type == "sweep"
    assert (job.objective.goal, job.objective.primary_metric) == ("minimize", "eval_loss")
    assert (job.limits.max_total_trials, job.limits.max_concurrent_trials) == (6, 4)
    assert type(job.early_termination).__name__ == "MedianStoppingPolicy"
    assert getattr(job.sampling_algorithm, "type", job.sampling_algorithm) == "grid"
    assert job.search_space["lora_r"].values == [8, 16, 64]
    job._to_rest_object()  # what create_or_update would send: builds offline
    # The trial's overrides, with a trial's values, give the config a local run of those values renders.
    command = job.trial.command
    overrides = [part.split("=", 1) for part in command.split() if part.startswith("passes.")]
    values = {"${{search_space.lora_r}}": "16", "${{search_space.training_learning_rate}}": "0.0003"}
    config = json.loads((tiny_project.gen_model / "az" / "aml-code" / "olive-config.json").read_text())
    apply_overrides(config, [f"{path}={values[placeholder]}" for path, placeholder in overrides])
    assert config["passes"]["finetune"]["r"] == 16
    assert config["passes"]["finetune"]["training_args"]["learning_rate"] == 3e-4
    assert read_sweep(tiny_project.gen_model, "az").status == "dry-run"


# --- the real sweep: 2 x 2 on the tiny model, Ctrl-C in trial 3, resumed ------------------------


@pytest.fixture(scope="module")
def swept(finished_run, tmp_path_factory):
    """`phi3e2e sweep` of 4 trials, stopped with Ctrl-C once trial 3's fine-tune has started, then resumed:
    (project, the interrupted sweep's stderr, its record then, trial 1-2 run.json then, the resume's stdout).

    A copy of the session's finished project: its base int4 model (the eval's baseline) is already built."""
    root = tmp_path_factory.mktemp("sweep") / "project"
    shutil.copytree(finished_run[0].root, root, symlinks=True)
    project = Project(root)
    env = dict(os.environ, PHI3E2E_PROJECT_DIR=str(root), PYTHONUNBUFFERED="1")
    sweep = subprocess.Popen([sys.executable, "-m", "phi3e2e", "sweep", *GRID, "--name", "s"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    # Stopped once Olive runs (its output read line by line): not while Python forks it, where a KeyboardInterrupt
    # is ignored (logging's at-fork hook), and before the trial's training is spent.
    olive_log = project.gen_model / ".s-t3.partial" / "olive.log"
    deadline = time.monotonic() + 400
    while sweep.poll() is None and time.monotonic() < deadline:
        if olive_log.exists() and "Running pass finetune" in olive_log.read_text(errors="replace"):
            break
        time.sleep(0.2)
    sweep.send_signal(signal.SIGINT)  # Ctrl-C
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 2, stderr
    earlier = {n: (project.gen_model / f"s-t{n}" / "run.json").read_text() for n in (1, 2)}
    interrupted = read_sweep(project.gen_model, "s")
    resumed = run_cli("sweep", "--resume", "s", project=project)
    assert resumed.returncode == 0, resumed.stderr
    return project, stderr, interrupted, earlier, resumed.stdout


@pytest.mark.e2e
def test_ctrl_c_leaves_the_sweep_resumable_and_resume_runs_only_what_is_missing(swept):
    project, stderr, interrupted, earlier, resumed = swept
    assert "--resume s" in stderr and len(stderr.strip().splitlines()) == 1
    assert [t.status for t in interrupted.trials] == ["succeeded", "succeeded", "interrupted", "pending"]
    assert interrupted.status == "interrupted"
    assert "2 of 4 trials to run" in resumed
    assert "Trial 1/" not in resumed and "Trial 2/" not in resumed and "Trial 3/4" in resumed and "Trial 4/4" in resumed
    for n in (1, 2):  # the finished trials were left alone
        assert (project.gen_model / f"s-t{n}" / "run.json").read_text() == earlier[n]
    third = json.loads((project.gen_model / "s-t3" / "run.json").read_text())
    assert third["resumed_from"]["previous_status"] == "failed"  # the interrupted run, continued
    record = read_sweep(project.gen_model, "s")
    assert record.status == "finished" and [t.status for t in record.trials] == ["succeeded"] * 4


@pytest.mark.e2e
def test_trials_are_ordinary_runs_ranked_by_int4_held_out_loss(swept):
    project = swept[0]
    record = read_sweep(project.gen_model, "s")
    for trial in record.trials:
        run = json.loads((project.gen_model / trial.run / "run.json").read_text())
        assert run["status"] == "succeeded" and run["sweep"] == {"sweep": "s", "trial": trial.number}
        evaluation = json.loads((project.gen_model / trial.run / "eval.json").read_text())
        assert trial.objective == evaluation["losses"]["int4"]["fine_tuned"]["loss"]
        assert run["settings"]["lora"]["r"] == trial.values["lora.r"]
        assert run["settings"]["training"]["learning_rate"] == trial.values["training.learning_rate"]
    assert sorted(tuple(t.values.values()) for t in record.trials) == [(4, 1e-3), (4, 5e-3), (8, 1e-3), (8, 5e-3)]
    shown = run_cli("runs", "--sweep", "s", "--json", project=project)
    assert shown.returncode == 0, shown.stderr
    ranked = json.loads(shown.stdout)["trials"]
    objectives = [row["objective"] for row in ranked]
    assert objectives == sorted(objectives) and [row["rank"] for row in ranked] == [1, 2, 3, 4]
    assert [row["best"] for row in ranked] == [True, False, False, False]
    assert record.best == ranked[0]["number"]
    assert (project.gen_model / "s.sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = run_cli("runs", "--sweep", "s", project=project).stdout
    assert table.count("<- best") == 1 and f"{ranked[0]['run']} " in table.splitlines()[2]
    # Every trial is listed by `runs` like any run.
    listed = json.loads(run_cli("runs", "--json", project=project).stdout)
    assert {"s-t1", "s-t2", "s-t3", "s-t4"} <= {row["name"] for row in listed}
    assert "Resuming s-t3" in swept[4]  # the interrupted trial continued, not started over


@pytest.mark.e2e
def test_each_trial_chats(swept):
    from phi3e2e.infer.chat import ChatSession, GenerationOptions

    project = swept[0]
    for number in (1, 2, 3, 4):
        session = ChatSession(project.gen_model / f"s-t{number}" / "onnx-int4",
                              GenerationOptions(max_new_tokens=8, min_new_tokens=4))  # fmt: skip
        assert session.ask("How long does shipping take?").tokens >= 4
    result = run_cli("chat", "--model", str(project.gen_model / "s-t4"), "--prompt", "Where is your roastery?",
                     "--max-length", "16", "--min-length", "4", project=project)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip(), result.stderr


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the ignored KeyboardInterrupt
def test_a_ctrl_c_python_swallows_is_still_noted():
    """A KeyboardInterrupt raised in a finalizer (or an at-fork hook, as when a trial forks Olive) is ignored by
    Python; the sweep still sees that Ctrl-C was pressed and stops before its next trial."""
    from phi3e2e.sweep.local import noting_ctrl_c

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between bytecodes: here, inside the finalizer
                pass

    before = signal.getsignal(signal.SIGINT)  # Python's own handler; SIG_IGN where pytest was started in the background
    with noting_ctrl_c() as pressed:
        Finalized()  # dropped at once: its finalizer runs, and the KeyboardInterrupt raised there is ignored
        assert pressed == [True]
    assert signal.getsignal(signal.SIGINT) is before  # given back as it was
