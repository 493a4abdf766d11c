"""Connections a client cannot hold hostage: a deadline for the request head, a bound on open
connections, and one log line per kind of refusal per interval.

uvicorn 0.54's h11 protocol starts its keep-alive timer only after a response
(`H11Protocol.on_response_complete`), so a socket that never finishes its headers stayed open
forever: 20,500 of them used up the file limit, and asyncio then logged a traceback for every
failed accept. Here every request head must arrive within HEADER_TIMEOUT_S of its first byte (or
of the connection); past MAX_CONNECTIONS the oldest connection still without a request is closed,
so a client connecting now is answered; and asyncio's accept errors become one counted line per
interval. asyncio's "socket.send() raised exception." (one per write to a client already gone: 49
for one timed-out stream) is dropped; the access log says once that the client went away.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0  # a real client sends its request head in one packet
MAX_CONNECTIONS = 512  # each a file descriptor; well under the raised file limit
LOG_INTERVAL_S = 10.0


class RefusalLog:
    """Says each kind of refusal at once, then at most once per interval with how many it hid."""

    def __init__(self, say: Callable[[str], None], interval_s: float = LOG_INTERVAL_S):
        self.say, self.interval_s = say, interval_s
        self.last: dict[str, float] = {}
        self.hidden: dict[str, int] = {}

    def note(self, kind: str) -> None:
        now = time.monotonic()
        if now - self.last.get(kind, -self.interval_s) < self.interval_s:
            self.hidden[kind] = self.hidden.get(kind, 0) + 1
            return
        more = self.hidden.pop(kind, 0)
        self.last[kind] = now
        self.say(f"refused: {kind}" + (f" ({more} more since the last such line)" if more else ""))


def guarded_protocol(refusals: RefusalLog, header_timeout_s: float = HEADER_TIMEOUT_S,
                     max_connections: int = MAX_CONNECTIONS) -> type:
    """uvicorn's h11 protocol with a request-head deadline and a connection bound."""

    waiting: dict = {}  # connections whose request head has not arrived -> since when (insertion order: oldest first)

    class GuardedH11Protocol(H11Protocol):
        head_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._start_head_deadline()
            if len(self.connections) > max_connections:
                # Past the bound the oldest connection still sending its head goes (the likeliest to be one
                # that never will): a real client that connects now is answered.
                oldest = next(iter(waiting))
                refusals.note(f"over {max_connections} open connections: closed the oldest one without a request")
                oldest._stop_head_deadline()
                oldest.transport.abort()  # its file descriptor goes now, not after a polite close

        def data_received(self, data: bytes) -> None:
            if self.head_deadline is None and self.conn.their_state is h11.IDLE:
                self._start_head_deadline()  # the next request on a kept-alive connection
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the head arrived: the app's own limits take over
                self._stop_head_deadline()

        def connection_lost(self, exc) -> None:
            self._stop_head_deadline()
            super().connection_lost(exc)

        def _start_head_deadline(self) -> None:
            self._stop_head_deadline()
            self.head_deadline = self.loop.call_later(header_timeout_s, self._head_too_slow)
            waiting[self] = time.monotonic()

        def _stop_head_deadline(self) -> None:
            waiting.pop(self, None)
            if self.head_deadline is not None:
                self.head_deadline.cancel()
                self.head_deadline = None

        def _head_too_slow(self) -> None:
            self.head_deadline = None
            waiting.pop(self, None)
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                refusals.note(f"a request head not finished within {header_timeout_s:g} s")
                self.transport.abort()

    return GuardedH11Protocol


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, refusals: RefusalLog) -> None:
    """asyncio's "socket.accept() out of system resource" (and the like) as counted lines, not tracebacks."""
    default = loop.get_exception_handler()

    def handle(loop, context: dict) -> None:
        error = context.get("exception")
        if isinstance(error, OSError) and "accept" in context.get("message", ""):
            refusals.note(f"accepting a connection: {error.strerror or error}")
            return
        if default is not None:
            default(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


class _LostConnectionWrites(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "socket.send() raised exception."


def quiet_lost_connection_writes() -> None:
    """asyncio warns at each write, from the 5th on, to a connection it knows is lost: a stream whose client
    went away mid-answer has several tokens queued before Starlette sees the disconnect and stops."""
    logging.getLogger("asyncio").addFilter(_LostConnectionWrites())


def raise_file_limit() -> int:
    """The soft limit on open files raised to the hard one (Linux often starts at 1024); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 65536 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            return wanted
        except (ValueError, OSError):
            pass
    return soft
