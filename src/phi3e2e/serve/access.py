"""One access-log line per request: method, path, status, model, tokens, seconds (`serve --quiet`: none).

A plain ASGI wrapper outside the guard, so refused requests (401, 413, 421) get their line too.
What only the handlers know (the model, the answer's tokens, a client that went away) they leave in
the request's state (`scope["state"]`, which Starlette's `request.state` writes to).
"""

from __future__ import annotations

import time
from typing import Callable

MAX_PATH_SHOWN = 200  # a path is the client's text: cut and made printable before it is logged


class AccessLog:
    def __init__(self, app, say: Callable[[str], None]):
        self.app, self.say = app, say

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.monotonic()
        status = None
        state = scope.setdefault("state", {})

        async def sending(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.say(line(scope["method"], scope["path"], status, state, time.monotonic() - start))


def line(method: str, path: str, status, state: dict, seconds: float) -> str:
    shown = "".join(c if c.isprintable() else "?" for c in path[:MAX_PATH_SHOWN])
    parts = [method, shown, str(status or "-")]
    if "model" in state:
        parts.append(f"model={state['model']}")
    if "tokens" in state:
        parts.append(f"tokens={state['tokens']}")
    parts.append(f"{seconds:.2f}s")
    if state.get("failed"):
        parts.append(f"failed: {state['failed']}")
    elif state.get("client_gone"):
        parts.append("client went away")
    return " ".join(parts)
