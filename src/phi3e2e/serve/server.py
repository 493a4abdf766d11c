"""Start the server: refuse an unsafe or unusable address first, then hand a bound socket to uvicorn.

The socket is bound here, not by uvicorn, so a port in use or a bad host is one `error:` line
(UserError) instead of uvicorn's log and exit, and `--port 0` can print the port it got.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from typing import Callable, Optional

from phi3e2e.errors import UserError
from phi3e2e.infer.engines.genai_batch import DEFAULT_BATCH, MAX_BATCH
from phi3e2e.project import Project

GRACEFUL_SHUTDOWN_SECONDS = 3  # streams still open at Ctrl-C are cut after this


@dataclass(frozen=True)
class ServeOptions:
    run: Optional[str] = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Optional[str] = None
    device: str = "cpu"
    memory_budget_gib: Optional[float] = None
    max_batch: int = DEFAULT_BATCH  # answers per forward pass (1: each on its own generator)
    quiet: bool = False  # no access-log line per request
    allow_hosts: tuple[str, ...] = ()  # Host names beyond the bound ones (a reverse proxy's)
    allow_origins: tuple[str, ...] = ()  # sites whose pages may call the API from a browser
    gateway_auth: bool = False  # a gateway in front (an Azure ML endpoint) checks every request's key


def serve(project: Project, options: ServeOptions, say: Callable[[str], None] = print) -> None:
    if not is_loopback(options.host) and not options.api_key and not options.gateway_auth:
        raise UserError(f"--host {options.host}: listening beyond this machine needs --api-key KEY "
                        "(or PHI3E2E_API_KEY); every request must then send 'Authorization: Bearer KEY' "
                        "(behind a gateway that checks keys itself, such as an Azure ML endpoint: --gateway-auth)")
    if options.api_key is not None and len(options.api_key) < 8:
        raise UserError("--api-key: use at least 8 characters")
    if options.memory_budget_gib is not None and options.memory_budget_gib <= 0:
        raise UserError(f"--memory-budget {options.memory_budget_gib}: give a positive number of GiB")
    if not 1 <= options.max_batch <= MAX_BATCH:
        raise UserError(f"--max-batch {options.max_batch}: give 1 to {MAX_BATCH}")
    if options.device == "cuda":
        from phi3e2e.infer.engines.genai import check_cuda_available

        check_cuda_available()

    from phi3e2e.serve.catalog import Catalog
    from phi3e2e.serve.registry import GIB, ModelRegistry, default_budget_bytes

    catalog = Catalog(project, options.run, say)
    budget = int(options.memory_budget_gib * GIB) if options.memory_budget_gib else default_budget_bytes()
    listener = bind(options.host, options.port)

    import asyncio

    import uvicorn

    from phi3e2e.serve.access import AccessLog
    from phi3e2e.serve.app import create_app
    from phi3e2e.serve.connections import (
        RefusalLog,
        guarded_protocol,
        quiet_accept_errors,
        quiet_lost_connection_writes,
        raise_file_limit,
    )
    from phi3e2e.serve.guard import Reach
    from phi3e2e.serve.scheduler import Scheduler

    registry = ModelRegistry(catalog, options.device, budget, say)
    # Answers generating at once (more wait): at least one batch's worth.
    scheduler = Scheduler(slots=max(DEFAULT_BATCH, options.max_batch), max_batch=options.max_batch,
                          kv_room=registry.kv_room)
    registry.kv_in_use = scheduler.kv_in_use
    refusals = RefusalLog(say)
    reach = Reach.of(options.host, options.allow_hosts, options.allow_origins)
    app = create_app(registry, scheduler, options.api_key, reach=reach, refused=refusals.note)
    if not options.quiet:
        app = AccessLog(app, say)
    url = _url(options.host, listener.getsockname()[1])
    models = [model.id for model in catalog.refresh()]
    say(f"Serving {len(models)} models ({', '.join(models)}); default {catalog.default_id}; "
        f"memory budget {budget / GIB:.1f} GiB")
    say(f"Playground: {url}/   OpenAI API: {url}/v1   (Ctrl-C stops)")
    raise_file_limit()
    quiet_lost_connection_writes()
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS, http=guarded_protocol(refusals))

    class Server(uvicorn.Server):
        async def serve(self, sockets=None):
            quiet_accept_errors(asyncio.get_running_loop(), refusals)
            await super().serve(sockets)

    try:
        Server(config).run(sockets=[listener])
    finally:
        scheduler.close()
        listener.close()


def is_loopback(host: str) -> bool:
    """True when every address `host` names is this machine's own (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses)


def bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except OSError as e:
        raise UserError(f"--host {host}: {e.strerror or e}") from None
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not another listener's port: only TIME_WAIT ones
    try:
        listener.bind(address)
        listener.listen(128)
    except OSError as e:
        listener.close()
        in_use = e.errno == errno.EADDRINUSE
        reason = "already in use (another server? pick another --port)" if in_use else e.strerror or str(e)
        raise UserError(f"{host}:{port}: {reason}") from None
    listener.set_inheritable(True)
    return listener


def _url(host: str, port: int) -> str:
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{shown}:{port}"
