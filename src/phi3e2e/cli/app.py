"""The `phi3e2e` command line. Thin: parse, call one domain function, print its result.

Heavy libraries (torch, olive, transformers, onnxruntime_genai) are imported inside the domain
functions that need them, so `phi3e2e --help` starts fast.
"""

from __future__ import annotations

from typing import Annotated

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # typer 0.29 vendors click

from phi3e2e import __version__
from phi3e2e.cli import chat, finetune, prepare
from phi3e2e.cli import eval as eval_command
from phi3e2e.cli import export as export_command
from phi3e2e.cli import jobs as jobs_command
from phi3e2e.errors import UserError

app = typer.Typer(
    help="Fine-tune Phi-3 on your Q&A data and chat with the int4 ONNX model it produces.\n\n"
    "Typical session:  phi3e2e prepare  ->  phi3e2e finetune --algo lora  ->  phi3e2e chat",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.command()(prepare.prepare)
app.command()(finetune.finetune)
app.command()(chat.chat)
app.command()(eval_command.eval)
app.command()(export_command.export)
app.add_typer(jobs_command.app, name="jobs")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"phi3e2e {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Fine-tune Phi-3 on your Q&A data and chat with the result."""


def main() -> None:
    try:
        # Not standalone: usage errors come back here instead of Typer's boxed panel.
        exit_code = typer.main.get_command(app).main(prog_name="phi3e2e", standalone_mode=False)
    except UserError as e:
        _fail(str(e), e.exit_code)
    except NoArgsIsHelpError as e:  # `phi3e2e` or `phi3e2e jobs` alone: the help
        e.show()
        raise SystemExit(e.exit_code) from None
    except UsageError as e:  # a bad option value, an unknown option, a missing argument
        command = e.ctx.command_path if e.ctx else "phi3e2e"
        _fail(f"{command}: {e.format_message()} (see {command} --help)", e.exit_code)
    except ClickException as e:
        _fail(e.format_message(), e.exit_code)
    except typer.Abort:
        raise SystemExit(1) from None
    if isinstance(exit_code, int) and exit_code:  # typer.Exit(n) and Ctrl-C (130)
        raise SystemExit(exit_code)


def _fail(message: str, exit_code: int) -> None:
    typer.echo("error: " + " ".join(message.split()), err=True)
    raise SystemExit(exit_code) from None
