"""Azure ML target, offline: `finetune --target aml --dry-run` writes a job the real azure-ai-ml SDK
loads, with a small staged code folder and no workspace IDs or secrets anywhere.

No network: a guard makes any socket connection fail, so the dry run is proven to need none.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import pytest
import yaml
from helpers import run_cli

from phi3e2e.errors import UserError
from phi3e2e.train.aml import workspace
from phi3e2e.train.aml.job import DEFAULT_IMAGE, JOB_FILE, AmlOptions
from phi3e2e.train.aml.staging import STAGED_MODULES
from phi3e2e.train.finetune import finetune

SUBSCRIPTION = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"  # made up, shaped like a real one
HF_TOKEN = "hf_abcdefghijklmnopqrstuvwxyz012345"
DATASTORE_FILE = "azureml://datastores/workspaceblobstore/paths/phi3/train.jsonl"
GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


@pytest.fixture
def offline(monkeypatch):
    """No network and no credentials: a dry run must need neither."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("a dry run tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(workspace, "default_credential", lambda: pytest.fail("a dry run asked for credentials"))


@pytest.fixture
def workspace_ids(tiny_project, monkeypatch):
    """A user whose machine knows their workspace and HF token: none of it may leak into the job."""
    (tiny_project.root / "config.json").write_text(
        json.dumps({"subscription_id": SUBSCRIPTION, "resource_group": "rg-secret-team", "workspace_name": "ws-secret"})
    )
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", SUBSCRIPTION)
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    return tiny_project


def dry_run(project, algo, data=None, **options):
    return finetune(
        project, algo=algo, target="aml", data=data, dry_run=True, run_name=f"{algo}-dry",
        aml_options=AmlOptions(compute="gpu-a100", **options), say=lambda _: None,
    )  # fmt: skip


def load(job_file):
    from azure.ai.ml import load_job

    return load_job(job_file)


@pytest.mark.parametrize("algo", ["lora", "qlora"])
@pytest.mark.parametrize("data", [None, DATASTORE_FILE], ids=["local-data", "datastore-data"])
def test_dry_run_job_loads_with_the_sdk(tiny_project, offline, algo, data):
    result = dry_run(tiny_project, algo, data)
    run_dir = result.run_dir
    job = load(run_dir / JOB_FILE)

    assert type(job).__name__ == "Command" and job.compute == "gpu-a100"
    assert job.environment.image == DEFAULT_IMAGE
    pip = next(dep["pip"] for dep in job.environment.conda_file["dependencies"] if isinstance(dep, dict))
    for pin in ("olive-ai==0.13.0", "onnxruntime-genai-cuda==0.14.1", "torch==2.13.0", "peft==0.21.2", "requests=="):
        assert any(line.startswith(pin) for line in pip), pin
    assert any(line.startswith("bitsandbytes==") for line in pip)
    # A CUDA 12 torch (PyPI's plain 2.13.0 is CUDA 13: driver >= 580, no V100), from PyTorch's cu126 index.
    assert "torch==2.13.0+cu126" in pip and "--extra-index-url https://download.pytorch.org/whl/cu126" in pip
    assert "cuda12" in job.environment.image and job.limits.timeout == 48 * 3600
    assert job.command.startswith("python phi3e2e_job.py --config olive-config.json --models-out ${{outputs.models}}")
    assert job.outputs["models"].type == "uri_folder"

    # Every placeholder in the staged config is an input the command binds, and vice versa.
    config_text = (run_dir / "aml-code" / "olive-config.json").read_text()
    used = set(re.findall(r"\$\{\{inputs\.(\w+)\}\}", config_text))
    bound = set(re.findall(r"--bind inputs\.(\w+)=\$\{\{inputs\.(\w+)\}\}", job.command))
    assert {a for a, b in bound if a == b} == used == set(job.inputs)
    if data:
        assert job.inputs["train_file"].path == DATASTORE_FILE and "eval_file" not in job.inputs
    else:
        assert (job.base_path / job.inputs["train_file"].path).resolve() == (
            tiny_project.datasets / "sample" / "train.jsonl"
        ).resolve()
        assert "eval_file" in job.inputs

    config = json.loads(config_text)
    assert config["systems"]["local_system"]["accelerators"][0]["execution_providers"] == ["CUDAExecutionProvider"]
    passes = config["passes"]
    assert [p["type"] for p in passes.values()] == [
        algo.replace("lora", "LoRA").replace("q", "Q"),
        "MergeAdapterWeights",
        "ModelBuilder",
    ]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "dry-run"
    # QLoRA trains every 4-bit linear layer whatever lora.target_modules says; run.json tells the truth.
    assert record["trained_modules"] == (
        "every 4-bit linear layer (Olive's QLoRA ignores lora.target_modules)"
        if algo == "qlora"
        else ", ".join(record["settings"]["lora"]["target_modules"])
    )


def test_job_serializes_without_ids_or_secrets(workspace_ids, offline):
    result = dry_run(workspace_ids, "qlora", hf_token_secret="hf-token")
    job = load(result.run_dir / JOB_FILE)
    rest = job._to_job()._to_rest_object() if hasattr(job, "_to_job") else job._to_rest_object()
    rest_body = json.dumps(rest.as_dict() if hasattr(rest, "as_dict") else rest, default=str)  # what Azure ML receives
    assert "phi3e2e_job.py" in rest_body and "gpu-a100" in rest_body
    assert "--hf-token-secret hf-token" in job.command and job.identity.type == "managed_identity"

    written = {path: path.read_text() for path in result.run_dir.rglob("*") if path.is_file()}
    for text in [rest_body, *written.values()]:
        assert SUBSCRIPTION not in text and HF_TOKEN not in text
        assert "rg-secret-team" not in text and "ws-secret" not in text
        assert not GUID.search(text)
    # The staged code folder is small: the config, the entry script and the modules Olive runs through.
    code = result.run_dir / "aml-code"
    staged = sorted(str(path.relative_to(code)) for path in code.rglob("*") if path.is_file())
    assert staged == ["olive-config.json", *sorted(f"phi3e2e/{module}" for module in STAGED_MODULES), "phi3e2e_job.py"]


def test_hub_model_is_downloaded_on_the_compute(tiny_project, offline):
    result = finetune(
        tiny_project, algo="qlora", target="aml", model="microsoft/Phi-3-mini-4k-instruct", dry_run=True,
        aml_options=AmlOptions(compute="gpu-a100"), say=lambda _: None,
    )  # fmt: skip
    job = load(result.run_dir / JOB_FILE)
    config = json.loads((result.run_dir / "aml-code" / "olive-config.json").read_text())
    assert config["input_model"]["model_path"] == "microsoft/Phi-3-mini-4k-instruct"
    assert "model" not in job.inputs and result.record.profile == "phi3-mini"


@pytest.mark.parametrize(
    "options, data, message",
    [
        ({"compute": None}, None, "needs --compute NAME"),
        ({"compute": "gpu a100"}, None, "not an Azure ML compute name"),
        ({"compute": "gpu-a100"}, "no-such-dataset", "data path not found"),
        ({"compute": "gpu-a100"}, "azureml:/bad path", "not an Azure ML path"),
        ({"compute": "gpu-a100", "hf_token_secret": "hf_token!"}, None, "Key Vault secret name"),
        ({"compute": "gpu-a100", "instance_type": "Standard_NC24ads_A100_v4"}, None, "pick one"),
        ({"compute": "gpu-a100", "low_priority": True}, None, "--low-priority is for serverless jobs"),
        ({"compute": None, "instance_type": "NC24 A100"}, None, "expected an Azure VM size"),
        ({"compute": "gpu-a100", "timeout_h": 0}, None, "--timeout 0: hours"),
        ({"compute": "gpu-a100", "timeout_h": 505}, None, "at most 504 .Azure ML ends a job on a dedicated node after 21"),
        ({"compute": None, "instance_type": "Standard_NC24ads_A100_v4", "low_priority": True, "timeout_h": 169},
         None, "at most 168 .Azure ML ends a job on a low priority node after 7 days"),
        ({"compute": "gpu-a100", "register": "my model"}, None, "an Azure ML asset name"),
    ],
)
def test_bad_aml_input_is_one_line_before_anything_is_written(tiny_project, offline, options, data, message):
    with pytest.raises(UserError, match=message) as error:
        finetune(tiny_project, algo="qlora", target="aml", data=data, dry_run=True, aml_options=AmlOptions(**options))
    assert "\n" not in str(error.value)
    assert not tiny_project.gen_model.exists() or not any(tiny_project.gen_model.iterdir())


def test_cli_dry_run_on_a_prepared_project(tiny_project):
    result = run_cli(
        "finetune", "--algo", "qlora", "--target", "aml", "--compute", "gpu-a100", "--dry-run", "--run-name", "cli",
        project=tiny_project, env={"AZURE_CONFIG_DIR": str(tiny_project.root / "no-az")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    job_file = tiny_project.gen_model / "cli" / JOB_FILE
    assert f"Azure ML job written: gen-model/cli/{JOB_FILE}" in result.stdout
    spec = yaml.safe_load(job_file.read_text())
    assert spec["compute"] == "azureml:gpu-a100" and spec["code"] == "aml-code"
    assert load(job_file).display_name == "cli"


@pytest.mark.parametrize("args", [["--help"], ["jobs", "--help"], ["finetune", "--help"]])
def test_help_does_not_import_azure(args):
    probe = (
        "import sys\nfrom phi3e2e.cli.app import app\ntry:\n"
        f"    app({args!r})\nexcept SystemExit:\n    pass\n"
        "print('AZURE' if any(m.split('.')[0] == 'azure' for m in sys.modules) else 'CLEAN')\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "CLEAN"


def test_the_job_uses_the_projects_own_conda_file(tiny_project, offline):
    """`phi3e2e init` gives a project setup/conda.yaml to edit; the job carries that copy, not the shipped one."""
    from phi3e2e.resources import aml_conda_env

    (tiny_project.root / "setup").mkdir()
    edited = aml_conda_env().read_text() + "# the team's extra pin\n"
    (tiny_project.root / "setup" / "conda.yaml").write_text(edited)
    result = dry_run(tiny_project, "lora")
    assert (result.run_dir / "conda.yaml").read_text() == edited
