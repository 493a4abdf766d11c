"""What this machine has free now (read by serve's memory budget and eval's choice of forms)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def available_memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> Optional[int]:
    """MemAvailable: what can be allocated without swapping; None where /proc/meminfo says nothing."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
