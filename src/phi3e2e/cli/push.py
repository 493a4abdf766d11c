"""`phi3e2e push`: share a finished run's model on the Hugging Face Hub, with a model card."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from phi3e2e.cli.options import RunArgument, current_project, say
from phi3e2e.errors import UserError


def push(
    run: RunArgument = None,
    to: Annotated[
        tuple[str, str],
        typer.Option("--to", metavar="hf ORG/NAME", help="Where to: `hf` (the Hugging Face Hub) and the repo id.",
                     show_default=False),
    ] = ("", ""),  # fmt: skip
    form: Annotated[
        Literal["int4", "merged", "adapter"],
        typer.Option("--form", help="Which model: int4 (onnx-int4/), merged (merged/) or adapter (adapter/)."),
    ] = "int4",
    private: Annotated[bool, typer.Option("--private", help="Create the repo private (an existing repo keeps its "
                                                            "visibility).")] = False,  # fmt: skip
    revision: Annotated[
        Optional[str], typer.Option("--revision", metavar="BRANCH", help="Commit to this branch (created when "
                                    "missing); default: main.", show_default=False)  # fmt: skip
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Contact nothing: list the files and write the model card to "
                           "gen-model/RUN/.push-preview/.")  # fmt: skip
    ] = False,
) -> None:
    """Upload a finished run's model and a model card to a Hugging Face Hub repo, in one commit.

    Creates the repo when missing. The card (README.md) says the base model, the dataset and its sha256,
    the training settings and the held-out losses from eval.json. The token is huggingface_hub's own:
    HF_TOKEN or `hf auth login` (a write token); phi3e2e never prints or stores it. Run the same push again
    after an interruption: it uploads only what the Hub does not hold yet. run.json records the push.

    Examples:

    \b
      phi3e2e push --to hf my-org/faq --dry-run   # the card, no upload
      phi3e2e push --to hf my-org/faq             # newest run, int4
      phi3e2e push latest --to hf my-org/faq-merged --form merged --private
      phi3e2e push latest --to hf my-org/faq --form adapter --revision lora
    """
    from phi3e2e.share.hub import push as push_run

    where, repo_id = to
    if not where:
        raise UserError("phi3e2e push: --to hf ORG/NAME is required (see phi3e2e push --help)")
    if where != "hf":
        raise UserError(f"--to {where!r}: phi3e2e pushes to the Hugging Face Hub only: --to hf ORG/NAME")
    project = current_project()
    result = push_run(project, run, repo_id, form=form, private=private, revision=revision, dry_run=dry_run, say=say)
    if result.url:
        say(f"Next:    phi3e2e chat --model DIR after `hf download {result.repo_id} --local-dir DIR`")
