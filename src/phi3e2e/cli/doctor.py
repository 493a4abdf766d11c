"""`phi3e2e doctor`: is this machine ready for a run? One line per check, with the fix."""

from __future__ import annotations

import json

import typer

from phi3e2e.cli.options import JsonOption, current_project, say


def doctor(as_json: JsonOption = False) -> None:
    """Check this machine for phi3e2e: stack, CPU, memory, disk, GPU, tokens, Azure, chromium.

    Each line is ok, warn or missing, with the fix. Checks the installed versions against
    setup/requirements.txt, the CPU features onnxruntime's int4 kernels use, physical cores,
    RAM and free disk against what a Phi-3-mini run needs, the GPU and CUDA packages, whether
    a Hugging Face token and an Azure login and workspace are there (present or not: never
    their values), and chromium for the playground's browser test. Local only, no network.

    Exit code 1 when something is missing that every run needs (Python, a pinned package);
    0 otherwise: a warning (no GPU, no token, no Azure, ...) is only what some commands need.

    Examples:

    \b
      phi3e2e doctor
      phi3e2e doctor --json   # every check and package version, for a bug report
    """
    from phi3e2e.doctor import all_ok, run_checks

    checks = run_checks(current_project())
    ok = all_ok(checks)
    if as_json:
        typer.echo(json.dumps({"checks": [check.as_json() for check in checks], "ok": ok}, indent=2))
    else:
        width = max(len(check.name) for check in checks) + 2
        for check in checks:
            fix = f" — fix: {check.fix}" if check.fix and check.status != "ok" else ""
            say(f"{check.status:<8}{check.name:<{width}}{check.detail}{fix}")
        counts = {status: sum(check.status == status for check in checks) for status in ("ok", "warn", "missing")}
        verdict = "ready" if ok else "not ready: install what is missing"
        say(f"{counts['ok']} ok, {counts['warn']} warn, {counts['missing']} missing: {verdict}")
    if not ok:
        raise typer.Exit(1)
