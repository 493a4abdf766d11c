"""What several test files share: the real CLI in a subprocess, the project paths, a served model,
and a stand-in Hugging Face Hub. Test files import from here, never from each other or conftest.

FakeHub answers the few HTTP calls huggingface_hub's snapshot_download makes (revision info, file
tree, file resolve) from a local folder on 127.0.0.1, and records each request with its
Authorization header: it replaces only the network boundary, and the download code under test is
the real one.
"""

from __future__ import annotations

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

COMMIT = "a" * 40


class FakeHub:
    def __init__(self, repo_id: str, files: Path, gated: bool = False):
        self.repo_id, self.files, self.gated = repo_id, files, gated
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def downloaded(self) -> list[str]:
        prefix = f"/{self.repo_id}/resolve/{COMMIT}/"
        return sorted({p[len(prefix):] for m, p, _ in self.requests if m == "GET" and p.startswith(prefix)})

    def _send(self, handler, status, payload: bytes, headers: dict, body: bool):
        handler.send_response(status)
        for key, value in {"Content-Length": str(len(payload)), **headers}.items():
            handler.send_header(key, value)
        handler.end_headers()
        if body:
            handler.wfile.write(payload)

    def _answer(self, handler, body: bool):
        path = unquote(urlparse(handler.path).path)
        self.requests.append((handler.command, path, handler.headers.get("Authorization")))
        if self.gated and handler.headers.get("Authorization") is None:
            payload = json.dumps({"error": "Access to this model is restricted."}).encode()
            return self._send(handler, 401, payload, {"X-Error-Code": "GatedRepo", "Content-Type": "application/json"}, body)
        api = f"/api/models/{self.repo_id}"
        if path.startswith(f"{api}/revision/"):
            info = {"id": self.repo_id, "sha": COMMIT, "siblings": [{"rfilename": n} for n in self._names()]}
            return self._send(handler, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
        if path.startswith(f"{api}/tree/"):
            tree = [
                {"type": "file", "path": n, "size": (self.files / n).stat().st_size, "oid": self._oid(n)}
                for n in self._names()
            ]
            return self._send(handler, 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body)
        prefix = f"/{self.repo_id}/resolve/"
        if path.startswith(prefix):
            name = path[len(prefix):].split("/", 1)[1]
            if name in self._names():
                data = (self.files / name).read_bytes()
                headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{self._oid(name)}"', "Content-Type": "application/octet-stream"}
                return self._send(handler, 200, data, headers, body)
        payload = json.dumps({"error": "Repository not found"}).encode()
        self._send(handler, 404, payload, {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"}, body)

    def _names(self) -> list[str]:
        return sorted(str(p.relative_to(self.files)) for p in self.files.rglob("*") if p.is_file())

    def _oid(self, name: str) -> str:
        return hashlib.sha1((self.files / name).read_bytes()).hexdigest()
