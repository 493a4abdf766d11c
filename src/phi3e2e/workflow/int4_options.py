"""The int4 build options phi3e2e ships for CPUs, and where they come from.

The defaults were chosen by measurement (benchmarks/int4_options.py, docs/performance.md):
the fastest and smallest ModelBuilder options whose held-out loss stays within 2% of the
merged fp32 model. They apply to CPU builds only; CUDA builds (QLoRA, Azure ML) keep
ModelBuilder's own defaults, which its CUDA kernels are tuned for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

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


def int4_build_options(requested: dict, model_dir: Optional[Path], for_cpu: bool) -> dict:
    """The one place that decides a ModelBuilder int4 build's options (fine-tune, export, eval's base).

    What the user asked for first; a CPU build fills the unset ones with phi3e2e's measured
    defaults, a CUDA build leaves them to ModelBuilder. `model_dir` (None: not on this machine,
    e.g. a Hub model for Azure ML) is checked against the block size.
    """
    requested = {key: value for key, value in requested.items() if key.startswith("int4_")}
    if model_dir is not None:
        check_block_size(requested.get("int4_block_size"), model_dir)
    if not for_cpu or model_dir is None:
        return requested
    return cpu_int4_options(requested, model_dir)


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
