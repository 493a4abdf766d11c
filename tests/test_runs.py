"""User story: after a few fine-tunes, `phi3e2e runs` shows them, one in full, two side by side,
and removes one the user no longer wants, without ever touching a run still being built.

Real runs only: a copy of the session's tiny fine-tune, evaluated for real on a few rows.
"""

import json
import shutil
import subprocess
import sys

import pytest
from helpers import quiet, run_cli

from phi3e2e.evaluate.evaluation import EvalOptions, evaluate_run
from phi3e2e.project import Project
from phi3e2e.runs import read_record, run_lock, write_record
from phi3e2e.runs.overview import list_runs, remove_run


@pytest.fixture(scope="module")
def runs_template(finished_run, tmp_path_factory):
    """The finished project, evaluated (a few rows), with a second run that differs in lora.r,
    a run being built, and a run folder whose run.json is broken. Copy it, don't modify it."""
    root = tmp_path_factory.mktemp("runs") / "project"
    shutil.copytree(finished_run[0].root, root, symlinks=True)
    project = Project(root)
    evaluate_run(project, project.gen_model / "e2e", EvalOptions(samples=0, max_rows=8), say=quiet)
    # A second run: the same folder with one setting changed (the overview reads records, not models).
    other = project.gen_model / "other"
    shutil.copytree(project.gen_model / "e2e", other)
    (other / "eval.json").unlink()
    record = read_record(other)
    record.name, record.finished_at = "other", "2000-01-01T00:00:00.000+00:00"
    record.settings.lora.r = 8
    write_record(other, record)
    (project.gen_model / ".building.partial").mkdir()
    broken = project.gen_model / "broken"
    broken.mkdir()
    (broken / "run.json").write_text("{ not json")
    return project


@pytest.fixture
def runs_project(runs_template, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(runs_template.root, root, symlinks=True)
    return Project(root)


def test_runs_lists_every_run_newest_first_with_its_losses(runs_project):
    result = run_cli("runs", "--json", project=runs_project)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"e2e", "other", "building", "broken"}
    e2e = rows["e2e"]
    assert (e2e["status"], e2e["algo"], e2e["target"]) == ("succeeded", "lora", "local")
    assert e2e["base_model"] == "model-cache/tiny-phi3" and e2e["dataset"].startswith("datasets/")
    assert e2e["steps"] > 0 and e2e["duration_s"] > 0
    record = read_record(runs_project.gen_model / "e2e")
    assert (e2e["train_loss_first"], e2e["train_loss_last"]) == (record.train_loss.first, record.train_loss.last)
    evaluation = json.loads((runs_project.gen_model / "e2e" / "eval.json").read_text())["losses"]["int4"]
    assert e2e["eval_loss_base"] == evaluation["base"]["loss"]
    assert e2e["eval_loss_fine_tuned"] == evaluation["fine_tuned"]["loss"]
    assert rows["other"]["eval_loss_base"] is None  # not evaluated: no number made up
    int4 = runs_project.gen_model / "e2e" / "onnx-int4"  # what ships: its files, not this CPU's prepacked cache
    assert (int4 / ".prepacked").is_dir()
    assert e2e["ships_bytes"] == sum(f.stat().st_size for f in int4.iterdir() if f.is_file() and f.name[0] != ".")
    assert rows["building"]["status"] == "interrupted"  # a .partial/ whose builder is gone
    assert rows["broken"]["status"] == "broken" and "run.json" in rows["broken"]["problem"]
    order = [row["name"] for row in json.loads(result.stdout)]
    assert order.index("e2e") < order.index("other")  # "other" finished in 2000


def test_runs_table_shows_a_broken_run_as_a_row_not_an_error(runs_project):
    result = run_cli("runs", project=runs_project)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["run", "status", "algo"]
    e2e = next(line for line in lines if line.startswith("e2e "))
    record = read_record(runs_project.gen_model / "e2e")
    assert f"{record.train_loss.first:.2f} -> {record.train_loss.last:.2f}" in e2e
    assert " done " in e2e and "tiny-phi3" in e2e
    assert any(line.startswith("broken ") and " broken " in line for line in lines)
    assert any(line.startswith("broken: gen-model/broken/run.json: not a readable run record") for line in lines)
    assert any(line.startswith("building ") and " interrupted " in line for line in lines)


def test_runs_show_has_settings_versions_files_and_eval(runs_project):
    result = run_cli("runs", "show", "e2e", project=runs_project)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "lora.r" in out and "training.learning_rate" in out
    assert "transformers" in out and "olive-ai" in out
    assert "onnx-int4" in out and "run.json" in out and ("kB" in out or "MB" in out)
    assert "held-out loss" in out and "8 held-out rows" in out
    data = json.loads(run_cli("runs", "show", "e2e", "--json", project=runs_project).stdout)
    assert data["record"]["name"] == "e2e" and data["files"]["run.json"] > 0


def test_runs_compare_lists_only_the_settings_that_differ(runs_project):
    result = run_cli("runs", "compare", "e2e", "other", project=runs_project)
    assert result.returncode == 0, result.stderr
    settings = [line.split() for line in result.stdout.splitlines()[1:] if line.strip() and "loss" not in line]
    assert ["lora.r", "16", "8"] in settings
    assert not any(row[0] == "lora.alpha" for row in settings)  # the same in both: not shown
    assert any(line.startswith("held-out loss, fine-tuned int4") for line in result.stdout.splitlines())


def test_runs_show_of_a_broken_or_unknown_run_is_one_error_line(runs_project):
    broken = run_cli("runs", "show", "broken", project=runs_project)
    assert broken.returncode == 2 and broken.stderr.startswith("error: ") and "run.json" in broken.stderr
    assert "Traceback" not in broken.stderr
    unknown = run_cli("runs", "show", "nope", project=runs_project)
    assert unknown.returncode == 2 and "no run 'nope'" in unknown.stderr and "e2e" in unknown.stderr


def test_runs_rm_asks_and_keeps_the_run_on_no(runs_project):
    env = {"PHI3E2E_PROJECT_DIR": str(runs_project.root)}
    result = subprocess.run([sys.executable, "-m", "phi3e2e", "runs", "rm", "e2e"], input="n\n",
                            capture_output=True, text=True, env={**__import__("os").environ, **env})  # fmt: skip
    assert result.returncode == 1 and "Nothing deleted" in result.stdout
    assert (runs_project.gen_model / "e2e" / "run.json").is_file()
    result = subprocess.run([sys.executable, "-m", "phi3e2e", "runs", "rm", "e2e"], input="y\n",
                            capture_output=True, text=True, env={**__import__("os").environ, **env})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not (runs_project.gen_model / "e2e").exists()
    left = sorted(p.name for p in runs_project.gen_model.iterdir() if p.is_dir() and ".removing" not in p.name)
    assert [name for name in left if not name.startswith(".") or name.endswith(".partial")] == [
        ".building.partial", "broken", "other"]  # fmt: skip


def test_runs_rm_refuses_a_run_in_progress(runs_project):
    with run_lock(runs_project.gen_model, "building"):  # this test process is the run's builder
        rows = {row["name"]: row for row in json.loads(run_cli("runs", "--json", project=runs_project).stdout)}
        assert rows["building"]["status"] == "running"
        result = run_cli("runs", "rm", "building", "--yes", project=runs_project)
        assert result.returncode == 2 and "being built by process" in result.stderr
        assert (runs_project.gen_model / ".building.partial").is_dir()
    # Once its builder is gone, the interrupted run can be removed.
    assert run_cli("runs", "rm", "building", "--yes", project=runs_project).returncode == 0
    assert not (runs_project.gen_model / ".building.partial").exists()


def test_runs_rm_yes_removes_a_broken_run_and_leaves_no_trace(runs_project):
    result = run_cli("runs", "rm", "broken", "--yes", project=runs_project)
    assert result.returncode == 0, result.stderr
    assert [row.name for row in list_runs(runs_project) if row.name == "broken"] == []
    assert not [p for p in runs_project.gen_model.iterdir() if "removing" in p.name]


def test_a_removal_that_fails_halfway_leaves_the_run_gone_not_half_there(runs_project, monkeypatch):
    """Deleting happens after the rename: a crash mid-delete leaves only a hidden folder."""

    def crash(path, *args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(shutil, "rmtree", crash)
    with pytest.raises(OSError):
        remove_run(runs_project, "other")
    assert "other" not in [row.name for row in list_runs(runs_project)]
    assert [p.name for p in runs_project.gen_model.iterdir() if p.name.startswith(".other.removing-")]
    assert not (runs_project.gen_model / "other").exists()


def test_runs_in_an_empty_project_says_what_to_run(tmp_path):
    result = run_cli("runs", env={"PHI3E2E_PROJECT_DIR": str(tmp_path)})
    assert result.returncode == 0 and "phi3e2e finetune" in result.stdout


def test_a_killed_removal_is_finished_by_the_next_runs_command(runs_project):
    """`runs rm` killed halfway left hidden `.NAME.removing-PID` folders: the next `runs` or `runs rm` finishes it,
    and a second removal of the same name never collides with the first's leftovers."""
    gen = runs_project.gen_model
    dead = 999_999_999  # no such process
    for leftover in (f".old.removing-{dead}", f".old.checkpoints.removing-{dead}"):
        (gen / leftover / "checkpoint-20").mkdir(parents=True)
    assert run_cli("runs", "--json", project=runs_project).returncode == 0
    assert not [p.name for p in gen.iterdir() if ".removing-" in p.name]
    (gen / f".other.checkpoints.removing-{dead}" / "x").mkdir(parents=True)
    (gen / ".checkpoints" / "other" / "checkpoint-20").mkdir(parents=True)
    result = run_cli("runs", "rm", "other", "--yes", project=runs_project)
    assert result.returncode == 0, result.stderr
    assert not (gen / "other").exists() and not (gen / ".checkpoints" / "other").exists()
    assert not [p.name for p in gen.iterdir() if ".removing-" in p.name]


def test_a_run_argument_takes_latest_or_a_unique_prefix(runs_project):
    """As `eval`, `serve` and `export` default to the newest run, every RUN also takes `latest` or a prefix."""
    ambiguous = run_cli("runs", "show", "b", project=runs_project)
    assert ambiguous.returncode == 2 and len(ambiguous.stderr.strip().splitlines()) == 1
    assert "matches 2 runs" in ambiguous.stderr and "broken" in ambiguous.stderr and "building" in ambiguous.stderr
    shutil.rmtree(runs_project.gen_model / "broken")
    (runs_project.gen_model / ".building.partial").rmdir()
    newest = list_runs(runs_project)[0].name
    shown = run_cli("runs", "show", "latest", "--json", project=runs_project)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["record"]["name"] == newest
    assert json.loads(run_cli("runs", "show", "e2", "--json", project=runs_project).stdout)["record"]["name"] == "e2e"
    compared = run_cli("runs", "compare", "e2", "oth", project=runs_project)
    assert compared.returncode == 0 and "lora.r" in compared.stdout


def test_matching_a_run_name():
    from phi3e2e.errors import UserError
    from phi3e2e.runs import match_run

    names = ["20261204-1010-lora", "20261204-0900-qlora", "20261203-2300-lora"]
    assert match_run("latest", names) == names[0]
    assert match_run("20261204-09", names) == "20261204-0900-qlora"
    assert match_run("20261203-2300-lora", names) == "20261203-2300-lora"
    assert match_run("nope", names) == "nope"  # the caller says it is missing
    assert match_run("gen-model/x", names) == "gen-model/x"  # a path is not a prefix
    with pytest.raises(UserError, match="matches 2 runs"):
        match_run("20261204", names)


def test_runs_rm_with_no_one_to_ask_says_to_pass_yes(runs_project):
    import os

    env = dict(os.environ, PHI3E2E_PROJECT_DIR=str(runs_project.root))
    result = subprocess.run([sys.executable, "-m", "phi3e2e", "runs", "rm", "e2e"], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, env=env)  # fmt: skip
    assert result.returncode == 2 and "pass --yes" in result.stderr.splitlines()[-1]
    assert (runs_project.gen_model / "e2e" / "run.json").is_file()


def test_dry_runs_are_hidden_unless_all_and_a_run_shows_only_its_algorithms_settings(runs_project):
    dry = run_cli("finetune", "--dry-run", "--run-name", "tried", project=runs_project)
    assert dry.returncode == 0, dry.stderr
    listed = {row["name"] for row in json.loads(run_cli("runs", "--json", project=runs_project).stdout)}
    every = {row["name"] for row in json.loads(run_cli("runs", "--json", "--all", project=runs_project).stdout)}
    assert "tried" not in listed and every == listed | {"tried"}
    table = run_cli("runs", project=runs_project).stdout
    assert not any(line.startswith("tried ") for line in table.splitlines()) and "1 dry-run not shown (--all)" in table
    assert any(line.startswith("tried ") for line in run_cli("runs", "--all", project=runs_project).stdout.splitlines())

    shown = run_cli("runs", "show", "e2e", project=runs_project).stdout
    assert "lora.r" in shown and "qlora." not in shown  # a LoRA run never read the quantization settings
    quantized = runs_project.gen_model / "quantized"
    shutil.copytree(runs_project.gen_model / "e2e", quantized)
    record = read_record(quantized)
    record.name, record.algo = "quantized", "qlora"
    write_record(quantized, record)
    assert "qlora.quant_type" in run_cli("runs", "show", "quantized", project=runs_project).stdout
    compared = run_cli("runs", "compare", "e2e", "quantized", project=runs_project).stdout.splitlines()
    quant_type = next(line for line in compared if line.startswith("qlora.quant_type"))
    assert "(not used)" in quant_type and '"nf4"' in quant_type
