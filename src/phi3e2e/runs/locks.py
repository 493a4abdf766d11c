"""One writer per run: whoever builds, resumes, dry-runs or removes a run holds its lock.

gen-model/.locks/<run>.lock is an flock the kernel drops when the holder dies, so a killed run's
lock is simply taken over; the file names the holder's PID for the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Optional

from phi3e2e.errors import UserError


def _lock_file(gen_model: Path, name: str) -> Path:
    return gen_model / ".locks" / f"{name}.lock"


@contextlib.contextmanager
def run_lock(gen_model: Path, name: str):
    """Hold run `name` for this process, or fail at once naming the process that holds it."""
    lock_file = _lock_file(gen_model, name)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise UserError(
                f"run {name!r} is in use by process {holder}; wait for it to end or choose another --run-name"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)  # the kernel drops the lock itself when the file closes, or the process dies


def in_progress(gen_model: Path, name: str) -> Optional[int]:
    """The PID of the process building run `name`, or None when no one holds it."""
    lock_file = _lock_file(gen_model, name)
    try:
        f = open(lock_file)
    except FileNotFoundError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = f.read().strip()
            return int(text) if text.isdigit() else -1
        return None
