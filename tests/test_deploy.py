"""`phi3e2e deploy --target aml`: the files it writes load in the SDK, the container's own start command serves
the mounted model to the official openai client, and blue/green on an endpoint moves traffic only after a
smoke test that really reaches a server.

Test double (the blue/green and management tests): only the SDK operations that talk to Azure are replaced
(online_endpoints get / list / begin_create_or_update / get_keys / begin_delete, online_deployments get /
list / begin_create_or_update / begin_delete / get_logs, models.create_or_update) and the credential's token
request. The endpoint's scoring URI points at a local recording gateway in front of the real deployment
server started from the deployment's own start command, so the smoke test is a real HTTP request.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import openai
import pytest
import yaml
from azure.ai.ml import MLClient, load_online_deployment, load_online_endpoint
from azure.ai.ml.entities import EndpointAuthKeys, ManagedOnlineEndpoint
from azure.ai.ml.operations import ModelOperations, OnlineDeploymentOperations, OnlineEndpointOperations
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from helpers import quiet, run_cli, send, serve_locally, stop_serving

from phi3e2e import runs
from phi3e2e.deploy import manage
from phi3e2e.deploy.manifests import write_deploy_files
from phi3e2e.deploy.plan import GIB, answer_kv_gib, check_instance_type, deployment_name, model_size_gib, plan_deploy
from phi3e2e.deploy.rollout import deploy, split_traffic
from phi3e2e.errors import UserError
from phi3e2e.project import Project

SUBSCRIPTION = "5c6e2c1e-0d43-4a55-9a1b-0123456789ab"
ENDPOINT_KEY = "endpoint-key-not-for-files-0123456789"
START_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def project(finished_run, tmp_path_factory) -> Project:
    """The finished project, plus two newer runs of the same model (e2e-b, e2e-c) for blue/green."""
    source, run_dir = finished_run
    root = tmp_path_factory.mktemp("deploy") / "project"
    shutil.copytree(source.root, root, symlinks=True, ignore=shutil.ignore_patterns(".olive-cache", ".checkpoints"))
    project = Project(root)
    for later, name in enumerate(("e2e-b", "e2e-c"), start=1):
        copy = project.gen_model / name
        shutil.copytree(project.gen_model / run_dir.name, copy, symlinks=True)
        record = runs.read_record(copy)
        record.name, record.finished_at = name, f"2030-01-0{later}T00:00:00+00:00"
        runs.write_record(copy, record)
    return project


@pytest.fixture(scope="module")
def dry_run(project):
    """`phi3e2e deploy e2e --target aml --dry-run`, as a user types it (Azure IDs in the environment)."""
    env = {"AZURE_SUBSCRIPTION_ID": SUBSCRIPTION, "AZURE_RESOURCE_GROUP": "rg", "AZUREML_WORKSPACE_NAME": "ws"}
    result = run_cli("deploy", "e2e", "--target", "aml", "--endpoint", "faq-bot", "--dry-run", project=project, env=env)
    assert result.returncode == 0, result.stderr
    return result, project.gen_model / "e2e" / "deploy"


def test_dry_run_files_load_and_serialize_in_the_sdk(dry_run):
    result, folder = dry_run
    assert "az ml online-deployment create -f" in result.stdout
    endpoint = load_online_endpoint(folder / "endpoint.yml")
    assert endpoint.name == "faq-bot" and endpoint.auth_mode == "key"
    assert endpoint._to_rest_online_endpoint("westeurope").properties.auth_mode == "Key"

    deployment = load_online_deployment(folder / "deployment.yml")
    assert (deployment.name, deployment.endpoint_name) == ("r-e2e", "faq-bot")
    assert deployment.instance_type == "Standard_DS3_v2"
    assert Path(deployment.model.path).resolve() == (folder.parent / "onnx-int4").resolve()
    assert deployment.model.tags["phi3e2e.run"] == "e2e"  # --register's tags
    routes = deployment.environment.inference_config
    probes = (routes.liveness_route, routes.readiness_route)
    assert [(route.path, route.port) for route in probes] == [("/health", 8000)] * 2
    assert (routes.scoring_route.path, routes.scoring_route.port) == ("/", 8000)
    assert deployment.request_settings.max_concurrent_requests_per_instance == 4  # serve's slots
    assert deployment.request_settings.request_timeout_ms == 180_000
    # As online_deployments.begin_create_or_update sends it once the model and image are assets:
    deployment.model, deployment.environment = "azureml:phi3e2e-e2e:1", "azureml:phi3e2e-serve:1"
    rest = deployment._to_rest_object(location="westeurope")
    assert rest.properties.instance_type == "Standard_DS3_v2"
    assert rest.properties.environment_variables["PHI3E2E_RUN"] == "e2e"

    written = [path for path in folder.rglob("*") if path.is_file() and path.suffix in (".yml", ".txt", "")]
    for path in written:
        text = path.read_text(errors="replace")
        assert SUBSCRIPTION not in text and ENDPOINT_KEY not in text, path


@pytest.fixture(scope="module")
def deployment_server(dry_run, tmp_path_factory):
    """The deployment's own start command (the image's CMD, its environment variables), run here over the model
    laid out as Azure ML mounts it: $AZUREML_MODEL_DIR = .../azureml-models/NAME/VERSION/, read-only."""
    _, folder = dry_run
    spec = yaml.safe_load((folder / "deployment.yml").read_text())
    dockerfile = (folder / "environment" / "Dockerfile").read_text().splitlines()
    cmd = next(line for line in dockerfile if line.startswith("CMD"))
    command = json.loads(cmd[len("CMD "):])
    assert command[0] == "python"
    mount = tmp_path_factory.mktemp("azureml-app") / "azureml-models" / spec["model"]["name"] / "1"
    shutil.copytree(folder.parent / "onnx-int4", mount / "onnx-int4")
    for path in [mount, *mount.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {key: value for key, value in os.environ.items() if key not in ("PHI3E2E_PROJECT_DIR", "PYTHONPATH")}
    env.update(spec["environment_variables"], PHI3E2E_PORT=str(port), AZUREML_MODEL_DIR=str(mount),
               PHI3E2E_ENDPOINT_HOME=str(tmp_path_factory.mktemp("home")),
               PYTHONPATH=str(folder / "environment"))  # the image's package copy, not this checkout
    process = subprocess.Popen([sys.executable, *command[1:]], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=tmp_path_factory.mktemp("cwd"))
    lines: queue.Queue = queue.Queue()
    output: list[str] = []
    def read():
        for line in process.stdout:
            output.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        assert line is not None, "".join(output)
        if line.startswith("Playground: "):
            break
    mounted = {path: path.read_bytes() for path in mount.rglob("*.json")}
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}", output=output, mount=mount, mounted=mounted)
    process.terminate()
    process.wait(timeout=20)


def test_start_command_serves_the_mounted_model_to_the_openai_client(deployment_server):
    client = openai.OpenAI(base_url=f"{deployment_server.url}/v1", api_key="endpoint-checks-keys", max_retries=0)
    assert [model.id for model in client.models.list()] == ["e2e"]
    answer = client.chat.completions.create(model="e2e", messages=[{"role": "user", "content": "Hello"}], max_tokens=8)
    assert answer.choices[0].message.content and answer.model == "e2e"
    stream = client.chat.completions.create(model="e2e", messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
                                            stream=True)  # fmt: skip
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(pieces)
    with urllib.request.urlopen(f"{deployment_server.url}/health", timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"
    # serve rewrites genai_config.json (its thread count) in the project it was given, never in the mount
    assert {path: path.read_bytes() for path in deployment_server.mount.rglob("*.json")} == deployment_server.mounted


class FakeCredential:
    def get_token(self, *scopes, **kwargs):
        return AccessToken("fake-token", 9_999_999_999)


class Poller:
    def __init__(self, value=None):
        self.value = value

    def result(self, *args, **kwargs):
        return self.value


class FakeEndpoints:
    """Azure ML's side of the online endpoint and deployment calls, and a gateway at the scoring URI that
    forwards to the local deployment server (recording each request), as Azure's front end does."""

    def __init__(self, server_url: str):
        self.endpoints: dict[str, ManagedOnlineEndpoint] = {}
        self.deployments: dict[tuple[str, str], object] = {}
        self.models, self.requests, self.broken, self.deleted, self.refused = [], [], set(), [], set()
        self.server_url = server_url
        self.gateway, self.gateway_url = serve_locally(self._forward, ("POST",))

    def install(self, monkeypatch):
        fake = self
        endpoints, deployments = OnlineEndpointOperations, OnlineDeploymentOperations
        keys = EndpointAuthKeys(primary_key=ENDPOINT_KEY, secondary_key="other")
        monkeypatch.setattr(endpoints, "get", lambda self, name, **kw: fake.endpoint(name))
        monkeypatch.setattr(endpoints, "list", lambda self, **kw: list(fake.endpoints.values()))
        monkeypatch.setattr(endpoints, "begin_create_or_update", lambda self, e, **kw: fake.put_endpoint(e))
        monkeypatch.setattr(endpoints, "get_keys", lambda self, name: keys)
        monkeypatch.setattr(endpoints, "begin_delete", lambda self, name, **kw: Poller(fake.endpoints.pop(name)))
        monkeypatch.setattr(deployments, "get", lambda self, name, endpoint, **kw: fake.deployment(name, endpoint))
        monkeypatch.setattr(deployments, "list", lambda self, endpoint_name, **kw: fake.listed(endpoint_name))
        monkeypatch.setattr(deployments, "begin_create_or_update", lambda self, d, **kw: fake.put_deployment(d))
        monkeypatch.setattr(deployments, "begin_delete", lambda self, name, endpoint, **kw: fake.delete(name, endpoint))
        monkeypatch.setattr(deployments, "get_logs", lambda self, name, endpoint, lines, **kw: fake.logs(name, lines))
        monkeypatch.setattr(ModelOperations, "create_or_update", lambda self, model, **kw: fake.register(model))
        return self

    def logs(self, name, lines):
        return f"log of {name}: {lines}"

    def listed(self, endpoint):
        return [deployment for (name, _), deployment in self.deployments.items() if name == endpoint]

    def endpoint(self, name):
        if name not in self.endpoints:
            raise ResourceNotFoundError(f"endpoint {name} not found")
        return self.endpoints[name]

    def put_endpoint(self, endpoint):
        # What the service fills in (read-only in the SDK): scoring_route "/" makes the scoring URI the host's root.
        endpoint._scoring_uri, endpoint._provisioning_state = f"{self.gateway_url}/", "Succeeded"
        self.endpoints[endpoint.name] = endpoint
        return Poller(endpoint)

    def deployment(self, name, endpoint):
        if (endpoint, name) not in self.deployments:
            raise ResourceNotFoundError(f"deployment {name} not found")
        return self.deployments[(endpoint, name)]

    def put_deployment(self, deployment):
        assert deployment.endpoint_name in self.endpoints, "a deployment needs its endpoint first"
        if deployment.name in self.refused:  # as Azure answers a deployment over the subscription's quota
            raise HttpResponseError(message="Not enough quota available for Standard_DS3_v2 in SubscriptionId "
                                            f"{SUBSCRIPTION}.\nCurrent usage/limit: 4/4.")
        deployment._provisioning_state = "Succeeded"
        self.deployments[(deployment.endpoint_name, deployment.name)] = deployment
        return Poller(deployment)

    def delete(self, name, endpoint):
        self.deleted.append(name)
        return Poller(self.deployments.pop((endpoint, name)))

    def register(self, model):
        self.models.append(model)
        return SimpleNamespace(name=model.name, version=str(sum(m.name == model.name for m in self.models)))

    def _forward(self, handler, body):
        length = int(handler.headers.get("Content-Length", 0))
        payload = handler.rfile.read(length)
        target = handler.headers.get("azureml-model-deployment")
        self.requests.append((handler.path, target, handler.headers.get("Authorization")))
        if target in self.broken:  # a deployment whose container does not answer
            failed = b'{"message": "upstream request failed"}'
            return send(handler, 502, failed, {"Content-Type": "application/json"}, body)
        forwarded = urllib.request.Request(f"{self.server_url}{handler.path}", data=payload, method="POST",
                                           headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(forwarded, timeout=120) as response:
                send(handler, response.status, response.read(), {"Content-Type": "application/json"}, body)
        except urllib.error.HTTPError as error:
            send(handler, error.code, error.read(), {"Content-Type": "application/json"}, body)


@pytest.fixture
def azure(deployment_server, monkeypatch):
    fake = FakeEndpoints(deployment_server.url).install(monkeypatch)
    connect = socket.socket.connect

    def loopback_only(sock, address):  # the guard: nothing but the local gateway and server is reached
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"a network call to {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    yield fake, MLClient(FakeCredential(), subscription_id=SUBSCRIPTION, resource_group_name="rg", workspace_name="ws")
    stop_serving(fake.gateway)


def _deploy(project, ml_client, run, traffic=100):
    request, _ = plan_deploy(project, run, "faq-bot", None, 1, traffic)
    return deploy(ml_client, request, write_deploy_files(request), quiet)


def test_blue_green_smoke_test_canary_promotion_and_rollback(project, azure):
    fake, ml_client = azure
    first = _deploy(project, ml_client, "e2e")
    assert first.traffic == {"r-e2e": 100} and first.base_url == f"{fake.gateway_url}/v1"
    assert fake.requests[-1] == ("/v1/chat/completions", "r-e2e", f"Bearer {ENDPOINT_KEY}")
    assert fake.models[-1].tags["phi3e2e.run"] == "e2e"  # --register's asset and tags
    assert str(fake.deployments[("faq-bot", "r-e2e")].model) == "azureml:phi3e2e-e2e:1"

    canary = _deploy(project, ml_client, "e2e-b", traffic=10)  # a newer run beside it: smoke-tested alone, then 10%
    assert fake.requests[-1][1] == "r-e2e-b"
    assert canary.traffic == {"r-e2e": 90, "r-e2e-b": 10} == fake.endpoints["faq-bot"].traffic

    promoted = _deploy(project, ml_client, "e2e-b", traffic=100)  # the same run again: its share moves
    assert promoted.traffic == {"r-e2e": 0, "r-e2e-b": 100}
    # run.json says where the run is served, each deploy in turn, and never the key.
    deploys = runs.read_record(project.gen_model / "e2e-b").deploys
    assert [(d.endpoint, d.deployment, d.traffic) for d in deploys] == [("faq-bot", "r-e2e-b", 10),
                                                                         ("faq-bot", "r-e2e-b", 100)]
    assert deploys[-1].base_url == f"{fake.gateway_url}/v1"
    assert ENDPOINT_KEY not in (project.gen_model / "e2e-b" / "run.json").read_text()

    fake.broken.add("r-e2e-c")
    with pytest.raises(UserError) as failed:
        _deploy(project, ml_client, "e2e-c")
    message = str(failed.value)
    assert "smoke test of r-e2e-c on faq-bot failed (HTTP 502" in message and "deleted deployment r-e2e-c" in message
    assert "\n" not in message and ENDPOINT_KEY not in message
    assert ("faq-bot", "r-e2e-c") not in fake.deployments and fake.deleted == ["r-e2e-c"]
    assert fake.endpoints["faq-bot"].traffic == {"r-e2e": 0, "r-e2e-b": 100}  # where it was

    status = "\n".join(manage.endpoint_status(ml_client, "faq-bot"))
    assert f"OpenAI API: {fake.gateway_url}/v1" in status and "r-e2e-b" in status and ENDPOINT_KEY not in status
    assert manage.list_endpoints(ml_client)[0].startswith("faq-bot")
    assert manage.deployment_logs(ml_client, "faq-bot", None, 5) == "log of r-e2e-b: 5"
    with pytest.raises(UserError, match="takes 100% of faq-bot's traffic"):
        manage.delete(ml_client, "faq-bot", "r-e2e-b", lambda q: True, quiet)
    assert not manage.delete(ml_client, "faq-bot", None, lambda q: False, quiet) and "faq-bot" in fake.endpoints
    assert manage.delete(ml_client, "faq-bot", None, lambda q: True, quiet) and not fake.endpoints


def test_azure_refusal_is_one_line_and_moves_no_traffic(project, azure):
    fake, ml_client = azure
    _deploy(project, ml_client, "e2e")
    fake.refused.add("r-e2e-b")
    with pytest.raises(UserError) as refused:
        _deploy(project, ml_client, "e2e-b", traffic=10)
    message = str(refused.value)
    assert message.startswith("deployment r-e2e-b on faq-bot was not created (Azure ML: Not enough quota available")
    assert "traffic unchanged (r-e2e 100%)" in message and "\n" not in message and SUBSCRIPTION not in message
    assert fake.endpoints["faq-bot"].traffic == {"r-e2e": 100}


def test_traffic_split_keeps_the_others_proportions():
    assert split_traffic({}, "new", 10) == {"new": 100}
    assert split_traffic({"a": 50, "b": 50}, "new", 10) == {"a": 45, "b": 45, "new": 10}
    assert split_traffic({"a": 70, "b": 30}, "new", 33) == {"a": 47, "b": 20, "new": 33}
    assert sum(split_traffic({"a": 1, "b": 1, "c": 1}, "new", 0).values()) == 100


@pytest.mark.parametrize("run, endpoint, traffic, instance_type, expected", [
    ("no-such-run", None, 100, None, "no run 'no-such-run'"),
    ("broken", None, 100, None, "status is failed, not a finished run"),
    ("e2e", "1bad", 100, None, "--endpoint '1bad': not a valid Azure ML endpoint name"),
    ("e2e", "ends-with-", 100, None, "not a valid Azure ML endpoint name"),
    ("e2e", None, 101, None, "--traffic 101: give a percentage from 0 to 100"),
    ("e2e", None, -1, None, "--traffic -1"),
    ("e2e", None, 100, "Standard_NC24ads_A100_v4", "a GPU size; the run's int4 model is built for CPUs"),
    ("cuda-built", None, 100, None, "onnx-int4/ is built for cuda (an Azure ML run's build)"),
])  # fmt: skip
def test_user_mistakes_are_one_line_errors(project, run, endpoint, traffic, instance_type, expected):
    for name, status in (("broken", "failed"), ("cuda-built", "succeeded")):
        folder = project.gen_model / name
        if not folder.exists():
            shutil.copytree(project.gen_model / "e2e", folder, symlinks=True, ignore=shutil.ignore_patterns("deploy"))
            record = runs.read_record(folder)
            record.name, record.status = name, status
            runs.write_record(folder, record)
    config_file = project.gen_model / "cuda-built" / "onnx-int4" / "genai_config.json"
    config = json.loads(config_file.read_text())  # as ModelBuilder writes it for CUDA (an Azure ML job's build)
    config["model"]["decoder"].setdefault("session_options", {})["provider_options"] = [{"cuda": {}}]
    config_file.write_text(json.dumps(config))
    with pytest.raises(UserError) as error:
        plan_deploy(project, run, endpoint, instance_type, 1, traffic)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_cli_mistake_is_one_error_line_and_writes_nothing(project):
    before = sorted(project.gen_model.rglob("*"))
    result = run_cli("deploy", "e2e", "--target", "aml", "--endpoint", "x_y", "--dry-run", project=project)
    assert result.returncode == 2 and result.stderr.startswith("error: --endpoint 'x_y'")
    assert result.stderr.count("\n") == 1
    unset = {name: "" for name in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME")}
    result = run_cli("deploy", "e2e", "--target", "aml", project=project, env=unset)  # no workspace: stop first
    assert result.returncode == 2 and result.stderr.startswith("error: no Azure ML workspace")
    assert sorted(project.gen_model.rglob("*")) == before


def test_instance_size_is_checked_against_the_model_and_whole_context_answers(tmp_path):
    decoder = {"num_hidden_layers": 32, "num_key_value_heads": 32, "head_size": 96}  # Phi-3-mini-4k's, as built
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {"context_length": 4096, "decoder": decoder}}))
    kv = answer_kv_gib(tmp_path)
    assert kv == pytest.approx(3.0)  # Phi-3-mini on CPU: 32 layers x 32 heads x 96 x 2 x fp32 x 4096 tokens
    with pytest.raises(UserError, match=r"3.5 GiB of RAM, the model needs at least 6.5 .* use Standard_DS2_v2 or larger"):
        check_instance_type("Standard_DS1_v2", 2.0, kv)
    # The default size holds the model and 3 answers at the whole context; the 4th waits (serve queues it).
    assert "holds 3 of the 4 answers at once" in check_instance_type("Standard_DS3_v2", 2.0, kv)
    assert check_instance_type("Standard_DS4_v2", 2.0, kv) is None  # 28 GiB: all 4
    assert "not known here" in check_instance_type("Standard_X9_v9", 2.0, kv)


def test_the_model_size_is_what_is_uploaded_not_this_cpus_prepacked_cache(tmp_path):
    model = tmp_path / "onnx-int4"
    (model / ".prepacked" / "key").mkdir(parents=True)
    (model / "model.onnx.data").write_bytes(b"\0" * 3000)
    (model / ".prepacked" / "key" / "model.onnx.data").write_bytes(b"\0" * 7000)  # .amlignore keeps it out
    assert model_size_gib(model) * GIB == 3000
    assert deployment_name("20250101-120000-lora") == "r-20250101-120000-lora"
    assert len(deployment_name("a" * 100)) <= 32
