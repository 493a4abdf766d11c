"""`phi3e2e init`: scaffold a project folder with editable workflow templates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from phi3e2e.cli.options import current_project, say
from phi3e2e.resources import templates_dir

KEPT_HINTS = {".gitignore": ": add model-cache/* and gen-model/* to it to keep the models out of git"}


def init(
    folder: Annotated[
        Optional[Path],
        typer.Argument(
            metavar="DIR", help="Project folder to create or fill; default: the current folder ($PHI3E2E_PROJECT_DIR)."
        ),
    ] = None,
) -> None:
    """Create a project folder, with editable copies of the Olive workflow templates.

    Writes datasets/, model-cache/, gen-model/, templates/, setup/ (the Azure ML conda file),
    .gitignore and README.md. templates/ holds copies of lora.json.j2, qlora.json.j2,
    model-builder.json.j2 and adapter-int4.json.j2; finetune and export render the project's
    copies, so edit them freely.
    Where a project already is (any of those folders, or phi3e2e.json), nothing is changed.

    Examples:

    \b
      phi3e2e init my-model && cd my-model && phi3e2e prepare
      phi3e2e init            # here, e.g. in a fresh git repository
    """
    from phi3e2e.prepare.init_project import init_project

    result = init_project(folder if folder is not None else current_project().root)
    where = result.root if folder is None else folder
    if result.found:
        say(f"A phi3e2e project is already in {where} (found {', '.join(result.found)}): nothing changed.")
        if "templates/" not in result.found:
            say(f"To edit the workflow templates here: mkdir templates && cp {templates_dir()}/*.j2 templates/")
        return
    say(f"Created a phi3e2e project in {where}: {'  '.join(result.created)}")
    for name in result.kept:
        say(f"  kept your {name} as it is{KEPT_HINTS.get(name, '')}")
    next_step = "phi3e2e prepare" if folder is None else f"cd {folder} && phi3e2e prepare"
    say(f"Next:    {next_step}   (then edit templates/*.json.j2 to change the Olive workflow)")
