"""Every command's --help, as a user reads it in an 80-column terminal."""

import re
import unicodedata

import pytest
import typer
from helpers import run_cli


def command_paths() -> list[list[str]]:
    """Every command and command group of the app, e.g. [], ["prepare"], ["jobs", "list"]."""
    from phi3e2e.cli.app import app

    def walk(command, path):
        yield path
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


def columns(line: str) -> int:
    # CJK characters (an example names columns 问题 / 答案) take two terminal columns.
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


def examples(help_text: str) -> list[str]:
    """The lines of the Examples block: after the "Examples...:" heading, up to the next blank line."""
    match = re.search(r"^  Examples[^\n]*:\n\n(.*?)(?:\n\n|\Z)", help_text, re.MULTILINE | re.DOTALL)
    return match.group(1).splitlines() if match else []


@pytest.mark.parametrize("command", command_paths(), ids=lambda path: " ".join(["phi3e2e", *path]))
def test_help_reads_well_in_80_columns(command):
    result = run_cli(*command, "--help", env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    help_text = result.stdout
    assert "<bool>" not in help_text  # on/off options shown as flags: `--tiny`, not `--tiny <bool>`
    assert [line for line in help_text.splitlines() if columns(line) > 80] == []
    usage = help_text.split("\n\n", 1)[0]  # one style for arguments: RUN when needed, [RUN] when optional
    assert "{" not in usage and "[[" not in usage, usage
    lines = examples(help_text)
    assert lines, f"no Examples block in:\n{help_text}"
    for previous, line in zip(["", *lines], lines):
        # Each example is one command (or a `\` continuation of the one before), kept line for line:
        # not rewrapped mid-command, and no continuation collapsed into `--no-wait         --data`.
        assert "phi3e2e" in line or previous.endswith("\\"), line
        assert not re.search(r"\S {2,}-", line), line
