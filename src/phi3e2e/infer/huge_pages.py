"""Back a freshly loaded model's weights with 2 MiB pages (Linux; best effort, never an error).

CPU decoding reads every weight once per token. onnxruntime repacks the int4 weights into
anonymous memory of 4 KiB pages, so each token walks ~70,000 page-table entries for a 300 MB
model; on 2 MiB pages that is ~150. Measured on the Phi-3-mini-shaped benchmark model: decode
about 8% faster (median of 10 paired runs), for 0.1-0.7 s more load time per 300 MB
(docs/performance.md).

Only memory the model load itself mapped is touched: the caller snapshots the process's
mappings before loading (`anonymous_regions()`) and hands both snapshots to `collapse_new`.
`madvise(MADV_COLLAPSE)` (Linux 6.1+) makes the huge pages at once; on older kernels, with
transparent huge pages set to `never`, or on other systems nothing happens.
"""

from __future__ import annotations

import ctypes
import errno
import sys
import threading
from pathlib import Path

MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
HUGE_PAGE = 2 << 20
SMAPS = Path("/proc/self/smaps")

Region = tuple[int, int]  # [start, end) addresses


def anonymous_regions() -> dict[Region, int]:
    """The process's private, writable, anonymous mappings (where repacked weights live), with
    the bytes of each that are in memory."""
    if not sys.platform.startswith("linux"):
        return {}
    try:
        lines = SMAPS.read_text().splitlines()
    except OSError:
        return {}
    found, current = {}, None
    for line in lines:
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            # A sixth field names a file or [heap]/[stack]: not repacked weights.
            anonymous = len(fields) == 5 and fields[1] == "rw-p"
            current = tuple(int(address, 16) for address in fields[0].split("-")) if anonymous else None
        elif current and fields[0] == "Rss:":
            found[current] = int(fields[1]) * 1024
    return found


def new_huge_spans(before: dict[Region, int], after: dict[Region, int]) -> list[Region]:
    """The 2 MiB-aligned parts of the mappings that appeared between two snapshots and are
    filled (weights), not reserved and mostly empty (thread stacks, malloc arenas): collapsing
    those would fill them."""
    spans = []
    for (start, end), resident in sorted(after.items()):
        if (start, end) in before or resident < 0.9 * (end - start):
            continue
        start = (start + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)
        end &= ~(HUGE_PAGE - 1)
        if end > start:
            spans.append((start, end))
    return spans


def collapse_new(before: dict[Region, int], after: dict[Region, int]) -> int:
    """Ask for huge pages on what was mapped between the snapshots; returns the bytes collapsed."""
    spans = new_huge_spans(before, after)
    if not spans:
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    collapsed = 0
    for start, end in spans:
        # MADV_HUGEPAGE keeps the range eligible when transparent huge pages are in `madvise` mode.
        madvise(start, end - start, MADV_HUGEPAGE)
        for _attempt in range(3):  # EAGAIN: a page was briefly busy or no huge page was free yet
            if madvise(start, end - start, MADV_COLLAPSE) == 0:
                collapsed += end - start
                break
            if ctypes.get_errno() != errno.EAGAIN:
                break
    return collapsed


def collapse_new_in_background(before: dict[Region, int], after: dict[Region, int]) -> threading.Thread:
    """`collapse_new` on a daemon thread: the kernel copies the weights onto huge pages (seconds for a
    2 GB model) while the first answer already runs on 4 KiB pages. madvise releases the GIL, and a
    process that exits first simply leaves it undone."""
    worker = threading.Thread(target=collapse_new, args=(before, after), name="huge-pages", daemon=True)
    worker.start()
    return worker
