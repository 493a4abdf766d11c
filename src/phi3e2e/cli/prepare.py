"""`phi3e2e prepare`: a base model into model-cache/, a dataset into datasets/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from phi3e2e.cli.options import ModelOption, current_project, say


def prepare(
    model: ModelOption = None,
    tiny: Annotated[
        bool, typer.Option("--tiny", help="Write a tiny random Phi-3 model (offline, trains in seconds on a CPU).")
    ] = False,
    # A separate option, not an optional value of --tiny: typer 0.29 parses its own options and
    # ignores click's flag_value, so `--tiny` at the end of a line would demand a value.
    twin: Annotated[
        Optional[Literal["phi3-mini", "phi3-mini-128k", "phi3-medium", "phi3.5-mini", "phi4-mini"]],
        typer.Option("--twin", help="Write a tiny random twin of this Phi model instead (implies --tiny)."),
    ] = None,
    data: Annotated[
        Optional[Path],
        typer.Option("--data", help="Data file to import (CSV, JSON array or JSONL); default: bundled sample."),
    ] = None,
    name: Annotated[
        Optional[str], typer.Option("--name", help="Dataset name under datasets/ (default: file name).")
    ] = None,
    data_format: Annotated[
        Optional[Literal["csv", "json", "jsonl"]],
        typer.Option("--format", help="Format of the data file (default: detected from the content)."),
    ] = None,
    question_col: Annotated[
        Optional[str], typer.Option("--question-col", help="Column holding the question (default: 'Question').")
    ] = None,
    answer_col: Annotated[
        Optional[str], typer.Option("--answer-col", help="Column holding the answer (default: 'Best Answer').")
    ] = None,
    eval_split: Annotated[float, typer.Option("--eval-split", help="Fraction of rows held out for evaluation.")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the train/eval split.")] = 42,
    max_length: Annotated[
        Optional[int],
        typer.Option(
            "--max-length", help="Drop rows longer than this many tokens (default: the fine-tune's data.max_length)."
        ),
    ] = None,
    encoding: Annotated[
        Optional[str], typer.Option("--encoding", help="Text encoding of the file (default: UTF-8), e.g. gbk, cp1252.")
    ] = None,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Hub revision (branch, tag or commit).")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a dataset of that name even if finished runs were trained on it.")
    ] = False,
) -> None:
    """Put a base model in model-cache/ and a dataset in datasets/.

    Data files may hold Q&A columns (Question / Best Answer, or name yours), Alpaca
    instruction/input/output records, or chat `messages` lists.

    Examples:

    \b
      phi3e2e prepare                   # Phi-3-mini-4k-instruct + sample data
      phi3e2e prepare --tiny            # a tiny offline model to try things
      phi3e2e prepare --twin phi4-mini  # a tiny twin of Phi-4-mini
      phi3e2e prepare --data TruthfulQA.csv
      phi3e2e prepare --data faq.csv --question-col 问题 --answer-col 答案
      phi3e2e prepare --data chats.jsonl --name support --eval-split 0.05
      phi3e2e prepare --model ./my-phi3 # a model folder you already have
    """
    from phi3e2e.prepare.dataset_import import describe
    from phi3e2e.prepare.prepare_project import ImportOptions
    from phi3e2e.prepare.prepare_project import prepare as run_prepare

    project = current_project()
    options = ImportOptions(data_format, encoding, question_col, answer_col, eval_split, seed, max_length, force)
    prepared = run_prepare(
        project, model=model, tiny=twin or tiny, data=data, dataset_name=name, revision=revision, options=options, say=say
    )
    if prepared.dataset_summary:
        for line in describe(prepared.dataset_summary):
            say(line)
    say(f"Model:   {project.relative(prepared.model_dir)}")
    say(f"Data:    {project.relative(prepared.dataset_dir)}  (summary.json explains it)")
    say("Next:    phi3e2e finetune --algo lora")
