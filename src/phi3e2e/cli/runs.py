"""`phi3e2e runs`: the project's fine-tunes as a table, one in full, two compared, one removed."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Annotated, Optional

import typer

from phi3e2e.cli.options import JsonOption, RequiredRunArgument, current_project, new_app, say
from phi3e2e.errors import UserError

app = new_app(
    "The fine-tunes in gen-model/: list, show, compare, remove.\n\n"
    "Examples:\n\n\b\n"
    "  phi3e2e runs\n"
    "  phi3e2e runs --json\n"
    "  phi3e2e runs --sweep r-lr\n"
    "  phi3e2e runs show 20250101-120000-lora\n"
    "  phi3e2e runs compare 20250101-120000-lora 20250102-090000-lora\n"
    "  phi3e2e runs rm 20250101-120000-lora --yes",
)


@app.callback(invoke_without_command=True)
def runs(
    ctx: typer.Context,
    as_json: JsonOption = False,
    show_all: Annotated[
        bool, typer.Option("--all", "-a", help="Dry-runs too (--dry-run renders, trains nothing).")
    ] = False,
    sweep: Annotated[
        Optional[str], typer.Option("--sweep", metavar="NAME", help="A sweep's trials, ranked (and NAME.sweep.png).")
    ] = None,
) -> None:
    """A table of runs, newest first: status, algo, target, base model, dataset, steps, losses, duration, age.

    Dry-runs are left out unless --all (with --json too). --sweep NAME: that sweep's trials instead,
    best first by their int4 model's held-out loss."""
    if ctx.invoked_subcommand is not None:
        return
    if sweep is not None:
        _sweep_table(sweep, as_json)
        return
    from phi3e2e.runs.overview import list_runs

    project = current_project()
    every = list_runs(project)
    rows = every if show_all else [row for row in every if row.status != "dry-run"]
    hidden = len(every) - len(rows)
    if as_json:
        typer.echo(json.dumps([row.as_json() for row in rows], indent=2))
        return
    if not rows:
        dry_runs = f" ({hidden} dry-run{'s' * (hidden > 1)}: `phi3e2e runs --all`)" if hidden else ""
        say(f"No runs in {project.relative(project.gen_model)}/ yet{dry_runs}: `phi3e2e finetune` makes one.")
        return
    from rich.table import Table

    now = datetime.now(timezone.utc)
    columns = ["run", "status", "algo", "target", "base model", "dataset", "steps", "train loss",
               "held-out loss", "ships", "time", "age"]  # fmt: skip
    cells = [_cells(row, now) for row in rows]
    console = _console()
    # Never a wrapped or cut cell: on a narrow terminal the least needed columns go instead
    # (`--json` and `runs show` have everything).
    for optional in ("target", "dataset", "ships", "base model", "age"):
        width = sum(max(len(text) for text in [name, *(line[i] for line in cells)]) + 1 for i, name in enumerate(columns))
        if width <= console.width:
            break
        index = columns.index(optional)
        columns.pop(index)
        cells = [line[:index] + line[index + 1 :] for line in cells]
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 1, 0, 0))
    for column in columns:
        table.add_column(column, justify="right" if column in ("steps", "time", "age") else "left", no_wrap=True)
    for line in cells:
        table.add_row(*line)
    console.print(table)
    for row in rows:
        if row.problem:  # whole, below the table: the reason is the part worth reading
            say(f"{row.name}: {row.problem}")
    hint = f"; {hidden} dry-run{'s' * (hidden > 1)} not shown (--all)" if hidden else ""
    say("held-out loss: base int4 -> fine-tuned int4 (`phi3e2e eval RUN`); ships: the int4 form and its bytes "
        "(an adapter answers on a shared base); time: how long it ran; "
        f"details: `phi3e2e runs show RUN`{hint}")


@app.command()
def show(run: RequiredRunArgument, as_json: JsonOption = False) -> None:
    """One run in full: settings, versions, files and sizes, eval summary.

    Examples:

    \b
      phi3e2e runs show 20250101-120000-lora
      phi3e2e runs show 20250101-120000-lora --json
    """
    from phi3e2e.runs.overview import flat_settings, run_details

    project = current_project()
    details = run_details(project, run)
    record = details.record
    if as_json:
        data = {"run": details.row.as_json(), "record": record.model_dump(mode="json"),
                "files": dict(details.files), "eval": details.evaluation}  # fmt: skip
        typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    from rich.table import Table

    row = details.row
    console = _console()
    say(f"{row.name}  ({_status(row.status)}, {row.folder}/)")
    if record.reason:
        say(f"  reason: {record.reason}")
    summary = Table(box=None, show_header=False, pad_edge=False)
    summary.add_column(style="bold")
    summary.add_column()
    for label, value in (
        ("base model", record.base_model),
        ("dataset", record.dataset),
        ("algo / target", f"{record.algo} / {record.target} ({record.profile} profile)"),
        ("steps", "" if row.steps is None else str(row.steps)),
        ("training loss", _arrow(row.train_loss_first, row.train_loss_last)),
        ("duration", _duration(row.duration_s)),
        ("finished", record.finished_at or ""),
        ("ships", _ships(row) + (f" (shared: {row.shared_base}/)" if row.shared_base else "")),
    ):
        summary.add_row(label, value)
    console.print(summary)
    say("\nSettings:")
    settings = Table(box=None, show_header=False, pad_edge=False)
    for key, value in flat_settings(record).items():
        if "." in key:
            settings.add_row("  " + key, json.dumps(value))
    console.print(settings)
    say("\nVersions: " + ", ".join(f"{name} {version}" for name, version in record.versions.items()))
    say("\nFiles:")
    files = Table(box=None, show_header=False, pad_edge=False)
    files.add_column()
    files.add_column(justify="right")
    for name, size in details.files:
        files.add_row("  " + name, _bytes(size))
    console.print(files)
    say("\nEval:")
    evaluation = details.evaluation
    if not evaluation:
        say(f"  not evaluated yet: phi3e2e eval {row.name}")
        return
    say(f"  {evaluation.get('eval_rows')} held-out rows, evaluated {evaluation.get('evaluated_at')}")
    for form, numbers in (evaluation.get("losses") or {}).items():
        base, tuned = numbers.get("base", {}).get("loss"), numbers.get("fine_tuned", {}).get("loss")
        say(f"  {form:<8} held-out loss {_arrow(base, tuned)}  ({numbers.get('change', 0):+.3f})")


@app.command()
def compare(first: RequiredRunArgument, second: RequiredRunArgument) -> None:
    """Two runs side by side: the settings that differ, and their losses.

    Examples:

    \b
      phi3e2e runs compare 20250101-120000-lora 20250102-090000-lora
    """
    from rich.table import Table

    from phi3e2e.runs.overview import NOT_USED, compare_runs

    comparison = compare_runs(current_project(), first, second)
    a, b = comparison.names
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("", a, b):
        table.add_column(column)
    if comparison.differing:
        for key, value_a, value_b in comparison.differing:
            table.add_row(key, *(value if value == NOT_USED else json.dumps(value) for value in (value_a, value_b)))
    else:
        table.add_row("settings", "the same", "the same")
    table.add_section()
    for label, value_a, value_b in comparison.measures:
        show = _duration if label.startswith("duration") else _number
        table.add_row(label, show(value_a) or "-", show(value_b) or "-")
    _console().print(table)


@app.command()
def rm(
    run: RequiredRunArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask (for scripts).")] = False,
) -> None:
    """Delete a run folder (asks first; a run still being built is refused).

    Examples:

    \b
      phi3e2e runs rm 20250101-120000-lora
      phi3e2e runs rm 20250101-120000-lora --yes
    """
    from phi3e2e.runs.overview import check_not_running, find_run_folder, remove_run

    project = current_project()
    folder = find_run_folder(project, run)
    check_not_running(project, folder)  # before asking: a yes must not meet a refusal
    if not yes and not _confirm(f"Delete {project.relative(folder)}/ and every model in it?"):
        say("Nothing deleted.")
        raise typer.Exit(1)
    removed = remove_run(project, run)
    say(f"Deleted {project.relative(folder)}/")
    if removed.base_kept:
        users = ", ".join(removed.base_users[:5]) + (" ..." if len(removed.base_users) > 5 else "")
        say(f"Kept its int4 base {project.relative(removed.base_kept)}/: {len(removed.base_users)} other run"
            f"{'s' * (len(removed.base_users) > 1)} answer on it ({users})")
    elif removed.base_removed:
        say(f"Deleted its int4 base {project.relative(removed.base_removed)}/ (no other run answers on it)")


def _sweep_table(name: str, as_json: bool) -> None:
    from phi3e2e.sweep.ranking import sweep_view

    project = current_project()
    view = sweep_view(project, name)
    record = view.record
    if as_json:
        data = {"sweep": record.name, "status": record.status, "search": record.space.search,
                "objective": record.objective, "plot": project.relative(view.plot) if view.plot else None,
                "trials": [row.as_json() for row in view.ranked]}  # fmt: skip
        typer.echo(json.dumps(data, indent=2))
        return
    from rich.table import Table

    keys = [d.key for d in record.space.dimensions]
    say(f"Sweep {record.name} ({record.status}, {record.space.search} search, {len(record.trials)} of "
        f"{record.space.trials} trials): ranked by the int4 model's held-out loss, lower is better")  # fmt: skip
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2, 0, 0))
    for column in ("rank", "run", "status", *keys, "int4 held-out loss", ""):
        table.add_column(column, no_wrap=True, justify="right" if column == "rank" else "left")
    for row in view.ranked:
        values = [f"{v:g}" if isinstance(v := row.trial.values.get(key), float) else str(v) for key in keys]
        note = "<- best" if row.best else (row.trial.reason or "")
        table.add_row("" if row.rank is None else str(row.rank), row.trial.run, _status(row.trial.status), *values,
                      _number(row.objective, 4), note)  # fmt: skip
    _console().print(table)
    if view.plot:
        say(f"Plot:    {project.relative(view.plot)} (held-out loss against each dimension)")
    best = next((row for row in view.ranked if row.best), None)
    if best:
        model = project.relative(project.gen_model / best.trial.run)
        say(f'Next:    phi3e2e chat --model {model} --prompt "..."  |  phi3e2e runs compare RUN RUN')


def _confirm(question: str) -> bool:
    try:
        return typer.confirm(question, default=False)
    except typer.Abort:  # no answer: input ended (</dev/null, a script) or Ctrl-C
        raise UserError("no answer, nothing deleted: pass --yes to delete without asking (for scripts)") from None


def _cells(row, now: datetime) -> list[str]:
    if row.problem:
        return [row.name, row.status, *[""] * 9, _age(row.when, now)]
    return [
        row.name,
        _status(row.status),
        row.algo or "",
        row.target or "",
        _last_part(row.base_model),
        _last_part(row.dataset),
        "" if row.steps is None else str(row.steps),
        _arrow(row.train_loss_first, row.train_loss_last, digits=2),  # the table: 2 decimals; `show`: 3
        _arrow(row.eval_loss_base, row.eval_loss_fine_tuned, digits=2),
        _ships(row),
        _duration(row.duration_s),
        _age(row.when, now),
    ]


def _ships(row) -> str:
    """The int4 form a run ships and its own bytes: `merged 2.1 GB`, or `adapter 25.2 MB` (+ its shared base)."""
    if not row.ships:
        return ""
    size = "" if row.ships_bytes is None else " " + _bytes(row.ships_bytes)
    return f"{row.ships}{size}" + (" + base" if row.ships == "adapter" else "")


def _console():
    from rich.console import Console

    # Piped output is not wrapped at 80 columns: a script or `grep` reads whole rows.
    # markup off: run names, paths and settings are printed as they are, never read as [style] tags.
    return Console(markup=False) if sys.stdout.isatty() else Console(markup=False, width=240, no_color=True)


def _status(status: str) -> str:
    return {"succeeded": "done"}.get(status, status)


def _last_part(path: Optional[str]) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] if path else ""


def _arrow(first: Optional[float], last: Optional[float], digits: int = 3) -> str:
    if first is None and last is None:
        return ""
    return f"{_number(first, digits)} -> {_number(last, digits)}"


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _age(when: Optional[str], now: datetime) -> str:
    if not when:
        return ""
    try:
        then = datetime.fromisoformat(when)
    except ValueError:
        return ""
    seconds = (now - (then if then.tzinfo else then.replace(tzinfo=timezone.utc))).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return "just now"


def _bytes(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
