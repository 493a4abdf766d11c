"""The `phi3e2e` command line. Thin: parse, call one domain function, print its result.

Heavy libraries (torch, olive, transformers, onnxruntime_genai) are imported inside the domain
functions that need them, so `phi3e2e --help` starts fast.
"""

from __future__ import annotations

import difflib
import errno
import gc
import importlib
import os
import re
import sys
from typing import Annotated, Optional

import typer

from phi3e2e import __version__
from phi3e2e.cli.options import help_when_alone, new_app
from phi3e2e.errors import UserError

# Each command lives in phi3e2e.cli.<name> (a function of that name, or a group's `app`), in the order of
# `phi3e2e --help`. A run imports its own command's module only: `chat --prompt` then starts without the
# fine-tune settings' pydantic models the other commands load (~0.1 s; docs/performance.md).
COMMANDS = ("init", "prepare", "finetune", "sweep", "chat", "eval", "export", "push", "serve", "doctor")
GROUPS = ("deploy", "jobs", "runs")


def build_app(only: Optional[str] = None) -> typer.Typer:
    """The command line: every command, or `only` that one (what `phi3e2e <only> ...` runs)."""
    app = new_app(
        "Fine-tune Phi-3 on your Q&A data and chat with the int4 ONNX model it produces.\n\n"
        "Examples (a typical session):\n\n\b\n"
        "  phi3e2e prepare                # Phi-3-mini and the sample dataset\n"
        "  phi3e2e finetune --algo lora   # LoRA -> merge -> int4 ONNX in gen-model/\n"
        "  phi3e2e chat                   # talk to the newest fine-tuned model"
    )
    for name in COMMANDS:
        if only in (None, name):
            app.command()(getattr(importlib.import_module(f"phi3e2e.cli.{name}"), name))
    for name in GROUPS:
        if only in (None, name):
            app.add_typer(importlib.import_module(f"phi3e2e.cli.{name}").app, name=name)
    app.callback(invoke_without_command=True)(_root)
    return app


def __getattr__(name: str):
    if name == "app":  # `from phi3e2e.cli.app import app`: the whole command line (tests, docs)
        return build_app()
    raise AttributeError(name)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"phi3e2e {__version__}")
        raise typer.Exit()


def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Fine-tune Phi-3 on your Q&A data and chat with the result."""
    help_when_alone(ctx)


DEBUG_SWITCH = "PHI3E2E_DEBUG"  # =1: the full traceback of any error, user mistakes included


# Notices of the libraries below (transformers' advice on config fields, ...) are not the user's to act on;
# a user who wants them sets the variable. Olive's full log keeps them (build/olive_runner.olive_env).
QUIET_LIBRARIES = {"TRANSFORMERS_VERBOSITY": "error"}


def main() -> None:
    for variable, value in QUIET_LIBRARIES.items():
        os.environ.setdefault(variable, value)
    command = sys.argv[1] if len(sys.argv) > 1 else None
    cli = typer.main.get_command(build_app(command if command in COMMANDS + GROUPS else None))
    try:
        # Not standalone: usage errors come back here instead of Typer's own error panel.
        exit_code = cli.main(prog_name="phi3e2e", standalone_mode=False)
    except typer.TyperException as e:
        # Typer vendors click and exports only this base of click's exceptions (no UsageError);
        # exit code 2 is click's usage error: a bad option value, an unknown option or command,
        # an extra argument, a missing value.
        if e.exit_code == 2:
            command = _command_path(e, cli)
            _fail(f"{command}: {usage_message(e)} (see {command} --help)", e.exit_code)
        _fail(e.format_message(), e.exit_code)
    except typer.Abort:
        raise SystemExit(1) from None
    except Exception as e:
        known = user_message(e)
        if known is None or os.environ.get(DEBUG_SWITCH) == "1":
            raise  # a bug of ours, or asked for: the traceback
        _fail(*known)
    # The command is done. The interpreter's last garbage collection would walk every object the libraries made
    # (~0.05-0.1 s of a `chat --prompt`, docs/performance.md) only to free memory the exit frees anyway; frozen
    # objects are skipped. atexit handlers, buffered output and open files are still flushed and closed.
    gc.freeze()
    if isinstance(exit_code, int) and exit_code:  # typer.Exit(n) and Ctrl-C (130)
        raise SystemExit(exit_code)


# What the user's situation causes, as one line each (huggingface_hub's CLI keeps such a table).
# Anything else is a bug: its traceback is shown.
OS_ERRORS = {
    errno.EROFS: "the file system is read-only: run phi3e2e in a writable project folder",
    errno.EACCES: "permission denied: run phi3e2e where you may write, or fix the folder's permissions",
    errno.EPERM: "operation not permitted: fix the folder's permissions",
    errno.ENOSPC: "no space left on the device: free some (gen-model/.olive-cache/ and old runs are safe to delete)",
    errno.EDQUOT: "disk quota exceeded: free some space (gen-model/.olive-cache/ and old runs are safe to delete)",
    errno.ENOTDIR: "a file stands where a folder is expected (one of the folders in this path): move it away",
}


def user_message(error: BaseException) -> Optional[tuple[str, int]]:
    """(one line, exit code) for an error the user can act on; None for a bug."""
    if isinstance(error, UserError):
        return str(error), error.exit_code
    if isinstance(error, OSError) and error.errno in OS_ERRORS:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{OS_ERRORS[error.errno]} (PHI3E2E_DEBUG=1 shows where)", 2
    return None


# Click suggests any option a little alike ("--alog" -> "--algo, --image"): keep the close ones only.
CLOSE = 0.75


def usage_message(error: typer.TyperException) -> str:
    """Click's usage error in plain words: no pydantic wording for a bad choice, and a typo's suggestions only
    when they are close."""
    text = error.format_message().replace("Value error, ", "")
    if possibilities := getattr(error, "possibilities", None):  # an unknown option, and every option a bit alike
        close = difflib.get_close_matches(error.option_name, possibilities, cutoff=CLOSE)
        text = error.message + (f" (did you mean {' or '.join(close)}?)" if close else "")
    if choice := re.search(r"'([^']*)' is not one of ((?:'[^']*'(?:, )?)+)", text):
        close = difflib.get_close_matches(choice[1], re.findall(r"'([^']*)'", choice[2]), n=1, cutoff=CLOSE - 0.05)
        text = text.rstrip(".") + (f": did you mean '{close[0]}'?" if close else "")
    return text


def _command_path(error: typer.TyperException, cli) -> str:
    """The command a usage error is about, so the hint names that command's --help."""
    ctx = getattr(error, "ctx", None)
    if ctx is not None:
        return ctx.command_path
    # Click's parser raises "Option '--prompt' requires an argument." with no context:
    # follow the command names on the command line instead.
    path = ["phi3e2e"]
    for arg in sys.argv[1:]:
        if arg.startswith("-"):
            continue  # phi3e2e's groups have flags only (--help, --version): no value to skip
        cli = getattr(cli, "commands", {}).get(arg)
        if cli is None:
            break
        path.append(arg)
    return " ".join(path)


def _fail(message: str, exit_code: int) -> None:
    typer.echo("error: " + " ".join(message.split()), err=True)
    raise SystemExit(exit_code) from None
