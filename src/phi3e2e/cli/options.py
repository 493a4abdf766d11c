"""Option types and helpers shared by the commands."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

# Choices as Literals: `--help` lists them, Typer rejects other values, and the commands pass
# plain strings on to the domain functions.
Device = Literal["cpu", "cuda"]

ModelOption = Annotated[
    Optional[str], typer.Option("--model", help="Base model: a Hugging Face Hub id or a local model folder.")
]


def say(message: str) -> None:
    typer.echo(message)


def help_when_alone(ctx: typer.Context) -> None:
    """`phi3e2e` or `phi3e2e jobs` with no command: the group's help, exit 2 (click's no_args_is_help).

    A group callback with invoke_without_command=True rather than no_args_is_help, whose
    exception class typer does not export.
    """
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(2)


def current_project():
    from phi3e2e.project import Project

    return Project.current()
