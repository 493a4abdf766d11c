"""`phi3e2e finetune`: render, validate and run the Olive workflow."""

from __future__ import annotations

from typing import Annotated, List, Literal, Optional

import typer

from phi3e2e.cli.jobs import (
    ComputeOption,
    HfTokenSecretOption,
    ImageOption,
    InstanceTypeOption,
    LowPriorityOption,
    RegisterOption,
    ResourceGroupOption,
    SubscriptionOption,
    TimeoutOption,
    WaitOption,
    WorkspaceOption,
    aml_options,
)  # fmt: skip
from phi3e2e.cli.options import ModelOption, current_project, say
from phi3e2e.errors import UserError

Algo = Annotated[Literal["lora", "qlora"], typer.Option("--algo", help="lora: CPU or GPU; qlora: CUDA GPU only.")]
Target = Annotated[
    Literal["local", "aml"], typer.Option("--target", help="local: this machine; aml: Azure ML compute.")
]


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
        typer.Option(
            "--set", metavar="KEY=VALUE", help="Override a setting, e.g. --set lora.r=16 --set training.max_steps=50."
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Render and validate the workflow only.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Stream Olive's full output.")] = False,
    resume: Annotated[
        Optional[str],
        typer.Option("--resume", metavar="RUN", help="Continue a failed or interrupted run from its last checkpoint."),
    ] = None,
    compute: ComputeOption = None,
    instance_type: InstanceTypeOption = None,
    image: ImageOption = None,
    timeout: TimeoutOption = 48.0,
    low_priority: LowPriorityOption = False,
    register: RegisterOption = None,
    wait: WaitOption = True,
    hf_token_secret: HfTokenSecretOption = None,
    subscription: SubscriptionOption = None,
    resource_group: ResourceGroupOption = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Fine-tune, merge the adapter and build the int4 ONNX model in gen-model/.

    Each run gets its own folder, gen-model/RUN/, with the adapter, the merged model and the
    int4 ONNX model.

    Examples:

    \b
      phi3e2e finetune --algo lora
      phi3e2e finetune --set lora.r=16 --set training.max_steps=50
      phi3e2e finetune --resume 20261129-101500-lora
      phi3e2e finetune --algo qlora --target aml --compute gpu-a100 --dry-run
      phi3e2e finetune --algo qlora --target aml --compute gpu-a100 \\
          --model microsoft/Phi-3-mini-4k-instruct
      phi3e2e finetune --target aml --compute gpu-a100 --no-wait \\
          --data azureml://datastores/workspaceblobstore/paths/data/train.jsonl
      phi3e2e finetune --algo qlora --target aml --low-priority \\
          --instance-type Standard_NC24ads_A100_v4 --register phi3-faq

    QLoRA trains every 4-bit linear layer (qkv, o, gate_up, down: Olive
    replaces lora.target_modules); LoRA trains lora.target_modules.
    """
    from phi3e2e.train.finetune import finetune as run_finetune

    project = current_project()
    if resume and (run_name or set_values or dry_run or model or data or target != "local"):
        raise UserError("--resume RUN uses the run's own recorded settings: leave out --run-name, --set, --model, "
                        "--data, --target and --dry-run")  # fmt: skip
    azure = aml_options(
        compute, image, wait, hf_token_secret, subscription, resource_group, workspace,
        instance_type=instance_type, timeout_h=timeout, low_priority=low_priority, register=register,
    )  # fmt: skip
    result = run_finetune(
        project,
        algo=algo,
        target=target,
        model=model,
        data=data,
        run_name=run_name,
        set_args=set_values or [],
        dry_run=dry_run,
        verbose=verbose,
        say=say,
        resume=resume,
        aml_options=azure,
    )
    if result.dry_run:
        say(f"Workflow rendered and validated: {project.relative(result.config_file)}")
        return
    if result.record.status == "submitted":  # --target aml --no-wait: the job runs on; `phi3e2e jobs` follows it
        return
    loss = result.record.train_loss
    say(f"Done in {result.record.duration_s:.0f}s: {project.relative(result.run_dir)}/")
    say("  adapter/    LoRA adapter (PEFT)")
    say("  merged/     base model with the adapter merged in")
    say("  onnx-int4/  int4 ONNX Runtime GenAI model")
    if loss:
        say(f"  training loss {loss.first:.3f} -> {loss.last:.3f} (curve: loss.png)")
    # Evidence right away: held-out loss, base vs fine-tuned int4 (full comparison: `phi3e2e eval`).
    from phi3e2e.evaluate.evaluation import EvalOptions, evaluate_run, summary_lines
    from phi3e2e.runs import EVAL_REPORT

    try:
        evaluation = evaluate_run(project, result.run_dir, EvalOptions(samples=2, max_rows=200), say=say)
    except (UserError, RuntimeError, OSError, KeyboardInterrupt) as e:  # the run itself is complete and verified
        # No eval split: the reason already says how to import one; `phi3e2e eval` would fail the same way.
        eval_file = project.resolve(result.record.dataset) / "eval.jsonl"
        retry = f" (try `phi3e2e eval {result.run_dir.name}`)" if eval_file.is_file() and eval_file.stat().st_size else ""
        say(f"Eval skipped: {' '.join(str(e).split()) or 'interrupted'}{retry}")
    else:
        say(f"Held-out loss on {evaluation['eval_rows']} eval rows (lower is better):")
        for line in summary_lines(evaluation):
            say(line)
        say(f"Report:  {project.relative(result.run_dir / EVAL_REPORT)}")
    if target == "aml" and register:  # after the eval, so the model asset's tags carry its held-out loss
        from phi3e2e.train.aml.registry import register_run

        register_run(project, result.run_dir, azure, say)
    say('Next:    phi3e2e chat --prompt "..."')
