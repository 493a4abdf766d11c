"""How phi3e2e builds and configures the int4 model it ships for CPUs.

The defaults were chosen by measurement (benchmarks/int4_options.py, docs/performance.md):
the fastest and smallest ModelBuilder options whose held-out loss stays within 2% of the
merged fp32 model. They apply to CPU builds only; CUDA builds (QLoRA, Azure ML) keep
ModelBuilder's own defaults, which its CUDA kernels are tuned for.

ModelBuilder writes a genai_config.json that leaves onnxruntime's thread count unset, and
onnxruntime-genai then decodes on ONE compute thread; `use_all_cores` writes the machine's
physical core count into the decoder's session options instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from phi3e2e.engines.genai import GENAI_CONFIG
from phi3e2e.errors import UserError

# Block sizes phi3e2e picks from; larger blocks mean fewer scales (smaller, faster) and coarser
# quantization. 256 was measured too (benchmarks/int4_options.py): with the int4 embedding it
# lost up to 3.11% held-out loss on the wide tiny models, over the 2% rule.
BLOCK_SIZES = (32, 64, 128)
# The measured choice (docs/performance.md): block 128 where the model is wide enough, int8
# activations in the int4 MatMuls (accuracy level 4), the input embedding quantized too, and a
# zero point per block (asymmetric): the symmetric build lost 2.34% on one of four wide tiny
# fine-tunes, over the 2% rule, while onnxruntime folds zero points into the block sums it keeps
# anyway, so decode reads the same bytes and runs as fast.
CPU_INT4_DEFAULTS: dict = {
    "int4_block_size": 128,
    "int4_accuracy_level": 4,
    "int4_op_types_to_quantize": ["MatMul", "Gather"],
    "int4_is_symmetric": False,
}


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share a core's int4 units)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = set()
    try:
        physical_id = core_id = None
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "physical id":
                physical_id = value
            elif key == "core id":
                core_id = value
            elif not key and core_id is not None:
                cores.add((physical_id, core_id))
                physical_id = core_id = None
    except OSError:
        pass
    return max(1, min(usable, len(cores) or usable))


def hidden_size(model_dir: Path) -> Optional[int]:
    try:
        return int(json.loads((model_dir / "config.json").read_text())["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_block_size(block_size: Optional[int], model_dir: Path) -> None:
    """A block wider than the model's hidden size would span rows: refuse it, naming both."""
    width = hidden_size(model_dir)
    if block_size is not None and width is not None and block_size > width:
        fits = [size for size in BLOCK_SIZES if size <= width]
        hint = f"use {fits[-1]} or smaller" if fits else "use a smaller block size"
        raise UserError(
            f"export.int4_block_size={block_size} is larger than the hidden size {width} of "
            f"{model_dir / 'config.json'}; {hint}"
        )


def cpu_int4_options(requested: dict, model_dir: Path) -> dict:
    """The user's int4 options with phi3e2e's CPU defaults filling the unset ones.

    The default block size is capped at the model's hidden size (64 for the tiny model).
    """
    check_block_size(requested.get("int4_block_size"), model_dir)
    chosen = dict(requested)
    for key, value in CPU_INT4_DEFAULTS.items():
        if chosen.get(key) is None:
            chosen[key] = value
    width = hidden_size(model_dir)
    if requested.get("int4_block_size") is None and width is not None:
        chosen["int4_block_size"] = max([size for size in BLOCK_SIZES if size <= width] or [16])
    return chosen


def use_all_cores(model_dir: Path, threads: Optional[int] = None) -> int:
    """Write `threads` (default: physical cores) as the decoder's intra-op thread count."""
    threads = threads or physical_cores()
    config_file = model_dir / GENAI_CONFIG
    config = json.loads(config_file.read_text())
    decoder = config["model"]["decoder"]
    decoder.setdefault("session_options", {})["intra_op_num_threads"] = threads
    # Write next to the file and rename, so an interrupted write never leaves half a config.
    partial = config_file.with_name(config_file.name + ".partial")
    partial.write_text(json.dumps(config, indent=4) + "\n")
    partial.replace(config_file)
    return threads

