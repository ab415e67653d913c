"""The HTTP side of `aigc serve`: OpenAI's /v1/models, /v1/completions and /v1/chat/completions
on FastAPI, streamed as server-sent events in OpenAI's chunk format.

Handlers are async and never touch the model: they validate, tokenize, submit a Job to the
decode worker (engine.py) and await its events, which the worker hands over with
`loop.call_soon_threadsafe`. Every error, also an unknown route or a bug, answers in OpenAI's
shape {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from fastapi import FastAPI, Request
from pydantic import ValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from aigc_cli.serve.engine import DecodeWorker, Delta, Failed, Finished, Job, Sampling
from aigc_cli.serve.requests import ApiError, ChatRequest, CompletionRequest, _Sampled, error_body, validation_error

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the rest of the context
NO_CONTEXT_LIMIT = 4096  # the most new tokens for a backend without a context window (rnn, bigram)


@dataclass
class ServedModel:
    """What the app needs of the checkpoint it serves."""

    name: str
    context_length: int | None
    encode: Callable[[str], list[int]]
    chat_prompt: Callable[[list[dict]], str] | None  # None: the checkpoint has no chat template
    worker: DecodeWorker
    created: int


def build_app(served: ServedModel, api_key: str | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        served.worker.start()
        yield
        served.worker.stop()

    app = FastAPI(title="aigc serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    if api_key:
        app.add_middleware(_RequireApiKey, key=api_key)
    _add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        """Readiness (no API key needed), with the worker's counts: requests finished, cancelled,
        failed, and the most rows it has decoded in one step."""
        worker = served.worker
        return {"status": "ok", "model": served.name, "requests": dict(worker.counts), "peak_batch": worker.peak_batch}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [_model_card(served)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        _check_model(served, model_id)
        return _model_card(served)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _body(request, CompletionRequest)
        _check_model(served, body.model)
        body.refuse_unsupported()
        ids = _prompt_ids(served.encode(body.the_prompt()), served)
        sampling = _sampling(body, len(ids), body.max_tokens or COMPLETION_DEFAULT_MAX_TOKENS, served)
        return await _respond(served, body, ids, sampling, _CompletionFormat(served.name))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _body(request, ChatRequest)
        _check_model(served, body.model)
        body.refuse_unsupported()
        if served.chat_prompt is None:
            raise ApiError(400, f"model '{served.name}' has no chat template (its tokenizer_config.json names none), so it "
                                "cannot format messages; use /v1/completions with a prompt, or serve a checkpoint fine-tuned "
                                "on conversations (aigc finetune writes the template into it)", "messages", "no_chat_template")
        try:
            prompt = served.chat_prompt([m.as_dict() for m in body.messages])
        except Exception as exc:  # noqa: BLE001 — a template's raise_exception (e.g. roles must alternate) is the request's fault
            raise ApiError(400, f"the chat template refused these messages: {exc}", "messages", "invalid_value") from None
        ids = _prompt_ids(served.encode(prompt), served)
        asked = body.max_completion_tokens or body.max_tokens
        room = (served.context_length or NO_CONTEXT_LIMIT) - len(ids)
        sampling = _sampling(body, len(ids), asked or max(room, 1), served)
        return await _respond(served, body, ids, sampling, _ChatFormat(served.name))

    return app


# ---------------------------------------------------------------------------------- requests
async def _body(request: Request, schema: type[_Sampled]) -> _Sampled:
    """The JSON body as `schema`, whatever the Content-Type says (curl -d sends a form type)."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        why = "it is empty" if not raw.strip() else f"{type(exc).__name__}: {exc}"
        raise ApiError(400, f"the request body is not valid JSON ({why}); send a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body is a JSON {type(data).__name__}; send a JSON object with the request's fields")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


def _check_model(served: ServedModel, name: str) -> None:
    if name != served.name:
        raise ApiError(404, f"The model `{name}` does not exist; this server serves `{served.name}` (GET /v1/models)",
                       "model", "model_not_found")


def _model_card(served: ServedModel) -> dict:
    return {"id": served.name, "object": "model", "created": served.created, "owned_by": "aigc",
            "context_length": served.context_length}


def _prompt_ids(ids: list[int], served: ServedModel) -> list[int]:
    """As `aigc generate` feeds it: an empty prompt starts from end-of-text."""
    return ids or [served.worker.loaded.eos_id]


def _sampling(body: _Sampled, prompt_tokens: int, max_tokens: int, served: ServedModel) -> Sampling:
    limit = served.context_length or NO_CONTEXT_LIMIT
    if prompt_tokens + max_tokens > limit:
        raise ApiError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} for the completion). "
                            "Shorten the prompt or lower max_tokens.", "max_tokens", "context_length_exceeded")
    seed = body.seed if body.seed is not None else secrets.randbits(63)
    return Sampling(max_tokens=max_tokens, temperature=1.0 if body.temperature is None else body.temperature,
                    top_p=1.0 if body.top_p is None else body.top_p, seed=seed, stop=body.stop_strings())


# ---------------------------------------------------------------------------------- responses
async def _events(served: ServedModel, ids: list[int], sampling: Sampling, stream: bool) -> AsyncIterator:
    """The job's events as the worker emits them, ending with Finished or Failed. Leaving early (a
    client that disconnected, a cancelled task at shutdown) takes the row out of the batch."""
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()
    job = Job(ids, sampling, lambda event: loop.call_soon_threadsafe(queue.put_nowait, event), stream=stream)
    served.worker.submit(job)
    try:
        while True:
            event = await queue.get()
            yield event
            if not isinstance(event, Delta):
                return
    finally:
        job.cancelled = True


async def _respond(served: ServedModel, body: _Sampled, ids: list[int], sampling: Sampling, fmt):
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(served, ids, sampling, fmt, usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    async for event in _events(served, ids, sampling, stream=False):
        if isinstance(event, Failed):
            raise ApiError(event.status, event.message, kind="server_error" if event.status >= 500 else "invalid_request_error")
        if isinstance(event, Finished):
            return fmt.response(event, _usage(len(ids), event.completion_tokens))
    raise ApiError(500, "the request ended without a result", kind="server_error")


async def _sse(served: ServedModel, ids: list[int], sampling: Sampling, fmt, include_usage: bool) -> AsyncIterator[str]:
    first = fmt.first_chunk()
    if first:
        yield from_chunk(first)
    async for event in _events(served, ids, sampling, stream=True):
        if isinstance(event, Delta):
            yield from_chunk(fmt.chunk(event.text, None))
        elif isinstance(event, Finished):
            yield from_chunk(fmt.chunk("", event.finish_reason))
            if include_usage:
                yield from_chunk({**fmt.chunk("", None), "choices": [], "usage": _usage(len(ids), event.completion_tokens)})
            yield "data: [DONE]\n\n"
        else:  # OpenAI's clients raise an APIError for an event that holds an error
            yield from_chunk(error_body(event.message, "server_error" if event.status >= 500 else "invalid_request_error"))


def from_chunk(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _CompletionFormat:
    """/v1/completions: object text_completion, choices[].text."""

    def __init__(self, model: str):
        self.id, self.created, self.model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), model

    def _head(self) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model}

    def response(self, done: Finished, usage: dict) -> dict:
        return {**self._head(), "choices": [{"index": 0, "text": done.text, "logprobs": None, "finish_reason": done.finish_reason}],
                "usage": usage}

    def first_chunk(self) -> dict | None:
        return None

    def chunk(self, text: str, finish_reason: str | None) -> dict:
        return {**self._head(), "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}


class _ChatFormat:
    """/v1/chat/completions: chat.completion (choices[].message) or chat.completion.chunk (choices[].delta)."""

    def __init__(self, model: str):
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def response(self, done: Finished, usage: dict) -> dict:
        message = {"role": "assistant", "content": done.text}
        return {**self._head("chat.completion"),
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": done.finish_reason}], "usage": usage}

    def first_chunk(self) -> dict:
        return {**self._head("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]}

    def chunk(self, text: str, finish_reason: str | None) -> dict:
        delta = {"content": text} if text or finish_reason is None else {}
        return {**self._head("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


# ---------------------------------------------------------------------------------- errors, key
def _add_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"Unknown request URL: {request.method} {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse(error_body(message), status_code=exc.status_code)

    async def bug(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"), status_code=500)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, bug)


class _RequireApiKey:
    """401 for a /v1 request without `Authorization: Bearer KEY` (checked before its body is read)."""

    def __init__(self, app, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                what = "No API key provided" if not given else "Incorrect API key provided"
                body = error_body(f"{what}; send it as the header `Authorization: Bearer KEY` "
                                  "(the key given to aigc serve by --api-key or AIGC_API_KEY)", code="invalid_api_key")
                await JSONResponse(body, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)
