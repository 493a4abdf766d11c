"""`phi3e2e serve`: the project's int4 models behind an OpenAI-compatible API, with a playground page."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from phi3e2e.cli.options import DeviceOption, RunArgument, current_project, say


def serve(
    run: RunArgument = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; anything but loopback needs --api-key.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free one).")] = 8000,
    api_key: Annotated[
        Optional[str],
        typer.Option("--api-key", envvar="PHI3E2E_API_KEY", show_envvar=True,
                     help="Require 'Authorization: Bearer KEY' on every request (the page asks for it as a password)."),
    ] = None,
    device: DeviceOption = "cpu",
    allow_host: Annotated[
        Optional[List[str]],
        typer.Option("--allow-host", metavar="NAME",
                     help="Also answer requests for this Host name (a reverse proxy's); others get 421."),
    ] = None,
    allow_origin: Annotated[
        Optional[List[str]],
        typer.Option("--allow-origin", metavar="ORIGIN",
                     help="Let pages on this site call the API from a browser, e.g. https://app.example.com."),
    ] = None,
    memory_budget: Annotated[
        Optional[float],
        typer.Option("--memory-budget",
                     help="GiB for loaded models and answers' KV caches (default: 60% of free memory)."),
    ] = None,
    max_batch: Annotated[
        Optional[int],
        typer.Option("--max-batch", min=1, show_default=False,
                     help="Answers to one model decoded together, one forward pass for all "
                          "(default 16; 1: each on its own)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No log line per request.")] = False,
    gateway_auth: Annotated[
        bool,
        typer.Option("--gateway-auth",
                     help="A gateway in front checks every request's key (an Azure ML endpoint: `phi3e2e deploy`): "
                          "listen beyond loopback without --api-key. Never on a reachable address without one."),
    ] = False,
) -> None:
    """Serve the fine-tuned models with an OpenAI-compatible API and a playground page.

    RUN is the run the playground opens with and requests without `model` get.

    Lists every finished run's int4 model (id = run name) and each run's base model built
    as int4 the same way (id base/NAME, built on first use), loads models on first use,
    and streams answers. The page at / chats with a run, or shows the base and fine-tuned
    answers to the same question side by side.

    It answers only requests addressed to the names it is bound to (localhost,
    127.0.0.1, [::1], --host), so a web page cannot reach it through DNS
    rebinding, and refuses browser requests from other sites' pages.

    Examples:

    \b
      phi3e2e serve
      phi3e2e serve 20250101-120000-lora --port 8080
      PHI3E2E_API_KEY=$(openssl rand -hex 16) phi3e2e serve --host 0.0.0.0
      phi3e2e serve --memory-budget 6
      phi3e2e serve --max-batch 1 --quiet
      phi3e2e serve --allow-host llm.internal.example --api-key "$KEY"
    """
    from phi3e2e.infer.engines.genai_batch import DEFAULT_BATCH
    from phi3e2e.serve.server import ServeOptions
    from phi3e2e.serve.server import serve as run_server

    options = ServeOptions(run, host, port, api_key, device, memory_budget, max_batch=max_batch or DEFAULT_BATCH,
                           quiet=quiet, allow_hosts=tuple(allow_host or ()), allow_origins=tuple(allow_origin or ()),
                           gateway_auth=gateway_auth)
    run_server(current_project(), options, say=say)
