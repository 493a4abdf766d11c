"""`phi3e2e jobs`: come back to Azure ML fine-tunes (list, status, logs, download), and the Azure options."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from phi3e2e.cli.options import current_project, help_when_alone, say

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
SubscriptionOption = Annotated[
    Optional[str], typer.Option("--subscription", help="Azure subscription ID (default: config.json / env).")
]
ResourceGroupOption = Annotated[
    Optional[str], typer.Option("--resource-group", help="Azure resource group (default: config.json / env).")
]
WorkspaceOption = Annotated[
    Optional[str], typer.Option("--workspace", help="Azure ML workspace name (default: config.json / env).")
]
RunArgument = Annotated[
    Optional[str], typer.Argument(metavar="RUN", help="Run name under gen-model/ (default: the newest Azure ML run).")
]

app = typer.Typer(
    help="Follow Azure ML fine-tunes: list, status, logs, download.\n\n"
    "Examples:\n\n\b\n"
    "  phi3e2e jobs list\n"
    "  phi3e2e jobs logs 20250101-120000-qlora\n"
    "  phi3e2e jobs download",
    rich_markup_mode=None,  # the same plain help as the other commands (see cli/app.py)
)
app.callback(invoke_without_command=True)(help_when_alone)


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


def _client(subscription, resource_group, workspace):
    from phi3e2e.train.aml.workspace import WorkspaceRef, connect

    project = current_project()
    return project, connect(WorkspaceRef(subscription, resource_group, workspace), (project.root,))


@app.command("list")
def list_jobs(
    subscription: SubscriptionOption = None,
    resource_group: ResourceGroupOption = None,
    workspace: WorkspaceOption = None,
    offline: Annotated[bool, typer.Option("--offline", help="Only what the run folders recorded.")] = False,
) -> None:
    """Azure ML runs in gen-model/, newest first, with their job's live status.

    Examples:

    \b
      phi3e2e jobs list
      phi3e2e jobs list --offline     # no Azure call: the run folders' record
      phi3e2e jobs list --resource-group my-rg --workspace my-ws
    """
    from phi3e2e.train.aml.jobs import list_runs
    from phi3e2e.train.aml.results import aml_runs

    project = current_project()
    # Nothing to look up: no workspace or sign-in needed to say so.
    client = None if offline or not aml_runs(project) else _client(subscription, resource_group, workspace)[1]
    for line in list_runs(project, client):
        say(line)


@app.command()
def status(
    run: RunArgument = None,
    subscription: SubscriptionOption = None,
    resource_group: ResourceGroupOption = None,
    workspace: WorkspaceOption = None,
) -> None:
    """The job's status and its Azure ML studio link.

    Examples:

    \b
      phi3e2e jobs status                          # the newest Azure ML run
      phi3e2e jobs status 20250101-120000-qlora
    """
    from phi3e2e.train.aml.jobs import run_status

    project, client = _client(subscription, resource_group, workspace)
    for line in run_status(project, client, run):
        say(line)


@app.command()
def logs(
    run: RunArgument = None,
    subscription: SubscriptionOption = None,
    resource_group: ResourceGroupOption = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Stream the job's log until it ends.

    Examples:

    \b
      phi3e2e jobs logs                            # the newest Azure ML run
      phi3e2e jobs logs 20250101-120000-qlora
    """
    from phi3e2e.train.aml.jobs import follow_logs

    project, client = _client(subscription, resource_group, workspace)
    say(f"Job ended: {follow_logs(project, client, run, say)}")


@app.command()
def download(
    run: RunArgument = None,
    register: RegisterOption = None,
    register_merged: RegisterMergedOption = False,
    subscription: SubscriptionOption = None,
    resource_group: ResourceGroupOption = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Download a finished job's adapter/, merged/ and onnx-int4/ into its run folder.

    Examples:

    \b
      phi3e2e jobs download                        # the newest Azure ML run
      phi3e2e jobs download 20250101-120000-qlora
      phi3e2e jobs download --register phi3-faq --register-merged
      phi3e2e chat --model gen-model/20250101-120000-qlora --device cuda
    """
    from phi3e2e.train.aml.jobs import download_models

    project, client = _client(subscription, resource_group, workspace)
    run_dir = download_models(project, client, run, say)
    say(f"Done: {project.relative(run_dir)}/ holds adapter/, merged/, onnx-int4/")
    if register:
        from phi3e2e.train.aml.registry import register_models

        register_models(client, run_dir, register, say, merged=register_merged)
    say(
        f'Next:  phi3e2e chat --model {project.relative(run_dir / "onnx-int4")} --device cuda --prompt "..."  (int4 built for CUDA)'
    )
