"""`phi3e2e chat`: talk to a fine-tuned model in any of its forms."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from phi3e2e.cli.options import DeviceOption, current_project
from phi3e2e.errors import UserError

EMPTY_ANSWER = "[empty answer: the model ended its turn at once; --min-length N makes it say at least N tokens]"
CUT_ANSWER = "[cut off at the length limit ({tokens} tokens{blank}); --max-length N allows longer answers]"


def chat(
    model: Annotated[
        Optional[Path],
        typer.Option(
            "--model",
            help="Model folder: ONNX Runtime GenAI (onnx-int4/), merged Hugging Face model (merged/), PEFT adapter "
            "(adapter/) or a run folder. Default: the newest finished run's onnx-int4/.",
        ),
    ] = None,
    base: Annotated[
        Optional[Path], typer.Option("--base", help="Base model folder for an adapter (default: from its adapter_config.json).")
    ] = None,
    device: DeviceOption = "cpu",
    threads: Annotated[
        Optional[int],
        typer.Option("--threads", min=1, help="CPU compute threads (default: as built, every physical core)."),
    ] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Answer this once and exit.")] = None,
    system: Annotated[Optional[str], typer.Option("--system", help="System prompt.")] = None,
    max_length: Annotated[int, typer.Option("--max-length", min=1, help="Most tokens in one answer.")] = 256,
    min_length: Annotated[
        int,
        typer.Option("--min-length", min=0, help="Fewest tokens in one answer (the end of turn waits)."),
    ] = 0,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="Sampling temperature.")] = 1.0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass.")] = 1.0,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Sample from the k likeliest tokens.")] = 50,
    do_sample: Annotated[bool, typer.Option("--do-sample", help="Sample instead of greedy decoding.")] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON object per answer (text, finish_reason: stop / length / interrupted, tokens, "
            "tokens_per_second, ...) instead of streaming text; questions are read one per line from stdin.",
        ),
    ] = False,
) -> None:
    """Chat with a fine-tuned model, in any of its forms.

    Multi-turn: /exit or Ctrl-D leaves, Ctrl-C stops an answer.

    Examples:

    \b
      phi3e2e chat
      phi3e2e chat --prompt "How long does shipping take?"
      phi3e2e chat --model gen-model/RUN/merged --system "Answer in one sentence."
      phi3e2e chat --model gen-model/RUN/adapter \\
          --base model-cache/Phi-3-mini-4k-instruct
      phi3e2e chat --model gen-model/RUN/onnx-cuda-int4 --device cuda
      echo "Where is your roastery?" | phi3e2e chat --json
    """
    from phi3e2e.infer.chat import ChatSession, GenerationOptions
    from phi3e2e.infer.forms import resolve_model_dir
    from phi3e2e.runs import newest_onnx_model

    if min_length > max_length:
        raise UserError(f"--min-length {min_length} is more than --max-length {max_length}")
    model_dir = resolve_model_dir(model.resolve()) if model else newest_onnx_model(current_project().gen_model)
    options = GenerationOptions(max_length, temperature, top_p, top_k, do_sample, min_new_tokens=min_length)
    base_dir = base.resolve() if base else None
    interactive = prompt is None and not as_json
    if interactive:  # a 2 GB model takes seconds to load: say what is happening
        typer.echo(f"Loading {model_dir} ...", err=True)
    session = ChatSession(model_dir, options, system=system, device=device, base=base_dir, threads=threads)
    if getattr(session.engine, "built_for", device) == "cuda" and device == "cpu":
        typer.echo(f"note: {model_dir} was built for CUDA; it runs on the CPU here, slower than a CPU build "
                   "(--device cuda on a GPU machine, or `phi3e2e export --device cpu` for a CPU build)", err=True)

    def stream(piece: str) -> None:
        if not as_json:
            sys.stdout.write(piece)
            sys.stdout.flush()

    def notice(text: str) -> None:
        typer.echo(text, err=True)

    def answer(question: str) -> bool:
        reply = session.ask(question, on_text=stream, notice=notice)
        if as_json:
            typer.echo(json.dumps(reply.as_json() | {"form": session.form}))
        else:
            sys.stdout.write(" [stopped]\n" if reply.stopped else "\n")
            # Say why an answer ended only when it is not what a reader expects: cut short, or nothing at all
            # (a tiny or barely trained model may end its turn at once, or say only blank tokens).
            if reply.finish_reason == "length":
                notice(CUT_ANSWER.format(tokens=reply.tokens, blank="" if reply.text else ", all blank"))
            elif not reply.text and reply.finish_reason == "stop":
                notice(EMPTY_ANSWER)
        return reply.stopped

    failed = False

    def answer_or_say_why(question: str) -> None:
        nonlocal failed
        try:
            answer(question)
        except UserError as e:  # e.g. a prompt longer than the context: say so, keep the session
            if not as_json:
                raise
            failed = True  # a script reading the JSON lines gets an object for every question, and the exit code
            typer.echo(json.dumps({"error": {"message": " ".join(str(e).split())}, "form": session.form}))

    if prompt is not None:
        answer_or_say_why(prompt)
        if failed:
            raise typer.Exit(2)
        return
    # Bytes that are not UTF-8 reach the question as lone surrogates, which the session refuses in one line.
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")
    if interactive:
        typer.echo(f"Chatting with {model_dir} ({session.form}, {device}); /exit or Ctrl-D leaves, Ctrl-C stops an answer", err=True)
    while True:
        try:
            user = input("" if as_json else "you> ")
        except (EOFError, KeyboardInterrupt):
            if not as_json:
                typer.echo("", err=True)
            break
        if user.strip() in ("/exit", "/quit"):
            break
        if not user.strip():
            continue
        if not as_json:
            sys.stdout.write("phi3> ")
        try:
            answer_or_say_why(user)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
    if failed:
        raise typer.Exit(2)
