"""One server interceptor for every KVStore RPC: load shedding, auth, metrics and error mapping.

It wraps each KVStore handler so that its body runs inside ``_guard``:
- authentication first: the bearer token resolves the tenant into ``gearkv.store.context.tenant_var``
  (an unauthenticated call gets UNAUTHENTICATED even when the store is busy);
- then the tenant's fair share (``gearkv.store.fairness``): its own in-flight cap and rate limit, and
  the store's global in-flight limit -> RESOURCE_EXHAUSTED at once (grpc.aio's own
  ``maximum_concurrent_rpcs`` queues instead of rejecting);
- the client's deadline goes into ``deadline_var`` (backend retries stop when the client stops waiting);
- a client stream that sends nothing for ``stream_idle_s`` is ended with DEADLINE_EXCEEDED, so an idle
  upload cannot hold its slot forever;
- ``StoreError`` -> its status code and client-facing message; any other exception -> INTERNAL with a
  fixed message (its type is logged, its text never leaves the process): never UNKNOWN;
- ``gearkv_store_requests_total{method,code}`` and the duration histogram are recorded.
Health checking and reflection pass through untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
from gearkv.store.auth import Authenticator
from gearkv.store.context import deadline_var, tenant_var
from gearkv.store.errors import InvalidArgument, ResourceExhausted, StoreError, StreamIdle
from gearkv.store.fairness import Fairness
from gearkv.store.metrics import StoreMetrics

log = logging.getLogger("gearkv.store")
SERVICE_PREFIX = "/gearkv.api.v1.KVStore/"


class _Malformed:
    """Stands in for a request whose bytes did not decode, so the guard can answer INVALID_ARGUMENT.

    Left to grpc, a deserializer's exception becomes UNKNOWN with its text and a logged traceback,
    before authentication even runs.
    """


MALFORMED = _Malformed()


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def load(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:
            return MALFORMED

    return load


def _check(request: Any, method: str) -> Any:
    if request is MALFORMED:
        raise InvalidArgument(f"the {method} request is not a valid message (malformed bytes)")
    return request


async def _checked(requests: AsyncIterator[Any], method: str, idle_s: float) -> AsyncIterator[Any]:
    stream = aiter(requests)
    while True:
        try:
            request = await asyncio.wait_for(anext(stream), idle_s)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise StreamIdle(
                f"the {method} stream sent nothing for {idle_s:g} s; send parts promptly"
            ) from None
        yield _check(request, method)


class StoreInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """See the module docstring."""

    def __init__(
        self, auth: Authenticator, metrics: StoreMetrics, fairness: Fairness, stream_idle_s: float
    ) -> None:
        self._auth = auth
        self._metrics = metrics
        self.fairness = fairness
        self._stream_idle_s = stream_idle_s
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        metrics.in_flight.set_function(lambda: float(fairness.in_flight))

    @property
    def in_flight(self) -> int:
        return self.fairness.in_flight

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        path = handler_call_details.method
        wrapped = self._wrapped.get(path)
        if wrapped is not None:  # handlers are registered once: wrap each method once, not per call
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or not path.startswith(SERVICE_PREFIX):
            return handler
        wrapped = self._wrapped[path] = self._wrap(handler, path.removeprefix(SERVICE_PREFIX))
        return wrapped

    @asynccontextmanager
    async def _guard(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        started = time.perf_counter()
        started_mono = time.monotonic()
        code = grpc.StatusCode.OK
        try:
            try:
                tenant = self._auth.tenant_for(context.invocation_metadata())
                try:
                    self.fairness.acquire(tenant)
                except ResourceExhausted:
                    self._metrics.shed.inc()
                    raise
                try:
                    remaining = context.time_remaining()
                    reset = tenant_var.set(tenant)
                    reset_deadline = deadline_var.set(None if remaining is None else started_mono + remaining)
                    try:
                        yield
                    finally:
                        deadline_var.reset(reset_deadline)
                        tenant_var.reset(reset)
                finally:
                    self.fairness.release(tenant)
            except StoreError as exc:
                code = exc.code
                await context.abort(exc.code, str(exc))
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                code = grpc.StatusCode.INTERNAL
                log.error("%s failed with an unexpected %s", method, type(exc).__name__)
                await context.abort(code, "internal error")
        except asyncio.CancelledError:
            if code == grpc.StatusCode.OK:
                code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._metrics.requests.labels(method=method, code=code.name).inc()
            self._metrics.duration.labels(method=method).observe(time.perf_counter() - started)

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        guard = self._guard
        idle_s = self._stream_idle_s
        options: dict[str, Any] = {
            "request_deserializer": _tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with guard(method, context):
                    return await uu(_check(request, method), context)
                return None  # pragma: no cover - the guard re-raises or aborts

            return grpc.unary_unary_rpc_method_handler(unary_unary, **options)
        if handler.stream_unary is not None:
            su = handler.stream_unary

            async def stream_unary(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
                async with guard(method, context):
                    return await su(_checked(request_iterator, method, idle_s), context)
                return None  # pragma: no cover

            return grpc.stream_unary_rpc_method_handler(stream_unary, **options)
        if handler.unary_stream is not None:
            us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async with guard(method, context):
                    async for response in us(_check(request, method), context):
                        yield response

            return grpc.unary_stream_rpc_method_handler(unary_stream, **options)
        return handler  # bidirectional streams: none in KVStore v1
