"""The OpenAI-compatible HTTP API of the worker: a Starlette app served by uvicorn on its own thread.

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (JSON, or server-sent events with
``"stream": true``), ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health`` (200 when the model
is loaded, 503 while it loads or the worker shuts down).

Every request is stateless: the messages are rendered with the model's chat template into token ids
and run through :meth:`Worker.generate` without a session id, so the KV of the longest stored prefix
of those ids (content-addressed chunks, whichever worker or session stored them) is pulled and only
the rest is prefilled; the answer's KV is pushed too, so the next request, re-sending this answer as
an assistant message, reuses it (matched on token ids after the chat template: what re-tokenizes
differently is recomputed, and the figures say how much was reused). A response is completed once
the turn's push has stored its chunks (at most ``push_wait_s``), so the next turn finds them on any
worker.

The figures of each turn are in the ``"gearkv"`` field of the response (of the last chunk when
streaming), in ``usage.prompt_tokens_details.cached_tokens``, and (non-streaming) in ``x-gearkv-*``
headers. The model runs on the API's turn threads, never on the event loop; a client that disconnects
cancels its turn within one decoder layer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvicorn
from gearkv.worker.api_keys import ApiKey
from gearkv.worker.errors import TurnCancelled, WorkerError
from gearkv.worker.openai_api.errors import ApiError, from_worker
from gearkv.worker.openai_api.schema import (
    ChatRequest,
    CompletionRequest,
    chat_chunk,
    chat_completion,
    completion,
    completion_chunk,
    finish_reason,
    gearkv_figures,
    new_id,
    parse_request,
    usage,
)
from gearkv.worker.openai_api.tenants import Tenants
from gearkv.worker.openai_api.turns import TurnStream, await_push
from gearkv.worker.sessions import PUSH_DRAIN_S, Turn, Worker
from gearkv.worker.store_client import StoreClient
from jinja2 import TemplateError
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["MAX_BODY_BYTES", "PUSH_WAIT_S", "HttpApi"]

log = logging.getLogger("gearkv.worker")

MAX_BODY_BYTES = 16 << 20
# How long a response waits for its turn's push (compress + upload of the turn's new chunks).
PUSH_WAIT_S = 5.0
_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health")
_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class HttpApi:
    """The HTTP API of one worker process: its app, its turn threads, its uvicorn server.

    Start it before the model loads (``/health`` then answers 503 "loading"), :meth:`attach` the
    ``Worker`` once it is built, :meth:`stop` it on shutdown.

    Args:
        host, port: where to listen (port 0 = a free port; :attr:`address` has the bound one).
        keys: API keys -> store tenants (() = one local tenant, no authentication).
        connect: makes a store client from a tenant's store token (unused without keys).
        registry: Prometheus registry of the ``gearkv_worker_http_*`` metrics.
        push_wait_s: how long a response waits for its turn's push before it completes anyway.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keys: tuple[ApiKey, ...] = (),
        connect: Callable[[str], StoreClient | None] = lambda token: None,
        registry: CollectorRegistry | None = None,
        push_wait_s: float = PUSH_WAIT_S,
    ) -> None:
        self.host, self.port = host, port
        self.tenants = Tenants(keys, connect)
        self.push_wait_s = push_wait_s
        self.closing = False
        self.address = ""
        self._pool: ThreadPoolExecutor | None = None
        self._streams: set[TurnStream] = set()
        self._streams_changed = threading.Condition()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = _Metrics(_build_app(self), registry or CollectorRegistry())

    # -- lifecycle -------------------------------------------------------------------------------

    def attach(self, worker: Worker) -> None:
        """Serve with ``worker`` (the model is loaded): one turn thread per turn it admits."""
        threads = worker.options.max_turns_in_flight + 2
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gearkv-http-turn")
        self.tenants.attach(worker)

    def start(self, timeout: float = 30.0) -> str:
        """Bind and serve on a background thread; returns ``host:port``.

        Raises:
            RuntimeError: the address cannot be bound, or the server did not start.
        """
        try:
            info = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            family, kind, proto, _, addr = info[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
        except OSError as exc:
            raise RuntimeError(f"cannot bind the HTTP API to {self.host}:{self.port}: {exc}") from exc
        bound = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,  # leave the process's logging as it is
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its start-up lines say little
        server = self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="gearkv-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError(f"the HTTP API did not start on {self.host}:{bound}")
            time.sleep(0.01)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.address = f"{host}:{bound}"
        log.info("gearkv worker HTTP API (OpenAI-compatible) on http://%s/v1", self.address)
        return self.address

    def stop(self, grace: float = 5.0) -> None:
        """Refuse new requests (503), let running turns finish for ``grace`` seconds, cancel the rest,
        stop the server, then finish the tenants' pending pushes."""
        self.closing = True
        if not self.wait_idle(grace):
            with self._streams_changed:
                running = list(self._streams)
            for stream in running:
                stream.turn.cancel()
            log.info("HTTP API: cancelled %d turn(s) still running after %.1fs", len(running), grace)
            self.wait_idle(5.0)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10.0)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.tenants.close(timeout=PUSH_DRAIN_S)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no turn is running (at most ``timeout`` seconds); True if none is."""
        with self._streams_changed:
            return self._streams_changed.wait_for(lambda: not self._streams, timeout)

    # -- request plumbing (used by the route handlers) -------------------------------------------

    def tenant(self, request: Request) -> tuple[str, Worker]:
        if self.closing:
            raise ApiError.unavailable("the worker is shutting down", "shutting_down")
        return self.tenants.resolve(request.headers.get("authorization"))

    def model_id(self, worker: Worker) -> str:
        return worker.engine.loaded.name

    def check_model(self, worker: Worker, model: str) -> None:
        if model != self.model_id(worker):
            raise ApiError.model_not_found(model)

    def begin(self, turn: Turn) -> TurnStream:
        assert self._pool is not None  # set by attach, before any tenant resolves
        stream = TurnStream(turn, self._pool, on_finished=self._finished)
        with self._streams_changed:
            self._streams.add(stream)
        return stream

    def end(self, stream: TurnStream) -> None:
        """The response is over: a turn still running (its client left) is cancelled."""
        stream.close()

    def _finished(self, stream: TurnStream) -> None:
        with self._streams_changed:
            self._streams.discard(stream)
            self._streams_changed.notify_all()


# -- the app ---------------------------------------------------------------------------------------


def _build_app(api: HttpApi) -> Starlette:
    async def health(request: Request) -> Response:
        if api.closing:
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        if not api.tenants.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def models(request: Request) -> Response:
        _, worker = api.tenant(request)
        return JSONResponse({"object": "list", "data": [_model_card(api.model_id(worker))]})

    async def model(request: Request) -> Response:
        _, worker = api.tenant(request)
        name = request.path_params["model"]
        api.check_model(worker, name)
        return JSONResponse(_model_card(name))

    async def chat_completions(request: Request) -> Response:
        t0 = time.perf_counter()
        _, worker = api.tenant(request)
        req: ChatRequest = parse_request(ChatRequest, await _read_json(request))
        api.check_model(worker, req.model)
        params, messages = req.params(), req.chat_messages()
        try:
            prompt = await run_in_threadpool(worker.engine.encode_chat, messages)
        except TemplateError as exc:  # e.g. a template that insists on alternating roles
            raise ApiError.bad_request(
                f"the model's chat template refused the messages: {exc}", "messages"
            ) from exc
        return await _answer(api, request, worker, prompt, params, req, t0, chat=True)

    async def completions(request: Request) -> Response:
        t0 = time.perf_counter()
        _, worker = api.tenant(request)
        req: CompletionRequest = parse_request(CompletionRequest, await _read_json(request))
        api.check_model(worker, req.model)
        params, text_or_ids = req.params(), req.single_prompt()
        if isinstance(text_or_ids, str):
            tok, text = worker.engine.tokenizer, text_or_ids
            prompt = await run_in_threadpool(lambda: list(tok(text, add_special_tokens=True)["input_ids"]))
        else:
            prompt = text_or_ids
        return await _answer(api, request, worker, prompt, params, req, t0, chat=False)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            err = ApiError(404, f"no route {request.method} {request.url.path}", code="not_found")
        elif exc.status_code == 405:
            err = ApiError(405, f"method {request.method} not allowed on {request.url.path}")
        else:
            err = ApiError(exc.status_code, str(exc.detail))
        return JSONResponse(err.body(), status_code=err.status, headers=dict(exc.headers or {}))

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("HTTP API: %s %s failed", request.method, request.url.path, exc_info=exc)
        err = ApiError(500, "internal error", type="server_error", code="internal_error")
        return JSONResponse(err.body(), status_code=500)

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{model:path}", model, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
        ],
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: internal_error},
    )


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "gearkv"}


async def _read_json(request: Request) -> Any:
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
        parts.append(part)
    try:
        return json.loads(b"".join(parts))
    except ValueError:
        raise ApiError.bad_request("the request body is not valid JSON") from None


def _start_turn(worker: Worker, prompt: list[int], params: Any) -> Turn:
    try:
        return worker.generate(prompt, params)
    except WorkerError as exc:
        raise from_worker(exc) from exc


async def _answer(
    api: HttpApi,
    request: Request,
    worker: Worker,
    prompt: list[int],
    params: Any,
    req: ChatRequest | CompletionRequest,
    t0: float,
    *,
    chat: bool,
) -> Response:
    stream = api.begin(_start_turn(worker, prompt, params))
    meta = _Meta(
        rid=new_id("chatcmpl" if chat else "cmpl"),
        model=req.model,
        fingerprint=worker.fingerprint,
        created=int(time.time()),
        t0=t0,
    )
    if req.stream:
        return StreamingResponse(
            _sse(api, stream, meta, chat=chat, include_usage=req.include_usage),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    try:
        text = await _collect(request, stream)
        push = await await_push(stream.turn, api.push_wait_s)
    finally:
        api.end(stream)
    turn = stream.turn
    figures = gearkv_figures(turn.stats, meta.figures(stream) | push.figures())
    build = chat_completion if chat else completion
    body = build(meta.rid, meta.model, text, turn.finish_reason, turn.stats, figures, meta.fingerprint)
    return JSONResponse(body, headers=_headers(figures))


async def _collect(request: Request, stream: TurnStream) -> str:
    """The whole answer; a client that disconnects meanwhile cancels the turn."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        stream.turn.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return "".join([d.text async for d in stream])
    except WorkerError as exc:
        raise from_worker(exc) from exc
    finally:
        watcher.cancel()


async def _sse(
    api: HttpApi, stream: TurnStream, meta: _Meta, *, chat: bool, include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent events: the answer's deltas, then (once the push stored the turn) a last chunk
    with finish_reason and the ``gearkv`` figures, a usage chunk if asked, and ``[DONE]``."""
    turn = stream.turn
    try:
        if chat:
            yield _event(meta.chunk({"role": "assistant", "content": ""}))
        async for delta in stream:
            if delta.text:
                yield _event(meta.chunk({"content": delta.text} if chat else delta.text))
        push = await await_push(turn, api.push_wait_s)
        last = meta.chunk({} if chat else "", finish_reason(turn.finish_reason))
        last["gearkv"] = gearkv_figures(turn.stats, meta.figures(stream) | push.figures())
        yield _event(last)
        if include_usage:
            tail = meta.chunk({} if chat else "")
            tail["choices"], tail["usage"] = [], usage(turn.stats)
            yield _event(tail)
        yield "data: [DONE]\n\n"
    except TurnCancelled:
        return  # the client left (nobody reads on) or the worker is shutting down
    except WorkerError as exc:
        yield _event(from_worker(exc).body())  # the openai client raises it as an APIError
    except Exception as exc:  # the response has started: say so in the stream, then end it
        log.exception("HTTP API: a streamed turn failed", exc_info=exc)
        yield _event(ApiError(500, "internal error", type="server_error", code="internal_error").body())
    finally:
        api.end(stream)


def _event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


class _Meta:
    """What every chunk of one response repeats, and when its request arrived."""

    def __init__(self, *, rid: str, model: str, fingerprint: str, created: int, t0: float) -> None:
        self.rid, self.model, self.fingerprint, self.created, self.t0 = rid, model, fingerprint, created, t0

    def chunk(self, content: dict[str, Any] | str, reason: str | None = None) -> dict[str, Any]:
        """A streamed chunk: a chat delta (a dict) or a completion's text (a str)."""
        if isinstance(content, dict):
            return chat_chunk(self.rid, self.model, self.created, self.fingerprint, content, reason)
        return completion_chunk(self.rid, self.model, self.created, self.fingerprint, content, reason)

    def figures(self, stream: TurnStream) -> dict[str, Any]:
        """Server-side time to first token from the request's arrival (tokenizing, queueing included)."""
        first = stream.first_token_at
        return {"request_ttft_s": round(first - self.t0, 6) if first else None}


def _headers(figures: dict[str, Any]) -> dict[str, str]:
    return {
        "x-gearkv-tokens-reused": str(figures["tokens_reused"]),
        "x-gearkv-tokens-prefilled": str(figures["tokens_prefilled"]),
        "x-gearkv-outcome": str(figures["outcome"]),
        "x-gearkv-reason": str(figures["reason"]),
        "x-gearkv-source": str(figures["source"]),
    }


class _Metrics:
    """ASGI middleware: ``gearkv_worker_http_requests_total{route,status}`` and request durations."""

    def __init__(self, app: Any, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "gearkv_worker_http_requests_total",
            "HTTP API requests by route and status",
            ["route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "gearkv_worker_http_request_duration_seconds",
            "HTTP API request durations (a streamed response: until its last event)",
            ["route"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
            registry=registry,
        )

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in _ROUTES else ("/v1/models" if path.startswith("/v1/models/") else "other")
        status = 500

        async def sending(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            self.requests.labels(route=route, status=str(status)).inc()
            self.duration.labels(route=route).observe(time.perf_counter() - t0)
