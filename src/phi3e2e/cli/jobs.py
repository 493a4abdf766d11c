"""`phi3e2e jobs`: come back to Azure ML fine-tunes (list, status, logs, download)."""

from __future__ import annotations

from typing import Annotated

import typer

from phi3e2e.cli.azure_options import (
    RegisterMergedOption,
    RegisterOption,
    ResourceGroupOption,
    SubscriptionOption,
    WorkspaceOption,
)
from phi3e2e.cli.options import RunArgument, current_project, new_app, say

app = new_app(
    "Follow Azure ML fine-tunes: list, status, logs, download.\n\n"
    "Examples:\n\n\b\n"
    "  phi3e2e jobs list\n"
    "  phi3e2e jobs logs 20250101-120000-qlora\n"
    "  phi3e2e jobs download",
    group=True,
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
    checkpoints: Annotated[
        bool, typer.Option("--checkpoints", help="Also the trainer's checkpoints (GBs), into RUN/checkpoints/.")
    ] = False,
    subscription: SubscriptionOption = None,
    resource_group: ResourceGroupOption = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Download a finished job's adapter/, merged/ and onnx-int4/ (and its log) into its run folder.

    Examples:

    \b
      phi3e2e jobs download                        # the newest Azure ML run
      phi3e2e jobs download 20250101-120000-qlora
      phi3e2e jobs download --register phi3-faq --register-merged
      phi3e2e chat --model gen-model/20250101-120000-qlora --device cuda
    """
    from phi3e2e.train.aml.jobs import download_models

    project, client = _client(subscription, resource_group, workspace)
    run_dir = download_models(project, client, run, say, checkpoints=checkpoints)
    say(f"Done: {project.relative(run_dir)}/ holds adapter/, merged/, onnx-int4/")
    if register:
        from phi3e2e.train.aml.registry import register_models

        register_models(client, run_dir, register, say, merged=register_merged)
    say(
        f'Next:  phi3e2e chat --model {project.relative(run_dir / "onnx-int4")} --device cuda --prompt "..."  (int4 built for CUDA)'
    )
