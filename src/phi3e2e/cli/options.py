"""Option types and helpers shared by the commands."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from phi3e2e.errors import UserError

ModelOption = Annotated[
    Optional[str], typer.Option("--model", help="Base model: a Hugging Face Hub id or a local model folder.")
]


def say(message: str) -> None:
    typer.echo(message)


def choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        raise UserError(f"{option} {value!r}: choose one of {', '.join(allowed)}")
    return value


def current_project():
    from phi3e2e.project import Project

    return Project.current()
