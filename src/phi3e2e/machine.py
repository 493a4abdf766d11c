"""What this machine has (read by serve's memory budget, eval's choice of forms, the saved prepacked weights' key
and `phi3e2e doctor`)."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Optional

MEMINFO = Path("/proc/meminfo")


def meminfo(path: Path = MEMINFO) -> dict[str, int]:
    """/proc/meminfo in bytes ({} where there is none)."""
    values = {}
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                values[key.strip()] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return values


def available_memory_bytes(path: Path = MEMINFO) -> Optional[int]:
    """MemAvailable: what can be allocated without swapping; None where /proc/meminfo says nothing."""
    return meminfo(path).get("MemAvailable")


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    """(model name, flags) of the first CPU listed; the platform's name and no flags where there is no /proc/cpuinfo."""
    model, flags = "", set()
    try:
        text = cpuinfo.read_text()
    except OSError:
        return platform.processor() or platform.machine(), flags
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and not model:
            model = value
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model or platform.machine(), flags
