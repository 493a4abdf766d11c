"""`prepare`: models from the Hub (a local stand-in server), from a folder, or made tiny.

The Hub tests run the real `phi3e2e prepare` in a subprocess with HF_ENDPOINT pointing at
tests/fake_hub.py on 127.0.0.1: only the network boundary is replaced.
"""

import json

import pytest
from helpers import FakeHub, quiet, run_cli

from phi3e2e.errors import UserError
from phi3e2e.prepare.prepare_project import prepare
from phi3e2e.project import Project

SECRET = "hf_test_token_do_not_leak_123"


@pytest.fixture
def hub_files(tiny_template, tmp_path):
    """The tiny model as published on a Hub repo, plus files the pipeline does not need."""
    files = tmp_path / "hub-files"
    files.mkdir()
    for src in (tiny_template.model_cache / "tiny-phi3").iterdir():
        (files / src.name).write_bytes(src.read_bytes())
    (files / "pytorch_model.bin").write_bytes(b"duplicate weights in the old format")
    (files / "onnx").mkdir()
    (files / "onnx" / "model.onnx").write_bytes(b"an export we do not use")
    return files


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(repo_id, files, gated=False):
        servers.append(FakeHub(repo_id, files, gated=gated))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def hub_env(hub, tmp_path, token=None):
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf-home")}
    return env | ({"HF_TOKEN": token} if token else {"HF_TOKEN": ""})


@pytest.fixture
def empty_project(tmp_path):
    project = Project(tmp_path / "project")
    project.root.mkdir()
    return project


def test_download_fetches_only_what_the_pipeline_needs(hub_files, serve, tmp_path, empty_project):
    hub = serve("acme/phi3-tiny", hub_files)
    result = run_cli("prepare", "--model", "acme/phi3-tiny", project=empty_project, env=hub_env(hub, tmp_path, SECRET))
    assert result.returncode == 0, result.stderr
    model_dir = empty_project.model_cache / "phi3-tiny"
    assert (model_dir / "model.safetensors").read_bytes() == (hub_files / "model.safetensors").read_bytes()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(hub.downloaded())
    assert "pytorch_model.bin" not in hub.downloaded() and "onnx/model.onnx" not in hub.downloaded()
    # The token went to the Hub, and nowhere into the project or the output.
    repo_requests = [auth for _, path, auth in hub.requests if "acme/phi3-tiny" in path]
    assert repo_requests and all(auth == f"Bearer {SECRET}" for auth in repo_requests)
    assert SECRET not in result.stdout + result.stderr
    for path in empty_project.root.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert json.loads(empty_project.project_file.read_text())["model"] == "model-cache/phi3-tiny"


def test_an_interrupted_download_resumes_with_only_the_missing_files(hub_files, serve, tmp_path, empty_project):
    hub = serve("acme/phi3-tiny", hub_files)
    env = hub_env(hub, tmp_path)
    assert run_cli("prepare", "--model", "acme/phi3-tiny", project=empty_project, env=env).returncode == 0
    (empty_project.model_cache / "phi3-tiny" / "tokenizer.json").unlink()  # as if cut off
    hub.requests.clear()
    result = run_cli("prepare", "--model", "acme/phi3-tiny", project=empty_project, env=env)
    assert result.returncode == 0, result.stderr
    assert hub.downloaded() == ["tokenizer.json"]


def test_unknown_repo_is_one_clear_error(hub_files, serve, tmp_path, empty_project):
    hub = serve("acme/phi3-tiny", hub_files)
    result = run_cli("prepare", "--model", "acme/nope", project=empty_project, env=hub_env(hub, tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "acme/nope: no such model" in result.stderr


def test_gated_repo_without_token_says_to_set_hf_token(hub_files, serve, tmp_path, empty_project):
    hub = serve("acme/gated", hub_files, gated=True)
    result = run_cli("prepare", "--model", "acme/gated", project=empty_project, env=hub_env(hub, tmp_path))
    assert result.returncode == 2 and "HF_TOKEN" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_hub_is_one_line_that_says_to_retry(tmp_path, empty_project):
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf-home")}
    result = run_cli("prepare", "--model", "acme/phi3-tiny", project=empty_project, env=env)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "run prepare again" in result.stderr


def test_local_model_folder_is_used_in_place(tiny_template, empty_project):
    folder = tiny_template.model_cache / "tiny-phi3"
    prepared = prepare(empty_project, model=str(folder), say=quiet)
    assert prepared.model_dir == folder
    assert json.loads(empty_project.project_file.read_text())["model"] == str(folder)


def test_tiny_model_is_a_phi3_with_chat_tokens(tiny_template):
    from transformers import AutoConfig, AutoTokenizer

    folder = tiny_template.model_cache / "tiny-phi3"
    config = AutoConfig.from_pretrained(folder)
    assert config.architectures == ["Phi3ForCausalLM"] and 64 <= config.hidden_size <= 128
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for token in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"):
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1, token
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>\nHi<|end|>\n<|assistant|>\n"


def test_tiny_and_model_together_are_refused(tmp_path):
    with pytest.raises(UserError, match="--tiny"):
        prepare(Project(tmp_path), tiny=True, model="acme/x", say=quiet)
