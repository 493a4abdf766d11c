"""How many compute threads CPU decoding gets: one per physical core.

Hyper-threads share a core's int4 units, so more threads than physical cores only add contention.
"""

from __future__ import annotations

import os
from pathlib import Path


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
