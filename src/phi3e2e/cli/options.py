"""The CLI kit: the option types every command shares, declared once, and the app factory.

As huggingface_hub's `hf` CLI does: reusable `Annotated[...]` types (choices as Literals, so
`--help` lists them and Typer rejects other values), one way to make an app, and plain strings
passed on to the domain functions. Only public typer APIs.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer
from typer.core import TyperCommand

Device = Literal["cpu", "cuda"]

RunArgument = Annotated[
    Optional[str],
    typer.Argument(metavar="RUN", help="A run name under gen-model/ (as `phi3e2e runs` lists it); "
                   "default: the newest run the command can use.", show_default=False),
]  # fmt: skip
RequiredRunArgument = Annotated[
    str, typer.Argument(metavar="RUN", help="A run name under gen-model/ (as `phi3e2e runs` lists it).")
]
DeviceOption = Annotated[
    Device, typer.Option("--device", help="Where the model runs: cpu, or cuda (needs onnxruntime-genai-cuda).")
]
ModelOption = Annotated[
    Optional[str], typer.Option("--model", help="Base model: a Hugging Face Hub id or a local model folder.")
]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", metavar="KEY=VALUE", help="Override a setting, e.g. --set lora.r=16 --set training.max_steps=50."),
]  # fmt: skip
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Stream Olive's full output.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


class Command(TyperCommand):
    """Usage lines as man pages write them: `runs show RUN`, `serve [RUN]` (Typer writes `{RUN}` for a
    required argument)."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)
        return [piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece for piece in pieces]


class App(typer.Typer):
    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)


def new_app(help: str, group: bool = False, cls=None) -> typer.Typer:
    """A Typer app with phi3e2e's plain help; `group`: a command group that shows its help when run alone.

    Click's plain help, not rich's: flags shown as flags (rich shows `--tiny <bool>`), paragraphs
    wrapped to the terminal, and `\\b` example blocks kept line for line. `cls`: the group's click class.
    """
    app = App(help=help, rich_markup_mode=None, add_completion=False, pretty_exceptions_show_locals=False,
              **({"cls": cls} if cls else {}))
    if group:
        app.callback(invoke_without_command=True)(help_when_alone)
    return app


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
