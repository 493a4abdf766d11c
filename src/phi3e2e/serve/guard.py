"""Checks on every request before the app sees it: the API key, and the body size limit.

Plain ASGI, not Starlette's BaseHTTPMiddleware, which would stand between a streamed response
and the client's disconnect (the disconnect is what stops a streamed answer's generation).

The key is accepted as `Authorization: Bearer KEY` (OpenAI clients) or as the password of HTTP
Basic auth, which is what a browser asks for when it opens the playground page; either way
every request carries it.
"""

from __future__ import annotations

import base64
import hmac
import json
from typing import Optional

from phi3e2e.serve.errors import error_body

MAX_BODY_BYTES = 1 << 20  # a full 4k-token context is ~16 KB of text; anything near 1 MiB is not a chat


class Guard:
    def __init__(self, app, api_key: Optional[str], max_body_bytes: int = MAX_BODY_BYTES):
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
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
            message = await receive()
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
