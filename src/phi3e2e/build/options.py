"""What an int4 build is: for cpu or cuda (decided here, for every build), and its options.

The defaults were chosen by measurement (benchmarks/int4_options.py, docs/performance.md):
the fastest and smallest ModelBuilder options whose held-out loss stays within 2% of the
merged fp32 model. They apply to CPU builds only; CUDA builds (QLoRA, Azure ML) keep
ModelBuilder's own defaults, which its CUDA kernels are tuned for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from phi3e2e.errors import UserError
from phi3e2e.runs import RunRecord
from phi3e2e.workflow.settings import ExportSettings

Device = Literal["cpu", "cuda"]

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


def build_device(trains_on_cuda: bool) -> Device:
    """A new run's int4 build: for CUDA where it trains on CUDA (QLoRA, Azure ML), else for CPUs."""
    return "cuda" if trains_on_cuda else "cpu"


def recorded_build_device(record: RunRecord) -> Device:
    """A finished run's int4 build: only a CPU build records `cpu_int4` (its options and threads)."""
    return "cpu" if record.cpu_int4 is not None else "cuda"


def run_export_settings(export: ExportSettings, model_dir: Optional[Path], trains_on_cuda: bool) -> ExportSettings:
    """A new run's export settings with the int4 options its build will use."""
    chosen = int4_build_options(export.model_dump(), model_dir, for_cpu=build_device(trains_on_cuda) == "cpu")
    return ExportSettings(precision=export.precision, **chosen)


def recorded_int4_options(record: RunRecord) -> dict:
    """The execution provider and int4 options a finished run's ModelBuilder pass used (the base is built so)."""
    export = record.settings.export.model_dump()
    options = {"execution_provider": recorded_build_device(record)}
    return options | {key: value for key, value in export.items() if key.startswith("int4_") and value is not None}


def tune_for_cpu(onnx_dir: Path, export: ExportSettings, prepack: bool = True) -> dict:
    """Decode on every physical core (written into genai_config.json), and save this CPU's prepacked weights unless
    the user left them out (PHI3E2E_PREPACKED=0); what was chosen, for run.json."""
    from phi3e2e.infer import prepacked as saved
    from phi3e2e.infer.engines.genai import use_all_cores

    threads = use_all_cores(onnx_dir)
    options = export.model_dump(exclude={"precision"})
    prepacked = saved.save_prepacked(onnx_dir, threads) if prepack and saved.wanted() else None
    return {"build_options": options, "intra_op_num_threads": threads, "chosen_by": "docs/performance.md",
            "prepacked_for_this_cpu": prepacked is not None}
