"""The Azure ML options, declared once: the workspace (every Azure command), the job (finetune) and the
online endpoint (deploy)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

ComputeOption = Annotated[
    Optional[str], typer.Option("--compute", help="--target aml: the Azure ML GPU compute to run on, e.g. gpu-a100.")
]
ImageOption = Annotated[
    Optional[str], typer.Option("--image", help="--target aml: base image (default: Azure ML's CUDA 12 image).")
]
WaitOption = Annotated[
    bool,
    typer.Option("--wait/--no-wait", help="--target aml: stream the log and download the models, or just submit."),
]
HfTokenSecretOption = Annotated[
    Optional[str],
    typer.Option("--hf-token-secret", help="--target aml: workspace Key Vault secret with a Hugging Face token."),
]
InstanceTypeOption = Annotated[
    Optional[str],
    typer.Option("--instance-type", help="--target aml: serverless GPU size instead of --compute, "
                 "e.g. Standard_NC24ads_A100_v4."),
]  # fmt: skip
TimeoutOption = Annotated[
    float, typer.Option("--timeout", metavar="HOURS", help="--target aml: the job's time limit in hours.")
]
LowPriorityOption = Annotated[
    bool,
    typer.Option("--low-priority", help="--target aml: spot capacity; a preempted job resumes from its checkpoint."),
]
RegisterOption = Annotated[
    Optional[str],
    typer.Option("--register", metavar="NAME", help="Register the int4 model as an Azure ML model asset NAME."),
]
RegisterMergedOption = Annotated[
    bool, typer.Option("--register-merged", help="With --register: also the merged model, as NAME-merged.")
]
IgnoreMemoryPlanOption = Annotated[
    bool, typer.Option("--ignore-memory-plan", help="--target aml: submit even if the GPU memory estimate "
                       "says the job will not fit.")
]  # fmt: skip
EndpointOption = Annotated[
    Optional[str],
    typer.Option("--endpoint", metavar="NAME", help="The endpoint (default: this project's, phi3e2e-<folder>-<hash>).",
                 show_default=False),
]  # fmt: skip
DeploymentOption = Annotated[
    Optional[str], typer.Option("--deployment", metavar="NAME", help="One deployment of the endpoint (r-<run>).")
]
EndpointInstanceTypeOption = Annotated[
    Optional[str],
    typer.Option("--instance-type", metavar="SKU", help="CPU VM size (default Standard_DS3_v2: 4 vCPUs, 14 GiB).",
                 show_default=False),
]  # fmt: skip
SubscriptionOption = Annotated[
    Optional[str], typer.Option("--subscription", help="Azure subscription ID (default: config.json / env).")
]
ResourceGroupOption = Annotated[
    Optional[str], typer.Option("--resource-group", help="Azure resource group (default: config.json / env).")
]
WorkspaceOption = Annotated[
    Optional[str], typer.Option("--workspace", help="Azure ML workspace name (default: config.json / env).")
]


def aml_options(compute, image, wait, hf_token_secret, subscription, resource_group, workspace, **more):
    """The finetune command's Azure flags as the domain's AmlOptions (no azure import).

    more: instance_type, timeout_h, low_priority, register (AmlOptions' names).
    """
    from phi3e2e.train.aml.job import DEFAULT_IMAGE, AmlOptions
    from phi3e2e.train.aml.workspace import WorkspaceRef

    return AmlOptions(
        compute=compute,
        image=image or DEFAULT_IMAGE,
        wait=wait,
        hf_token_secret=hf_token_secret,
        workspace=WorkspaceRef(subscription, resource_group, workspace),
        **more,
    )
