"""POST /v1/chat/completions and /v1/completions: a checked request becomes a generation job; its events
become the answer.

Plain: one chat.completion (text_completion) object once the answer is done. Streamed:
chat.completion.chunk (text_completion) server-sent events as tokens come, then `data: [DONE]`.
Either way, a client that goes away cancels its job (streamed: Starlette cancels the response;
plain: polled while waiting). What the access log needs (model, tokens, a client gone) goes into
`request.state`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator, Callable, Optional

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from phi3e2e.infer.generation import GenerationOptions
from phi3e2e.serve.errors import ApiError, error_body
from phi3e2e.serve.registry import ModelRegistry
from phi3e2e.serve.scheduler import Job, QueueFull, Scheduler
from phi3e2e.serve.schemas import ChatCompletionRequest, CompletionRequest, Sampling

DISCONNECT_POLL_SECONDS = 0.5


async def chat_completion(body: ChatCompletionRequest, request: Request, registry: ModelRegistry,
                          scheduler: Scheduler):
    return await _complete(body, request, registry, scheduler, True,
                           lambda loaded: loaded.chat_format.messages_prompt(body.turns()))


async def text_completion(body: CompletionRequest, request: Request, registry: ModelRegistry, scheduler: Scheduler):
    text = body.text()
    return await _complete(body, request, registry, scheduler, False, lambda loaded: text)


async def _complete(body: Sampling, request: Request, registry: ModelRegistry, scheduler: Scheduler, chat: bool,
                    prompt_of: Callable[[Any], str]):
    body.refuse_unsupported()
    model = registry.catalog.get(body.model)
    request.state.model = model.id
    loaded = await _acquire(registry, model.id)
    events: asyncio.Queue = asyncio.Queue()
    job = Job(loaded.engine, [], GenerationOptions(), emit=_sender(events))
    released = False

    def release() -> None:  # once, whichever way the request ends; a job still running stops
        nonlocal released
        if not released:
            released = True
            job.cancelled.set()
            registry.release(loaded)

    try:
        job.prompt_tokens = loaded.engine.encode(prompt_of(loaded))
        job.options = _options(body, len(job.prompt_tokens), loaded.engine.context_length,
                               "messages" if chat else "prompt")
        job.stops = body.stops()
        job.kv_bytes_per_token = loaded.kv_bytes_per_token
        scheduler.submit(job)
    except QueueFull as e:
        release()
        raise ApiError(429, f"the server is busy ({e}); retry shortly", "server_error", code="queue_full") from None
    except BaseException:
        release()
        raise
    answer = _Answer(model.id, len(job.prompt_tokens), chat)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(answer, events, release, include_usage, request.state),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                 background=BackgroundTask(release))
    try:
        return await _whole(answer, events, request)
    finally:
        release()


async def _acquire(registry: ModelRegistry, model_id: str):
    """Load (or build) in a worker thread; if the request is cancelled meanwhile, give the model back once loaded."""
    acquiring = asyncio.ensure_future(asyncio.to_thread(registry.acquire, model_id))
    try:
        return await asyncio.shield(acquiring)
    except asyncio.CancelledError:
        acquiring.add_done_callback(lambda done: done.exception() or registry.release(done.result()))
        raise


def _sender(events: asyncio.Queue):
    """Job.emit: called from the generation thread, hands each event to this request's event loop."""
    loop = asyncio.get_running_loop()

    def emit(event: tuple) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server stopped, nobody is listening
            pass

    return emit


def _options(body: Sampling, prompt_tokens: int, context_length: int, prompt_field: str) -> GenerationOptions:
    limit = body.answer_limit()
    if prompt_tokens >= context_length or (limit and prompt_tokens + limit > context_length):
        asked = f" plus {limit} for the answer (max_tokens)" if limit else ""
        raise ApiError(400, f"This model's maximum context length is {context_length} tokens; the {prompt_field} "
                            f"{'is' if prompt_field == 'prompt' else 'are'} {prompt_tokens} tokens{asked}. Shorten "
                            f"the {prompt_field} or lower max_tokens.",
                       param=prompt_field, code="context_length_exceeded")
    # As OpenAI: no max_tokens means up to the end of the context. top_k 0: no top-k cut, as OpenAI samples.
    max_new_tokens = limit or context_length - prompt_tokens
    return GenerationOptions(max_new_tokens=max_new_tokens, temperature=body.temperature, top_p=body.top_p,
                             top_k=0, seed=body.seed,
                             min_new_tokens=min(body.min_tokens, max_new_tokens))


class _Answer:
    """The fields every response and chunk of one answer share, in the chat or the text completion shape."""

    def __init__(self, model_id: str, prompt_tokens: int, chat: bool):
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model_id
        self.prompt_tokens = prompt_tokens

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def _object(self, choice: dict, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": [{"index": 0, **choice, "logprobs": None}]}

    def whole(self, text: str, finish_reason: str, completion_tokens: int) -> dict:
        if self.chat:
            body = self._object({"message": {"role": "assistant", "content": text}, "finish_reason": finish_reason},
                                "chat.completion")
        else:
            body = self._object({"text": text, "finish_reason": finish_reason}, "text_completion")
        return body | {"usage": self.usage(completion_tokens)}

    def chunk(self, text: Optional[str] = None, finish_reason=None, role: bool = False) -> dict:
        if not self.chat:
            return self._object({"text": text or "", "finish_reason": finish_reason}, "text_completion")
        delta = {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
        return self._object({"delta": delta, "finish_reason": finish_reason}, "chat.completion.chunk")


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _stream(answer: _Answer, events: asyncio.Queue, release, include_usage: bool, state) -> AsyncIterator[str]:
    finished = False
    try:
        if answer.chat:
            yield _event(answer.chunk(role=True))
        while True:
            event = await events.get()
            if event[0] == "text":
                yield _event(answer.chunk(event[1]))
            elif event[0] == "done":
                state.tokens = event[2]
                yield _event(answer.chunk(finish_reason=event[1]))
                if include_usage:  # as OpenAI: one more chunk, with no choices and the usage
                    yield _event(answer.chunk() | {"choices": [], "usage": answer.usage(event[2])})
                break
            else:  # the status line is already sent: report the failure as OpenAI does mid-stream
                state.failed = event[1]
                yield _event(error_body(500, event[1]))
                break
        yield "data: [DONE]\n\n"
        finished = True
    finally:
        state.client_gone = not finished
        release()  # also on cancellation: the client went away, so its job stops


async def _whole(answer: _Answer, events: asyncio.Queue, request: Request):
    pieces: list[str] = []
    next_event = asyncio.ensure_future(events.get())
    checked = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({next_event}, timeout=DISCONNECT_POLL_SECONDS)
            if time.monotonic() - checked >= DISCONNECT_POLL_SECONDS:  # tokens keep coming: look between them too
                checked = time.monotonic()
                if await request.is_disconnected():
                    request.state.client_gone = True
                    return JSONResponse(error_body(499, "client closed the request"), status_code=499)
            if not done:
                continue
            event = next_event.result()
            if event[0] == "text":
                pieces.append(event[1])
                next_event = asyncio.ensure_future(events.get())
                continue
            if event[0] == "error":
                raise ApiError(500, event[1], "server_error")
            request.state.tokens = event[2]
            return answer.whole("".join(pieces), event[1], event[2])
    finally:
        next_event.cancel()
