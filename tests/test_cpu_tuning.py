"""The int4 model phi3e2e ships for CPUs: measured build defaults, all cores, recorded in the run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from helpers import run_cli

from phi3e2e.build.options import CPU_INT4_DEFAULTS, cpu_int4_options
from phi3e2e.infer.engines.genai import use_all_cores
from phi3e2e.infer.threads import physical_cores
from phi3e2e.train.finetune import finetune


def quiet(_message: str) -> None:
    pass


def test_a_finetuned_cpu_model_decodes_on_every_physical_core(finished_run):
    _, run_dir = finished_run
    config = json.loads((run_dir / "onnx-int4" / "genai_config.json").read_text())
    threads = config["model"]["decoder"]["session_options"]["intra_op_num_threads"]
    assert threads == physical_cores()
    assert 1 <= threads <= (os.cpu_count() or 1)


def test_the_run_records_the_chosen_build_options_and_olive_used_them(finished_run):
    _, run_dir = finished_run
    record = json.loads((run_dir / "run.json").read_text())
    chosen = record["cpu_int4"]["build_options"]
    # The tiny model is 64 wide, so the default block (128) is capped at 64.
    assert chosen["int4_block_size"] == 64
    assert chosen["int4_accuracy_level"] == CPU_INT4_DEFAULTS["int4_accuracy_level"]
    assert chosen["int4_op_types_to_quantize"] == ["MatMul", "Gather"]
    assert record["cpu_int4"]["intra_op_num_threads"] == physical_cores()
    built_with = json.loads((run_dir / "olive-config.json").read_text())["passes"]["int4"]
    for key, value in chosen.items():
        assert built_with[key] == value
    # eval's base int4 model and `export` read the block size from the recorded settings.
    assert record["settings"]["export"]["int4_block_size"] == 64


def test_the_input_embedding_is_quantized_in_the_shipped_model(finished_run):
    import onnx

    _, run_dir = finished_run
    graph = onnx.load(str(run_dir / "onnx-int4" / "model.onnx"), load_external_data=False).graph
    ops = {node.op_type for node in graph.node}
    assert "GatherBlockQuantized" in ops and "MatMulNBits" in ops
    block_sizes = {attr.i for node in graph.node if node.op_type == "MatMulNBits" for attr in node.attribute
                   if attr.name == "block_size"}  # fmt: skip
    assert block_sizes == {64}


def test_the_shipped_int4_blocks_are_asymmetric(finished_run):
    """A zero point per block: the measured choice, written into the Olive config, not left to ModelBuilder."""
    import onnx

    _, run_dir = finished_run
    assert json.loads((run_dir / "olive-config.json").read_text())["passes"]["int4"]["int4_is_symmetric"] is False
    graph = onnx.load(str(run_dir / "onnx-int4" / "model.onnx"), load_external_data=False).graph
    quantized = [node for node in graph.node if node.op_type in ("MatMulNBits", "GatherBlockQuantized")]
    assert {node.op_type for node in quantized} == {"MatMulNBits", "GatherBlockQuantized"}
    assert all(len(node.input) > 3 and node.input[3] for node in quantized)


def test_a_block_wider_than_the_model_is_refused_in_one_line(tiny_project):
    done = run_cli("finetune", "--algo", "lora", "--set", "export.int4_block_size=128", project=tiny_project)
    assert done.returncode == 2, done.stderr
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1
    assert "int4_block_size=128" in message and "hidden size 64" in message and "config.json" in message
    assert "Traceback" not in done.stderr
    assert not any(tiny_project.gen_model.glob("*/olive-config.json"))  # nothing half-written


def test_the_users_own_int4_options_win_over_the_defaults(tiny_project):
    result = finetune(tiny_project, algo="lora", target="local", run_name="mine", dry_run=True, say=quiet,
                      set_args=["export.int4_block_size=32", "export.int4_op_types_to_quantize=[MatMul]",
                                "export.int4_is_symmetric=true"])
    int4 = result.record.settings.export.model_dump()
    assert int4["int4_block_size"] == 32
    assert int4["int4_op_types_to_quantize"] == ["MatMul"]
    assert int4["int4_is_symmetric"] is True
    assert json.loads(result.config_file.read_text())["passes"]["int4"]["int4_is_symmetric"] is True
    assert int4["int4_accuracy_level"] == CPU_INT4_DEFAULTS["int4_accuracy_level"]


def test_cuda_builds_keep_modelbuilders_own_options(tiny_project):
    # QLoRA builds its int4 model for CUDA; a dry run renders it without needing a GPU.
    result = finetune(tiny_project, algo="qlora", target="local", run_name="gpu", dry_run=True, say=quiet)
    config = json.loads(result.config_file.read_text())
    assert config["systems"]["local_system"]["accelerators"][0]["execution_providers"] == ["CUDAExecutionProvider"]
    assert config["passes"]["int4"] == {"type": "ModelBuilder", "precision": "int4"}
    assert "cpu_int4" not in result.record


def test_default_block_size_follows_the_model_width(tiny_project, tmp_path):
    wide = tmp_path / "wide"
    wide.mkdir()
    (wide / "config.json").write_text(json.dumps({"hidden_size": 3072}))
    assert cpu_int4_options({}, wide)["int4_block_size"] == 128
    narrow = tiny_project.model_cache / "tiny-phi3"
    assert cpu_int4_options({}, narrow)["int4_block_size"] == 64


def test_thread_setting_is_written_without_touching_the_rest(finished_run, tmp_path):
    _, run_dir = finished_run
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(run_dir / "onnx-int4" / "genai_config.json", model)
    before = json.loads((model / "genai_config.json").read_text())
    assert use_all_cores(model, threads=3) == 3
    after = json.loads((model / "genai_config.json").read_text())
    assert after["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 3
    after["model"]["decoder"]["session_options"].pop("intra_op_num_threads")
    before["model"]["decoder"]["session_options"].pop("intra_op_num_threads", None)
    assert after == before
    assert not list(model.glob("*.partial"))


COUNT_LOAD_THREADS = """
import os, sys
from pathlib import Path
from phi3e2e.infer.engines.genai import GenaiEngine
before = len(os.listdir("/proc/self/task"))
engine = GenaiEngine(Path(sys.argv[1]), threads=int(sys.argv[2]) or None)
print(len(os.listdir("/proc/self/task")) - before)
"""


def test_a_model_built_elsewhere_decodes_on_every_physical_core(finished_run, tmp_path):
    """A plain ModelBuilder folder sets no thread count (onnxruntime-genai would use one): chat gives it all cores."""
    _, run_dir = finished_run
    foreign = shutil.copytree(run_dir / "onnx-int4", tmp_path / "built-elsewhere")
    config = json.loads((foreign / "genai_config.json").read_text())
    config["model"]["decoder"]["session_options"].pop("intra_op_num_threads")
    (foreign / "genai_config.json").write_text(json.dumps(config))

    def threads_started(threads: int) -> int:  # onnxruntime's compute pool: one thread per extra core
        done = subprocess.run([sys.executable, "-c", COUNT_LOAD_THREADS, str(foreign), str(threads)],
                              capture_output=True, text=True, check=True)
        return int(done.stdout.split()[-1])

    assert threads_started(0) - threads_started(1) == physical_cores() - 1
    assert "intra_op_num_threads" not in json.loads((foreign / "genai_config.json").read_text())["model"]["decoder"]["session_options"]
