"""User story: after fine-tuning the tiny model on the sample data, `eval` shows it helped.

Real models only: the run's int4 ONNX model against the base model built as int4 the same way,
and the PyTorch merged/adapter forms. No network, nothing replaced.
"""

import json
import shutil
from pathlib import Path

import pytest
from helpers import quiet, run_cli

from phi3e2e.build.base_int4 import cached_base_int4
from phi3e2e.build.options import recorded_int4_options
from phi3e2e.errors import UserError
from phi3e2e.evaluate.evaluation import EvalOptions, evaluate_run
from phi3e2e.project import Project
from phi3e2e.runs import find_finished_run, read_record

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def evaluated_project(finished_run, tmp_path):
    """A copy of the finished project (eval writes into the run folder and model-cache/)."""
    original = finished_run[0]
    project = Project(tmp_path / "project")
    shutil.copytree(original.root, project.root, symlinks=True)
    # The run records project-relative paths, so the copy is self-contained.
    assert not Path(json.loads((project.gen_model / "e2e" / "run.json").read_text())["base_model"]).is_absolute()
    return project


def test_eval_shows_the_fine_tuned_int4_model_beats_the_base(evaluated_project):
    result = run_cli("eval", "--samples", "2", project=evaluated_project)
    assert result.returncode == 0, result.stderr
    run_dir = evaluated_project.gen_model / "e2e"
    evaluation = json.loads((run_dir / "eval.json").read_text())
    int4 = evaluation["losses"]["int4"]
    assert evaluation["eval_rows"] == 12 and evaluation["eval_tokens"] > 100
    assert int4["fine_tuned"]["loss"] < int4["base"]["loss"] - 1.0, int4
    assert int4["fine_tuned"]["perplexity"] < int4["base"]["perplexity"]
    # Project-relative, like run.json's paths: a copied project's eval.json stays true.
    assert int4["base"]["model"].startswith("model-cache/.onnx-int4/")
    assert int4["fine_tuned"]["model"] == "gen-model/e2e/onnx-int4"
    # Side-by-side answers to real eval questions, from both models.
    eval_questions = [
        json.loads(line)["Question"]
        for line in (run_dir.parent.parent / "datasets" / "sample" / "eval.jsonl").read_text().splitlines()
    ]
    assert [s["question"] for s in evaluation["samples"]] == eval_questions[:2]
    assert all(s["base"] != s["fine_tuned"] for s in evaluation["samples"])
    # The report and its plot exist and show the numbers.
    report = (run_dir / "eval-report.md").read_text()
    assert f"{int4['base']['loss']:.4f}" in report and f"{int4['fine_tuned']['loss']:.4f}" in report
    assert "![training and held-out loss](eval-loss.png)" in report and eval_questions[0] in report
    assert (run_dir / "eval-loss.png").read_bytes()[:8] == PNG
    assert "held-out loss" in result.stdout and "eval-report.md" in result.stdout
    # How sure: rows, a bootstrap interval around the change, and no verdict on 12 rows.
    low, high = int4["change_interval_95"]
    assert int4["rows"] == 12 and low <= int4["change"] <= high < 0
    assert int4["verdict"] == "too few eval rows to tell (12 < 20)"
    assert "95% interval" in result.stdout and "too few eval rows to tell (12 < 20)" in result.stdout
    assert f"{low:+.4f} to {high:+.4f}" in report


def test_the_int4_build_keeps_the_merged_models_gain(evaluated_project):
    """The quality rule on the default tiny fine-tune (the Phi-3-mini twin): the int4 build keeps at least 80% of
    the merged model's held-out gain over the base (issue 20; the other twins: test_family.py, measured by
    `finetune`'s closing eval)."""
    result = run_cli("eval", "--forms", "int4,merged", "--samples", "0", project=evaluated_project)
    assert result.returncode == 0, result.stderr
    evaluation = json.loads((evaluated_project.gen_model / "e2e" / "eval.json").read_text())
    keeps = evaluation["int4_keeps"]
    assert keeps["rows"] == 12 and keeps["merged_change"] < -1.0 and keeps["share"] >= 0.8 and keeps["enough"]
    assert "warning" not in result.stdout


def test_a_build_that_loses_the_gain_is_one_warning_line(evaluated_project):
    """An int4 folder that is the base model's build (what a broken build amounts to) beside a merged model
    that learned: `eval` says so in one line, with the command to chat with the merged form."""
    run_dir = evaluated_project.gen_model / "e2e"
    record = read_record(run_dir)
    base_int4 = cached_base_int4(evaluated_project.model_cache, evaluated_project.resolve(record.base_model),
                                 recorded_int4_options(record), say=quiet)  # fmt: skip
    shutil.rmtree(run_dir / "onnx-int4")
    shutil.copytree(base_int4, run_dir / "onnx-int4")
    result = run_cli("eval", "--forms", "int4,merged", "--samples", "0", project=evaluated_project)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "the int4 build keeps 0% of the merged model's held-out gain" in warnings[0]
    assert warnings[0].endswith("phi3e2e chat --model gen-model/e2e/merged")
    keeps = json.loads((run_dir / "eval.json").read_text())["int4_keeps"]
    assert keeps["share"] == 0 and not keeps["enough"]


def test_the_verdict_needs_enough_rows_and_an_interval_on_one_side_of_zero():
    from phi3e2e.evaluate.uncertainty import change_interval, kept_share, verdict

    tokens = [10] * 30
    base = [30.0 + i % 3 for i in range(30)]
    better = [value - 5 for value in base]
    low, high = change_interval(base, better, tokens)
    assert low == high == -0.5 and verdict(-0.5, [low, high], 30) == "better"
    noisy = [value + (3 if i % 2 else -3) for i, value in enumerate(base)]  # as often worse as better
    interval = change_interval(base, noisy, tokens)
    assert interval[0] < 0 < interval[1] and verdict(0.0, interval, 30).startswith("no clear change")
    assert verdict(-0.5, [-0.6, -0.4], 12) == "too few eval rows to tell (12 < 20)"
    assert verdict(0.5, [0.4, 0.6], 20) == "worse"
    assert kept_share(-0.9, -1.0) == 0.9 and kept_share(-0.5, 0.1) is None


def test_loss_matches_the_trainers_own_eval_loss(evaluated_project):
    """Our loss on the merged model equals the loss the trainer logged at the end: same rows, same tokens."""
    run_dir = evaluated_project.gen_model / "e2e"
    history = [json.loads(line) for line in (run_dir / "train-log.jsonl").read_text().splitlines()]
    trainer_eval_loss = [entry["eval_loss"] for entry in history if "eval_loss" in entry][-1]
    options = EvalOptions(forms=("merged", "adapter", "int4"), samples=0)
    losses = evaluate_run(evaluated_project, run_dir, options, say=quiet)["losses"]
    assert losses["merged"]["fine_tuned"]["loss"] == pytest.approx(trainer_eval_loss, abs=0.01)
    assert losses["adapter"]["fine_tuned"]["loss"] == pytest.approx(losses["merged"]["fine_tuned"]["loss"], abs=1e-3)
    assert losses["merged"]["base"]["loss"] == losses["adapter"]["base"]["loss"]
    # int4 costs a little accuracy, not the whole gain.
    assert losses["int4"]["fine_tuned"]["loss"] == pytest.approx(losses["merged"]["fine_tuned"]["loss"], abs=0.25)
    assert losses["int4"]["base"]["loss"] == pytest.approx(losses["merged"]["base"]["loss"], abs=0.25)


def test_base_int4_is_built_exactly_as_finetune_builds_its_int4(evaluated_project):
    """Built from the run's merged model, our base-int4 builder reproduces the run's onnx-int4 byte for byte."""
    run_dir = evaluated_project.gen_model / "e2e"
    options = recorded_int4_options(read_record(run_dir))
    record = json.loads((run_dir / "run.json").read_text())
    assert options == {"execution_provider": "cpu", **record["cpu_int4"]["build_options"]}
    built = cached_base_int4(evaluated_project.model_cache, run_dir / "merged", options, say=quiet)
    for name in ("model.onnx", "model.onnx.data"):
        assert (built / name).read_bytes() == (run_dir / "onnx-int4" / name).read_bytes(), name
    assert cached_base_int4(evaluated_project.model_cache, run_dir / "merged", options, say=quiet) == built


def test_eval_without_a_finished_run_says_what_to_run(tiny_project):
    result = run_cli("eval", project=tiny_project)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "phi3e2e finetune" in result.stderr


def test_eval_needs_an_eval_split(evaluated_project):
    (evaluated_project.datasets / "sample" / "eval.jsonl").write_text("")
    with pytest.raises(UserError, match="no eval split"):
        evaluate_run(evaluated_project, find_finished_run(evaluated_project, "e2e"), say=quiet)
    with pytest.raises(UserError, match="no run 'nope'"):
        find_finished_run(evaluated_project, "nope")
