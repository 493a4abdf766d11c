"""`phi3e2e prepare`: a base model into model-cache/, a dataset into datasets/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from phi3e2e.commands.common import ModelOption, current_project, say


def prepare(
    model: ModelOption = None,
    tiny: Annotated[
        bool, typer.Option("--tiny", help="Write a tiny random Phi-3 model (offline, trains in seconds on a CPU).")
    ] = False,
    data: Annotated[
        Optional[Path], typer.Option("--data", help="Q&A file (JSON or JSONL) to import; default: bundled sample.")
    ] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Dataset name under datasets/.")] = None,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Hub revision (branch, tag or commit).")] = None,
) -> None:
    """Put a base model in model-cache/ and a dataset in datasets/.

    Examples:
      phi3e2e prepare                      # Phi-3-mini-4k-instruct + the sample dataset
      phi3e2e prepare --tiny               # a tiny offline model for trying things out
      phi3e2e prepare --data faq.jsonl     # import your own Q&A data
      phi3e2e prepare --model ./my-phi3    # use a model folder you already have
    """
    from phi3e2e.prepare import prepare as run_prepare

    project = current_project()
    prepared = run_prepare(project, model=model, tiny=tiny, data=data, dataset_name=name, revision=revision, say=say)
    if prepared.dataset_summary:
        s = prepared.dataset_summary
        say(f"Dataset: {s['rows_kept']} rows ({s['train_rows']} train, {s['eval_rows']} eval)")
    say(f"Model:   {project.relative(prepared.model_dir)}")
    say(f"Data:    {project.relative(prepared.dataset_dir)}")
    say("Next:    phi3e2e finetune --algo lora")
