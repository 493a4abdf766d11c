"""`phi3e2e chat`: talk to a fine-tuned model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from phi3e2e.commands.common import current_project


def chat(
    model: Annotated[
        Optional[Path], typer.Option("--model", help="ONNX Runtime GenAI model folder; default: the newest run's.")
    ] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Answer this once and exit.")] = None,
    system: Annotated[Optional[str], typer.Option("--system", help="System prompt.")] = None,
    max_length: Annotated[int, typer.Option("--max-length", min=1, help="Most tokens in one answer.")] = 256,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="Sampling temperature.")] = 1.0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass.")] = 1.0,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Sample from the k likeliest tokens.")] = 50,
    do_sample: Annotated[bool, typer.Option("--do-sample", help="Sample instead of greedy decoding.")] = False,
) -> None:
    """Chat with a fine-tuned model (multi-turn; /exit or Ctrl-D leaves).

    Examples:
      phi3e2e chat
      phi3e2e chat --prompt "How long does shipping take?"
    """
    from phi3e2e.chat import ChatSession, GenerationOptions
    from phi3e2e.runs import newest_onnx_model

    project = current_project()
    model_dir = model.resolve() if model else newest_onnx_model(project.gen_model)
    options = GenerationOptions(max_length, temperature, top_p, top_k, do_sample)
    session = ChatSession(model_dir, options, system=system)

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    def notice(text: str) -> None:
        typer.echo(text, err=True)

    if prompt is not None:
        session.ask(prompt, on_text=stream, notice=notice)
        sys.stdout.write("\n")
        return
    typer.echo(f"Chatting with {model_dir} (/exit or Ctrl-D to leave, Ctrl-C stops an answer)", err=True)
    while True:
        try:
            user = input("you> ")
        except (EOFError, KeyboardInterrupt):
            typer.echo("", err=True)
            return
        if user.strip() in ("/exit", "/quit"):
            return
        if not user.strip():
            continue
        sys.stdout.write("phi3> ")
        answer = session.ask(user, on_text=stream, notice=notice)
        sys.stdout.write(" [stopped]\n" if answer.stopped else "\n")
