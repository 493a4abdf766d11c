"""Held-out loss of one model: mean next-token negative log-likelihood over the eval rows.

Loss = total next-token negative log-likelihood / number of predicted tokens, over all eval
rows; perplexity = exp(loss). The *_row_nll functions give each row's total, for the loss of any
subset of rows and the bootstrap interval (uncertainty.py). The int4 ONNX model is measured with onnxruntime on its decoder
graph; the PyTorch forms (merged, adapter) with transformers.
"""

from __future__ import annotations

import math
from pathlib import Path

from phi3e2e.errors import UserError


def mean_loss(row_nll: list[float], token_ids: list[list[int]]) -> float:
    """Total NLL / predicted tokens over the rows (each row predicts all its tokens but the first)."""
    return sum(row_nll) / sum(len(ids) - 1 for ids in token_ids)


def onnx_loss(model_dir: Path, token_ids: list[list[int]], base_model: Path, progress=lambda i: None) -> float:
    return mean_loss(onnx_row_nll(model_dir, token_ids, base_model, progress), token_ids)


def torch_loss(model_dir: Path, token_ids: list[list[int]], base_model: Path, progress=lambda i: None) -> float:
    return mean_loss(torch_row_nll(model_dir, token_ids, base_model, progress), token_ids)


def onnx_row_nll(model_dir: Path, token_ids: list[list[int]], base_model: Path, progress=lambda i: None) -> list[float]:
    """Each row's NLL, from the decoder ONNX graph's full-sequence logits (fed an empty KV cache).

    An onnx-adapter/ folder is measured on its shared base with its LoRA weights active (onnxruntime's LoraAdapter,
    the inputs ExtractAdapters made): what onnxruntime-genai's set_active_adapter feeds."""
    import numpy as np
    import onnxruntime as ort

    from phi3e2e import runs
    from phi3e2e.infer.engines.genai import GENAI_CONFIG, genai_config

    run_options = None
    if (model_dir / runs.ADAPTER_FILE).is_file():
        run_options = ort.RunOptions()
        adapter = ort.LoraAdapter()
        try:
            adapter.Load(str(model_dir / runs.ADAPTER_FILE))
        except Exception as e:  # a damaged file: onnxruntime's own error
            raise UserError(f"{model_dir / runs.ADAPTER_FILE}: cannot load ({str(e).splitlines()[0][:200]})") from None
        run_options.add_active_adapter(adapter)
        model_dir = runs.adapter_base_dir(model_dir)
    try:
        filename = genai_config(model_dir)["model"]["decoder"]["filename"]
    except (KeyError, TypeError):
        raise UserError(f"{model_dir / GENAI_CONFIG}: model.decoder.filename missing; rebuild the model") from None
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        quiet = ort.SessionOptions()
        quiet.log_severity_level = 3  # a base with LoRA inputs warns once per input that it is not constant-folded
        session = ort.InferenceSession(str(model_dir / filename), quiet, providers=providers)
    except Exception as e:  # deleted or truncated model.onnx / model.onnx.data: onnxruntime's own errors
        raise UserError(f"{model_dir / filename}: cannot load the model ({str(e).splitlines()[0][:200]})") from None
    dtypes = {
        "tensor(float)": np.float32,
        "tensor(float16)": np.float16,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
    }
    row_nll = []
    for i, ids in enumerate(token_ids):
        length = len(ids)
        feed = {}
        for spec in session.get_inputs():
            if spec.name == "input_ids":
                feed[spec.name] = np.array([ids], dtype=dtypes[spec.type])
            elif spec.name == "attention_mask":
                feed[spec.name] = np.ones((1, length), dtype=dtypes[spec.type])
            elif spec.name == "position_ids":
                feed[spec.name] = np.arange(length, dtype=dtypes[spec.type])[None, :]
            else:  # past key/values: batch 1, no past tokens yet
                shape = [dim if isinstance(dim, int) else (1 if "batch" in dim else 0) for dim in spec.shape]
                feed[spec.name] = np.zeros(shape, dtype=dtypes[spec.type])
        logits = session.run(["logits"], feed, run_options)[0][0, :-1].astype(np.float64)
        targets = np.array(ids[1:])
        peak = logits.max(axis=-1)
        log_norm = np.log(np.exp(logits - peak[:, None]).sum(axis=-1)) + peak
        row_nll.append(float((log_norm - logits[np.arange(length - 1), targets]).sum()))
        progress(i + 1)
    return row_nll


def torch_row_nll(model_dir: Path, token_ids: list[list[int]], base_model: Path, progress=lambda i: None) -> list[float]:
    """The same on a PyTorch form: a model folder, or an adapter folder on top of the base."""
    import warnings

    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a weight-loading bar per model is noise here
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32), model_dir
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    row_nll = []
    with torch.no_grad():
        for i, ids in enumerate(token_ids):
            input_ids = torch.tensor([ids])
            row_nll.append(model(input_ids=input_ids, labels=input_ids).loss.item() * (len(ids) - 1))
            progress(i + 1)
    return row_nll


def perplexity(loss: float) -> float:
    return round(math.exp(loss), 2) if loss < 50 else float("inf")
