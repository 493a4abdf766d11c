"""User story: the tiny model on a dataset larger than the sample still ends in about a minute,
and says so; an explicit choice of steps or epochs wins. Real `finetune --dry-run`, no network."""

import json

from helpers import run_cli

from phi3e2e.workflow.settings import TINY_MAX_STEPS


def _larger_dataset(tiny_project, rows=400):
    data = tiny_project.root / "bigger.jsonl"
    with open(data, "w") as f:
        for i in range(rows):
            f.write(json.dumps({"Question": f"What is item {i}?", "Best Answer": f"Item {i} is a coffee."}) + "\n")
    result = run_cli("prepare", "--data", str(data), project=tiny_project)
    assert result.returncode == 0, result.stderr


def _max_steps(tiny_project, run):
    config = json.loads((tiny_project.gen_model / run / "olive-config.json").read_text())
    return config["passes"]["finetune"]["training_args"]["max_steps"]


def test_tiny_profile_caps_its_steps_on_a_larger_dataset_and_says_so(tiny_project):
    _larger_dataset(tiny_project)
    result = run_cli("finetune", "--dry-run", "--run-name", "capped", project=tiny_project)
    assert result.returncode == 0, result.stderr
    assert f"training stops at {TINY_MAX_STEPS}" in result.stdout
    assert _max_steps(tiny_project, "capped") == TINY_MAX_STEPS
    record = json.loads((tiny_project.gen_model / "capped" / "run.json").read_text())
    assert record["settings"]["training"]["max_steps"] == TINY_MAX_STEPS


def test_an_explicit_choice_of_steps_or_epochs_wins(tiny_project):
    _larger_dataset(tiny_project)
    for name, setting, steps in (("steps", "training.max_steps=400", 400), ("epochs", "training.num_train_epochs=1", -1)):
        result = run_cli("finetune", "--dry-run", "--run-name", name, "--set", setting, project=tiny_project)
        assert result.returncode == 0, result.stderr
        assert "training stops at" not in result.stdout
        assert _max_steps(tiny_project, name) == steps


def test_the_bundled_sample_trains_its_full_epochs(tiny_project):
    result = run_cli("finetune", "--dry-run", "--run-name", "sample", project=tiny_project)
    assert result.returncode == 0, result.stderr
    assert "training stops at" not in result.stdout
    assert _max_steps(tiny_project, "sample") == -1


def test_evaluation_during_training_stays_a_small_share_of_training(tmp_path):
    """Olive's own default evaluated the whole split every logging step (a 10k-row dataset: 250 evaluations of
    1,000 rows, 8x the training compute). phi3e2e evaluates at checkpoints, on at most eval_max_rows rows, every
    N steps with evaluation under ~10% of training (3 row-passes per training row)."""
    from phi3e2e.train.inputs import RunInputs
    from phi3e2e.train.plan import affordable_eval_steps
    from phi3e2e.workflow.settings import build_settings

    def eval_steps(eval_rows, **overrides):
        dataset = tmp_path / f"data-{eval_rows}"
        dataset.mkdir(exist_ok=True)
        if eval_rows is not None:
            (dataset / "summary.json").write_text(json.dumps({"eval_rows": eval_rows}))
        inputs = RunInputs("m", "t", "e", "m", "d", "phi3-mini", dataset_dir=dataset)
        return affordable_eval_steps(build_settings("phi3-mini", overrides), inputs)

    # The recipe: 4 rows per step, a checkpoint every 100 steps, at most 200 eval rows per evaluation.
    assert eval_steps(1000) == 200  # 200 rows / (4 x 3 x 0.1) = 167 steps -> the next checkpoint
    assert eval_steps(12) == 100  # a small split: at every checkpoint
    assert eval_steps(None) == 200  # unknown (a remote data asset): as if the cap were reached
    assert eval_steps(1000, **{"training.eval_max_rows": 1000}) == 900  # the whole split: 834 steps -> 900
    assert eval_steps(1000, **{"training.per_device_train_batch_size": 8}) == 100
