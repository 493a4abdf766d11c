"""The docs cannot drift from the program: every `phi3e2e ...` command shown in README.md and
docs/*.md is run, offline, on a copy of the session's tiny fine-tune.

Each command runs for real where that is quick and offline (chat, runs, init, prepare --tiny,
finetune as --dry-run). The others need what this machine lacks (the Hub, Azure, a GPU) or
minutes of model building that their own tests cover; they get `--help` instead, which still
checks that the command exists and that every flag the docs show is one it takes. The reason
for each is in HELP_ONLY.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, TRUTHFUL_QA

from phi3e2e.project import Project

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# Commands run as --help only, with the reason (first match wins).
HELP_ONLY = [
    (r"^jobs\b", "needs an Azure ML workspace (tests/test_aml_*.py use a stand-in)"),
    (r"^deploy\b(?!.*--dry-run)", "needs an Azure ML workspace (tests/test_deploy.py uses a stand-in)"),
    (r"^(?!deploy\b).*--target aml(?!.*--(compute|instance-type))",
     "prose naming the mode; the full Azure ML lines are dry-run here"),
    (r"--resume\b", "needs a failed or interrupted run, and takes no --dry-run; tests/test_faults.py resumes one"),
    (r"--device cuda", "needs a CUDA GPU"),
    (r"^sweep\b(?!.*--dry-run)", "a fine-tune per trial; tests/test_sweep.py runs a 2x2 sweep, stops and resumes it"),
    (r"^runs --sweep", "needs a sweep that ran; tests/test_sweep.py ranks one"),
    (r"^prepare(?!.*--tiny)(?!.*--data)", "downloads a model from the Hugging Face Hub (tests/test_prepare.py, fake Hub)"),
    (r"^prepare.*--data (?!TruthfulQA)", "the user's own file; tests/test_dataset_import.py imports each format"),
    (r"^eval\b", "builds the base model as int4 first; tests/test_eval.py runs it"),
    (r"^export\b", "a ModelBuilder build or a GGUF conversion per command; tests/test_export.py and test_export_gguf.py run them"),
    (r"^serve\b", "runs until stopped; tests/test_serve.py drives it"),
    (r"^push\b(?!.*--dry-run)", "uploads to the Hugging Face Hub; tests/test_push.py uses a stand-in Hub"),
]
# Every finetune line runs with --dry-run added (a real fine-tune runs once per session:
# conftest.finished_run): the settings, template and Azure ML job files are all checked.
PLACEHOLDER = re.compile(r"\||^\[.*\]$|^<.*>$|^[A-Z][A-Z_.]*$|\.\.\.|^FILE")


def documented_commands() -> list[tuple[str, str]]:
    """(where, command after `phi3e2e`) for every command in code blocks and inline code."""
    found = []
    for doc in DOCS:
        in_block = False
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{doc.relative_to(REPO)}:{number}"
            if line.lstrip().startswith("```"):
                in_block = not in_block
                continue
            if in_block:
                text = re.sub(r"^\s*\$\s*", "", line).strip()
                if re.match(r"(echo|printf) .*\| *phi3e2e ", text):
                    text = text.split("|", 1)[1].strip()  # the piped input is the user's question
                if text.startswith("phi3e2e "):
                    found.append((where, text))
            else:
                found += [(where, span) for span in re.findall(r"`(phi3e2e [^`]*)`", line)]
    return [(where, _strip_comment(text).removeprefix("phi3e2e").strip()) for where, text in found]


def _strip_comment(text: str) -> str:
    return re.split(r"\s+#\s", text, maxsplit=1)[0].replace("\\|", "|").strip()


def help_reason(command: str) -> str | None:
    words = shlex.split(_fill(command, "e2e"))
    if any(PLACEHOLDER.search(word) and not word.startswith("-") for word in words):
        return "a synopsis with placeholders"
    for pattern, reason in HELP_ONLY:
        if re.search(pattern, command):
            return reason
    return None


COMMANDS = documented_commands()


def test_the_docs_show_commands_to_check():
    assert len(COMMANDS) > 40
    assert any(command.startswith("runs") for _, command in COMMANDS)  # the new command is documented


@pytest.fixture(scope="module")
def docs_project(finished_run, tmp_path_factory) -> Project:
    root = tmp_path_factory.mktemp("docs") / "project"
    shutil.copytree(finished_run[0].root, root, symlinks=True)
    (root / "docs").mkdir()
    return Project(root)


def _run(args: list[str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PHI3E2E_PROJECT_DIR"}
    return subprocess.run([sys.executable, "-m", "phi3e2e", *args], cwd=cwd, env=env, input=stdin,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _command_path(words: list[str]) -> list[str]:
    import typer

    from phi3e2e.cli.app import app

    group, path = typer.main.get_command(app), []
    for word in words:
        commands = getattr(group, "commands", {})
        if word not in commands:
            break
        path.append(word)
        group = commands[word]
    return path


def _fill(command: str, run: str) -> str:
    """The command with the run and files it names taken from the finished tiny project."""
    text = re.sub(r"\bRUN\b|\bOTHER\b|<run>|\b\d{8}-\d{6}-(lora|qlora)\b", run, command)
    text = text.replace("model-cache/Phi-3-mini-4k-instruct", "model-cache/tiny-phi3")
    return text.replace("TruthfulQA.csv", str(TRUTHFUL_QA))


def _as_run(command: str, run: str) -> list[str]:
    words = shlex.split(_fill(command, run))
    if words[0] == "finetune" and "--dry-run" not in words:
        words.append("--dry-run")
    if words[0] == "finetune":
        words += ["--run-name", "docs-" + re.sub(r"[^A-Za-z0-9]+", "-", command)[:60].strip("-")]
    if words[:2] == ["runs", "rm"] and "--yes" not in words:
        words.append("--yes")  # it asks first; the docs show that
    if words[0] == "chat" and "--max-length" not in words and "--help" not in words:
        words += ["--max-length", "4"]
    if words[0] == "chat" and "--max-length" in words:  # the tiny model's answers are gibberish: keep them short
        words[words.index("--max-length") + 1] = "4"
    return words


@pytest.mark.parametrize("where,command", COMMANDS, ids=[f"{w}:{c[:40]}" for w, c in COMMANDS])
def test_documented_command_runs(docs_project, where, command, tmp_path):
    reason = help_reason(command)
    if reason:
        words = shlex.split(re.sub(r"\[([^\]]*)\]", r"\1", command))
        path = _command_path(words)
        assert path or not words or PLACEHOLDER.search(words[0]), f"{where}: `phi3e2e {command}`: no such command"
        result = _run([*path, "--help"], REPO)
        assert result.returncode == 0, f"{where}: {result.stderr}"
        for flag in {word.split("=")[0] for word in words if word.startswith("--")}:
            assert flag in result.stdout, f"{where}: `phi3e2e {command}` shows {flag}, which --help does not list"
        return
    if command.startswith("init"):
        result = _run(shlex.split(command.replace("[DIR]", str(tmp_path / "new"))), tmp_path)
    elif command.startswith("prepare"):
        project = tmp_path / "fresh"
        shutil.copytree(docs_project.root / "model-cache", project / "model-cache", symlinks=True)
        (project / "gen-model").mkdir()
        # The tiny model already chosen: nothing is downloaded.
        (project / "phi3e2e.json").write_text('{"model": "model-cache/tiny-phi3"}')
        result = _run(_as_run(command, "e2e"), project)
    else:
        copy = tmp_path / "project"
        shutil.copytree(docs_project.root, copy, symlinks=True)
        result = _run(_as_run(command, "e2e"), copy, stdin="Where is your roastery?\n")
    assert result.returncode == 0, f"{where}: `phi3e2e {command}` failed:\n{result.stderr}"
    assert "Traceback" not in result.stderr


def test_commands_work_from_a_subfolder_of_the_project(docs_project, tmp_path):
    """`cd docs && phi3e2e ...` finds the project above, as the docs' commands assume."""
    copy = tmp_path / "project"
    shutil.copytree(docs_project.root, copy, symlinks=True)
    docs = copy / "docs"
    runs = _run(["runs", "--json"], docs)
    assert runs.returncode == 0 and '"name": "e2e"' in runs.stdout, runs.stderr
    chat = _run(["chat", "--prompt", "hi", "--max-length", "4", "--json"], docs)
    assert chat.returncode == 0 and '"finish_reason"' in chat.stdout, chat.stderr
    finetune = _run(["finetune", "--dry-run", "--run-name", "from-docs"], docs)
    assert finetune.returncode == 0, finetune.stderr
    assert (copy / "gen-model" / "from-docs" / "olive-config.json").is_file()
    assert not (docs / "gen-model").exists()


def test_project_is_found_by_walking_up_and_the_environment_wins(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "a" / "b").mkdir(parents=True)
    (project / "phi3e2e.json").write_text("{}")
    monkeypatch.delenv("PHI3E2E_PROJECT_DIR", raising=False)
    monkeypatch.chdir(project / "a" / "b")
    assert Project.current().root == project.resolve()
    monkeypatch.chdir(tmp_path)  # no project here or above: the current folder, where prepare starts one
    assert Project.current().root == tmp_path.resolve()
    monkeypatch.setenv("PHI3E2E_PROJECT_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(project / "a")
    assert Project.current().root == (tmp_path / "elsewhere").resolve()


def path_instructions() -> list[str]:
    """The shell lines README.md gives for putting `phi3e2e` on PATH (its ```shell block)."""
    block = re.search(r"```shell\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.DOTALL)
    assert block, "README.md has no ```shell block with the PATH instructions"
    return [_strip_comment(line) for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_puts_phi3e2e_on_path(tmp_path):
    """Each README line, run in a bare shell from the checkout (a new HOME, a PATH without the venv), makes
    `phi3e2e` a command that runs from any folder. The venv is the one running these tests (make test's
    .venv/)."""
    venv = Path(sys.prefix)
    if (REPO / ".venv").resolve() != venv.resolve():  # pytest run from another environment: point at it
        (tmp_path / "checkout").mkdir()
        (tmp_path / "checkout" / ".venv").symlink_to(venv)
        checkout = tmp_path / "checkout"
    else:
        checkout = REPO
    activate, link = path_instructions()
    assert activate.startswith("source .venv/bin/activate") and "ln -s" in link
    bare = {"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    (tmp_path / "home").mkdir()
    for line, then in ((activate, "cd /; phi3e2e --version"),
                       (link, 'cd /; PATH="$HOME/.local/bin:$PATH" phi3e2e --version')):  # fmt: skip
        result = subprocess.run(["bash", "-c", f"{line} && {then}"], cwd=checkout, env=bare, capture_output=True,
                                text=True, timeout=60)  # fmt: skip
        assert result.returncode == 0 and result.stdout.startswith("phi3e2e "), f"{line}: {result.stderr}"
    assert (tmp_path / "home" / ".local" / "bin" / "phi3e2e").is_symlink()
    assert subprocess.run(["bash", "-c", "command -v phi3e2e"], env=bare).returncode != 0  # not on PATH before
