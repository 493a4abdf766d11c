"""Decode on every physical core.

ModelBuilder writes a genai_config.json that leaves onnxruntime's thread count unset, and
onnxruntime-genai then decodes on ONE compute thread; `use_all_cores` writes the machine's
physical core count into the decoder's session options instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from phi3e2e.infer.engines.genai import GENAI_CONFIG


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
