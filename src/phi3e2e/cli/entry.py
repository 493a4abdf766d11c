"""The `phi3e2e` program: commands that load a model for answering start over once with glibc's malloc
on huge pages (infer/huge_pages.py: the int4 weights land on 2 MiB pages as they load, instead of being
copied there after the first answer). Decided before the CLI's imports, so the restart costs ~10 ms."""

from __future__ import annotations

import os
import sys

ANSWERING_COMMANDS = {"chat", "serve"}


def main() -> None:
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    if command in ANSWERING_COMMANDS and sys.executable:
        from phi3e2e.infer.huge_pages import huge_malloc_env

        environ = huge_malloc_env(os.environ)
        if environ is not None:
            os.execve(sys.executable, [sys.executable, "-P", "-m", "phi3e2e", *sys.argv[1:]], environ)
    from phi3e2e.cli.app import main as run

    run()
