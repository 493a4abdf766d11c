"""A run folder's names: its files and model forms, the run name, and where its scratch lies.

gen-model/<run>/ is built in gen-model/.<run>.partial/ (storage.staging_name) and renamed last;
a failed run is gen-model/<run>.failed/. Scratch lives outside the folder that gets renamed:
training checkpoints in gen-model/.checkpoints/<run>/ and Olive's step cache in
gen-model/.olive-cache/ (shared by every run; safe to delete).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from phi3e2e.errors import UserError
from phi3e2e.storage import staging_name

RUN_FILE = "run.json"
CONFIG_FILE = "olive-config.json"
OLIVE_LOG = "olive.log"
TRAIN_LOG = "train-log.jsonl"
LOSS_PLOT = "loss.png"
EVAL_FILE = "eval.json"
EVAL_REPORT = "eval-report.md"
EVAL_PLOT = "eval-loss.png"

# The three model forms a finished run holds, and the files each must have.
ADAPTER, MERGED, ONNX_INT4 = "adapter", "merged", "onnx-int4"
FORMS = (ADAPTER, MERGED, ONNX_INT4)
REQUIRED_FILES = {
    ADAPTER: ["adapter_config.json", "adapter_model.safetensors"],
    MERGED: ["config.json", "*.safetensors", "tokenizer.json"],
    ONNX_INT4: ["genai_config.json", "model.onnx", "tokenizer.json"],
}
# A run shipped as an adapter (`--ship adapter`) holds onnx-adapter/ in place of onnx-int4/: its LoRA weights for
# the shared int4 base in model-cache/ (build/adapter_int4.py), and base.json, which names that base.
ONNX_ADAPTER = "onnx-adapter"
ADAPTER_FILE, BASE_POINTER = "model.onnx_adapter", "base.json"

_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")


def check_run_name(name: str) -> str:
    if not _NAME.match(name) or name.endswith((".failed", ".partial")):
        raise UserError(f"--run-name {name!r}: use letters, digits, '.', '_' or '-' (max 100), not a path")
    return name


def partial_dir(gen_model: Path, name: str) -> Path:
    return staging_name(gen_model / name)


def failed_dir(gen_model: Path, name: str) -> Path:
    return gen_model / f"{name}.failed"


def checkpoints_dir(gen_model: Path, name: str) -> Path:
    return gen_model / ".checkpoints" / name


def olive_cache_dir(gen_model: Path, name: str) -> Path:
    """Olive's step cache of one run: kept while it is failed (--resume reuses the finished steps), removed
    when it finishes (its forms were moved out of it)."""
    return gen_model / ".olive-cache" / name


def shipped_form(run_dir: Path) -> str:
    """The int4 form a run ships: onnx-int4/ (merged), or onnx-adapter/ when it holds that and no onnx-int4/."""
    if not (run_dir / ONNX_INT4).is_dir() and (run_dir / ONNX_ADAPTER / ADAPTER_FILE).is_file():
        return ONNX_ADAPTER
    return ONNX_INT4


def missing_outputs(run_dir: Path, ships: str = "merged") -> list[str]:
    """Files a finished run must have but this one lacks (relative paths or glob patterns)."""
    required = dict(REQUIRED_FILES)
    if ships == "adapter":
        del required[ONNX_INT4]
        required[ONNX_ADAPTER] = [ADAPTER_FILE, BASE_POINTER]
    return [
        f"{form}/{pattern}"
        for form, patterns in required.items()
        for pattern in patterns
        if not any((run_dir / form).glob(pattern))
    ]


def adapter_base_dir(adapter_folder: Path, must_exist: bool = True) -> Path:
    """The shared int4 base an onnx-adapter/ folder answers on (its base.json); one line saying how to rebuild it."""
    rebuild = f"rebuild it with `phi3e2e export {adapter_folder.parent.name} --ship adapter`"
    try:
        pointer = json.loads((adapter_folder / BASE_POINTER).read_text(encoding="utf-8"))
        base = pointer["base"]
        if not isinstance(base, str):
            raise TypeError(base)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise UserError(f"{adapter_folder / BASE_POINTER}: missing or has no field 'base'; {rebuild}") from None
    base_dir = (adapter_folder / base).resolve()
    if must_exist and not (base_dir / "model.onnx").is_file():
        raise UserError(f"{adapter_folder}: its int4 base {base_dir} is missing; {rebuild}")
    return base_dir
