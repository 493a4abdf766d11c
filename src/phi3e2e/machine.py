"""What this machine has (read by serve's memory budget, eval's choice of forms and `phi3e2e doctor`)."""

from __future__ import annotations

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
