"""`phi3e2e finetune`: render, validate and run the Olive workflow."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from phi3e2e.commands.common import ModelOption, choice, current_project, say

Algo = Annotated[str, typer.Option("--algo", help="lora (CPU or GPU) or qlora (CUDA GPU only).")]
Target = Annotated[str, typer.Option("--target", help="local: this machine; aml: Azure ML compute.")]


def finetune(
    algo: Algo = "lora",
    target: Target = "local",
    model: ModelOption = None,
    data: Annotated[
        Optional[str], typer.Option("--data", help="Dataset name under datasets/ or folder; default: the prepared one.")
    ] = None,
    run_name: Annotated[Optional[str], typer.Option("--run-name", help="Run folder name under gen-model/.")] = None,
    set_values: Annotated[
        Optional[List[str]],
        typer.Option("--set", help="Override a setting, e.g. --set lora.r=16 --set training.max_steps=50."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Render and validate the workflow only.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Stream Olive's full output.")] = False,
) -> None:
    """Fine-tune, merge the adapter and build the int4 ONNX model into gen-model/<run>/.

    Examples:
      phi3e2e finetune --algo lora
      phi3e2e finetune --algo lora --set lora.r=16 --set training.max_steps=50
      phi3e2e finetune --algo qlora --target aml --dry-run
    """
    from phi3e2e.finetune import finetune as run_finetune

    project = current_project()
    result = run_finetune(
        project,
        algo=choice(algo, ("lora", "qlora"), "--algo"),
        target=choice(target, ("local", "aml"), "--target"),
        model=model,
        data=data,
        run_name=run_name,
        set_args=set_values or [],
        dry_run=dry_run,
        verbose=verbose,
        say=say,
    )
    if result.dry_run:
        say(f"Workflow rendered and validated: {project.relative(result.config_file)}")
        return
    loss = result.record.get("train_loss") or {}
    say(f"Done in {result.record['duration_s']:.0f}s: {project.relative(result.run_dir)}/")
    say("  adapter/    LoRA adapter (PEFT)")
    say("  merged/     base model with the adapter merged in")
    say("  onnx-int4/  int4 ONNX Runtime GenAI model")
    if loss:
        say(f"  training loss {loss['first']:.3f} -> {loss['last']:.3f} (curve: loss.png)")
    say('Next:    phi3e2e chat --prompt "..."')
