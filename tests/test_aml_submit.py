"""Submitting to Azure ML: the real phi3e2e flow and the real azure-ai-ml MLClient, up to the calls that
would go over the network.

Test double: only the SDK operations that talk to Azure (compute/datastore/VM size lookups, data
asset get / create_or_update, models.create_or_update, jobs.create_or_update / get / stream / download)
and the credential's
token request are replaced;
a socket guard proves nothing else reaches the network. The double records what reaches it: the
job entity, and the files the SDK would upload for it.
"""

from __future__ import annotations

import json
import socket
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from azure.ai.ml.entities import AmlCompute, ComputeInstance, VmSize
from azure.ai.ml.operations import (
    ComputeOperations,
    DataOperations,
    DatastoreOperations,
    JobOperations,
    ModelOperations,
)
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.identity import CredentialUnavailableError

from phi3e2e.errors import UserError
from phi3e2e.project import Project
from phi3e2e.runs import RUN_FILE, read_record
from phi3e2e.train.aml import workspace
from phi3e2e.train.aml.job import AmlOptions, local_uploads
from phi3e2e.train.aml.registry import file_version
from phi3e2e.train.aml.staging import STAGED_MODULES
from phi3e2e.train.finetune import finetune

SUBSCRIPTION = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
STUDIO_URL = f"https://ml.azure.com/runs/olive-job-1?wsid=/subscriptions/{SUBSCRIPTION}/resourcegroups/rg/workspaces/ws"
COMPUTES = {
    "gpu-a100": AmlCompute(name="gpu-a100", size="Standard_NC24ads_A100_v4"),
    "cpu-box": ComputeInstance(name="cpu-box", size="Standard_DS3_v2"),
    "amd-box": AmlCompute(name="amd-box", size="Standard_NV32as_v4"),
    "gpu-gb200": AmlCompute(name="gpu-gb200", size="Standard_ND128isr_NDR_GB200_v6"),
    "gpu-t4": AmlCompute(name="gpu-t4", size="Standard_NC4as_T4_v3"),
}
# The region's VM sizes as Azure ML reports them (list_sizes), GPU count and family included.
VM_SIZES = [
    VmSize(name="Standard_NC24ads_A100_v4", family="standardNCADSA100v4Family", gpus=1, v_cp_us=24),
    VmSize(name="Standard_DS3_v2", family="standardDSv2Family", gpus=0, v_cp_us=4),
    VmSize(name="Standard_NV32as_v4", family="standardNVSv4Family", gpus=1, v_cp_us=32),
    VmSize(name="Standard_NP10s", family="standardNPSFamily", gpus=0, v_cp_us=10),
    VmSize(name="Standard_NC4as_T4_v3", family="standardNCASv3_T4Family", gpus=1, v_cp_us=4),
]


class FakeCredential:
    """Stands in for Azure AD: hands out a token without a network call (or refuses, like no `az login`)."""

    def __init__(self, signed_in=True):
        self.signed_in = signed_in

    def get_token(self, *scopes, **kwargs):
        if not self.signed_in:
            raise CredentialUnavailableError("DefaultAzureCredential failed to retrieve a token")
        return AccessToken("fake-token", 9_999_999_999)


class FakeAzureML:
    """The network side of MLClient's operations, recording what reaches it."""

    def __init__(self, job_status="Completed"):
        self.submitted = []  # (job entity, files the SDK would upload)
        self.data_assets = {}  # (name, version) -> the Data entity the SDK would upload and create
        self.models = []  # Model entities the SDK would upload and register
        self.downloaded = []  # what each download asked for: "logs", an output name, or "all"
        self.job_status = job_status

    def install(self, monkeypatch):
        fake = self
        monkeypatch.setattr(ComputeOperations, "get", lambda self, name: fake.compute(name))
        monkeypatch.setattr(ComputeOperations, "list", lambda self, **kw: list(COMPUTES.values()))
        monkeypatch.setattr(ComputeOperations, "list_sizes", lambda self, **kw: list(VM_SIZES))
        monkeypatch.setattr(DataOperations, "get", lambda self, name, version=None, **kw: fake.data(name, version))
        monkeypatch.setattr(DataOperations, "create_or_update", lambda self, data, **kw: fake.create_data(data))
        monkeypatch.setattr(ModelOperations, "create_or_update", lambda self, model, **kw: fake.register(model))
        monkeypatch.setattr(DatastoreOperations, "get", lambda self, name, **kw: fake.datastore(name))
        monkeypatch.setattr(DatastoreOperations, "get_default", lambda self, **kw: fake.datastore("workspaceblobstore"))
        monkeypatch.setattr(JobOperations, "create_or_update", lambda self, job, **kw: fake.create(job))
        monkeypatch.setattr(JobOperations, "get", lambda self, name: fake.job(name))
        monkeypatch.setattr(JobOperations, "stream", lambda self, name: print(f"RunId: {name}\nExecution Summary"))
        monkeypatch.setattr(JobOperations, "download", lambda self, name, **kw: fake.download(**kw))
        return self

    def compute(self, name):
        if name not in COMPUTES:
            raise ResourceNotFoundError(f"compute {name} not found")
        return COMPUTES[name]

    def datastore(self, name):
        if name != "workspaceblobstore":
            raise ResourceNotFoundError(f"datastore {name} not found")
        return SimpleNamespace(name=name)

    def data(self, name, version):
        if (name, version) not in self.data_assets:
            raise ResourceNotFoundError(f"data {name}:{version} not found")
        return self.data_assets[(name, version)]

    def create_data(self, data):
        self.data_assets[(data.name, data.version)] = data
        return data

    def register(self, model):
        self.models.append(model)
        return SimpleNamespace(name=model.name, version=str(sum(m.name == model.name for m in self.models)))

    def create(self, job):
        self.submitted.append((job, local_uploads(job)))
        return SimpleNamespace(name=f"olive-job-{len(self.submitted)}", studio_url=STUDIO_URL, status="Starting")

    def job(self, name):
        start = datetime(2025, 1, 1, tzinfo=timezone.utc)
        context = SimpleNamespace(created_at=start, last_modified_at=start + timedelta(minutes=42))
        return SimpleNamespace(name=name, status=self.job_status, studio_url=STUDIO_URL, creation_context=context,
                               outputs={})  # fmt: skip

    def download(self, download_path, output_name=None, all=False, **_):
        """As JobOperations.download lays files out: a named output under named-outputs/, the logs (no output
        named, not all) under artifacts/."""
        self.downloaded.append("all" if all else output_name or "logs")
        if all or output_name == "models":
            models = download_path / "named-outputs" / "models"
            for form, files in {
                "adapter": ["adapter_config.json", "adapter_model.safetensors"],
                "merged": ["config.json", "model.safetensors", "tokenizer.json"],
                "onnx-int4": ["genai_config.json", "model.onnx", "tokenizer.json"],
            }.items():
                (models / form).mkdir(parents=True)
                for name in files:
                    (models / form / name).write_text("{}")
        if all or output_name == "checkpoints":
            state = download_path / "named-outputs" / "checkpoints" / "checkpoint-20"
            state.mkdir(parents=True)
            (state / "trainer_state.json").write_text('{"global_step": 20}')
        if all or output_name is None:
            logs = download_path / "artifacts" / "user_logs"
            logs.mkdir(parents=True)
            (logs / "std_log.txt").write_text(
                f"mounting /subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/x/workspaces/ws\n"
                "{'loss': 2.5, 'grad_norm': 1.0, 'learning_rate': 0.0001, 'epoch': 0.1}\n"
                "{'loss': 1.25, 'grad_norm': 1.0, 'learning_rate': 0.0001, 'epoch': 0.2}\n"
            )


@pytest.fixture
def azure(tiny_project, monkeypatch):
    """A project with Azure ML's config.json, a signed-in user, and the network double."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("the test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    for name in workspace.ENV_VARS.values():
        monkeypatch.delenv(name, raising=False)
    (tiny_project.root / "config.json").write_text(
        json.dumps({"subscription_id": SUBSCRIPTION, "resource_group": "rg", "workspace_name": "ws"})
    )
    monkeypatch.setattr(workspace, "default_credential", lambda: FakeCredential())
    return FakeAzureML().install(monkeypatch)


def submit(project: Project, algo="qlora", compute="gpu-a100", wait=False, data=None, lines=None, **options):
    return finetune(
        project, algo=algo, target="aml", data=data, run_name="job1",
        aml_options=AmlOptions(compute=compute, wait=wait, **options), say=(lines if lines is not None else []).append,
    )  # fmt: skip



def files_under(folder):
    return {path: path.read_text(errors="replace") for path in folder.rglob("*") if path.is_file()}


def test_no_wait_submits_the_staged_job_and_records_its_name(tiny_project, azure):
    lines = []
    result = submit(tiny_project, lines=lines)

    ((job, uploads),) = azure.submitted
    assert job.compute == "gpu-a100" and job.display_name == "job1"
    assert job.command.startswith("python phi3e2e_job.py --config olive-config.json")
    root = tiny_project.root.resolve()
    relative = sorted(str(path.relative_to(root)) for path in uploads)
    # What travels with the job: the staged files and the tiny model folder; no repo, no run outputs.
    code = "gen-model/.job1.partial/aml-code/"
    assert [p for p in relative if p.startswith("gen-model")] == [
        f"{code}olive-config.json", *sorted(f"{code}phi3e2e/{module}" for module in STAGED_MODULES),
        f"{code}phi3e2e_job.py",
    ]
    assert all(p.startswith(("gen-model/", "model-cache/tiny-phi3/")) for p in relative)
    # The two data splits became versioned data assets (version: their content hash), which the job reads.
    assert sorted(azure.data_assets) == sorted(
        (f"phi3e2e-sample-{split}", file_version(tiny_project.datasets / "sample" / f"{split}.jsonl"))
        for split in ("train", "eval")
    )
    for (name, version), data in azure.data_assets.items():
        rest = data._to_rest_object().as_dict()  # what Azure ML receives for the asset
        assert rest["properties"]["dataType"] == "uri_file" and data.path.endswith(".jsonl")
        assert job.inputs[f"{name.rsplit('-', 1)[1]}_file"].path.removeprefix("azureml:") == f"{name}:{version}"
    train_version = file_version(tiny_project.datasets / "sample" / "train.jsonl")
    assert f"azureml:phi3e2e-sample-train:{train_version}" in (result.run_dir / "aml-job.yml").read_text()

    record = read_raw(result.run_dir)
    assert result.run_dir == tiny_project.gen_model / "job1"
    assert record["status"] == "submitted" and record["aml"]["job_name"] == "olive-job-1"
    assert any("Studio: https://ml.azure.com" in line for line in lines)  # shown to the user ...
    for text in files_under(result.run_dir).values():
        assert SUBSCRIPTION not in text and "ml.azure.com" not in text  # ... never stored


def test_wait_streams_then_downloads_a_finished_run(tiny_project, azure, capsys):
    result = submit(tiny_project, wait=True)

    assert "Execution Summary" in capsys.readouterr().out  # the job log was streamed
    record = read_raw(result.run_dir)
    assert record["status"] == "succeeded" and record["duration_s"] == 42 * 60
    for form in ("adapter", "merged", "onnx-int4"):
        assert (result.run_dir / form).is_dir()
    assert record["train_loss"] == {"first": 2.5, "last": 1.25, "logged": 2}
    assert (result.run_dir / "loss.png").is_file()
    log = (result.run_dir / "job-log.txt").read_text()
    assert "<redacted>" in log and SUBSCRIPTION not in log
    assert not (result.run_dir / ".download").exists()


def test_failed_job_is_recorded_and_not_downloaded(tiny_project, azure):
    azure.job_status = "Failed"
    with pytest.raises(UserError, match="ended Failed on Azure ML.*jobs logs job1"):
        submit(tiny_project, wait=True)
    record = read_raw(tiny_project.gen_model / "job1")
    assert record["status"] == "failed" and not (tiny_project.gen_model / "job1" / "onnx-int4").exists()


def test_jobs_commands_come_back_to_a_submitted_run(tiny_project, azure):
    from phi3e2e.train.aml.jobs import download_models, list_runs, run_status
    from phi3e2e.train.aml.workspace import WorkspaceRef, connect

    submit(tiny_project)
    client = connect(WorkspaceRef(), (tiny_project.root,))
    assert "job1" in list_runs(tiny_project)[1] and "submitted" in list_runs(tiny_project)[1]
    assert list_runs(tiny_project, client)[1].endswith("Completed")
    assert run_status(tiny_project, client, "job1")[-1] == "  Next: phi3e2e jobs download job1"
    run_dir = download_models(tiny_project, client, None, say=lambda _: None)
    assert read_record(run_dir).status == "succeeded"


@pytest.mark.parametrize(
    "setup, kwargs, message",
    [
        ("no-config", {}, "no Azure ML workspace: no Azure ML config.json found; download config.json"),
        ("signed-out", {}, "no Azure credentials: run `az login`"),
        (None, {"compute": "gpu-h100"}, "compute 'gpu-h100' not found in the workspace; it has: amd-box, cpu-box"),
        (None, {"compute": "cpu-box"}, "compute 'cpu-box' is Standard_DS3_v2, a VM with no GPU"),
        (None, {"compute": "amd-box"}, "is Standard_NV32as_v4 (AMD Radeon Instinct MI25 (no CUDA))"),
        (None, {"compute": "gpu-gb200"}, "(NVIDIA Blackwell (sm_100): the job's CUDA 12.6 torch has no kernels"),
        (None, {"compute": None, "instance_type": "Standard_NP10s"}, "--instance-type Standard_NP10s is Standard_NP10s, a VM with no GPU"),
        (None, {"data": "azureml://datastores/otherstore/paths/x.jsonl"}, "data path not found"),
        (None, {"data": "missing-folder"}, "data path not found"),
    ],
)
def test_setup_problems_are_one_line_before_any_upload(tiny_project, azure, monkeypatch, setup, kwargs, message):
    if setup == "no-config":
        (tiny_project.root / "config.json").unlink()
        monkeypatch.chdir(tiny_project.root)
    if setup == "signed-out":
        monkeypatch.setattr(workspace, "default_credential", lambda: FakeCredential(signed_in=False))
    with pytest.raises(UserError) as error:
        submit(tiny_project, **kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert azure.submitted == []
    assert not (tiny_project.gen_model / "job1").exists()


def read_raw(run_dir):
    """run.json as written on disk."""
    return json.loads((run_dir / RUN_FILE).read_text())


def test_downloaded_models_are_registered_with_their_facts_as_tags(tiny_project, azure):
    from phi3e2e.runs import EVAL_FILE
    from phi3e2e.train.aml.registry import register_models
    from phi3e2e.train.aml.workspace import WorkspaceRef, connect

    result = submit(tiny_project, wait=True)
    eval_losses = {"int4": {"base": {"loss": 7.9213}, "fine_tuned": {"loss": 6.2701}, "change": -1.6512}}
    (result.run_dir / EVAL_FILE).write_text(json.dumps({"losses": eval_losses}))
    client = connect(WorkspaceRef(), (tiny_project.root,))
    lines = []
    registered = register_models(client, result.run_dir, "phi3-faq", lines.append, merged=True)

    assert registered == ["phi3-faq:1", "phi3-faq-merged:1"]
    int4, merged = azure.models
    # The job's own output (no upload; the asset's lineage leads to job olive-job-1), not the downloaded copy.
    assert (int4.path, merged.path) == ("azureml://jobs/olive-job-1/outputs/models/paths/onnx-int4/",
                                        "azureml://jobs/olive-job-1/outputs/models/paths/merged/")  # fmt: skip
    record = read_raw(result.run_dir)
    rest = int4._to_rest_object().as_dict()["properties"]  # what Azure ML receives for the asset
    assert rest["modelType"] == "custom_model" and rest["modelUri"] == int4.path
    assert rest["tags"] == {
        "phi3e2e.run": "job1", "algo": "qlora", "base_model": record["base_model"], "form": "onnx-int4",
        "dataset_sha256": ",".join(f"{k}={v[:16]}" for k, v in sorted(record["data_sha256"].items())),
        "heldout_loss_int4": "6.2701", "heldout_loss_base_int4": "7.9213",
    }  # fmt: skip
    assert merged.tags["form"] == "merged" and record["aml"]["registered"] == registered
    for text in [json.dumps(rest), *files_under(result.run_dir).values()]:
        assert SUBSCRIPTION not in text


def test_a_run_without_verified_models_is_not_registered(tiny_project, azure):
    from phi3e2e.train.aml.registry import register_models
    from phi3e2e.train.aml.workspace import WorkspaceRef, connect

    result = submit(tiny_project)  # --no-wait: nothing downloaded yet
    with pytest.raises(UserError, match="no verified models to register yet .`phi3e2e jobs download job1`."):
        register_models(connect(WorkspaceRef(), (tiny_project.root,)), result.run_dir, "phi3-faq", print)
    assert azure.models == []


def test_serverless_spot_job_with_a_time_limit(tiny_project, azure):
    submit(tiny_project, compute=None, instance_type="Standard_NC24ads_A100_v4", low_priority=True, timeout_h=6)
    ((job, _),) = azure.submitted
    rest = job._to_job()._to_rest_object().as_dict()["properties"]  # what Azure ML receives
    assert job.compute is None and rest["resources"]["instanceType"] == "Standard_NC24ads_A100_v4"
    assert rest["queueSettings"] == {"jobTier": "Spot"} and rest["limits"]["timeout"] == "PT6H"
    assert {"models", "checkpoints"} <= set(job.outputs)
    assert "--bind outputs.checkpoints=${{outputs.checkpoints}}" in job.command


def test_a_network_failure_at_sign_in_is_not_called_missing_credentials(tiny_project, azure, monkeypatch):
    from azure.core.exceptions import ServiceRequestError

    class Offline(FakeCredential):
        def get_token(self, *scopes, **kwargs):  # what azure.identity raises when login.microsoftonline.com is unreachable
            raise ServiceRequestError("Failed to resolve 'login.microsoftonline.com' ([Errno -2] Name or service not known)")

    monkeypatch.setattr(workspace, "default_credential", lambda: Offline())
    with pytest.raises(UserError) as error:
        submit(tiny_project)
    assert str(error.value).startswith("cannot reach Azure to sign in (Failed to resolve 'login.microsoftonline.com'")
    assert "no Azure credentials" not in str(error.value) and azure.submitted == []


def test_jobs_list_with_no_runs_needs_no_workspace(tiny_project, monkeypatch):
    from helpers import run_cli

    monkeypatch.chdir(tiny_project.root)  # no config.json anywhere up from here, no credentials
    result = run_cli("jobs", "list", project=tiny_project, env={"AZURE_CONFIG_DIR": str(tiny_project.root / "no-az")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("No Azure ML runs in gen-model/")


def forbidden(*_args, **_kwargs):
    """What the SDK raises for the region's VM size list to a role scoped to the workspace (AzureML Data
    Scientist): the list is a subscription-scope read (Microsoft.Compute/locations/vmSizes)."""
    error = HttpResponseError(message="(AuthorizationFailed) The client does not have authorization to perform "
                              "action 'Microsoft.MachineLearningServices/locations/vmSizes/read'")  # fmt: skip
    error.status_code = 403
    raise error


def test_a_role_that_cannot_list_vm_sizes_gets_one_warning_and_the_job_is_submitted(tiny_project, azure, monkeypatch):
    monkeypatch.setattr(ComputeOperations, "list_sizes", forbidden)
    lines = []
    submit(tiny_project, lines=lines)
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert warnings == ["warning: compute 'gpu-a100': your role may not list the region's VM sizes (a "
                        "subscription-scope read, 403); Standard_NC24ads_A100_v4 checked by its name: NVIDIA A100"]
    assert len(azure.submitted) == 1
    with pytest.raises(UserError) as error:  # a size whose name says it has no GPU is still refused
        submit(tiny_project, compute="cpu-box")
    assert "Standard_DS3_v2, a VM with no GPU" in str(error.value) and len(azure.submitted) == 1


@pytest.mark.parametrize("size, gpu", [
    ("Standard_NC24ads_A100_v4", "NVIDIA A100"), ("Standard_ND96amsr_A100_v4", "NVIDIA A100"),
    ("Standard_NC40ads_H100_v5", "NVIDIA H100 NVL"), ("Standard_ND96isr_H200_v5", "NVIDIA H200"),
    ("Standard_NV36ads_A10_v5", "NVIDIA A10"), ("Standard_NV6ads_A10_v5", "NVIDIA A10 (4 GiB share)"),
    ("Standard_NC4as_T4_v3", "NVIDIA T4"), ("Standard_NC6s_v3", "NVIDIA V100"), ("Standard_NC24rs_v3", "NVIDIA V100"),
    ("Standard_D4s_v5", None), ("Standard_E8_v5", None), ("Standard_NX99_v9", "unknown"),
])  # fmt: skip
def test_the_gpu_a_vm_size_name_promises(size, gpu):
    from phi3e2e.train.aml.submit import check_size_by_name

    said = []
    if gpu is None:
        with pytest.raises(UserError):
            check_size_by_name(size, "compute 'x'", said.append)
        return
    check_size_by_name(size, "compute 'x'", said.append)
    assert len(said) == 1 and (f"checked by its name: {gpu}" in said[0] if gpu != "unknown" else
                               "its GPU is not checked" in said[0])  # fmt: skip


def test_a_compute_too_small_for_the_plan_is_refused_before_any_upload(tiny_project, azure):
    def on_t4(algo):
        lines = []
        finetune(tiny_project, algo=algo, target="aml", model="microsoft/Phi-3-mini-4k-instruct", run_name=algo,
                 aml_options=AmlOptions(compute="gpu-t4", wait=False), say=lines.append)  # fmt: skip
        return lines

    with pytest.raises(UserError) as error:
        on_t4("lora")
    assert str(error.value).startswith("compute 'gpu-t4' is Standard_NC4as_T4_v3 (NVIDIA T4, 16 GiB): lora on ")
    assert azure.submitted == [] and not (tiny_project.gen_model / "lora").exists()
    lines = on_t4("qlora")
    assert len(azure.submitted) == 1 and any("GiB of GPU memory on an Ampere" in line for line in lines)
    assert any(line.startswith("memory plan: qlora") and "on NVIDIA T4" in line for line in lines)


def test_download_fetches_the_models_and_log_and_the_checkpoints_only_when_asked(tiny_project, azure):
    from phi3e2e.train.aml.jobs import download_models
    from phi3e2e.train.aml.workspace import WorkspaceRef, connect

    submit(tiny_project)
    client = connect(WorkspaceRef(), (tiny_project.root,))
    run_dir = download_models(tiny_project, client, "job1", say=lambda _: None)
    assert sorted(azure.downloaded) == ["logs", "models"] and not (run_dir / "checkpoints").exists()
    assert read_record(run_dir).train_loss.first == 2.5  # the log came too
    download_models(tiny_project, client, "job1", say=lambda _: None, checkpoints=True)
    assert azure.downloaded[-1] == "checkpoints"
    assert (run_dir / "checkpoints" / "checkpoint-20" / "trainer_state.json").is_file()


def resume(project, lines=None, **options):
    return finetune(project, resume="job1", aml_options=AmlOptions(wait=False, **options),
                    say=(lines if lines is not None else []).append)  # fmt: skip


def test_resume_of_a_stopped_job_submits_a_new_job_reading_the_earlier_checkpoints(tiny_project, azure):
    submit(tiny_project)
    azure.job_status = "Failed"  # e.g. it reached its time limit
    lines = []
    result = resume(tiny_project, lines)

    (first, _), (job, uploads) = azure.submitted
    earlier = job.inputs["previous_checkpoints"]
    assert (earlier.type, earlier.mode) == ("uri_folder", "ro_mount")
    assert earlier.path == "azureml://datastores/workspaceblobstore/paths/azureml/olive-job-1/checkpoints/"
    assert job.command == first.command + " --resume-from ${{inputs.previous_checkpoints}}"
    assert (job.compute, job.environment.image, dict(job.limits._to_rest_object().as_dict())) == (
        first.compute, first.environment.image, dict(first.limits._to_rest_object().as_dict()))
    assert {k: v.path for k, v in first.inputs.items()} == {k: v.path for k, v in job.inputs.items()
                                                            if k != "previous_checkpoints"}  # fmt: skip
    job._to_job()._to_rest_object()  # what Azure ML receives: serializes offline
    assert azure.downloaded == []  # the checkpoints stay in Azure: an input, not a download
    record = read_raw(result.run_dir)
    assert record["status"] == "submitted" and record["aml"]["job_name"] == "olive-job-2"
    assert record["aml"]["earlier_jobs"] == ["olive-job-1"]
    assert (result.run_dir / "aml-job.first.yml").is_file()
    assert any("going on from olive-job-1's checkpoints" in line for line in lines)

    resume(tiny_project)  # the second job stopped too: the third reads the second's checkpoints
    _, _, (third, _) = azure.submitted
    assert third.inputs["previous_checkpoints"].path.endswith("/azureml/olive-job-2/checkpoints/")
    assert third.command.count("--resume-from") == 1
    assert read_raw(result.run_dir)["aml"]["earlier_jobs"] == ["olive-job-1", "olive-job-2"]


@pytest.mark.parametrize("status, message", [
    ("Running", "job olive-job-1 is Running; a preempted job resumes by itself"),
    ("Completed", "job olive-job-1 finished; fetch its models with `phi3e2e jobs download job1`"),
])  # fmt: skip
def test_resume_of_a_job_that_is_not_stopped_is_refused(tiny_project, azure, status, message):
    submit(tiny_project)
    azure.job_status = status
    with pytest.raises(UserError) as error:
        resume(tiny_project)
    assert message in str(error.value) and len(azure.submitted) == 1


def test_a_sweep_is_submitted_as_one_sweep_job_and_followed_as_a_run(tiny_project, azure):
    from phi3e2e.sweep.record import read_sweep
    from phi3e2e.sweep.start import sweep
    from phi3e2e.train.aml.jobs import download_models
    from phi3e2e.train.aml.workspace import WorkspaceRef, connect

    lines = []
    sweep(tiny_project, ["lora.r=4,8", "training.max_steps=2"], name="sw", target="aml",
          aml_options=AmlOptions(compute="gpu-a100", wait=False), say=lines.append)  # fmt: skip
    ((job, uploads),) = azure.submitted
    assert job.type == "sweep" and job.objective.primary_metric == "eval_loss" and job.limits.max_total_trials == 2
    assert any(path.name == "train.jsonl" for path in uploads)  # the local data travels with the job
    job._to_rest_object()  # what Azure ML receives: serializes offline
    assert read_sweep(tiny_project.gen_model, "sw").job_name == "olive-job-1"
    assert read_raw(tiny_project.gen_model / "sw")["aml"]["job_name"] == "olive-job-1"
    assert any("memory plan:" in line for line in lines) and any("jobs download sw" in line for line in lines)
    # Downloading the sweep job fetches its best trial's models (the SDK follows the best child) into the folder.
    run_dir = download_models(tiny_project, connect(WorkspaceRef(), (tiny_project.root,)), "sw", say=lambda _: None)
    assert read_record(run_dir).status == "succeeded" and (run_dir / "onnx-int4").is_dir()
