"""`phi3e2e chat`: talk to a fine-tuned model in any of its forms."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from phi3e2e.cli.chat_prompt import LEAVE, LineReader, talk
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
    temperature: Annotated[
        float,
        typer.Option("--temperature", min=0.0, help="0: greedy (the likeliest token each time); above 0 samples."),
    ] = 0.0,
    top_p: Annotated[
        float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass (when sampling).")
    ] = 1.0,
    top_k: Annotated[
        int, typer.Option("--top-k", min=1, help="Sample from the k likeliest tokens (when sampling).")
    ] = 50,
    seed: Annotated[
        Optional[int], typer.Option("--seed", min=0, help="Repeatable sampling: the same seed, the same answer.")
    ] = None,
    do_sample: Annotated[
        bool, typer.Option("--do-sample", hidden=True, help="Deprecated: --temperature above 0 samples.")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON object per answer (text, finish_reason: stop / length / interrupted, tokens, "
            "tokens_per_second, ...) instead of streaming text; questions are read one per line from stdin, "
            "each answered on its own.",
        ),
    ] = False,
    conversation: Annotated[
        bool, typer.Option("--conversation", help="With --json: the stdin lines are one conversation's turns.")
    ] = False,
) -> None:
    """Chat with a fine-tuned model, in any of its forms.

    At the prompt: line editing and history (Up-arrow; kept per project), /help lists the commands (/clear,
    /system, /set temperature 0.7, ...), /exit or Ctrl-D leaves, Ctrl-C stops an answer. --temperature 0 (the
    default) answers greedily, the same every time; above 0 samples (--seed repeats a sampled answer).

    Examples:

    \b
      phi3e2e chat
      phi3e2e chat --prompt "How long does shipping take?"
      phi3e2e chat --temperature 0.7 --top-p 0.9 --seed 7
      phi3e2e chat --model gen-model/RUN/merged --system "Answer in one sentence."
      phi3e2e chat --model gen-model/RUN/adapter \\
          --base model-cache/Phi-3-mini-4k-instruct
      phi3e2e chat --model gen-model/RUN/onnx-cuda-int4 --device cuda
      echo "Where is your roastery?" | phi3e2e chat --json
      cat turns.txt | phi3e2e chat --json --conversation
    """
    from phi3e2e.infer.chat import ChatSession, GenerationOptions
    from phi3e2e.infer.forms import resolve_model_dir

    if min_length > max_length:
        raise UserError(f"--min-length {min_length} is more than --max-length {max_length}")
    if conversation and not as_json:
        raise UserError("--conversation is for --json (questions from stdin); a chat at the prompt is one conversation")
    if model:
        model_dir = resolve_model_dir(model.resolve())
    else:  # the run records' module (pydantic) only when there are runs to look through
        from phi3e2e.runs import newest_onnx_model

        model_dir = newest_onnx_model(current_project().gen_model)
    if do_sample:  # before one meaning for temperature, --do-sample switched sampling on (at temperature 1)
        temperature = temperature or 1.0
        typer.echo(f"note: --do-sample is no longer needed: --temperature above 0 samples (sampling at {temperature}); "
                   "--temperature 0 is greedy", err=True)
    options = GenerationOptions(max_length, temperature, top_p, top_k, min_new_tokens=min_length, seed=seed)
    if prompt is None and not as_json:  # a 2 GB model takes seconds to load: say what is happening
        typer.echo(f"Loading {model_dir} ...", err=True)
    session = ChatSession(model_dir, options, system=system, device=device, base=base.resolve() if base else None,
                          threads=threads)  # fmt: skip
    if getattr(session.engine, "built_for", device) == "cuda" and device == "cpu":
        typer.echo(f"note: {model_dir} was built for CUDA; it runs on the CPU here, slower than a CPU build "
                   "(--device cuda on a GPU machine, or `phi3e2e export --device cpu` for a CPU build)", err=True)
    if hasattr(sys.stdin, "reconfigure"):  # bytes that are not UTF-8 reach a question as lone surrogates, refused
        sys.stdin.reconfigure(errors="surrogateescape")
    if as_json:
        failed = json_answers(session, [prompt] if prompt is not None else _stdin_lines(), keep_turns=conversation)
    elif prompt is not None:
        print_answer(session, prompt)
        failed = False
    else:
        typer.echo(f"Chatting with {model_dir} ({session.form}, {device}); /help lists the commands, "
                   "/exit or Ctrl-D leaves, Ctrl-C stops an answer", err=True)
        history = current_project().gen_model / ".chat-history"
        failed = talk(session, lambda question: print_answer(session, question), LineReader(history))
    if failed:
        raise typer.Exit(2)


def _notice(text: str) -> None:
    typer.echo(text, err=True)


def _stream(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def print_answer(session, question: str) -> None:
    """Stream the answer; say why it ended only when a reader would not expect it: cut short, or nothing at all
    (a tiny or barely trained model may end its turn at once, or say only blank tokens)."""
    reply = session.ask(question, on_text=_stream, notice=_notice)
    sys.stdout.write(" [stopped]\n" if reply.stopped else "\n")
    if reply.finish_reason == "length":
        _notice(CUT_ANSWER.format(tokens=reply.tokens, blank="" if reply.text else ", all blank"))
    elif not reply.text and reply.finish_reason == "stop":
        _notice(EMPTY_ANSWER)


def json_answers(session, questions, keep_turns: bool) -> bool:
    """One JSON object per question, an error object in place of a refused one; True when one was refused.

    Each question is answered on its own, as a batch script expects, unless `keep_turns` (--conversation)."""
    failed = False
    for question in questions:
        if not keep_turns:
            session.new_conversation()
        try:
            reply = session.ask(question, notice=_notice)
            typer.echo(json.dumps(reply.as_json() | {"form": session.form}))
        except UserError as e:  # a question too long for the context, or not UTF-8
            failed = True
            typer.echo(json.dumps({"error": {"message": " ".join(str(e).split())}, "form": session.form}))
    return failed


def _stdin_lines():
    while True:
        try:
            line = input("")
        except (EOFError, KeyboardInterrupt):
            return
        if line.strip() in LEAVE:
            return
        if line.strip():
            yield line
