"""The command line as a user meets it: fast help, and one-line errors with no traceback."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli

import phi3e2e

HEAVY = ("torch", "olive", "transformers", "onnxruntime", "onnxruntime_genai", "peft", "azure",
         "fastapi", "uvicorn", "starlette")


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["finetune", "--help"], ["chat", "--help"]])
def test_help_and_version_import_no_ml_stack(args):
    probe = (
        "import sys, json\n"
        "from phi3e2e.cli.app import app\n"
        "try:\n"
        f"    app({args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in " + repr(HEAVY) + ")))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("command", ["chat", "serve", "runs"])
def test_a_command_loads_its_own_module_only(command):
    """`phi3e2e chat ...` imports phi3e2e.cli.chat, not the other commands (nor the fine-tune settings' pydantic
    models they bring): part of a `chat --prompt` start."""
    probe = (
        "import sys, json\n"
        f"sys.argv = ['phi3e2e', {command!r}, '--help']\n"
        "from phi3e2e.cli.app import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('phi3e2e.'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    from phi3e2e.cli.app import COMMANDS, GROUPS

    assert f"phi3e2e.cli.{command}" in loaded
    assert [m for m in loaded if m.split(".")[-1] in COMMANDS + GROUPS and m != f"phi3e2e.cli.{command}"] == []
    assert "phi3e2e.workflow.settings" not in loaded or command == "runs"


def test_version():
    from phi3e2e import __version__

    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"phi3e2e {__version__}"


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    "args, command, fragments",
    [
        (["chat", "--threads", "0"], "phi3e2e chat", ["--threads", "greater than or equal to 1"]),
        (["chat", "--temprature", "1"], "phi3e2e chat", ["--temprature", "--temperature"]),
        (["chat", "--prompt"], "phi3e2e chat", ["'--prompt' requires an argument"]),  # click gives no context here
        (["jobs", "status", "--workspace"], "phi3e2e jobs status", ["'--workspace' requires an argument"]),
        (["eval", "a", "b"], "phi3e2e eval", ["unexpected extra argument"]),
        (["jobs", "logs", "a", "b"], "phi3e2e jobs logs", ["unexpected extra argument"]),
        (["fine-tune"], "phi3e2e", ["No such command 'fine-tune'", "'finetune'"]),
        (["jobs", "lst"], "phi3e2e jobs", ["No such command 'lst'", "'list'"]),
        (["--bogus"], "phi3e2e", ["No such option: --bogus"]),
        # Choices are checked by the parser too, and named.
        (["finetune", "--algo", "dora"], "phi3e2e finetune", ["--algo", "'dora'", "'lora', 'qlora'"]),
        (["finetune", "--target", "cloud"], "phi3e2e finetune", ["--target", "'local', 'aml'"]),
        (["chat", "--device", "gpu"], "phi3e2e chat", ["--device", "'cpu', 'cuda'"]),
        (["export", "--device", "gpu"], "phi3e2e export", ["--device", "'cpu', 'cuda'"]),
        (["export", "--precision", "int8"], "phi3e2e export", ["--precision", "'int4', 'fp16', 'fp32'"]),
        (["prepare", "--format", "xml"], "phi3e2e prepare", ["--format", "'csv', 'json', 'jsonl'"]),
    ],
)
def test_a_mistyped_command_line_is_one_error_line_too(args, command, fragments, tmp_path):
    # Checked by the command-line parser before any phi3e2e code runs; same rule as phi3e2e's own errors,
    # and the hint names the --help of the command that was mistyped.
    result = run_cli(*args, env={"PHI3E2E_PROJECT_DIR": str(tmp_path)})
    assert_one_line_error(result, f"error: {command}: ", *fragments, f"(see {command} --help)")


def test_choice_and_typo_errors_are_plain_words_and_suggest_only_what_is_close(tmp_path):
    env = {"PHI3E2E_PROJECT_DIR": str(tmp_path)}
    choice = run_cli("finetune", "--algo", "lroa", env=env).stderr
    assert "'lroa' is not one of 'lora', 'qlora': did you mean 'lora'?" in choice and "Value error" not in choice
    assert "did you mean" not in run_cli("chat", "--device", "gpu", env=env).stderr  # nothing close: no guess
    typo = run_cli("finetune", "--alog", "lora", env=env).stderr
    assert "No such option: --alog (did you mean --algo?)" in typo and "--image" not in typo
    assert "did you mean" not in run_cli("finetune", "--xyzzy", env=env).stderr


@pytest.mark.parametrize("args", [[], ["jobs"]])
def test_a_group_alone_shows_its_help(args):
    result = run_cli(*args)
    assert result.returncode == 2  # click's convention for a missing command
    assert result.stdout.startswith(f"Usage: {' '.join(['phi3e2e', *args])} [OPTIONS] COMMAND")
    assert "Commands:" in result.stdout and "error:" not in result.stderr


def test_ctrl_c_exits_130_without_a_traceback(monkeypatch, capsys):
    from phi3e2e.cli import eval as eval_command
    from phi3e2e.cli.app import main

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_command, "current_project", interrupted)
    monkeypatch.setattr(sys, "argv", ["phi3e2e", "eval"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 130
    assert "Traceback" not in capsys.readouterr().err


def test_the_cli_uses_only_public_typer_api():
    # typer vendors click in typer._click, which "may change in any release"; so do its other _modules.
    private = re.compile(r"\b(typer\._\w+|_click)\b")
    offenders = [
        f"{path.name}:{number}: {line.strip()}"
        for path in Path(phi3e2e.__file__).parent.rglob("*.py")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if private.search(line)
    ]
    assert offenders == []


def test_finetune_without_prepare_says_what_to_run(tmp_path):
    from phi3e2e.project import Project

    assert_one_line_error(run_cli("finetune", project=Project(tmp_path)), "phi3e2e prepare")


def test_unknown_setting_fails_before_anything_runs(tiny_project):
    result = run_cli("finetune", "--set", "lora.rank=8", project=tiny_project)
    assert_one_line_error(result, "lora.rank", "lora.r")
    assert not (tiny_project.gen_model).exists()


def test_bad_setting_value_names_the_key(tiny_project):
    assert_one_line_error(run_cli("finetune", "--set", "training.max_steps=soon", project=tiny_project), "training.max_steps")


def test_qlora_locally_without_cuda_says_what_to_use_instead(tiny_project):
    result = run_cli("finetune", "--algo", "qlora", "--target", "local", project=tiny_project)
    assert_one_line_error(result, "QLoRA needs a CUDA GPU", "--algo lora", "--target aml")
    assert not tiny_project.gen_model.exists()


def test_ship_adapter_is_refused_where_it_cannot_be_built(tiny_project):
    aml = run_cli("finetune", "--ship", "adapter", "--target", "aml", "--dry-run", project=tiny_project)
    assert_one_line_error(aml, "export RUN --ship adapter")
    resumed = run_cli("finetune", "--resume", "some-run", "--ship", "adapter", project=tiny_project)
    assert resumed.returncode == 2 and "--resume" in resumed.stderr


def test_template_column_missing_from_data_is_named(tiny_project):
    result = run_cli("finetune", "--set", "data.text_template={Prompt} {Best Answer}", project=tiny_project)
    assert_one_line_error(result, "{Prompt}", "Question")


def test_dry_run_writes_only_the_validated_config(tiny_project):
    result = run_cli("finetune", "--dry-run", "--run-name", "look", "--set", "lora.r=4", project=tiny_project)
    assert result.returncode == 0, result.stderr
    run_dir = tiny_project.gen_model / "look"
    config = json.loads((run_dir / "olive-config.json").read_text())
    assert config["passes"]["finetune"]["r"] == 4
    assert str(run_dir / "olive-config.json").endswith(result.stdout.strip().split()[-1])
    assert json.loads((run_dir / "run.json").read_text())["status"] == "dry-run"
    assert sorted(p.name for p in run_dir.iterdir()) == ["olive-config.json", "run.json"]


def test_settings_that_would_fail_late_fail_the_dry_run(tiny_project):
    """A boolean for a number, and a max_length past the model's context (it failed 19 s into the run)."""
    result = run_cli("finetune", "--dry-run", "--set", "training.learning_rate=true", project=tiny_project)
    assert_one_line_error(result, "training.learning_rate=true", "not a true/false setting")
    result = run_cli("finetune", "--dry-run", "--set", f"data.max_length={10**24}", project=tiny_project)
    assert_one_line_error(result, "data.max_length", "context of")
    assert not tiny_project.gen_model.exists() or not any(tiny_project.gen_model.iterdir())


def test_run_name_that_is_a_path_is_refused(tiny_project):
    assert_one_line_error(run_cli("finetune", "--run-name", "../escape", project=tiny_project), "--run-name")


def test_chat_with_no_finished_run_says_what_to_run(tiny_project):
    assert_one_line_error(run_cli("chat", "--prompt", "hi", project=tiny_project), "phi3e2e finetune")


def test_chat_on_a_folder_that_is_not_a_model(tiny_project, tmp_path):
    assert_one_line_error(run_cli("chat", "--model", str(tmp_path), "--prompt", "hi", project=tiny_project), str(tmp_path))


def test_prepare_with_an_incomplete_model_folder_lists_what_is_missing(tiny_project, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = run_cli("prepare", "--model", str(tmp_path), project=tiny_project)
    assert_one_line_error(result, "weights", "tokenizer")


def test_prepare_with_malformed_jsonl_names_file_and_line(tiny_project, tmp_path):
    bad = tmp_path / "faq.jsonl"
    bad.write_text('{"Question": "a", "Best Answer": "b"}\n{"Question": "c", \n')
    before = sorted(p.name for p in tiny_project.datasets.iterdir())
    assert_one_line_error(run_cli("prepare", "--data", str(bad), project=tiny_project), f"{bad}:2")
    assert sorted(p.name for p in tiny_project.datasets.iterdir()) == before


def test_a_folder_phi3e2e_may_not_write_is_one_line_and_debug_shows_the_traceback(tiny_project):
    """gen-model/ where nothing may be written (sysfs refuses even root, as a read-only disk refuses anyone)."""
    tiny_project.gen_model.mkdir(exist_ok=True)
    tiny_project.gen_model.rmdir()
    tiny_project.gen_model.symlink_to("/sys/kernel")
    result = run_cli("finetune", "--dry-run", project=tiny_project)
    assert_one_line_error(result, "gen-model/.locks: operation not permitted", "PHI3E2E_DEBUG=1")
    debug = run_cli("finetune", "--dry-run", project=tiny_project, env={"PHI3E2E_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr


def test_debug_shows_the_traceback_behind_a_user_error(tiny_project):
    plain = run_cli("finetune", "--run-name", "../escape", project=tiny_project)
    assert_one_line_error(plain, "--run-name")
    debug = run_cli("finetune", "--run-name", "../escape", project=tiny_project, env={"PHI3E2E_DEBUG": "1"})
    assert "Traceback (most recent call last)" in debug.stderr and "UserError: --run-name" in debug.stderr


def test_each_shared_option_is_declared_once():
    """RUN, --device, --verbose and the Azure options are declared in cli/options.py or cli/azure_options.py only."""
    from phi3e2e.cli import app

    declared: dict[str, set[str]] = {}
    for path in sorted(Path(app.__file__).parent.glob("*.py")):
        text = path.read_text()
        for flag in re.findall(r'typer\.Option\(\s*"(--[a-z-]+)', text):
            declared.setdefault(flag, set()).add(path.name)
        if re.search(r'typer\.Argument\(\s*metavar="\[?RUN', text):
            declared.setdefault("RUN", set()).add(path.name)
    assert declared["RUN"] == {"options.py"} and declared["--device"] == {"options.py"}
    assert declared["--verbose"] == {"options.py"}
    for flag in ("--subscription", "--resource-group", "--workspace", "--compute", "--instance-type", "--register"):
        assert declared[flag] == {"azure_options.py"}, flag


def test_runs_started_in_the_same_second_never_share_a_name(tiny_project):
    from concurrent.futures import ThreadPoolExecutor

    from phi3e2e.runs import new_run_name

    first, second = new_run_name(tiny_project.gen_model, "lora"), new_run_name(tiny_project.gen_model, "lora")
    assert first != second and first.endswith("-lora") and second.endswith("-lora")
    with ThreadPoolExecutor(3) as pool:  # three processes started together, none naming its run
        results = list(pool.map(lambda _: run_cli("finetune", "--dry-run", project=tiny_project), range(3)))
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    made = [p.name for p in tiny_project.gen_model.iterdir() if not p.name.startswith(".")]
    assert len(made) == 3


def test_a_file_where_a_project_folder_belongs_is_one_line(tiny_project):
    (tiny_project.gen_model).mkdir(exist_ok=True)
    tiny_project.gen_model.rmdir()
    tiny_project.gen_model.write_text("not a folder")
    assert_one_line_error(run_cli("finetune", "--dry-run", project=tiny_project), "a file stands where a folder")

