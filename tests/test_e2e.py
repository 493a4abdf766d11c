"""User story: prepare the tiny model, fine-tune it with the real `olive run`, then chat.

Runs the real pipeline (LoRA -> MergeAdapterWeights -> ModelBuilder int4) offline on the
tiny model made by `prepare --tiny`; no network, nothing replaced.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import quiet, run_cli
from safetensors.numpy import load_file

from phi3e2e import runs
from phi3e2e.build.olive_outputs import collect_forms, model_config, output_chain, read_footprint
from phi3e2e.errors import UserError
from phi3e2e.infer.chat import ChatSession, GenerationOptions
from phi3e2e.project import Project
from phi3e2e.runs import missing_outputs
from phi3e2e.train.finetune import finetune


def test_finetune_leaves_three_verified_model_forms(finished_run):
    project, run_dir = finished_run
    assert run_dir == project.gen_model / "e2e"
    assert missing_outputs(run_dir) == []
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "succeeded" and record["profile"] == "tiny" and record["algo"] == "lora"
    assert record["versions"]["olive-ai"] == "0.13.0"
    config = json.loads((run_dir / "olive-config.json").read_text())
    assert config["passes"]["finetune"]["type"] == "LoRA"
    # Olive's scratch folders are gone; nothing half-built is left beside the run.
    assert not any(p.name.startswith(".") for p in run_dir.iterdir())
    # Beside it only the project-level scratch: Olive's step cache, run locks, checkpoints of other runs.
    assert {p.name for p in project.gen_model.iterdir() if p.name.startswith(".")} <= {".olive-cache", ".locks",
                                                                                         ".checkpoints"}  # fmt: skip
    assert not runs.partial_dir(project.gen_model, "e2e").exists()
    assert not runs.checkpoints_dir(project.gen_model, "e2e").exists()
    assert not runs.olive_cache_dir(project.gen_model, "e2e").exists()  # its cache entries point at moved forms


def test_training_loss_went_down_and_is_plotted(finished_run):
    _, run_dir = finished_run
    losses = [json.loads(line)["loss"] for line in (run_dir / "train-log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) >= 5
    assert losses[-1] < losses[0] - 0.5
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fine_tune_really_changed_the_model(finished_run):
    project, run_dir = finished_run
    base = load_file(project.model_cache / "tiny-phi3" / "model.safetensors")
    merged = load_file(run_dir / "merged" / "model.safetensors")
    qkv = "model.layers.0.self_attn.qkv_proj.weight"
    assert abs(merged[qkv] - base[qkv]).max() > 1e-4
    # Only LoRA target layers change; the embeddings are untouched.
    assert (merged["model.embed_tokens.weight"] == base["model.embed_tokens.weight"]).all()
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    lora_b = [name for name in adapter if "lora_B" in name]
    assert lora_b and all(abs(adapter[name]).max() > 0 for name in lora_b)


def test_int4_model_loads_and_answers(finished_run):
    _, run_dir = finished_run
    genai_config = json.loads((run_dir / "onnx-int4" / "genai_config.json").read_text())
    assert genai_config["model"]["type"] == "phi3"
    # The barely trained tiny model may end its turn at once on some CPUs: ask for at least 8 tokens.
    session = ChatSession(run_dir / "onnx-int4", GenerationOptions(max_new_tokens=16, min_new_tokens=8))
    streamed = []
    answer = session.ask("How long does shipping take?", on_text=streamed.append)
    assert answer.text and answer.tokens >= 8
    assert "".join(streamed).strip() == answer.text


def test_chat_command_answers_from_the_newest_finished_run(finished_run):
    project, _ = finished_run
    result = run_cli("chat", "--prompt", "Where is your roastery?", "--max-length", "24", "--min-length", "4",
                     project=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_failed_run_is_kept_for_reading_but_never_chatted_with(finished_run, tmp_path):
    project = Project(tmp_path / "project")
    shutil.copytree(finished_run[0].root, project.root)
    broken_model = project.model_cache / "broken"
    shutil.copytree(project.model_cache / "tiny-phi3", broken_model)
    (broken_model / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="olive run failed: .*SafetensorError"):
        finetune(project, algo="lora", target="local", model=str(broken_model), run_name="broken", say=quiet)
    failed = project.gen_model / "broken.failed"
    assert runs.read_record(failed).status == "failed"
    assert (failed / "olive.log").stat().st_size > 0
    assert not (project.gen_model / "broken").exists()
    assert runs.newest_onnx_model(project.gen_model) == project.gen_model / "e2e" / "onnx-int4"


@pytest.mark.e2e  # starts a real fine-tune, then interrupts it
def test_interrupted_run_does_not_look_finished(tiny_project):
    env = dict(os.environ, PHI3E2E_PROJECT_DIR=str(tiny_project.root))
    process = subprocess.Popen(
        [sys.executable, "-m", "phi3e2e", "finetune", "--run-name", "cut"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
        preexec_fn=_as_in_a_terminal,
    )
    log = runs.partial_dir(tiny_project.gen_model, "cut") / "olive.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "Running pass" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    running = process.poll() is None
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
    stdout, stderr = process.communicate(timeout=120)
    assert running, f"the fine-tune ended before Olive logged a pass (log: {log.exists()}):\n{stdout[-1500:]}{stderr[-1500:]}"
    assert process.returncode != 0, stdout[-1500:] + stderr[-1500:]
    assert "Traceback" not in stderr
    assert not (tiny_project.gen_model / "cut").exists()
    assert runs.read_record(tiny_project.gen_model / "cut.failed").status == "failed"
    with pytest.raises(UserError, match="no finished fine-tune"):
        runs.newest_onnx_model(tiny_project.gen_model)


def _as_in_a_terminal() -> None:
    """Ctrl-C's default action, as a foreground command has it: a test suite started in the background
    by a non-interactive shell (`make test &`) ignores SIGINT, and its children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_olive_output_without_a_model_is_caught(tmp_path):
    """Olive can log "No output model produced" and exit 0: the footprint then lacks the int4 node."""
    from olive.engine.footprint import Footprint

    olive_output = tmp_path / "olive-output"
    olive_output.mkdir()
    adapter = tmp_path / "cache" / "adapter"
    adapter.mkdir(parents=True)
    # As Olive 0.13 writes it: the input model, then the LoRA pass's output, and nothing after it.
    footprint = {
        "in": {"model_id": "in", "model_config_data": {"type": "hfmodel", "config": {"model_path": "base"}}},
        "a": {"model_id": "a", "parent_model_id": "in", "from_pass": "lora",
              "model_config_data": {"type": "hfmodel", "config": {"adapter_path": str(adapter)}}},
    }
    (olive_output / "footprint.json").write_text(json.dumps(footprint))
    # Olive's own reader drops the model configs it wrote (olive_outputs reads the JSON itself).
    assert Footprint.from_file(olive_output / "footprint.json").get_model_config("a") == {}
    nodes = read_footprint(olive_output / "footprint.json")
    assert output_chain(nodes) == ["a", "in"] and model_config(nodes["a"])["adapter_path"] == str(adapter)
    with pytest.raises(UserError, match="no merged model"):
        collect_forms(olive_output, tmp_path, tmp_path / "olive.log")
    (olive_output / "footprint.json").unlink()
    with pytest.raises(UserError, match="no output model"):
        collect_forms(olive_output, tmp_path, tmp_path / "olive.log")


def test_missing_files_in_a_form_are_listed(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run[1], copy)
    (copy / "onnx-int4" / "model.onnx").unlink()
    assert missing_outputs(copy) == ["onnx-int4/model.onnx"]
