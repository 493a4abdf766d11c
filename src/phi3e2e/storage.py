"""Files and folders that appear whole or not at all.

A reader (another command, a crash, a second process) sees the old file or the new one, never
half of one: a file is written next to itself and renamed over its name; a folder is built under
a staging name and renamed to its final name as the last step.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Iterator, Optional, Union


def atomic_write(path: Path, data: Union[str, bytes], encoding: str = "utf-8") -> None:
    """Write `data` to `path` through `path.partial` and a rename; a failed write leaves no `.partial`."""
    partial = path.with_name(path.name + ".partial")
    try:
        if isinstance(data, bytes):
            partial.write_bytes(data)
        else:
            partial.write_text(data, encoding=encoding)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def staging_name(final: Path) -> Path:
    """Where `final` is built: a hidden sibling, `.NAME.partial`."""
    return final.with_name(f".{final.name}.partial")


@contextlib.contextmanager
def staged_dir(final: Path, staging: Optional[Path] = None, replace: bool = False) -> Iterator[Path]:
    """A fresh, empty staging folder that becomes `final` when the block ends without an error.

    On an error (Ctrl-C included) the staging folder is removed and the error goes on; `final`
    is untouched. `replace`: an existing `final` is swapped out for the new one; otherwise the
    caller has made sure it does not exist.
    """
    staging = staging or staging_name(final)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish(staging, final, replace=replace)


def publish(staging: Path, final: Path, replace: bool = False) -> Path:
    """Rename a finished staging folder to its final name (the last step of every build)."""
    if replace and final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(final)
    return final


@contextlib.contextmanager
def exclusive_lock(lock_file: Path) -> Iterator[None]:
    """One process at a time inside the block (an flock: released if the holder dies); others wait."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def disk_bytes(path: Path) -> int:
    """A file's size, or the sum of every file's under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def shipped_bytes(folder: Path) -> int:
    """What a model folder ships: its files, not its dot-entries (this machine's caches such as .prepacked/, which
    push and Azure ML uploads leave out)."""
    return sum(entry.stat().st_size for entry in folder.rglob("*")
               if entry.is_file() and not any(part.startswith(".") for part in entry.relative_to(folder).parts))
