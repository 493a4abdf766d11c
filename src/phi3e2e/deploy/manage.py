"""`phi3e2e deploy list | status | logs | delete`: the endpoints phi3e2e made, read and removed with the SDK."""

from __future__ import annotations

from typing import Callable, Optional

from phi3e2e.deploy.rollout import api_base, existing
from phi3e2e.errors import UserError

ENDPOINT_TAG = ("phi3e2e", "endpoint")  # endpoint.yml's tag: what `deploy list` shows


def _endpoint(ml_client, name: str):
    endpoint = existing(ml_client.online_endpoints.get, name)
    if endpoint is None:
        raise UserError(f"--endpoint {name}: no such endpoint in the workspace (`phi3e2e deploy list` shows them)")
    return endpoint


def list_endpoints(ml_client) -> list[str]:
    key, value = ENDPOINT_TAG
    lines = []
    for endpoint in ml_client.online_endpoints.list():
        if (endpoint.tags or {}).get(key) != value:
            continue
        traffic = ", ".join(f"{name} {pct}%" for name, pct in sorted((endpoint.traffic or {}).items())) or "no traffic"
        lines.append(f"{endpoint.name:<34} {endpoint.provisioning_state or '?':<10} {traffic}")
    return lines or ["No phi3e2e endpoints in this workspace (`phi3e2e deploy RUN --target aml` makes one)."]


def endpoint_status(ml_client, name: str) -> list[str]:
    endpoint = _endpoint(ml_client, name)
    traffic = endpoint.traffic or {}
    base = api_base(endpoint.scoring_uri) if endpoint.scoring_uri else "(not provisioned yet)"
    lines = [f"Endpoint:  {endpoint.name} ({endpoint.provisioning_state})", f"OpenAI API: {base}"]
    for deployment in ml_client.online_deployments.list(name):
        run = (deployment.tags or {}).get("phi3e2e.run", "?")
        size = f"{deployment.instance_count} x {deployment.instance_type}"
        share = traffic.get(deployment.name, 0)
        lines.append(f"  {deployment.name:<32} run {run:<28} {share:>3}%  {size}  {deployment.provisioning_state}")
    lines.append(f"Key:       az ml online-endpoint get-credentials -n {endpoint.name} (phi3e2e never prints it)")
    return lines


def deployment_logs(ml_client, endpoint: str, deployment: Optional[str], lines: int) -> str:
    if deployment is None:
        traffic = _endpoint(ml_client, endpoint).traffic or {}
        if not traffic:
            raise UserError(f"--endpoint {endpoint}: no deployment takes traffic; name one with --deployment")
        deployment = max(traffic, key=traffic.get)
    elif existing(ml_client.online_deployments.get, deployment, endpoint) is None:
        raise UserError(f"--deployment {deployment}: not on endpoint {endpoint} (`phi3e2e deploy status` lists them)")
    from phi3e2e.train.aml.results import redact

    return redact(ml_client.online_deployments.get_logs(deployment, endpoint, lines))


def delete(ml_client, endpoint: str, deployment: Optional[str], confirm: Callable[[str], bool],
           say: Callable[[str], None]) -> bool:
    """The whole endpoint, or one deployment that takes no traffic; False when the user said no."""
    current = _endpoint(ml_client, endpoint)
    if deployment is None:
        if not confirm(f"Delete endpoint {endpoint} and all its deployments? Clients of it stop working"):
            return False
        say(f"Deleting endpoint {endpoint} (a few minutes) ...")
        ml_client.online_endpoints.begin_delete(endpoint).result()
        return True
    if existing(ml_client.online_deployments.get, deployment, endpoint) is None:
        raise UserError(f"--deployment {deployment}: not on endpoint {endpoint} (`phi3e2e deploy status` lists them)")
    share = (current.traffic or {}).get(deployment, 0)
    if share:
        raise UserError(f"--deployment {deployment} takes {share}% of {endpoint}'s traffic: move it first "
                        f"(`phi3e2e deploy OTHER_RUN --endpoint {endpoint}`), "
                        "or delete the whole endpoint")  # fmt: skip
    if not confirm(f"Delete deployment {deployment} of endpoint {endpoint}?"):
        return False
    say(f"Deleting deployment {deployment} ...")
    ml_client.online_deployments.begin_delete(deployment, endpoint).result()
    return True
