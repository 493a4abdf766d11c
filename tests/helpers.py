"""What several test files share: the real CLI in a subprocess, the project paths, a served model,
and a stand-in Hugging Face Hub. Test files import from here, never from each other or conftest.

FakeHub answers the few HTTP calls huggingface_hub's snapshot_download makes (revision info, file
tree, file resolve) from a local folder on 127.0.0.1, and records each request with its
Authorization header: it replaces only the network boundary, and the download code under test is
the real one. UploadHub, its sibling, also takes what huggingface_hub's uploads send (whoami, create
repo and branch, validate-yaml, preupload, the LFS batch and PUT, the commit) and serves the
committed files back to snapshot_download.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import yaml

from phi3e2e.project import Project

REPO = Path(__file__).resolve().parents[1]
# The recipe's real dataset lives in shared/ beside the checkout (CI lays a copy there too);
# it is not copied into the repo.
TRUTHFUL_QA = next(
    (path for path in (REPO.parent / "shared" / "datasets" / "TruthfulQA.csv", Path("/work/shared/datasets/TruthfulQA.csv"))
     if path.is_file()),
    REPO.parent / "shared" / "datasets" / "TruthfulQA.csv",
)


def quiet(_message: str) -> None:
    pass


def run_cli(
    *args: str, project: Project | None = None, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run the real `phi3e2e` entry point in a subprocess, as a user would (`env` adds variables)."""
    env = dict(os.environ, **(env or {}))
    if project is not None:
        env["PHI3E2E_PROJECT_DIR"] = str(project.root)
    return subprocess.run(
        [sys.executable, "-m", "phi3e2e", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


# --- phi3e2e serve in a subprocess ---------------------------------------------------------

API_KEY = "test-key-0123456789"
START_TIMEOUT_S = 90


class Server:
    """`phi3e2e serve --port 0` in a subprocess; its address read from what it prints."""

    def __init__(self, project: Project, *args: str):
        self.project = project
        env = dict(os.environ, PHI3E2E_PROJECT_DIR=str(project.root), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen([sys.executable, "-m", "phi3e2e", "serve", "--port", "0", *args], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()  # drains the pipe for the server's whole life
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise AssertionError(f"server did not start in {START_TIMEOUT_S} s: {''.join(self.output)}") from None
            if line is None:
                raise AssertionError(f"server exited: {''.join(self.output)}")
            if line.startswith("Playground: "):
                self.url = line.split()[1].rstrip("/")
                self.port = int(self.url.rsplit(":", 1)[1])
                return

    def _read(self):
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def health(server) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", "/health", headers={"Authorization": f"Bearer {API_KEY}"})
    return json.loads(connection.getresponse().read())


# --- A stand-in Hugging Face Hub ----------------------------------------------------------


def serve_locally(answer, methods: tuple[str, ...]) -> tuple[ThreadingHTTPServer, str]:
    """An HTTP server on a free loopback port, in a daemon thread, handing each request of these methods to
    `answer(handler, body=...)` (body False for HEAD); returns it and its base URL."""
    handlers = {f"do_{method}": (lambda self, head=(method == "HEAD"): answer(self, body=not head))
                for method in methods}  # fmt: skip
    handler = type("Handler", (BaseHTTPRequestHandler,), {"log_message": lambda self, *args: None, **handlers})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def stop_serving(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


def send(handler, status: int, payload: bytes, headers: dict, body: bool) -> None:
    handler.send_response(status)
    for key, value in {"Content-Length": str(len(payload)), **headers}.items():
        handler.send_header(key, value)
    handler.end_headers()
    if body:
        handler.wfile.write(payload)

COMMIT = "a" * 40


class FakeHub:
    def __init__(self, repo_id: str, files: Path, gated: bool = False):
        self.repo_id, self.files, self.gated = repo_id, files, gated
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization)
        self.server, self.url = serve_locally(self._answer, ("HEAD", "GET"))

    def close(self):
        stop_serving(self.server)

    def downloaded(self) -> list[str]:
        prefix = f"/{self.repo_id}/resolve/{COMMIT}/"
        return sorted({p[len(prefix):] for m, p, _ in self.requests if m == "GET" and p.startswith(prefix)})

    def _answer(self, handler, body: bool):
        path = unquote(urlparse(handler.path).path)
        self.requests.append((handler.command, path, handler.headers.get("Authorization")))
        if self.gated and handler.headers.get("Authorization") is None:
            payload = json.dumps({"error": "Access to this model is restricted."}).encode()
            return send(handler, 401, payload, {"X-Error-Code": "GatedRepo", "Content-Type": "application/json"}, body)
        api = f"/api/models/{self.repo_id}"
        if path.startswith(f"{api}/revision/"):
            info = {"id": self.repo_id, "sha": COMMIT, "siblings": [{"rfilename": n} for n in self._names()]}
            return send(handler, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
        if path.startswith(f"{api}/tree/"):
            tree = [
                {"type": "file", "path": n, "size": (self.files / n).stat().st_size, "oid": self._oid(n)}
                for n in self._names()
            ]
            return send(handler, 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body)
        prefix = f"/{self.repo_id}/resolve/"
        if path.startswith(prefix):
            name = path[len(prefix):].split("/", 1)[1]
            if name in self._names():
                data = (self.files / name).read_bytes()
                headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{self._oid(name)}"', "Content-Type": "application/octet-stream"}
                return send(handler, 200, data, headers, body)
        payload = json.dumps({"error": "Repository not found"}).encode()
        send(handler, 404, payload, {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"}, body)

    def _names(self) -> list[str]:
        return sorted(str(p.relative_to(self.files)) for p in self.files.rglob("*") if p.is_file())

    def _oid(self, name: str) -> str:
        return hashlib.sha1((self.files / name).read_bytes()).hexdigest()


class UploadHub:
    """A stand-in Hub with users, repos and branches that takes uploads the way huggingface_hub sends them
    (HF_HUB_DISABLE_XET=1: the plain LFS path) and serves the committed files back to snapshot_download.

    `users`: token -> {"name": ..., "orgs": [...], "role": "write" | "read"}. What tests read: `repos`
    (repo_id -> {"owner", "private", "branches": {branch: {"sha", "files": {path: bytes}}}}), `lfs_puts`
    (the sha256 of each large file uploaded, in order), `commits` (repo_id, branch, paths), `requests`
    ((method, path, authorization) of each call). `fail_commits = n`: the next n commits answer 500, after
    their large files were uploaded (an interrupted push).
    """

    LFS_SUFFIXES = (".onnx", ".data", ".safetensors", ".bin", ".png")

    def __init__(self, users: dict[str, dict]):
        self.users = users
        self.repos: dict[str, dict] = {}
        self.lfs: dict[str, bytes] = {}
        self.lfs_puts: list[str] = []
        self.commits: list[tuple[str, str, list[str]]] = []
        self.requests: list[tuple[str, str, str | None]] = []
        self.fail_commits = 0
        self.server, self.url = serve_locally(self._handle, ("HEAD", "GET", "POST", "PUT"))

    def close(self):
        stop_serving(self.server)

    def add_repo(self, repo_id: str, files: dict[str, bytes] | None = None, private: bool = False):
        """A repo that is already on the Hub (someone else's, say)."""
        self.repos[repo_id] = {"owner": repo_id.split("/")[0], "private": private,
                               "branches": {"main": {"sha": hashlib.sha1(repo_id.encode()).hexdigest(),
                                                     "files": dict(files or {})}}}  # fmt: skip

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id]["branches"][branch]["files"]

    # --- the protocol --------------------------------------------------------------------

    def _handle(self, handler, body: bool):
        raw_path = urlparse(handler.path).path
        parts = [unquote(part) for part in raw_path.strip("/").split("/")]
        auth = handler.headers.get("Authorization")
        self.requests.append((handler.command, unquote(raw_path), auth))
        data = self._read_body(handler)
        user = self.users.get(auth.removeprefix("Bearer ")) if auth else None
        try:
            status, payload, headers = self._route(handler.command, parts, data, user)
        except Exception as e:  # a bug in the stand-in: say so to the client (not a 5xx, which it would retry)
            status, payload, headers = 400, {"error": f"stand-in hub: {type(e).__name__}: {e}"}, {}
        if isinstance(payload, (dict, list)):
            payload, headers = json.dumps(payload).encode(), {"Content-Type": "application/json", **headers}
        send(handler, status, payload, headers, body)

    @staticmethod
    def _read_body(handler) -> bytes:
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    handler.rfile.readline()
                    return b"".join(chunks)
                chunks.append(handler.rfile.read(size))
                handler.rfile.readline()
        length = int(handler.headers.get("Content-Length") or 0)
        return handler.rfile.read(length) if length else b""

    def _route(self, method: str, parts: list[str], data: bytes, user: dict | None):
        if parts[:2] == ["api", "whoami-v2"]:
            if user is None:
                return 401, {"error": "Invalid credentials in Authorization header"}, {}
            orgs = [{"name": org} for org in user.get("orgs", [])]
            return 200, {"name": user["name"], "orgs": orgs, "auth": {"accessToken": {"role": user["role"]}}}, {}
        if parts[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo(json.loads(data), user)
        if parts[:2] == ["api", "validate-yaml"]:
            content = json.loads(data)["content"]
            try:
                yaml.safe_load(content.split("---")[1]) if content.startswith("---") else None
            except yaml.YAMLError as e:
                return 400, {"errors": [{"message": str(e)}]}, {"X-Error-Message": "Invalid metadata"}
            return 200, {"errors": [], "warnings": []}, {}
        if method == "PUT" and parts[0] == "lfs-upload":
            if hashlib.sha256(data).hexdigest() != parts[1]:
                return 400, {"error": "sha256 mismatch"}, {}
            self.lfs[parts[1]] = data
            self.lfs_puts.append(parts[1])
            return 200, b"", {}
        if len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(f"{parts[0]}/{parts[1].removesuffix('.git')}", json.loads(data), user)
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
            return self._repo_api(method, repo_id, rest, data, user)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), user)
        return 404, {"error": "Not found"}, {}

    def _not_found(self):
        return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}

    def _visible(self, repo_id: str, user: dict | None) -> dict | None:
        repo = self.repos.get(repo_id)
        if repo is None or (repo["private"] and not self._may_write(repo_id, user)):
            return None
        return repo

    @staticmethod
    def _may_write(repo_id: str, user: dict | None) -> bool:
        return bool(user) and user["role"] == "write" and repo_id.split("/")[0] in [user["name"], *user.get("orgs", [])]

    def _create_repo(self, payload: dict, user: dict | None):
        if user is None:
            return 401, {"error": "Invalid credentials"}, {}
        repo_id = f"{payload['organization'] or user['name']}/{payload['name']}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}, {}
        if not self._may_write(repo_id, user):
            return 403, {"error": "You don't have the rights to create a model under this namespace"}, {}
        self.add_repo(repo_id, private=payload.get("visibility") == "private")
        return 200, {"url": f"{self.url}/{repo_id}"}, {}

    def _repo_api(self, method: str, repo_id: str, rest: list[str], data: bytes, user: dict | None):
        repo = self._visible(repo_id, user)
        if repo is None:
            return self._not_found()
        writes = method == "POST" and rest and rest[0] in ("preupload", "commit", "branch")
        if writes and not self._may_write(repo_id, user):
            return 403, {"error": "You don't have the rights to write to this repo"}, {}
        if not rest or rest[0] == "revision":
            branch = self._branch(repo, "/".join(rest[1:]) if rest else "main")
            if branch is None:
                return 404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"}
            siblings = [{"rfilename": name} for name in sorted(branch["files"])]
            return 200, {"id": repo_id, "sha": branch["sha"], "private": repo["private"], "siblings": siblings}, {}
        if rest[0] == "tree":
            files = self._branch(repo, rest[1])["files"]
            tree = [{"type": "file", "path": name, "size": len(content), "oid": hashlib.sha1(content).hexdigest()}
                    for name, content in sorted(files.items())]  # fmt: skip
            return 200, tree, {}
        if rest[0] == "branch":
            name = "/".join(rest[1:])
            if name in repo["branches"]:
                return 409, {"error": "Branch already exists"}, {}
            repo["branches"][name] = dict(repo["branches"]["main"], files=dict(repo["branches"]["main"]["files"]))
            return 200, {}, {}
        branch = repo["branches"].get("/".join(rest[1:]))
        if branch is None:
            return 404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"}
        if rest[0] == "preupload":
            return 200, {"files": [self._upload_mode(f, branch["files"]) for f in json.loads(data)["files"]]}, {}
        if rest[0] == "commit":
            return self._commit(repo_id, "/".join(rest[1:]), branch, data)
        return 404, {"error": "Not found"}, {}

    @staticmethod
    def _branch(repo: dict, revision: str) -> dict | None:
        """A branch by name, or the branch whose head is the commit `revision`."""
        by_sha = (b for b in repo["branches"].values() if b["sha"] == revision)
        return repo["branches"].get(revision) or next(by_sha, None)

    def _upload_mode(self, file: dict, files: dict[str, bytes]) -> dict:
        sample = base64.b64decode(file["sample"])
        lfs = file["path"].endswith(self.LFS_SUFFIXES) or b"\0" in sample or file["size"] >= 10_000_000
        answer = {"path": file["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
        if file["path"] in files:  # the remote oid: huggingface_hub leaves an unchanged file out of the commit
            content = files[file["path"]]
            answer["oid"] = hashlib.sha256(content).hexdigest() if lfs else _git_blob_sha1(content)
        return answer

    def _lfs_batch(self, repo_id: str, payload: dict, user: dict | None):
        if self._visible(repo_id, user) is None:
            return self._not_found()
        if not self._may_write(repo_id, user):
            return 403, {"message": "You don't have the rights to write to this repo"}, {}
        objects = []
        for obj in payload["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs:  # already held: no actions, nothing to upload
                answer["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}"}}
            objects.append(answer)
        return 200, {"transfer": "basic", "objects": objects}, {}

    def _commit(self, repo_id: str, branch_name: str, branch: dict, data: bytes):
        if self.fail_commits:
            self.fail_commits -= 1
            return 500, {"error": "Internal Error (stand-in: an interrupted push)"}, {}
        files, paths = dict(branch["files"]), []
        for line in data.decode().splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.lfs:
                    return 400, {"error": f"LFS object {value['oid']} was never uploaded"}, {}
                files[value["path"]] = self.lfs[value["oid"]]
            elif item["key"] == "deletedFile":
                files.pop(value["path"], None)
            else:
                continue
            paths.append(value["path"])
        sha = hashlib.sha1((branch["sha"] + json.dumps(sorted(paths))).encode() + data).hexdigest()
        branch.update(sha=sha, files=files)
        self.commits.append((repo_id, branch_name, paths))
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{sha}", "commitOid": sha}, {}

    def _resolve(self, repo_id: str, revision: str, name: str, user: dict | None):
        repo = self._visible(repo_id, user)
        if repo is None:
            return self._not_found()
        branch = self._branch(repo, revision)
        if branch is None or name not in branch["files"]:
            return 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}
        content = branch["files"][name]
        headers = {"X-Repo-Commit": branch["sha"], "ETag": f'"{hashlib.sha1(content).hexdigest()}"',
                   "Content-Type": "application/octet-stream"}  # fmt: skip
        return 200, content, headers


def _git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
