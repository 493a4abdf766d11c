"""`phi3e2e deploy`: a finished run behind an Azure ML managed online endpoint; list, status, logs, delete.

One name for both: `phi3e2e deploy RUN --target aml` and `phi3e2e deploy list|status|logs|delete`.
A click group reads its first word as a command name, so DeployGroup hands any other first word (a run
name, or an option) to the `create` command; a run named like a command deploys as `deploy create NAME`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer
from typer.core import TyperGroup

from phi3e2e.cli.azure_options import (
    DeploymentOption,
    EndpointInstanceTypeOption,
    EndpointOption,
    ResourceGroupOption,
    SubscriptionOption,
    WorkspaceOption,
)
from phi3e2e.cli.options import RunArgument, current_project, new_app, say
from phi3e2e.errors import UserError


class DeployGroup(TyperGroup):
    DEFAULT = "create"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.DEFAULT, *args]
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx) -> list[str]:
        return ["[RUN] --target aml [OPTIONS]", "|", "COMMAND [ARGS]..."]


app = new_app(
    "Serve a finished run's int4 model on an Azure ML managed online endpoint (OpenAI-compatible).\n\n"
    "Examples:\n\n\b\n"
    "  phi3e2e deploy --target aml --dry-run   # the YAMLs and image; no call\n"
    "  phi3e2e deploy --target aml             # the newest run, all the traffic\n"
    "  phi3e2e deploy latest --target aml --traffic 10   # a canary\n"
    "  phi3e2e deploy status\n"
    "  phi3e2e deploy delete",
    group=True,
    cls=DeployGroup,
)

def _client(subscription, resource_group, workspace):
    from phi3e2e.train.aml.workspace import WorkspaceRef, connect

    project = current_project()
    return project, connect(WorkspaceRef(subscription, resource_group, workspace), (project.root,))


def _endpoint_name(project, endpoint: Optional[str]) -> str:
    from phi3e2e.deploy.plan import check_name, default_endpoint

    return check_name(endpoint, "endpoint", "--endpoint") if endpoint else default_endpoint(project.root)


@app.command("create")
def create(
    run: RunArgument = None,
    target: Annotated[
        Optional[Literal["aml"]], typer.Option("--target", help="Where to: aml (an Azure ML managed online endpoint).")
    ] = None,
    endpoint: EndpointOption = None,
    instance_type: EndpointInstanceTypeOption = None,
    instance_count: Annotated[int, typer.Option("--instance-count", metavar="N", help="Instances (1-20).")] = 1,
    traffic: Annotated[
        int, typer.Option("--traffic", metavar="PCT",
                          help="The new deployment's share once its smoke test passed; the others share the rest.")
    ] = 100,  # fmt: skip
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Write gen-model/RUN/deploy/ (endpoint.yml, deployment.yml, the image's "
                           "build context) and contact nothing.")  # fmt: skip
    ] = False,
    subscription: SubscriptionOption = None,
    resource_group: ResourceGroupOption = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Deploy a finished run (default: the newest) to an Azure ML managed online endpoint.

    The run's onnx-int4/ is registered as a model asset (as --register does) and served by `phi3e2e serve` in
    a custom container, so `openai.OpenAI(base_url=<endpoint>/v1, api_key=<endpoint key>)` works unchanged.
    A new run on an existing endpoint becomes a new deployment: one chat completion is sent to it alone, and
    only if it answers does traffic move (all of it, or --traffic PCT as a canary). If it does not, the new
    deployment is deleted and traffic stays where it was. Deploy the same run again to change its share.

    Examples:

    \b
      phi3e2e deploy --target aml --dry-run
      phi3e2e deploy --target aml --endpoint faq-bot
      phi3e2e deploy latest --target aml --traffic 10
      phi3e2e deploy latest --target aml --traffic 100     # promote the canary
    """
    from phi3e2e.deploy.manifests import write_deploy_files
    from phi3e2e.deploy.plan import plan_deploy

    if target is None:
        raise UserError("phi3e2e deploy: --target aml is required (see phi3e2e deploy --help)")
    project = current_project()
    request, warning = plan_deploy(project, run, endpoint, instance_type, instance_count, traffic)
    if warning:
        say(f"Warning: {warning}")
    ml_client = None if dry_run else _client(subscription, resource_group, workspace)[1]  # signed in, or stop here
    files = write_deploy_files(request)
    say(f"Wrote {project.relative(files.folder)}/: endpoint.yml, deployment.yml, environment/ (the image)")
    if dry_run:
        say(f"By hand: az ml online-endpoint create -f {project.relative(files.endpoint_file)}")
        say(f"         az ml online-deployment create -f {project.relative(files.deployment_file)} --all-traffic")
        return
    from phi3e2e.deploy.rollout import deploy

    rollout = deploy(ml_client, request, files, say)
    say(f"Done: {rollout.endpoint} serves run {request.run_dir.name} as deployment {rollout.deployment}")
    say(f'Use:  openai.OpenAI(base_url="{rollout.base_url}", api_key=KEY)   KEY: '
        f"az ml online-endpoint get-credentials -n {rollout.endpoint}")


@app.command("list")
def list_endpoints(
    subscription: SubscriptionOption = None,
    resource_group: ResourceGroupOption = None,
    workspace: WorkspaceOption = None,
) -> None:
    """The workspace's phi3e2e endpoints, with their state and traffic.

    Examples:

    \b
      phi3e2e deploy list
    """
    from phi3e2e.deploy.manage import list_endpoints as endpoints

    _, ml_client = _client(subscription, resource_group, workspace)
    for line in endpoints(ml_client):
        say(line)


@app.command()
def status(
    endpoint: EndpointOption = None,
    subscription: SubscriptionOption = None,
    resource_group: ResourceGroupOption = None,
    workspace: WorkspaceOption = None,
) -> None:
    """An endpoint's OpenAI base URL and each deployment: run, traffic, size, state.

    Examples:

    \b
      phi3e2e deploy status
      phi3e2e deploy status --endpoint faq-bot
    """
    from phi3e2e.deploy.manage import endpoint_status

    project, ml_client = _client(subscription, resource_group, workspace)
    for line in endpoint_status(ml_client, _endpoint_name(project, endpoint)):
        say(line)


@app.command()
def logs(
    endpoint: EndpointOption = None,
    deployment: DeploymentOption = None,
    lines: Annotated[int, typer.Option("--lines", min=1, help="How many of the last lines.")] = 100,
    subscription: SubscriptionOption = None,
    resource_group: ResourceGroupOption = None,
    workspace: WorkspaceOption = None,
) -> None:
    """The container log of a deployment (default: the one with the most traffic).

    Examples:

    \b
      phi3e2e deploy logs
      phi3e2e deploy logs --deployment r-20250101-120000-lora --lines 500
    """
    from phi3e2e.deploy.manage import deployment_logs

    project, ml_client = _client(subscription, resource_group, workspace)
    typer.echo(deployment_logs(ml_client, _endpoint_name(project, endpoint), deployment, lines))


@app.command()
def delete(
    endpoint: EndpointOption = None,
    deployment: DeploymentOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    subscription: SubscriptionOption = None,
    resource_group: ResourceGroupOption = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Delete the endpoint (after asking), or one deployment of it that takes no traffic.

    Examples:

    \b
      phi3e2e deploy delete
      phi3e2e deploy delete --deployment r-20250101-120000-lora --yes
    """
    from phi3e2e.deploy.manage import delete as delete_endpoint

    project, ml_client = _client(subscription, resource_group, workspace)
    confirm = (lambda question: True) if yes else (lambda question: typer.confirm(question, default=False))
    if delete_endpoint(ml_client, _endpoint_name(project, endpoint), deployment, confirm, say):
        say("Deleted.")
    else:
        say("Nothing deleted.")
