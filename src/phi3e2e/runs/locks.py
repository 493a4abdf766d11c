"""One writer per run: whoever builds, resumes, dry-runs or removes a run holds its lock.

gen-model/.locks/<run>.lock is an flock the kernel drops when the holder dies, so a killed run's
lock is simply taken over; the file names the holder's PID for the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
from datetime import datetime
from pathlib import Path
from typing import Optional

from phi3e2e.errors import UserError
from phi3e2e.runs.layout import failed_dir, partial_dir


def new_run_name(gen_model: Path, algo: str) -> str:
    """A name from the clock (`20261204-101500-lora`) that no other run has, even one another process starts
    in the same second (then `20261204-101500-2-lora`): the name's lock file is created exclusively, so two
    processes never both get it (run_lock goes on using that file)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    locks = _lock_file(gen_model, "x").parent
    locks.mkdir(parents=True, exist_ok=True)
    for number in itertools.count(1):
        name = f"{stamp}-{algo}" if number == 1 else f"{stamp}-{number}-{algo}"
        try:
            os.close(os.open(_lock_file(gen_model, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        if not any(path.exists() for path in (gen_model / name, partial_dir(gen_model, name), failed_dir(gen_model, name))):
            return name


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


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (the owner of a staging or removal folder named after it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
