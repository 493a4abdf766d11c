"""The `phi3e2e` command line. Thin: parse, call one domain function, print its result.

Heavy libraries (torch, olive, transformers, onnxruntime_genai) are imported inside the domain
functions that need them, so `phi3e2e --help` starts fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from phi3e2e import __version__
from phi3e2e.commands import chat, finetune, prepare
from phi3e2e.commands import eval as eval_command
from phi3e2e.commands import export as export_command
from phi3e2e.commands import jobs as jobs_command
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
        app()
    except UserError as e:
        typer.echo("error: " + " ".join(str(e).split("\n")), err=True)
        raise SystemExit(e.exit_code) from None
