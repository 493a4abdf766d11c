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
