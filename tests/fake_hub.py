"""A stand-in for the Hugging Face Hub on 127.0.0.1, for testing `prepare`'s real download code.

It answers the few HTTP calls huggingface_hub's snapshot_download makes (revision info, file
tree, file resolve) from a local folder, and records each request with its Authorization
header. This replaces only the network boundary: the download code under test is the real one.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

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
