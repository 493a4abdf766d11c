"""Blue/green on an Azure ML endpoint: a new run becomes a new deployment, proven by one chat completion
sent to it alone, before any traffic moves to it.

1. register onnx-int4/ as --register does (the same asset and tags), and point the deployment at it;
2. create the endpoint when missing (key auth), then the run's deployment (a run deployed before: reused);
3. smoke test: one POST /v1/chat/completions to that deployment only (the `azureml-model-deployment`
   header), with the endpoint's key, which is read for this request and never printed or written;
4. traffic: the first deployment takes 100%; a later one takes --traffic PCT and the others share the rest
   in their old proportions. A failed smoke test deletes the new deployment and leaves traffic as it was.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Optional
from urllib.parse import urlsplit

from phi3e2e.deploy.manifests import DeployFiles, load_entities, model_asset_name
from phi3e2e.deploy.plan import DeployRequest
from phi3e2e.errors import UserError

SMOKE_TIMEOUT_S = 300  # the first request loads the model (tens of seconds for Phi-3-mini on 4 vCPUs)
SMOKE_PROMPT = "Reply with one word: ready?"
DEPLOYMENT_HEADER = "azureml-model-deployment"  # routes a request to one deployment, whatever the traffic


@dataclass
class Rollout:
    endpoint: str
    deployment: str
    base_url: str  # what an openai client takes: <scoring host>/v1
    traffic: dict[str, int]
    model: str  # the registered asset, name:version


def api_base(scoring_uri: str) -> str:
    """The endpoint's scoring host with /v1: the custom container gets every path, not only the scoring route."""
    parts = urlsplit(scoring_uri)
    return f"{parts.scheme}://{parts.netloc}/v1"


def split_traffic(current: dict[str, int], new: str, share: int) -> dict[str, int]:
    """`new` at `share` percent; the others keep their proportions of the rest, in whole percents summing to 100."""
    others = {name: pct for name, pct in current.items() if name != new}
    total = sum(others.values())
    if total == 0 or share == 100:
        return {**{name: 0 for name in others}, new: 100}
    rest = 100 - share
    traffic = {name: pct * rest // total for name, pct in others.items()}
    leftover = rest - sum(traffic.values())
    for name in sorted(others, key=lambda n: -others[n])[:leftover]:  # rounding: the largest shares first
        traffic[name] += 1
    return {**traffic, new: share}


def smoke_test(base_url: str, key: str, deployment: str, timeout_s: float = SMOKE_TIMEOUT_S) -> str:
    """One chat completion sent to `deployment` alone; its answer, or UserError with what went wrong.

    No `model`: a deployment serves its one run, the default of its `phi3e2e serve`."""
    body = json.dumps({"messages": [{"role": "user", "content": SMOKE_PROMPT}], "max_tokens": 8})
    request = urllib.request.Request(
        f"{base_url}/chat/completions", data=body.encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}", DEPLOYMENT_HEADER: deployment},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = json.loads(response.read())
        return str(answer["choices"][0]["message"]["content"])
    except urllib.error.HTTPError as e:
        detail = " ".join(e.read().decode(errors="replace").split())[:200]
        raise UserError(f"HTTP {e.code}: {detail or e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"no answer ({getattr(e, 'reason', e)})") from None
    except (ValueError, KeyError, IndexError, TypeError):
        raise UserError("the answer is not a chat completion") from None


@contextmanager
def azure_errors(what: str, then: str):
    """Azure's refusal (quota, a name taken, an image that did not build, a container that did not start) as
    one line: what did not happen, Azure's first line (IDs redacted), and what to do; PHI3E2E_DEBUG=1: all of it."""
    from azure.core.exceptions import HttpResponseError

    from phi3e2e.train.aml.results import redact  # Azure's messages name the subscription: not on the screen

    try:
        yield
    except HttpResponseError as e:
        if os.environ.get("PHI3E2E_DEBUG") == "1":
            raise
        text = redact(str(e.message or e)).strip()
        first = " ".join(text.splitlines()[0].split())[:300] if text else ""
        raise UserError(f"{what} (Azure ML: {first or type(e).__name__}); {then}") from None


def existing(get: Callable, *args) -> Optional[object]:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return get(*args)
    except ResourceNotFoundError:
        return None


def deploy(ml_client, request: DeployRequest, files: DeployFiles, say: Callable[[str], None]) -> Rollout:
    from phi3e2e.train.aml.registry import register_models

    endpoint_entity, deployment = load_entities(files)
    endpoint = existing(ml_client.online_endpoints.get, request.endpoint)
    previous = existing(ml_client.online_deployments.get, request.deployment, request.endpoint) if endpoint else None
    registered = register_models(ml_client, request.run_dir, model_asset_name(request.run_dir.name), say)[0]
    deployment.model = f"azureml:{registered}"
    if endpoint is None:
        say(f"Creating endpoint {request.endpoint} (key auth; a few minutes) ...")
        with azure_errors(f"endpoint {request.endpoint} was not created",
                          "endpoint names are unique per Azure region: another --endpoint NAME may be free"):
            endpoint = ml_client.online_endpoints.begin_create_or_update(endpoint_entity).result()
    traffic_before = dict(endpoint.traffic or {})
    if previous is None:
        say(f"Creating deployment {request.deployment} on {request.instance_count} x {request.instance_type} "
            "(the image is built on first use: 10-20 minutes; later runs reuse it) ...")  # fmt: skip
    else:
        say(f"Updating deployment {request.deployment} (run {request.run_dir.name} was deployed here before) ...")
    with azure_errors(f"deployment {request.deployment} on {request.endpoint} was not created",
                      f"traffic unchanged ({_shares(traffic_before)}); `phi3e2e deploy logs --endpoint "
                      f"{request.endpoint} --deployment {request.deployment}` shows why"):  # fmt: skip
        ml_client.online_deployments.begin_create_or_update(deployment).result()

    base_url = api_base(endpoint.scoring_uri)
    say(f"Smoke test: one chat completion sent to {request.deployment} alone ...")
    credentials = ml_client.online_endpoints.get_keys(request.endpoint)
    # key auth: a key; aml_token auth (an endpoint made elsewhere): a token, sent the same way
    key = getattr(credentials, "primary_key", None) or getattr(credentials, "access_token", "")
    try:
        answer = smoke_test(base_url, key, request.deployment)
    except UserError as failure:
        if previous is None:
            ml_client.online_deployments.begin_delete(request.deployment, request.endpoint).result()
            outcome = f"deleted deployment {request.deployment}"
        else:
            outcome = f"kept deployment {request.deployment} as it was before"
        raise UserError(f"smoke test of {request.deployment} on {request.endpoint} failed ({failure}): {outcome}; "
                        f"traffic unchanged ({_shares(traffic_before)}); "
                        f"`phi3e2e deploy logs --endpoint {request.endpoint} --deployment {request.deployment}` "
                        "shows why") from None  # fmt: skip
    say(f"Smoke test passed: {answer.strip()[:60]!r}")

    share = request.traffic
    if not any(pct for name, pct in traffic_before.items() if name != request.deployment) and share < 100:
        say(f"Note: no other deployment takes traffic on {request.endpoint}: {request.deployment} takes 100%")
    traffic = split_traffic(traffic_before, request.deployment, share)
    endpoint = ml_client.online_endpoints.get(request.endpoint)
    endpoint.traffic = traffic
    ml_client.online_endpoints.begin_create_or_update(endpoint).result()
    say(f"Traffic: {_shares(traffic)}")
    rollout = Rollout(request.endpoint, request.deployment, base_url, traffic, registered)
    _remember(request, rollout)
    return rollout


def _remember(request: DeployRequest, rollout: Rollout) -> None:
    """run.json says where the run is served, as it says where it was pushed (no key, no subscription id)."""
    from phi3e2e import runs

    with runs.run_lock(request.run_dir.parent, request.run_dir.name):  # not beside a `runs rm` or another write
        record = runs.read_record(request.run_dir)
        deployed = runs.DeployRecord(endpoint=rollout.endpoint, deployment=rollout.deployment,
                                     base_url=rollout.base_url, traffic=rollout.traffic[rollout.deployment],
                                     model=rollout.model, at=runs.now())  # fmt: skip
        record.deploys = [*(record.deploys or []), deployed]
        runs.write_record(request.run_dir, record)


def _shares(traffic: dict[str, int]) -> str:
    return ", ".join(f"{name} {pct}%" for name, pct in sorted(traffic.items())) or "none"
