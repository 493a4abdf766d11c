"""gen-model/RUN/deploy/: endpoint.yml, deployment.yml and environment/ (the container's build context).

The same files serve `az ml online-endpoint create -f endpoint.yml` / `az ml online-deployment create -f
deployment.yml` by hand and `phi3e2e deploy` itself, which loads them with the SDK's own loaders
(load_online_endpoint / load_online_deployment) and only swaps the inline model for the registered asset.

The container runs `phi3e2e serve` (a custom container: Azure ML forwards every path of the endpoint to
its port, so /v1/... reaches the server; docs/deploy.md has the evidence). Its image holds phi3e2e's own
package (copied from this installation, so the server is the one tested here) and the serve stack pinned
as setup/requirements.txt pins it. No secret is written: no subscription, workspace or key.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml

from phi3e2e import runs
from phi3e2e.deploy.plan import SLOTS, DeployRequest
from phi3e2e.resources import requirements_file
from phi3e2e.storage import staged_dir

DEPLOY_DIR = "deploy"
ENDPOINT_FILE, DEPLOYMENT_FILE, ENVIRONMENT_DIR = "endpoint.yml", "deployment.yml", "environment"
PORT = 8000
BASE_IMAGE = "python:3.11-slim-bookworm"  # onnxruntime-genai 0.14.1 ships manylinux wheels for CPython 3.11
# `python -m phi3e2e.deploy.container`: lays the mounted model out as a project, then runs `phi3e2e serve`.
START_COMMAND = ["python", "-m", "phi3e2e.deploy.container"]
# What `phi3e2e serve` imports (measured: the server's modules, uvicorn and onnxruntime-genai loaded), and
# onnxruntime, which onnxruntime-genai requires unpinned: the image gets the versions tested here.
SERVE_PACKAGES = ("onnxruntime-genai", "onnxruntime", "numpy", "fastapi", "starlette", "uvicorn", "typer", "rich",
                  "pydantic", "jinja2", "pyyaml")  # fmt: skip
# Azure ML caps a managed online deployment's request timeout at 180 s (docs/deploy.md); serve itself sets no
# limit on an answer's time, so the endpoint's cap is the limit: a long streamed answer is cut there.
REQUEST_TIMEOUT_MS = 180_000
MODEL_ASSET_PREFIX = "phi3e2e-"
SCHEMAS = {
    ENDPOINT_FILE: "https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json",
    DEPLOYMENT_FILE: "https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json",
}


@dataclass(frozen=True)
class DeployFiles:
    folder: Path
    endpoint_file: Path
    deployment_file: Path


def model_asset_name(run_name: str) -> str:
    return MODEL_ASSET_PREFIX + run_name


def endpoint_spec(request: DeployRequest) -> dict:
    return {
        "$schema": SCHEMAS[ENDPOINT_FILE],
        "name": request.endpoint,
        "auth_mode": "key",  # clients send `Authorization: Bearer <key>`, as the openai client does
        "description": "phi3e2e: fine-tuned Phi-3 int4 models, OpenAI-compatible at <scoring host>/v1",
        "tags": {"phi3e2e": "endpoint"},
    }


def deployment_spec(request: DeployRequest, record: runs.RunRecord, tags: dict[str, str]) -> dict:
    probe = {"path": "/health", "port": PORT}
    return {
        "$schema": SCHEMAS[DEPLOYMENT_FILE],
        "name": request.deployment,
        "endpoint_name": request.endpoint,
        "description": f"phi3e2e serve: run {record.name} ({record.algo} fine-tune of {record.base_model}), int4 CPU",
        "tags": {**tags, "phi3e2e": "deployment"},
        # Inline, for `az ml online-deployment create -f` by hand (it uploads ../onnx-int4/); `phi3e2e deploy`
        # registers the same folder with --register's asset and tags and points here at that asset instead.
        "model": {"name": model_asset_name(record.name), "path": f"../{runs.ONNX_INT4}", "type": "custom_model",
                  "tags": {**tags, "form": runs.ONNX_INT4}},
        "environment": {
            "build": {"path": ENVIRONMENT_DIR, "dockerfile_path": "Dockerfile"},
            "inference_config": {"liveness_route": probe, "readiness_route": probe,
                                 "scoring_route": {"path": "/", "port": PORT}},
        },  # fmt: skip
        "environment_variables": {"PHI3E2E_RUN": record.name, "PHI3E2E_ALGO": record.algo,
                                  "PHI3E2E_FINISHED_AT": record.finished_at or "", "PHI3E2E_PORT": str(PORT)},
        "instance_type": request.instance_type,
        "instance_count": request.instance_count,
        "request_settings": {"request_timeout_ms": REQUEST_TIMEOUT_MS,
                             "max_concurrent_requests_per_instance": SLOTS},
        # serve answers /health at once and loads the model on the first request (the smoke test's).
        "liveness_probe": {"initial_delay": 10, "period": 10, "timeout": 5, "failure_threshold": 30},
        "readiness_probe": {"initial_delay": 10, "period": 10, "timeout": 5, "failure_threshold": 30},
    }  # fmt: skip


def pinned_requirements() -> str:
    """SERVE_PACKAGES at setup/requirements.txt's pins (a source checkout), else at the installed versions."""
    pins = {}
    if requirements_file().is_file():
        for line in requirements_file().read_text().splitlines():
            name, _, version = line.split("#")[0].strip().partition("==")
            if version:
                pins[name.lower()] = version.strip()
    lines = []
    for name in SERVE_PACKAGES:
        version = pins.get(name) or metadata.version(name)
        lines.append(f"{name}=={version}")
    return "\n".join(lines) + "\n"


def dockerfile() -> str:
    return (
        f"# phi3e2e serve for an Azure ML managed online endpoint (written by `phi3e2e deploy`).\n"
        f"FROM {BASE_IMAGE}\n"
        "COPY requirements.txt /opt/phi3e2e/requirements.txt\n"
        "RUN pip install --no-cache-dir -r /opt/phi3e2e/requirements.txt\n"
        "COPY phi3e2e /opt/phi3e2e/phi3e2e\n"
        "ENV PYTHONPATH=/opt/phi3e2e PYTHONUNBUFFERED=1\n"
        f"EXPOSE {PORT}\n"
        f"CMD {json.dumps(START_COMMAND)}\n"
    )


def write_deploy_files(request: DeployRequest) -> DeployFiles:
    """gen-model/RUN/deploy/, written whole (staged, then renamed over the last one)."""
    from phi3e2e.train.aml.registry import model_tags

    record = runs.read_record(request.run_dir)
    tags = model_tags(request.run_dir, record)
    final = request.run_dir / DEPLOY_DIR
    with staged_dir(final, replace=True) as folder:
        dump = lambda data: yaml.safe_dump(data, sort_keys=False, allow_unicode=True)  # noqa: E731
        (folder / ENDPOINT_FILE).write_text(dump(endpoint_spec(request)))
        (folder / DEPLOYMENT_FILE).write_text(dump(deployment_spec(request, record, tags)))
        context = folder / ENVIRONMENT_DIR
        context.mkdir()
        (context / "Dockerfile").write_text(dockerfile())
        (context / "requirements.txt").write_text(pinned_requirements())
        package = Path(__file__).resolve().parents[1]  # src/phi3e2e, or the installed package
        shutil.copytree(package, context / "phi3e2e", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return DeployFiles(final, final / ENDPOINT_FILE, final / DEPLOYMENT_FILE)


def load_entities(files: DeployFiles):
    """(endpoint, deployment) as the SDK loads the files: its own checks of every field."""
    from azure.ai.ml import load_online_deployment, load_online_endpoint

    return load_online_endpoint(files.endpoint_file), load_online_deployment(files.deployment_file)
