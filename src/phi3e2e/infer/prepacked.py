"""Start a CPU int4 model by mapping its weights instead of repacking them: onnxruntime's saved prepacked weights.

At load, onnxruntime repacks every int4 MatMul weight into its kernel's layout, into anonymous memory.
onnxruntime 1.32 can save a session's optimized graph with those repacked weights in its external data file
(`session.save_external_prepacked_constant_initializers`); a session made from the saved file maps them from the
file instead of repacking. Measured (benchmarks/cold_start.py, benchmarks/prepacked_decode.py, docs/performance.md):
`chat --prompt` start -> exit 3.98 -> 2.12 s at Phi-3-mini's 32 layers (llama.cpp's entry: 2.60 s), the same
decode speed once running, the same peak memory. The price is disk: the saved file holds the original weights as
well as the packed ones (onnxruntime reads the originals to check the packed copy), so the cache takes about twice
the model's size (3.9 GB at 32 layers). Builds save it by default (finetune, export, a sweep's best trial);
PHI3E2E_PREPACKED=0 when a run is built leaves it out. chat, eval and serve use it when it is there.

The layout depends on the CPU's instruction set and on onnxruntime's version, so the saved form is a cache for
this CPU and version: `.prepacked/<key>/` inside the model folder, used by GenaiEngine through a config overlay
(the decoder's file name), never shipped (`push` leaves dot-folders out, `.amlignore` keeps it out of Azure ML
uploads). A stale or missing cache only means the usual load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Optional

from phi3e2e.machine import cpu_info
from phi3e2e.storage import exclusive_lock, staged_dir

CACHE = ".prepacked"
MODEL_FILE = "model.onnx"
SWITCH = "PHI3E2E_PREPACKED"  # =0: builds leave them out (see above for the trade)


def wanted() -> bool:
    """Whether the runs built now save this CPU's prepacked weights: yes, unless the user said PHI3E2E_PREPACKED=0."""
    return os.environ.get(SWITCH, "1").strip() != "0"


def decoder_file(settings: dict) -> Optional[str]:
    return settings.get("model", {}).get("decoder", {}).get("filename")


def cache_key(model_dir: Path, settings: dict) -> Optional[str]:
    """What the saved layout depends on: onnxruntime's version, this CPU, and the model's own files (size and
    modification time: rebuilt or replaced files make a new key). None when the model has no decoder file."""
    from importlib.metadata import version  # not `import onnxruntime`: loading it would cost a start ~0.2 s

    name = decoder_file(settings)
    if not name or not (model_dir / name).is_file():
        return None
    files = sorted(p for p in model_dir.iterdir() if p.is_file() and p.name.startswith(Path(name).name))
    cpu_model, cpu_flags = cpu_info()  # the instruction sets onnxruntime packs for
    parts = {"onnxruntime": version("onnxruntime"), "cpu": [cpu_model, sorted(cpu_flags)], "decoder": name,
             "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def saved_model(model_dir: Path, settings: dict) -> Optional[Path]:
    """The saved prepacked model for this CPU, relative to `model_dir` (as genai_config names files), if there."""
    key = cache_key(model_dir, settings)
    if key and (model_dir / CACHE / key / MODEL_FILE).is_file():
        return Path(CACHE) / key / MODEL_FILE
    return None


def save_prepacked(model_dir: Path, threads: Optional[int] = None) -> Optional[Path]:
    """Make this CPU's prepacked model (once; older ones removed). Returns it relative to `model_dir`, or None
    when the folder is not writable or the disk is full: a cache, never a reason to fail a build."""
    try:  # read here, not through engines/genai.py (which imports this module)
        settings = json.loads((model_dir / "genai_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # no model to save for; loading it will say what is wrong
    key = cache_key(model_dir, settings) if isinstance(settings, dict) else None
    if key is None:
        return None
    cache = model_dir / CACHE
    try:
        cache.mkdir(exist_ok=True)
        with exclusive_lock(cache / ".lock"):  # a second process waits, then finds the first's cache
            if (cache / key / MODEL_FILE).is_file():
                return Path(CACHE) / key / MODEL_FILE
            for old in cache.iterdir():  # other CPUs' or older builds' layouts, and what a kill left half made
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
            with staged_dir(cache / key) as staging:
                _optimize(model_dir / decoder_file(settings), staging / MODEL_FILE, threads)
            _keep_out_of_uploads(model_dir)
    except OSError:
        return None
    return saved_model(model_dir, settings)


def _keep_out_of_uploads(model_dir: Path) -> None:
    """azure-ai-ml leaves out what `.amlignore` names when it uploads a model folder (`--register`, `deploy`):
    this CPU's layout is no use on Azure's. (`push` already leaves every dot-folder out.)"""
    ignore = model_dir / ".amlignore"
    lines = ignore.read_text().splitlines() if ignore.is_file() else []
    if f"{CACHE}/" not in lines:
        ignore.write_text("\n".join([*lines, f"{CACHE}/"]) + "\n")


def _optimize(source: Path, target: Path, threads: Optional[int]) -> None:
    """An onnxruntime session over `source` that saves its optimized graph, repacked weights included."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or 1
    options.log_severity_level = 3  # its note that the saved graph is for this hardware is why it is a cache
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                     target.name + ".data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    if not target.with_name(target.name + ".data").is_file():
        raise OSError(f"{target}: onnxruntime saved no external data")
