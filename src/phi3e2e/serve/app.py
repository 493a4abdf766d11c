"""The FastAPI app: OpenAI's /v1 routes, the playground page, and every error in OpenAI's shape."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

from phi3e2e.serve.completions import chat_completion, text_completion
from phi3e2e.serve.errors import ApiError, error_body
from phi3e2e.serve.guard import MAX_BODY_BYTES, Guard, Reach
from phi3e2e.serve.registry import ModelRegistry
from phi3e2e.serve.scheduler import Scheduler
from phi3e2e.serve.schemas import ChatCompletionRequest, CompletionRequest

STATIC = Path(__file__).resolve().parent / "static"
ENDPOINTS = ("POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /v1/models/{model}, GET /health "
             "and the playground page at GET /")


def create_app(registry: ModelRegistry, scheduler: Scheduler, api_key: Optional[str] = None,
               max_body_bytes: int = MAX_BODY_BYTES, reach: Reach = Reach(None),
               refused: Callable[[str], None] = lambda kind: None):
    catalog = registry.catalog
    # No /docs: FastAPI's docs pages load their scripts from a CDN, and the server must work offline.
    app = FastAPI(title="phi3e2e serve", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/v1/models")
    def list_models():
        return {"object": "list", "data": [model.as_openai() for model in catalog.refresh()]}

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str):
        return catalog.get(model_id).as_openai()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await chat_completion(body, request, registry, scheduler)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await text_completion(body, request, registry, scheduler)

    @app.get("/health")
    def health():
        """Liveness, and what the server is doing: for operators and for tests of cancellation."""
        return {"status": "ok", "models_loaded": registry.loaded_ids(), "models_bytes": registry.models_bytes(),
                **scheduler.stats()}

    @app.get("/playground/config")
    def playground_config():
        """What the page starts with: the default run."""
        return {"default_model": catalog.default_id}

    @app.get("/playground/examples")
    def playground_examples(model: str):
        return {"model": model, "examples": catalog.examples(model)}

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(ApiError)
    async def api_error(_request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request, error: RequestValidationError):
        first = error.errors()[0]
        if first.get("type") == "json_invalid":
            message = f"The request body is not valid JSON ({first.get('ctx', {}).get('error', 'invalid')})"
            return JSONResponse(ApiError(400, message, code="invalid_json").body(), status_code=400)
        where = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(where) or None
        got = f" (got {first['input']!r})" if "input" in first and not isinstance(first["input"], dict) else ""
        reason = first.get("msg", "invalid value")
        message = f"Invalid '{param}': {reason}{got}" if param else reason
        return JSONResponse(ApiError(400, message, param=param, code="invalid_value").body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        if error.status_code in (404, 405):  # an unknown path or method: say what is here, as OpenAI's "Invalid URL"
            message = f"Invalid URL ({request.method} {request.url.path}): this server answers {ENDPOINTS}"
            body = ApiError(error.status_code, message, code="unknown_url").body()
        else:
            body = error_body(error.status_code, str(error.detail))
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def server_error(_request, error: Exception):
        message = f"internal error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        return JSONResponse(error_body(500, message), status_code=500)

    return Guard(app, api_key, max_body_bytes, reach, refused)
