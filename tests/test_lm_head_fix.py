"""ModelBuilder wires the logits to the model's LM head even when another layer is as wide as the vocabulary
(the Phi-4-mini twin's gate_up_proj: 2 x 1024 outputs, 2048 tokens). A real build of a small random Phi-3,
in a subprocess: stock (the upstream behaviour, so a fixed onnxruntime-genai is noticed) and patched."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

BUILD = """
import sys
from pathlib import Path
from phi3e2e.prepare.tiny_model import ModelShape, write_tiny_model
out, mode = sys.argv[1], sys.argv[2]
corpus = [line for line in Path(sys.argv[3]).read_text().splitlines() if line.strip()]
# gate_up_proj: 2 x 1024 outputs, as many as the 2048-token vocabulary
write_tiny_model(Path(out) / "hf", corpus, ModelShape(intermediate_size=1024, initializer_range=0.1))
if mode == "patched":
    from phi3e2e.build import lm_head_fix
    lm_head_fix.install()
from onnxruntime_genai.models.builder import create_model
create_model(out + "/hf", out + "/hf", out + "/onnx", "fp32", "cpu", out + "/cache")
"""
TOKENS = [5, 17, 99, 300, 41, 7, 8, 1000]


def lm_head_input(onnx_file) -> str:
    import onnx

    model = onnx.load(onnx_file, load_external_data=False)
    return next(list(node.input)[0] for node in model.graph.node if node.name == "/lm_head/MatMul")


def onnx_logits(onnx_file) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.array([TOKENS]), "attention_mask": np.ones((1, len(TOKENS)), dtype=np.int64)}
    for graph_input in session.get_inputs():
        if graph_input.name.startswith("past_key_values"):  # an empty cache: the prompt is the whole input
            shape = [1 if dim == "batch_size" else 0 if isinstance(dim, str) else dim for dim in graph_input.shape]
            feeds[graph_input.name] = np.zeros(shape, dtype=np.float32)
    return session.run(["logits"], feeds)[0][0]


@pytest.mark.parametrize("mode", ["stock", "patched"])
def test_the_logits_come_from_the_lm_head_when_a_layer_is_as_wide_as_the_vocabulary(tmp_path, mode):
    import torch
    from transformers import AutoModelForCausalLM

    from phi3e2e.resources import sample_dataset

    result = subprocess.run([sys.executable, "-c", BUILD, str(tmp_path), mode, str(sample_dataset())],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    onnx_file = tmp_path / "onnx" / "model.onnx"
    if mode == "stock":  # onnxruntime-genai 0.14.1: layer 0's MLP input becomes the logits' input
        assert lm_head_input(onnx_file) == "/model/layers.0/post_attention_layernorm/output_0"
        return
    assert lm_head_input(onnx_file) == "/model/layers.2/final_norm_layernorm/output_0"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        expected = model(torch.tensor([TOKENS])).logits[0].numpy()
    assert np.abs(onnx_logits(onnx_file) - expected).max() < 1e-3  # the same model, fp32 rounding apart
