"""Who can reach `serve`: a web page through DNS rebinding cannot, another site's page cannot, and a
client that never finishes its request cannot hold the server's connections.

The real uvicorn server with phi3e2e's connection protocol and request guard, in this process on a
free loopback port, in front of a tiny ASGI app (no model needed): the HTTP layer is what is
tested. `test_serve.py` checks the same refusals through the real `phi3e2e serve`.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time

import pytest
import uvicorn

from phi3e2e.serve.connections import RefusalLog, guarded_protocol, quiet_accept_errors
from phi3e2e.serve.guard import Guard, Reach, host_name


async def hello(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"ok": true}'})


class Running:
    """uvicorn on 127.0.0.1 in a thread, with the guard and the guarded protocol."""

    def __init__(self, reach: Reach, header_timeout_s: float = 0.5, max_connections: int = 8):
        self.said: list[str] = []
        self.refusals = RefusalLog(self.said.append, interval_s=60)
        app = Guard(hello, api_key=None, reach=reach, refused=self.refusals.note)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        protocol = guarded_protocol(self.refusals, header_timeout_s, max_connections)
        config = uvicorn.Config(app, log_level="warning", lifespan="off", http=protocol)
        refusals = self.refusals

        class Server(uvicorn.Server):
            async def serve(self, sockets=None):
                quiet_accept_errors(asyncio.get_running_loop(), refusals)
                await super().serve(sockets)

        self.server = Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.listener]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)

    def get(self, headers: dict) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        connection.putrequest("GET", "/v1/models", skip_host="Host" in headers)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, json.loads(response.read())

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.listener.close()


@pytest.fixture
def loopback_server():
    running = Running(Reach.of("127.0.0.1"))
    yield running
    running.stop()


def test_host_names_the_server_is_bound_to_are_answered(loopback_server):
    port = loopback_server.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}", "localhost"):
        assert loopback_server.get({"Host": host})[0] == 200, host


def test_a_rebound_host_name_is_refused_in_openais_error_shape(loopback_server):
    status, body = loopback_server.get({"Host": f"attacker.example:{loopback_server.port}"})
    assert status == 421
    assert body["error"]["code"] == "host_not_allowed" and "attacker.example" in body["error"]["message"]
    assert "--allow-host" in body["error"]["message"]


def test_a_page_on_another_site_is_refused_and_the_servers_own_page_is_not(loopback_server):
    port = loopback_server.port
    own = {"Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port}"}
    assert loopback_server.get(own)[0] == 200
    for origin in ("http://attacker.example", "null", f"http://localhost:{port + 1}"):
        status, body = loopback_server.get({"Host": f"127.0.0.1:{port}", "Origin": origin})
        assert status == 403 and body["error"]["code"] == "origin_not_allowed", origin


def test_allowed_hosts_and_origins_are_answered():
    running = Running(Reach.of("127.0.0.1", ("llm.corp.example",), ("https://app.corp.example",)))
    try:
        assert running.get({"Host": "llm.corp.example"})[0] == 200
        assert running.get({"Host": "llm.corp.example", "Origin": "https://app.corp.example"})[0] == 200
        assert running.get({"Host": "other.example"})[0] == 421
    finally:
        running.stop()


def test_a_server_on_every_address_answers_any_host_name():
    """Bound to 0.0.0.0 (serve then requires --api-key), its names are not known in advance."""
    assert Reach.of("0.0.0.0").refusal({"host": "my-box.lan:8000"}) is None
    assert Reach.of("0.0.0.0", ("proxy.example",)).refusal({"host": "my-box.lan"})[0] == 421


def test_host_name_drops_the_port():
    assert host_name("[::1]:8000") == "::1"
    assert host_name("localhost:8000") == "localhost"
    assert host_name("::1") == "::1"


def test_a_client_that_never_finishes_its_headers_is_let_go(loopback_server):
    slow = socket.create_connection(("127.0.0.1", loopback_server.port))
    slow.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line: the head never ends
    slow.settimeout(5)
    started = time.monotonic()
    assert slow.recv(100) == b""  # closed by the server
    assert time.monotonic() - started < 4
    slow.close()
    assert any("request head not finished" in line for line in loopback_server.said)
    assert loopback_server.get({"Host": "127.0.0.1"})[0] == 200


def test_past_the_bound_the_oldest_idle_connections_go_and_a_new_client_is_answered():
    loopback_server = Running(Reach.of("127.0.0.1"), header_timeout_s=5.0)  # only the bound closes them at first
    idle = [socket.create_connection(("127.0.0.1", loopback_server.port)) for _ in range(30)]
    try:
        time.sleep(0.3)
        started = time.monotonic()
        assert loopback_server.get({"Host": "127.0.0.1"})[0] == 200  # while 30 idle ones are held
        assert time.monotonic() - started < 2
        closed = []
        for number, sock in enumerate(idle):
            sock.settimeout(0.02)
            try:
                if sock.recv(1) == b"":
                    closed.append(number)
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed.append(number)
        assert len(closed) >= 30 - 8 and closed == list(range(len(closed)))  # the oldest ones
        refusals = [line for line in loopback_server.said if "open connections" in line]
        assert len(refusals) == 1  # one line per kind per interval, not one per connection
    finally:
        for sock in idle:
            sock.close()
        loopback_server.stop()


def test_the_refusal_log_counts_what_it_did_not_say():
    said: list[str] = []
    log = RefusalLog(said.append, interval_s=0.2)
    for _ in range(5):
        log.note("x")
    time.sleep(0.25)
    log.note("x")
    assert said == ["refused: x", "refused: x (4 more since the last such line)"]
