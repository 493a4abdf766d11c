"""User story: share the fine-tuned tiny run on the Hugging Face Hub with `phi3e2e push`, read its card, get the
same files back, and push again after an interruption without uploading the large files twice.

Only the network is replaced: a stand-in Hub (helpers.UploadHub) on 127.0.0.1 answers the real
huggingface_hub upload and download code (HF_HUB_DISABLE_XET: the plain LFS path).
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from helpers import UploadHub, quiet, run_cli

from phi3e2e import runs
from phi3e2e.errors import UserError
from phi3e2e.project import Project
from phi3e2e.share.hub import push

TOKEN = "hf_writeTokenOfAlice0123456789abcdef"
READ_TOKEN = "hf_readOnlyTokenOfAlice0123456789"
SCOPED_TOKEN = "hf_fineGrainedTokenOfAliceWithoutWrite"
# As evaluation.evaluate_run writes eval.json (the closing eval is not run here: it builds the base int4 model).
EVALUATION = {
    "run": "e2e", "dataset": "datasets/sample", "dataset_since_training": "as trained", "eval_rows": 12,
    "losses": {
        "int4": {"rows": 12, "base": {"loss": 7.9582, "perplexity": 2859.02}, "fine_tuned": {"loss": 6.2871,
                 "perplexity": 537.57}, "change": -1.6711, "change_interval_95": [-1.8044, -1.547],
                 "verdict": "too few eval rows to tell (12 < 20)"},
        "merged": {"rows": 12, "base": {"loss": 7.9558, "perplexity": 2852.01}, "fine_tuned": {"loss": 6.2587,
                   "perplexity": 522.55}, "change": -1.6971, "change_interval_95": [-1.8353, -1.5695],
                   "verdict": "too few eval rows to tell (12 < 20)"},
    },
    "int4_keeps": {"share": 0.985, "rows": 12, "int4_change": -1.6712, "merged_change": -1.6971, "enough": True},
}  # fmt: skip


@pytest.fixture(scope="module")
def hub():
    server = UploadHub({TOKEN: {"name": "alice", "orgs": ["acme"], "role": "write"},
                        READ_TOKEN: {"name": "alice", "orgs": ["acme"], "role": "read"},
                        SCOPED_TOKEN: {"name": "alice", "orgs": ["acme"], "role": "fineGrained"}})  # fmt: skip
    server.add_repo("bob/his-model", {"README.md": b"bob's"})
    yield server
    server.close()


@pytest.fixture(scope="module")
def project(finished_run, tmp_path_factory):
    """A copy of the finished tiny project (push writes run.json), evaluated, with a failed run beside."""
    root = tmp_path_factory.mktemp("push") / "project"
    shutil.copytree(finished_run[0].root, root, symlinks=True)
    project = Project(root)
    (project.gen_model / "e2e" / runs.EVAL_FILE).write_text(json.dumps(EVALUATION))
    failed = project.gen_model / "crashed"
    shutil.copytree(project.gen_model / "e2e", failed, ignore=shutil.ignore_patterns("onnx-int4", "merged"))
    record = json.loads((failed / runs.RUN_FILE).read_text())
    (failed / runs.RUN_FILE).write_text(json.dumps({**record, "name": "crashed", "status": "failed"}))
    return project


@pytest.fixture
def online(hub, monkeypatch, tmp_path):
    """huggingface_hub pointed at the stand-in, with Alice's write token in HF_TOKEN and none stored."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)  # what HF_ENDPOINT sets when huggingface_hub is imported
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return hub


def download(hub, repo_id: str, folder, revision: str = "main") -> dict[str, bytes]:
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id, revision=revision, local_dir=folder, cache_dir=folder / ".cache", endpoint=hub.url)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and ".cache" not in p.relative_to(folder).parts}  # fmt: skip


def test_push_uploads_the_int4_model_and_its_card_in_one_commit(project, online, tmp_path):
    lines = []
    result = push(project, "e2e", "acme/phi3-faq", say=lines.append)

    run_dir = project.gen_model / "e2e"
    int4 = {p.name: p.read_bytes() for p in (run_dir / runs.ONNX_INT4).iterdir()
            if p.is_file() and not p.name.startswith(".")}  # not this machine's files (.amlignore, .prepacked/)
    assert (run_dir / runs.ONNX_INT4 / ".prepacked").is_dir()  # saved when the run was built, left out of the push
    assert [(repo, branch) for repo, branch, _ in online.commits] == [("acme/phi3-faq", "main")]
    assert sorted(online.commits[0][2]) == sorted(["README.md", *int4])
    assert set(online.lfs_puts) >= {runs.file_sha256(run_dir / "onnx-int4" / "model.onnx.data")}
    # Byte-identical, read back through huggingface_hub's own download.
    downloaded = download(online, "acme/phi3-faq", tmp_path / "back")
    assert {name: data for name, data in downloaded.items() if name != "README.md"} == int4
    assert result.url == f"{online.url}/acme/phi3-faq" and lines[-1].startswith(f"Pushed: {result.url}")
    assert any("model.onnx.data" in line and "kB" in line for line in lines)  # progress: files and sizes

    card = downloaded["README.md"].decode()
    _, front, body = card.split("---\n", 2)
    metadata = yaml.safe_load(front)
    assert metadata["library_name"] == "onnxruntime-genai" and "phi3e2e" in metadata["tags"]
    assert "base_model" not in metadata and "datasets" not in metadata  # the tiny local model, a local dataset
    record = runs.read_record(run_dir)
    assert record.base_model in body and "tiny random-weight twin of `microsoft/Phi-3-mini-4k-instruct`" in body
    for form, numbers in EVALUATION["losses"].items():
        low, high = numbers["change_interval_95"]
        assert (f"| `{form}` | 12 | {numbers['base']['loss']:.4f} | {numbers['fine_tuned']['loss']:.4f} "
                f"| {numbers['change']:+.4f} | {low:+.4f} to {high:+.4f} | `{numbers['verdict']}` |") in body
    assert record.data_sha256["train.jsonl"] in body and f"| LoRA r / alpha / dropout | {record.settings.lora.r} /" in body
    assert "og.Model(snapshot_download(\"acme/phi3-faq\"))" in body and "phi3e2e chat --model" in body

    # run.json says where the run went; the token is nowhere: not in the output, run.json or any file of the run.
    (pushed,) = record.pushes
    assert (pushed.repo_id, pushed.revision, pushed.form, pushed.commit) == (
        "acme/phi3-faq", "main", "int4", online.repos["acme/phi3-faq"]["branches"]["main"]["sha"])  # fmt: skip
    assert TOKEN not in "\n".join(lines)
    assert not [p for p in project.root.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]


def test_a_push_interrupted_before_its_commit_uploads_only_what_is_missing_when_run_again(project, online):
    online.fail_commits = 1
    puts_before = len(online.lfs_puts)
    with pytest.raises(UserError, match="500.*run the same push again") as error:
        push(project, "e2e", "acme/phi3-faq-merged", form="merged", say=quiet)
    assert "\n" not in str(error.value) and online.files("acme/phi3-faq-merged") == {}  # nothing committed
    uploaded = online.lfs_puts[puts_before:]
    assert runs.file_sha256(project.gen_model / "e2e" / "merged" / "model.safetensors") in uploaded

    push(project, "e2e", "acme/phi3-faq-merged", form="merged", say=quiet)
    assert online.lfs_puts[puts_before:] == uploaded  # the large files the Hub held were not sent again
    assert "model.safetensors" in online.files("acme/phi3-faq-merged")
    card = online.files("acme/phi3-faq-merged")["README.md"].decode()
    assert "library_name: transformers" in card and "AutoModelForCausalLM" in card
    # Nothing changed since: huggingface_hub makes no empty commit.
    commits = len(online.commits)
    push(project, "e2e", "acme/phi3-faq-merged", form="merged", say=quiet)
    assert len(online.commits) == commits


@pytest.mark.parametrize(
    "run, repo_id, token, message",
    [
        ("e2e", "acme/x--y", TOKEN, "not a Hub repo id; use ORG/NAME"),
        ("e2e", "just-a-name", TOKEN, "not a Hub repo id; use ORG/NAME"),
        ("crashed", "acme/crashed", TOKEN, "status is failed, not a finished run"),
        ("e2e", "bob/his-model", TOKEN, "the repo exists and belongs to 'bob', which is neither you (alice)"),
        ("e2e", "carol/new-model", TOKEN, "'carol' is neither you (alice) nor one of your organizations"),
        ("e2e", "acme/read-only", READ_TOKEN, "your Hugging Face token is read-only: run `hf auth login`"),
        ("e2e", "acme/bad-token", "hf_notAToken", "the Hub rejected the token (401: invalid or expired)"),
        ("e2e", "acme/scoped", SCOPED_TOKEN, "the Hub says 403 forbidden: the token may not write to 'acme'"),
    ],
)
def test_push_refuses_with_one_line_and_uploads_nothing(project, online, monkeypatch, run, repo_id, token, message):
    monkeypatch.setenv("HF_TOKEN", token)
    commits, puts = len(online.commits), len(online.lfs_puts)
    with pytest.raises(UserError) as error:
        push(project, run, repo_id, say=quiet)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert token not in str(error.value)
    assert (len(online.commits), len(online.lfs_puts)) == (commits, puts)
    assert repo_id not in online.repos or repo_id == "bob/his-model"


def test_a_missing_form_is_refused(project, online, tmp_path):
    copy = Project(tmp_path / "project")
    shutil.copytree(project.root / "gen-model" / "e2e", copy.gen_model / "e2e", ignore=shutil.ignore_patterns("adapter"))
    requests = len(online.requests)
    with pytest.raises(UserError, match=r"e2e: adapter/ is missing; nothing to push as --form adapter"):
        push(copy, "e2e", "acme/adapter", form="adapter", say=quiet)
    assert len(online.requests) == requests


def test_the_card_keeps_hostile_names_as_text(project, tmp_path):
    from phi3e2e.share.card import model_card

    copy = Project(tmp_path / "project")
    shutil.copytree(project.gen_model / "e2e", copy.gen_model / "e2e")
    record = json.loads((copy.gen_model / "e2e" / runs.RUN_FILE).read_text())
    hostile = "x`` `\n---\nlicense: evil\n# Owned <img src=x onerror=alert(1)> [link](http://evil)"
    record |= {"dataset": f"datasets/{hostile}", "base_model": hostile}
    (copy.gen_model / "e2e" / runs.RUN_FILE).write_text(json.dumps(record))
    card = model_card(copy, copy.gen_model / "e2e", "merged", "acme/x")
    _, front, body = card.split("---\n", 2)
    assert "license" not in yaml.safe_load(front) and "evil" not in front
    assert not [line for line in body.splitlines() if line.startswith(("---", "# Owned", "license"))]
    flat = " ".join(hostile.split())
    assert f"``` {flat} ```" in body  # one line, in a code span whose fence is longer than any backtick run in it


def test_dry_run_writes_the_card_and_the_file_list_and_contacts_nothing(project, online):
    requests = len(online.requests)
    result = push(project, "latest", "acme/preview", form="adapter", dry_run=True, say=quiet)
    preview = project.gen_model / "e2e" / ".push-preview"
    assert result.preview_dir == preview and len(online.requests) == requests
    card = (preview / "README.md").read_text()
    assert "library_name: peft" in card and "AutoPeftModelForCausalLM" in card
    assert "adapter_model.safetensors" in (preview / "files.txt").read_text()


def test_cli_without_a_token_says_how_to_log_in_in_one_line_and_sends_nothing(project, hub, tmp_path):
    requests = len(hub.requests)
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf")}
    result = run_cli("push", "e2e", "--to", "hf", "acme/no-token", project=project, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "no Hugging Face token: run `hf auth login`" in result.stderr and "HF_TOKEN" in result.stderr
    assert len(hub.requests) == requests


def test_cli_push_of_the_adapter_to_a_branch(project, hub, tmp_path):
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf")}
    result = run_cli("push", "e2e", "--to", "hf", "alice/faq-adapter", "--form", "adapter", "--private",
                     "--revision", "v1", project=project, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"Pushed: {hub.url}/alice/faq-adapter" in result.stdout and "created (private)" in result.stdout
    assert TOKEN not in result.stdout + result.stderr
    assert hub.repos["alice/faq-adapter"]["private"]
    assert "adapter_model.safetensors" in hub.files("alice/faq-adapter", "v1")
    assert hub.files("alice/faq-adapter", "main") == {}
