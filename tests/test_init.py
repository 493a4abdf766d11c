"""User story: `phi3e2e init` a project, edit its workflow templates, and see the edit in the run.

init never overwrites: where a project already is, it changes nothing; a failure leaves nothing.
"""

import json
from pathlib import Path

import pytest
from helpers import run_cli

from phi3e2e.errors import UserError
from phi3e2e.prepare import init_project as init_module
from phi3e2e.prepare.init_project import init_project
from phi3e2e.project import Project
from phi3e2e.resources import aml_conda_env, templates_dir

SCAFFOLD = ["datasets/", "model-cache/", "gen-model/", "templates/", "setup/", ".gitignore", "README.md"]
TEMPLATES = ["adapter-int4.json.j2", "lora.json.j2", "model-builder.json.j2", "qlora.json.j2"]


def tree(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder` with its content: to show that nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else "<dir>" for p in sorted(folder.rglob("*"))}


def test_init_scaffolds_the_recipe_project(tmp_path):
    root = tmp_path / "proj"
    result = run_cli("init", str(root))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"Created a phi3e2e project in {root}: {'  '.join(SCAFFOLD)}"
    assert f"cd {root} && phi3e2e prepare" in result.stdout
    for folder in ("datasets", "model-cache", "gen-model"):
        assert (root / folder).is_dir() and not any((root / folder).iterdir())
    assert sorted(p.name for p in (root / "templates").iterdir()) == TEMPLATES
    for name in TEMPLATES:  # ready-to-edit copies of what phi3e2e ships
        assert (root / "templates" / name).read_text() == (templates_dir() / name).read_text()
    assert (root / "setup" / "conda.yaml").read_text() == aml_conda_env().read_text()
    ignored = [line for line in (root / ".gitignore").read_text().splitlines() if line and not line.startswith("#")]
    assert ignored == ["model-cache/*", "gen-model/*"]  # templates, setup, datasets and phi3e2e.json are versioned
    readme = (root / "README.md").read_text()
    for word in ("datasets/", "model-cache/", "gen-model/", "templates/", "setup/", "phi3e2e prepare",
                 "phi3e2e finetune", "phi3e2e chat", "--dry-run"):
        assert word in readme
    assert [p.name for p in tmp_path.iterdir()] == ["proj"]  # no temporary folder left beside it
    assert root.stat().st_mode == (root / "datasets").stat().st_mode  # the usual umask, not mkdtemp's 0700


def test_init_where_a_project_is_changes_nothing_and_says_so(tmp_path):
    root = tmp_path / "proj"
    assert run_cli("init", str(root)).returncode == 0
    (root / "templates" / "lora.json.j2").write_text("my edits")
    before = tree(root)
    again = run_cli("init", env={"PHI3E2E_PROJECT_DIR": str(root)})  # no DIR: the project folder
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"A phi3e2e project is already in {root} (found datasets/, ")
    assert "nothing changed" in again.stdout
    assert tree(root) == before


@pytest.mark.parametrize("marker", ["phi3e2e.json", "gen-model", "templates", "setup"])
def test_any_sign_of_a_project_stops_init(tmp_path, marker):
    """A project made by `prepare` before init existed has phi3e2e.json and the data folders."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / marker).mkdir() if marker != "phi3e2e.json" else (root / marker).write_text("{}")
    result = init_project(root)
    assert result.found == [marker if marker == "phi3e2e.json" else f"{marker}/"] and not result.created
    assert [p.name for p in root.iterdir()] == [marker]


def test_an_old_project_without_templates_is_told_how_to_get_them(tiny_project):
    before = tree(tiny_project.root)
    result = run_cli("init", project=tiny_project)
    assert result.returncode == 0, result.stderr
    assert "found datasets/, model-cache/, phi3e2e.json" in result.stdout
    assert f"mkdir templates && cp {templates_dir()}/*.j2 templates/" in result.stdout
    assert tree(tiny_project.root) == before


def test_init_in_a_fresh_git_repository_keeps_its_readme_and_gitignore(tmp_path):
    (tmp_path / "README.md").write_text("# my model\n")
    (tmp_path / ".gitignore").write_text("*.pyc\n")
    (tmp_path / "notes.txt").write_text("mine\n")
    result = run_cli("init", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "kept your README.md as it is" in result.stdout
    assert "kept your .gitignore as it is: add model-cache/* and gen-model/* to it" in result.stdout
    assert (tmp_path / "README.md").read_text() == "# my model\n"
    assert (tmp_path / ".gitignore").read_text() == "*.pyc\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".gitignore", "README.md", "notes.txt", "datasets", "model-cache", "gen-model", "templates", "setup"])


def test_init_on_a_file_is_one_error_line(tmp_path):
    (tmp_path / "proj").write_text("not a folder")
    result = run_cli("init", str(tmp_path / "proj"))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "is a file" in result.stderr


@pytest.mark.parametrize("exists", [False, True])
def test_a_failure_midway_leaves_nothing_half_written(tmp_path, monkeypatch, exists):
    """The Azure ML conda file is copied after the folders and templates: make it missing."""
    monkeypatch.setattr(init_module, "aml_conda_env", lambda: tmp_path / "no-such-conda.yaml")
    root = tmp_path / "proj"
    if exists:
        root.mkdir()
        (root / "notes.txt").write_text("mine\n")
    before = tree(tmp_path)
    with pytest.raises(UserError, match="could not create the project in .*proj.*nothing was written"):
        init_project(root)
    assert tree(tmp_path) == before


def test_a_failure_while_moving_into_an_existing_folder_undoes_the_moves(tmp_path, monkeypatch):
    root = tmp_path / "proj"
    root.mkdir()
    (root / "notes.txt").write_text("mine\n")
    rename = Path.rename

    def rename_until_setup(self, target):
        if Path(target).name == "setup":
            raise OSError("disk full")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", rename_until_setup)
    with pytest.raises(UserError, match="disk full"):
        init_project(root)
    assert tree(root) == {"notes.txt": b"mine\n"}  # datasets/ ... templates/ were moved in, then taken back


def test_init_prepare_then_an_edited_template_shows_in_the_dry_run(tmp_path):
    """Done when: init proj && cd proj && prepare --tiny; edit templates/; finetune --dry-run shows it."""
    root = tmp_path / "proj"
    assert run_cli("init", str(root)).returncode == 0
    project = Project(root)
    prepared = run_cli("prepare", "--tiny", project=project)
    assert prepared.returncode == 0, prepared.stderr
    lora = root / "templates" / "lora.json.j2"
    text = lora.read_text()
    for old, new in [('"lora_dropout": {{ s.lora.dropout | tojson }}', '"lora_dropout": 0.123'),
                     ('"save_strategy": "steps"', '"save_strategy": "epoch"')]:
        assert old in text
        text = text.replace(old, new)
    lora.write_text(text)
    result = run_cli("finetune", "--algo", "lora", "--dry-run", project=project)
    assert result.returncode == 0, result.stderr
    (config_file,) = (root / "gen-model").glob("*/olive-config.json")
    finetune = json.loads(config_file.read_text())["passes"]["finetune"]
    assert finetune["lora_dropout"] == 0.123 and finetune["training_args"]["save_strategy"] == "epoch"

    # A broken edit fails before anything runs, naming the project's template and its line.
    lora.write_text(text.replace("s.lora.r | tojson", "s.lora.rank | tojson"))
    broken = run_cli("finetune", "--algo", "lora", "--dry-run", project=project)
    line = next(n for n, row in enumerate(lora.read_text().splitlines(), 1) if "s.lora.rank" in row)
    assert broken.returncode == 2 and broken.stderr.startswith(f"error: {lora}:{line}: ")
    # only the first dry run (beside the run locks in gen-model/.locks/)
    assert len([p for p in (root / "gen-model").iterdir() if not p.name.startswith(".")]) == 1
