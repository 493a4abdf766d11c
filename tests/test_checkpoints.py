"""Resume starts from an intact checkpoint, here and on the Azure ML node: a checkpoint whose saving was cut
off (no trainer_state.json) or whose files are truncated is removed, and the newest intact one is used.
The node's entry script keeps its own copy of the check (it runs without phi3e2e): both judge alike."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import pytest

from phi3e2e import runs
from phi3e2e.runs.lifecycle import checkpoint_problem
from phi3e2e.train.aml import compute_entry


def safetensors(path: Path, floats: int = 16) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [floats], "data_offsets": [0, 4 * floats]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4 * floats)


def checkpoint(folder: Path, step: int, damage: str = "") -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    safetensors(path / "adapter_model.safetensors")
    with zipfile.ZipFile(path / "optimizer.pt", "w") as z:
        z.writestr("data.pkl", b"x" * 100)
    if damage != "no trainer state":
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if damage == "truncated weights":
        data = (path / "adapter_model.safetensors").read_bytes()
        (path / "adapter_model.safetensors").write_bytes(data[:-10])
    elif damage == "truncated header":
        (path / "adapter_model.safetensors").write_bytes(b"\x10\x00")
    elif damage == "broken trainer state":
        (path / "trainer_state.json").write_text('{"global_st')
    elif damage == "truncated optimizer":
        data = (path / "optimizer.pt").read_bytes()
        (path / "optimizer.pt").write_bytes(data[: len(data) // 2])
    return path


DAMAGES = ["no trainer state", "truncated weights", "truncated header", "broken trainer state", "truncated optimizer"]


@pytest.mark.parametrize("damage", ["", *DAMAGES])
def test_phi3e2e_and_the_node_judge_a_checkpoint_alike(tmp_path, damage):
    path = checkpoint(tmp_path, 20, damage)
    here, node = checkpoint_problem(path), compute_entry.checkpoint_problem(path)
    assert here == node
    assert (here is None) == (damage == "")


@pytest.mark.parametrize("damage", DAMAGES)
def test_local_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, damage):
    gen_model = tmp_path / "gen-model"
    folder = runs.checkpoints_dir(gen_model, "r")
    checkpoint(folder, 20)
    checkpoint(folder, 40, damage)
    assert runs.last_checkpoint(gen_model, "r") == folder / "checkpoint-20"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-20"]  # the trainer takes the highest left


def test_the_node_removes_a_damaged_checkpoint_and_names_the_intact_one(tmp_path, capsys):
    checkpoint(tmp_path, 20)
    checkpoint(tmp_path, 40, "no trainer state")
    checkpoint(tmp_path, 60, "truncated weights")
    assert compute_entry.last_checkpoint(tmp_path) == tmp_path / "checkpoint-20"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-20"]
    said = capsys.readouterr().out
    assert "removing checkpoint-40: no trainer_state.json" in said and "removing checkpoint-60: adapter_model" in said


def test_no_intact_checkpoint_means_a_fresh_start(tmp_path):
    gen_model = tmp_path / "gen-model"
    checkpoint(runs.checkpoints_dir(gen_model, "r"), 20, "no trainer state")
    assert runs.last_checkpoint(gen_model, "r") is None
    assert not runs.checkpoints_dir(gen_model, "r").exists()  # Olive refuses a non-empty output_dir without one
