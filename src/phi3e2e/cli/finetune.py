"""`phi3e2e finetune`: render, validate and run the Olive workflow."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from phi3e2e.cli.azure_options import (
    ComputeOption,
    HfTokenSecretOption,
    IgnoreMemoryPlanOption,
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
from phi3e2e.cli.options import ModelOption, SetOption, VerboseOption, current_project, say
from phi3e2e.train.targets import TargetName
from phi3e2e.workflow.settings import Algo

AlgoOption = Annotated[Algo, typer.Option("--algo", help="lora: CPU or GPU; qlora: CUDA GPU only.")]
TargetOption = Annotated[
    Optional[TargetName],
    typer.Option("--target", help="local: this machine (the default); aml: Azure ML compute.", show_default=False),
]


def finetune(
    algo: AlgoOption = "lora",
    target: TargetOption = None,
    model: ModelOption = None,
    data: Annotated[
        Optional[str], typer.Option("--data", help="Dataset name under datasets/ or folder; default: the prepared one.")
    ] = None,
    run_name: Annotated[Optional[str], typer.Option("--run-name", help="Run folder name under gen-model/.")] = None,
    set_values: SetOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Render and validate the workflow only.")] = False,
    verbose: VerboseOption = False,
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
    ignore_memory_plan: IgnoreMemoryPlanOption = False,
    wait: WaitOption = True,
    hf_token_secret: HfTokenSecretOption = None,
    subscription: SubscriptionOption = None,
    resource_group: ResourceGroupOption = None,
    workspace: WorkspaceOption = None,
    ship: Annotated[
        Literal["merged", "adapter"],
        typer.Option("--ship", help="The int4 model the run ships: merged (its own onnx-int4/, the default) or "
                                    "adapter (onnx-adapter/ on the int4 base its runs share in model-cache/)."),
    ] = "merged",
) -> None:
    """Fine-tune, merge the adapter and build the int4 ONNX model in gen-model/.

    Each run gets its own folder, gen-model/RUN/, with the adapter, the merged model and the
    int4 ONNX model (with --ship adapter: onnx-adapter/, the adapter for the shared int4 base).

    Examples:

    \b
      phi3e2e finetune --algo lora
      phi3e2e finetune --set lora.r=16 --set training.max_steps=50
      phi3e2e finetune --resume 20261129-101500-lora
      phi3e2e finetune --ship adapter   # shares one int4 base with its kin
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
    from phi3e2e.pipeline import finetune_and_evaluate
    from phi3e2e.train.spec import RunSpec

    azure = aml_options(
        compute, image, wait, hf_token_secret, subscription, resource_group, workspace,
        instance_type=instance_type, timeout_h=timeout, low_priority=low_priority, register=register,
        memory_check=not ignore_memory_plan,
    )  # fmt: skip
    spec = RunSpec.of(algo=algo, target=target, model=model, data=data, run_name=run_name,
                      set_args=tuple(set_values or ()), dry_run=dry_run, verbose=verbose, resume=resume,
                      target_options=azure, ships=ship)  # fmt: skip
    finetune_and_evaluate(current_project(), spec, say)
