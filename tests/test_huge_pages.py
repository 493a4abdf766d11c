"""Weights on 2 MiB pages: only memory the model load filled is touched, and the kernel really does it.

Real mappings of this process and real madvise calls; nothing is replaced.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import sys
from pathlib import Path

import pytest

from phi3e2e.infer.huge_pages import (
    HUGE_PAGE,
    MADV_COLLAPSE,
    MADV_HUGEPAGE,
    anonymous_regions,
    collapse_new,
    collapse_new_in_background,
    new_huge_spans,
)

MB = 1 << 20


def test_only_new_filled_mappings_are_chosen_and_trimmed_to_whole_huge_pages():
    old = (0x1000_0000, 0x1100_0000)
    weights = (0x2000_1000, 0x2080_0000)  # starts mid-page: the first whole huge page is 0x2020_0000
    stack = (0x3000_0000, 0x3080_0000)  # reserved, nearly empty: collapsing it would fill it
    small = (0x4000_0000, 0x4010_0000)  # under one huge page
    before = {old: old[1] - old[0]}
    after = {old: old[1] - old[0], weights: weights[1] - weights[0], stack: 64 * 1024, small: small[1] - small[0]}
    assert new_huge_spans(before, after) == [(0x2020_0000, 0x2080_0000)]
    assert all((end - start) % HUGE_PAGE == 0 for start, end in new_huge_spans(before, after))


def _thp_mode() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "absent"
    return text[text.index("[") + 1 : text.index("]")]


def _anon_huge_bytes(address: int) -> int:
    """AnonHugePages of the mapping that holds `address`, from /proc/self/smaps."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:
            start, end = (int(a, 16) for a in fields[0].split("-"))
            inside = start <= address < end
        elif inside and fields[0] == "AnonHugePages:":
            return int(fields[1]) * 1024
    return 0


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def _collapse_refused() -> str:
    """Why this machine can't collapse memory at all ("" if it can), asked of the kernel directly,
    not through the code under test: kernels before 6.1, THP off, containers that filter madvise."""
    if not sys.platform.startswith("linux") or _thp_mode() in ("never", "absent"):
        return "transparent huge pages are off or not Linux"
    libc = _libc()
    base = libc.mmap(None, 8 * MB, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    try:
        ctypes.memset(base, 1, 8 * MB)
        span = (base + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)
        libc.madvise(span, HUGE_PAGE, MADV_HUGEPAGE)
        for _ in range(3):
            if libc.madvise(span, HUGE_PAGE, MADV_COLLAPSE) == 0:
                return ""
        return f"madvise(MADV_COLLAPSE) refused here: {os.strerror(ctypes.get_errno())}"
    finally:
        libc.munmap(base, 8 * MB)


def test_a_filled_new_mapping_ends_up_on_huge_pages_and_an_empty_one_stays_empty():
    with _weights_and_a_stack() as (before, filled, empty):
        collapsed = collapse_new(before, anonymous_regions())
        # At least the filled window's whole huge pages (more when another thread of this process, e.g. a test
        # runner's, filled memory meanwhile); that the empty window stayed empty is checked below.
        assert collapsed >= 14 * MB
        _check_only_the_filled_window_collapsed(filled, empty)


def test_the_background_collapse_does_the_same_beside_the_caller():
    """The engine's way: the copy runs on its own thread while the first answer starts."""
    with _weights_and_a_stack() as (before, filled, empty):
        worker = collapse_new_in_background(before, anonymous_regions())
        worker.join(timeout=60)
        assert not worker.is_alive() and worker.daemon  # a daemon: an exiting process never waits for it
        _check_only_the_filled_window_collapsed(filled, empty)


@contextlib.contextmanager
def _weights_and_a_stack():
    """Two new 16 MB windows: one filled (like weights repacked at load time), one empty (like a thread stack)."""
    refused = _collapse_refused()
    if refused:
        pytest.skip(refused)
    libc = _libc()
    size = 40 * MB
    before = anonymous_regions()
    # One inaccessible (PROT_NONE) reservation with two writable windows in it: its other parts keep the
    # kernel from merging the windows with each other or with this process's other mappings.
    base = libc.mmap(None, size, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert base not in (None, ctypes.c_void_p(-1).value)
    filled, empty = base + 2 * MB, base + 20 * MB
    try:
        for window in (filled, empty):
            assert libc.mprotect(window, 16 * MB, mmap.PROT_READ | mmap.PROT_WRITE) == 0
        ctypes.memset(filled, 1, 16 * MB)
        yield before, filled, empty
    finally:
        libc.munmap(base, size)


def _check_only_the_filled_window_collapsed(filled: int, empty: int) -> None:
    assert _anon_huge_bytes(filled) >= 14 * MB
    assert _anon_huge_bytes(empty) == 0
    assert ctypes.string_at(filled, 4) == b"\x01" * 4 and ctypes.string_at(filled + 16 * MB - 4, 4) == b"\x01" * 4


def test_chat_moves_its_weights_after_the_first_answer_not_before(finished_run, tmp_path):
    """The copy onto huge pages would slow a first answer beside it: it starts once that answer is out. Only
    repacked weights move (anonymous memory); this CPU's saved prepacked weights are mapped from their file,
    which the kernel does not collapse, so a load over them skips the copy."""
    import shutil

    from phi3e2e.infer.engines.genai import GenaiEngine
    from phi3e2e.infer.generation import GenerationOptions
    from phi3e2e.infer.prepacked import CACHE

    _, run_dir = finished_run
    repacked = tmp_path / "onnx-int4"  # the same model without its saved prepacked weights
    shutil.copytree(run_dir / "onnx-int4", repacked, ignore=shutil.ignore_patterns(CACHE))
    engine = GenaiEngine(repacked, "cpu")
    assert engine.prepacked is None
    assert engine.huge_pages_done is None  # nothing before the first answer
    options = GenerationOptions(max_new_tokens=2, min_new_tokens=2)
    assert len(list(engine.stream_tokens(engine.encode("Hi"), options))) == 2
    worker = engine.huge_pages_done
    assert worker is not None and worker.daemon
    worker.join(timeout=60)
    list(engine.stream_tokens(engine.encode("Hi"), options))
    assert engine.huge_pages_done is worker  # once per load

    mapped = GenaiEngine(run_dir / "onnx-int4", "cpu")
    assert mapped.prepacked is not None
    assert len(list(mapped.stream_tokens(mapped.encode("Hi"), options))) == 2
    assert mapped.huge_pages_done is None
