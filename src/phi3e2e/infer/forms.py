"""Which form a model folder holds, and the engine that runs it.

A run folder has three forms: adapter/ (PEFT, needs its base model), merged/ (a Hugging Face
model) and onnx-int4/ (ONNX Runtime GenAI), or onnx-adapter/ in place of onnx-int4/ when it ships
as an adapter on the shared int4 base. `chat --model` takes any of them, or a run folder (the int4
model it ships).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from phi3e2e.errors import UserError
from phi3e2e.runs import ADAPTER_FILE, BASE_POINTER, adapter_base_dir, shipped_form

DEVICES = ("cpu", "cuda")


def detect_form(model_dir: Path) -> str:
    from phi3e2e.infer.engines.genai import is_genai_model
    from phi3e2e.infer.engines.hf import is_adapter

    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: not a folder")
    if is_genai_model(model_dir):
        return "onnx"
    if (model_dir / ADAPTER_FILE).is_file() and (model_dir / BASE_POINTER).is_file():
        return "onnx-adapter"
    if is_adapter(model_dir):
        return "adapter"
    if (model_dir / "config.json").is_file():
        return "merged"
    raise UserError(
        f"{model_dir}: not a model folder (no genai_config.json, adapter_config.json or config.json); "
        "pass a run's onnx-int4/, onnx-adapter/, merged/ or adapter/ folder"
    )


def resolve_model_dir(model_dir: Path) -> Path:
    """A run folder stands for the model it ships: its onnx-int4/ (or onnx-adapter/)."""
    shipped = model_dir / shipped_form(model_dir)
    if _is_int4_model(shipped) and not (model_dir / "config.json").is_file():
        return shipped
    return model_dir


def _is_int4_model(model_dir: Path) -> bool:
    try:
        return detect_form(model_dir) in ("onnx", "onnx-adapter")
    except UserError:
        return False


def open_model(model_dir: Path, device: str = "cpu", base: Optional[Path] = None, threads: Optional[int] = None):
    """The engine for `model_dir`'s form, loaded on `device` (`threads`: compute threads, None = as built)."""
    if device not in DEVICES:
        raise UserError(f"--device {device!r}: choose one of {', '.join(DEVICES)}")
    form = detect_form(model_dir)
    if base is not None and form != "adapter":
        raise UserError(f"--base is only for a PEFT adapter folder; {model_dir} holds a {form} model")
    if form == "onnx":
        from phi3e2e.infer.engines.genai import GenaiEngine

        return GenaiEngine(model_dir, device, threads)
    if form == "onnx-adapter":
        from phi3e2e.infer.engines.genai import AdapterEngine, GenaiEngine

        base = GenaiEngine(adapter_base_dir(model_dir), device, threads)
        return AdapterEngine(base, model_dir / ADAPTER_FILE, model_dir.parent.name)
    from phi3e2e.infer.engines.hf import HfEngine

    return HfEngine(model_dir, device, base, threads)
