"""`phi3e2e push`: one model form of a finished run, with its model card, to a Hugging Face Hub repo in one commit.

Order: everything that needs no network first (the run, the form, the repo id, a token), then the Hub:
who the token belongs to (a read-only token or a namespace that is neither the user nor one of their
organizations stops here), the repo (created when missing, `exist_ok`), the branch, and one
`create_commit` with every file. huggingface_hub asks the Hub which large (LFS) files it already
holds and uploads only the others, so running the same push again after an interruption uploads
only what is missing. Last, run.json records the push (atomically, under the run's lock).

The token is huggingface_hub's own: HF_TOKEN, else what `hf auth login` stored. phi3e2e only asks
whether there is one; it never reads it into a message, a log or a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from phi3e2e import runs
from phi3e2e.errors import UserError
from phi3e2e.project import Project
from phi3e2e.share.card import FORM_DIRS, model_card
from phi3e2e.storage import atomic_write

PREVIEW_DIR = ".push-preview"  # gen-model/RUN/.push-preview/: what --dry-run writes (the card and the file list)
CARD = "README.md"
LOGIN_HINT = "run `hf auth login` with a write token (huggingface.co/settings/tokens), or set HF_TOKEN"
# ORG/NAME as the Hub allows it: letters, digits, '-', '_', '.'; no '--' or '..'; not ending in '.git'.
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"\A{_PART}/{_PART}\Z")
_BRANCH = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._/-]{0,199}\Z")


@dataclass
class PushResult:
    repo_id: str
    form: str
    files: list[tuple[str, int]]  # (path in the repo, bytes), the card included
    url: Optional[str] = None  # the repo's page (None for a dry run)
    commit: Optional[str] = None
    revision: str = "main"
    preview_dir: Optional[Path] = None  # --dry-run: where the card and the file list were written


def check_repo_id(repo_id: str) -> str:
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id or repo_id.endswith(".git"):
        raise UserError(f"--to hf {repo_id!r}: not a Hub repo id; use ORG/NAME (letters, digits, '-', '_', '.'; "
                        "no '--' or '..'), e.g. --to hf my-org/phi3-support")  # fmt: skip
    return repo_id


def check_revision(revision: str) -> str:
    if not _BRANCH.match(revision) or ".." in revision or revision.endswith((".lock", "/")):
        raise UserError(f"--revision {revision!r}: not a branch name; use letters, digits, '.', '_', '-' or '/'")
    return revision


def pushed_files(run_dir: Path, form: str) -> tuple[Path, list[tuple[str, int]]]:
    """The form's folder and its files (path in the repo, bytes), without a README.md of its own (the card
    replaces it: PEFT writes an empty template one) and without hidden files."""
    if form not in FORM_DIRS:
        raise UserError(f"--form {form!r}: one of {', '.join(FORM_DIRS)}")
    form_dir = run_dir / FORM_DIRS[form]
    missing = [pattern for pattern in runs.REQUIRED_FILES[FORM_DIRS[form]] if not any(form_dir.glob(pattern))]
    if not form_dir.is_dir() or missing:
        what = "missing" if not form_dir.is_dir() else f"incomplete (no {', '.join(missing)})"
        raise UserError(f"{run_dir.name}: {FORM_DIRS[form]}/ is {what}; nothing to push as --form {form}")
    files = []
    for path in sorted(form_dir.rglob("*")):
        relative = path.relative_to(form_dir)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts) and str(relative) != CARD:
            files.append((relative.as_posix(), path.stat().st_size))
    return form_dir, files


def push(
    project: Project,
    run: Optional[str],
    repo_id: str,
    form: str = "int4",
    private: bool = False,
    revision: Optional[str] = None,
    dry_run: bool = False,
    say: Callable[[str], None] = print,
) -> PushResult:
    repo_id = check_repo_id(repo_id)
    revision = check_revision(revision) if revision else "main"
    run_dir = runs.find_finished_run(project, run)  # succeeded: what finetune sets once the forms are verified
    form_dir, files = pushed_files(run_dir, form)
    card = model_card(project, run_dir, form, repo_id).encode("utf-8")
    files = [(CARD, len(card)), *files]
    total = sum(size for _, size in files)
    say(f"Run {run_dir.name}, form {form} ({project.relative(form_dir)}/): {len(files)} files, {_size(total)}")
    for name, size in files:
        say(f"  {name:<40} {_size(size):>10}")
    if dry_run:
        preview = _write_preview(run_dir, card, files, repo_id, revision)
        say(f"Dry run: nothing contacted. The card and the file list: {project.relative(preview)}/")
        return PushResult(repo_id, form, files, revision=revision, preview_dir=preview)
    with runs.run_lock(project.gen_model, run_dir.name):  # `runs rm` cannot remove the run mid-upload
        url, commit = _upload(form_dir, files, card, repo_id, revision, private, say)
        record = runs.read_record(run_dir)
        pushed = runs.PushRecord(repo_id=repo_id, revision=revision, commit=commit, form=form, url=url, at=runs.now())
        record.pushes = [*(record.pushes or []), pushed]
        runs.write_record(run_dir, record)
    say(f"Pushed: {url} (commit {commit[:12] if commit else '?'} on {revision})")
    return PushResult(repo_id, form, files, url=url, commit=commit, revision=revision)


def _write_preview(run_dir: Path, card: bytes, files: list[tuple[str, int]], repo_id: str, revision: str) -> Path:
    """The card as it would be uploaded, and the list of the files beside it (the model files themselves are
    not copied: they would double the run's size on disk)."""
    preview = run_dir / PREVIEW_DIR
    preview.mkdir(exist_ok=True)
    atomic_write(preview / CARD, card)
    listing = [f"# phi3e2e push --dry-run: the files of one commit to {repo_id} ({revision})"]
    listing += [f"{size}\t{name}" for name, size in files]
    atomic_write(preview / "files.txt", "\n".join(listing) + "\n")
    return preview


def _upload(form_dir: Path, files, card: bytes, repo_id: str, revision: str, private: bool, say) -> tuple[str, str]:
    """Checks against the Hub, then the one commit; (the repo's URL, the commit's sha)."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    if not get_token():
        raise UserError(f"no Hugging Face token: {LOGIN_HINT}; nothing pushed")
    api = HfApi()
    namespace = repo_id.split("/")[0]
    try:
        _check_rights(api, repo_id, namespace)
        try:
            api.repo_info(repo_id)
            exists = True
        except RepositoryNotFoundError:
            exists = False
        url = str(api.create_repo(repo_id, private=private, exist_ok=True))
        say(f"Repo {repo_id}: " + ("exists" if exists else f"created ({'private' if private else 'public'})"))
        if revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        operations = [CommitOperationAdd(CARD, card)]
        operations += [CommitOperationAdd(name, form_dir / name) for name, _ in files if name != CARD]
        say(f"Uploading {len(operations)} files in one commit (large files the Hub already holds are skipped) ...")
        commit = api.create_commit(
            repo_id, operations, commit_message=f"phi3e2e push: {form_dir.parent.name} ({form_dir.name})",
            revision=revision,
        )  # fmt: skip
    except HfHubHTTPError as e:
        raise UserError(_http_message(e, repo_id, namespace)) from None
    except ValueError as e:  # huggingface_hub: the Hub found the card's metadata invalid, or a malformed answer
        raise UserError(f"{repo_id}: the Hub refused the upload ({_first_line(e)}); nothing pushed") from None
    except Exception as e:
        if _is_connection_error(e):
            raise UserError(f"cannot reach the Hugging Face Hub ({_first_line(e)}); check the network (HF_ENDPOINT), "
                            "then run the same push again: it uploads only what is missing") from None  # fmt: skip
        raise
    return url.rstrip("/"), commit.oid


def _check_rights(api, repo_id: str, namespace: str) -> None:
    """The token can write under `namespace`: it is not read-only, and the namespace is the user or one of
    their organizations. (A fine-grained token's scopes are the Hub's to check: a 403 says so later.)"""
    from huggingface_hub.errors import RepositoryNotFoundError

    me = api.whoami()
    access = (me.get("auth") or {}).get("accessToken") or {}
    if access.get("role") == "read":
        raise UserError(f"your Hugging Face token is read-only: {LOGIN_HINT}; nothing pushed")
    mine = {me.get("name")} | {org.get("name") for org in me.get("orgs") or [] if isinstance(org, dict)}
    if namespace in mine:
        return
    try:
        api.repo_info(repo_id)
    except RepositoryNotFoundError:
        raise UserError(f"{repo_id}: {namespace!r} is neither you ({me.get('name')}) nor one of your organizations; "
                        "push to your own name or an organization you belong to; nothing pushed") from None  # fmt: skip
    raise UserError(f"{repo_id}: the repo exists and belongs to {namespace!r}, which is neither you ({me.get('name')}) "
                    "nor one of your organizations; push to a repo of your own; nothing pushed")  # fmt: skip


def _http_message(error, repo_id: str, namespace: str) -> str:
    status = error.response.status_code if error.response is not None else None
    if status == 401:
        return (f"the Hub rejected the token (401: invalid or expired); {LOGIN_HINT} "
                "(`hf auth login --force` replaces a stored one); nothing pushed")  # fmt: skip
    if status == 403:
        return (f"{repo_id}: the Hub says 403 forbidden: the token may not write to {namespace!r} (a fine-grained "
                "token needs write access to that namespace; an organization needs you as a write member); "
                "nothing pushed")  # fmt: skip
    return (f"{repo_id}: the Hub answered {status or 'an error'} ({_first_line(error)}); run the same push again: "
            "it uploads only what is missing")  # fmt: skip


def _is_connection_error(error: BaseException) -> bool:
    try:
        import httpx2 as httpx
    except ImportError:  # pragma: no cover - huggingface_hub's own HTTP client
        import httpx
    return isinstance(error, httpx.TransportError)


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip() and not line.startswith("-")]
    return " ".join((lines[0] if lines else type(error).__name__).split())


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
