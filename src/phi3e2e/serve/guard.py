"""Checks on every request before the app sees it: the Host and Origin, the API key, and the body.

Plain ASGI, not Starlette's BaseHTTPMiddleware, which would stand between a streamed response
and the client's disconnect (the disconnect is what stops a streamed answer's generation).

The key is accepted as `Authorization: Bearer KEY` (OpenAI clients) or as the password of HTTP
Basic auth, which is what a browser asks for when it opens the playground page; either way
every request carries it.

Host and Origin: a key-less server on 127.0.0.1 is still reachable from a web page through DNS
rebinding (a name the attacker controls that resolves to 127.0.0.1: the browser then sends
`Host: attacker.example` to this server and lets the page read the answer). So only the names the
server is bound to are answered (421 otherwise), and a browser request whose Origin is another
site is refused (403) unless allowed. Ollama fixed the same class of bug the same way.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
from dataclasses import dataclass
from typing import Callable, Optional

from phi3e2e.serve.errors import error_body

MAX_BODY_BYTES = 1 << 20  # a full 4k-token context is ~16 KB of text; anything near 1 MiB is not a chat
BODY_TIMEOUT_S = 30.0  # between two pieces of a request body: a client that stalls lets go of its connection
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class Reach:
    """The Host names and browser Origins the server answers."""

    hosts: Optional[frozenset[str]]  # None: any name (bound to every address, where --api-key is required)
    origins: frozenset[str] = frozenset()

    @classmethod
    def of(cls, bind_host: str, allow_hosts: tuple[str, ...] = (), allow_origins: tuple[str, ...] = ()) -> "Reach":
        origins = frozenset(origin.lower().rstrip("/") for origin in allow_origins)
        bound = bind_host.strip("[]").lower()
        if bound in WILDCARD_ADDRESSES and not allow_hosts:
            return cls(None, origins)
        return cls(frozenset({*LOOPBACK_NAMES, bound, *(name.strip("[]").lower() for name in allow_hosts)}), origins)

    def refusal(self, headers: dict) -> Optional[tuple[int, str, str]]:
        """(status, message, code) when the request must not be answered, else None."""
        host = headers.get("host", "").strip().lower()
        if self.hosts is not None and host and host_name(host) not in self.hosts:
            return (421, f"this server does not answer to the host name {host_name(host)!r}; if a proxy "
                         "forwards it, start serve with --allow-host NAME", "host_not_allowed")
        origin = headers.get("origin", "").strip().lower().rstrip("/")
        if origin and origin not in (f"http://{host}", f"https://{host}") and origin not in self.origins:
            return (403, f"requests from pages on {origin} are refused; allow that site with "
                         "--allow-origin ORIGIN", "origin_not_allowed")
        return None


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port: `[::1]:8000` -> `::1`, `localhost:8000` -> `localhost`."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header


class Guard:
    def __init__(self, app, api_key: Optional[str], max_body_bytes: int = MAX_BODY_BYTES,
                 reach: Reach = Reach(None), refused: Callable[[str], None] = lambda kind: None):
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes
        self.reach, self.refused = reach, refused

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        refusal = self.reach.refusal(headers)
        if refusal is not None:
            status, message, code = refusal
            self.refused(code.replace("_", " "))
            return await _reply(send, status, error_body(status, message, code))
        if self.api_key is not None and not self._authorized(headers.get("authorization", "")):
            # A page gets Basic, so the browser asks for the key; an API client is told to send a Bearer token.
            scheme = "Bearer" if scope["path"].startswith("/v1/") else 'Basic realm="phi3e2e serve"'
            message = "Missing or wrong API key: send 'Authorization: Bearer <key>' (phi3e2e serve --api-key)"
            challenge = [(b"www-authenticate", scheme.encode())]
            return await _reply(send, 401, error_body(401, message, "invalid_api_key"), challenge)
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body = await self._read_body(receive, headers, send)
            if body is None:
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _authorized(self, header: str) -> bool:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer":
            given = credentials.strip()
        elif scheme.lower() == "basic":
            try:
                given = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")[2]
            except ValueError:
                return False
        else:
            return False
        return hmac.compare_digest(given.encode(), self.api_key.encode())

    async def _read_body(self, receive, headers: dict, send) -> Optional[bytes]:
        """The whole body, or None once a 413 (or nothing, if the client left) has been answered."""
        too_large = error_body(413, f"request body over the limit of {self.max_body_bytes} bytes", "body_too_large")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _reply(send, 413, too_large)
            return None
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), BODY_TIMEOUT_S)
            except asyncio.TimeoutError:
                self.refused(f"a request body stalled for {BODY_TIMEOUT_S:g} s")
                await _reply(send, 408, error_body(408, "the request body stopped arriving", "request_timeout"))
                return None
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:  # a chunked body carries no length to check up front
                await _reply(send, 413, too_large)
                return None
            if not message.get("more_body"):
                return b"".join(chunks)


def _replay(body: bytes, receive):
    """The body once, then the real receive (which reports the client's disconnect)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _reply(send, status: int, body: dict, headers: list | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})
