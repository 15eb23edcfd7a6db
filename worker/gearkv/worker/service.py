"""The Worker gRPC service: thin handlers that translate proto messages to :class:`Worker` calls.

A synchronous ``grpc.server`` with a thread pool: turns are CPU/GPU-bound model work, so each one
runs on its own thread (PyTorch releases the GIL in its kernels), and the streamed answer is a plain
generator. Status codes: INVALID_ARGUMENT (the message names the field; also request bytes that do
not decode), ABORTED (session busy), RESOURCE_EXHAUSTED (too many turns), UNAVAILABLE (shutting down),
CANCELLED (the turn was cancelled). Standard health checking and server reflection are served.

A turn stops when its RPC ends early: a client cancel or deadline runs ``Turn.cancel`` (a gRPC
callback) and the engine stops before its next decoder layer or decode step, which frees the session.
``WorkerServer.stop`` lets running turns finish for the grace period, then cancels the rest the same
way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from gearkv.api.v1 import worker_pb2 as pb
from gearkv.api.v1 import worker_pb2_grpc
from gearkv.worker.engine import DEFAULT_MAX_NEW_TOKENS, SamplingParams
from gearkv.worker.errors import (
    InvalidRequest,
    SessionBusy,
    TurnCancelled,
    WorkerError,
    WorkerOverloaded,
)
from gearkv.worker.sessions import Turn, TurnStats, Worker
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

__all__ = [
    "SERVICE_NAME",
    "MalformedRequestInterceptor",
    "WorkerServer",
    "WorkerServicer",
    "params_from_proto",
    "start_worker_server",
]

log = logging.getLogger("gearkv.worker")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Worker"].full_name
STOP_TURNS_S = 5.0  # how long stop() waits for cancelled turns to end (each stops within a layer)
_OUTCOMES = {
    "hit": pb.RESUME_OUTCOME_HIT,
    "partial": pb.RESUME_OUTCOME_PARTIAL,
    "miss": pb.RESUME_OUTCOME_MISS,
}


def params_from_proto(p: pb.GenerationParams) -> SamplingParams:
    """Proto defaults (0 = default) resolved and validated.

    Raises:
        InvalidRequest: naming the out-of-range field.
    """
    try:
        return SamplingParams(
            max_new_tokens=p.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
            temperature=float(p.temperature),
            top_p=float(p.top_p) if p.top_p else 1.0,
            stop=tuple(p.stop),
            seed=int(p.seed),
        )
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc


def stats_to_proto(s: TurnStats) -> pb.TurnStats:
    return pb.TurnStats(
        outcome=_OUTCOMES.get(s.outcome, pb.RESUME_OUTCOME_UNSPECIFIED),
        reason=s.reason,
        source=s.source,
        prompt_tokens=s.prompt_tokens,
        tokens_reused=s.tokens_reused,
        tokens_prefilled=s.tokens_prefilled,
        tokens_generated=s.tokens_generated,
        bytes_pulled=s.bytes_pulled,
        bytes_pushed=s.bytes_pushed,
        bytes_raw=s.bytes_raw,
        bytes_stored=s.bytes_stored,
        ttft_s=s.ttft_s,
        pull_s=s.pull_s,
        decompress_s=s.decompress_s,
        prefill_s=s.prefill_s,
        decode_s=s.decode_s,
        compress_s=s.compress_s,
        push_pending=s.push_pending,
        codec=s.codec,
    )


def _abort_for(context: grpc.ServicerContext, exc: WorkerError) -> None:
    if isinstance(exc, InvalidRequest):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    elif isinstance(exc, SessionBusy):
        context.abort(grpc.StatusCode.ABORTED, str(exc))
    elif isinstance(exc, WorkerOverloaded):
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    elif isinstance(exc, TurnCancelled):
        context.abort(grpc.StatusCode.CANCELLED, str(exc))
    context.abort(grpc.StatusCode.INTERNAL, "worker error")


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    """Chat and Generate over one :class:`Worker`; keeps the turns it is streaming."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.closing = threading.Event()
        self._turns: set[Turn] = set()
        self._turns_changed = threading.Condition()

    def cancel_turns(self) -> int:
        """Cancel every running turn; returns how many there were."""
        with self._turns_changed:
            turns = list(self._turns)
        for turn in turns:
            turn.cancel()
        return len(turns)

    def wait_turns(self, timeout: float) -> bool:
        """Wait until no turn is running (at most ``timeout`` seconds); True if none is."""
        with self._turns_changed:
            return self._turns_changed.wait_for(lambda: not self._turns, timeout)

    def Chat(self, request: pb.ChatRequest, context: grpc.ServicerContext) -> Iterator[pb.GenerateResponse]:
        if self.closing.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "worker is shutting down")
        try:
            params = params_from_proto(request.params)
            turn = self.worker.chat(
                request.session_id,
                request.message,
                params,
                system_prompt=request.system_prompt,
                rewind_turns=request.rewind_turns,
            )
        except WorkerError as exc:
            _abort_for(context, exc)
        yield from self._stream(turn, context)

    def Generate(
        self, request: pb.GenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GenerateResponse]:
        if self.closing.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "worker is shutting down")
        try:
            params = params_from_proto(request.params)
            turn = self.worker.generate(list(request.token_ids), params, session_id=request.session_id)
        except WorkerError as exc:
            _abort_for(context, exc)
        yield from self._stream(turn, context)

    def _stream(self, turn: Turn, context: grpc.ServicerContext) -> Iterator[pb.GenerateResponse]:
        with self._turns_changed:
            self._turns.add(turn)
        try:
            # Runs when the RPC ends: a client cancel or deadline stops the turn within a layer.
            if not context.add_callback(turn.cancel):
                turn.cancel()  # the RPC already ended
            for delta in turn:
                if not context.is_active():
                    return
                if delta.text or delta.token_ids:
                    yield pb.GenerateResponse(text=delta.text, token_ids=delta.token_ids)
        except TurnCancelled as exc:
            log.info("a turn was cancelled after %d tokens", len(turn.token_ids))
            _abort_for(context, exc)
        except WorkerError as exc:
            _abort_for(context, exc)
        finally:
            turn.close()
            with self._turns_changed:
                self._turns.discard(turn)
                self._turns_changed.notify_all()
        stats = turn.stats or TurnStats()
        yield pb.GenerateResponse(stats=stats_to_proto(stats), finish_reason=turn.finish_reason)


class _Malformed:
    """Stands in for request bytes that did not decode (grpc would answer INTERNAL and log an ERROR)."""


_MALFORMED = _Malformed()


class MalformedRequestInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Request bytes that do not decode -> INVALID_ARGUMENT naming the RPC, like the store.

    The store's ``gearkv.store.interceptors`` does the same for grpc.aio (its ``_tolerant``
    deserializer); this is the minimal sync equivalent: the handler's deserializer returns a marker
    instead of raising, and the wrapped handler aborts on the marker before the servicer runs.
    """

    def __init__(self, prefix: str = f"/{SERVICE_NAME}/") -> None:
        self._prefix = prefix
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        path = handler_call_details.method
        wrapped = self._wrapped.get(path)
        if wrapped is not None:
            return wrapped
        handler = continuation(handler_call_details)
        if handler is None or not path.startswith(self._prefix) or handler.unary_stream is None:
            return handler  # the Worker service has unary-stream RPCs only
        wrapped = self._wrapped[path] = _tolerant_unary_stream(handler, path.removeprefix(self._prefix))
        return wrapped


def _tolerant_unary_stream(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    deserialize, behavior = handler.request_deserializer, handler.unary_stream

    def load(data: bytes) -> Any:
        try:
            return deserialize(data) if deserialize is not None else data
        except Exception:
            return _MALFORMED

    def unary_stream(request: Any, context: grpc.ServicerContext) -> Any:
        if request is _MALFORMED:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the {method} request is not a valid message (malformed bytes)",
            )
        return behavior(request, context)

    return grpc.unary_stream_rpc_method_handler(
        unary_stream, request_deserializer=load, response_serializer=handler.response_serializer
    )


class WorkerServer:
    """A started server: its address, and ``stop`` for a graceful shutdown."""

    def __init__(
        self, server: grpc.Server, servicer: WorkerServicer, health_servicer: Any, address: str
    ) -> None:
        self.server = server
        self.servicer = servicer
        self.health = health_servicer
        self.address = address

    def stop(self, grace: float = 5.0, close_worker: bool = True) -> None:
        """Refuse new turns, let running ones finish for ``grace`` seconds, then flush pushes.

        Turns still running after ``grace`` are cancelled; each stops before its next decoder layer
        or decode step (well under a second), so this returns about ``grace`` seconds after the call
        plus the time pending pushes take (bounded by :meth:`Worker.close`).
        """
        self.servicer.closing.set()
        self.health.enter_graceful_shutdown()
        stopped = self.server.stop(grace)
        deadline = time.monotonic() + grace
        self.servicer.wait_turns(grace)
        cancelled = self.servicer.cancel_turns()
        if cancelled:
            log.info("cancelled %d turn(s) still running after the %.1fs grace period", cancelled, grace)
        if not self.servicer.wait_turns(STOP_TURNS_S):
            log.warning("turns still running %.0fs after they were cancelled", STOP_TURNS_S)
        stopped.wait(max(0.0, deadline - time.monotonic()) + STOP_TURNS_S)
        if close_worker:
            self.servicer.worker.close()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return bool(self.server.wait_for_termination(timeout))


def start_worker_server(
    worker: Worker, host: str = "127.0.0.1", port: int = 0, *, max_workers: int | None = None
) -> WorkerServer:
    """Bind and start the Worker service (port 0 = a free port); returns the started server.

    Raises:
        RuntimeError: the address cannot be bound.
    """
    threads = max_workers or worker.options.max_turns_in_flight + 8
    server = grpc.server(
        ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gearkv-worker-rpc"),
        interceptors=[MalformedRequestInterceptor()],
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 8 << 20)],
    )
    servicer = WorkerServicer(worker)
    worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"cannot bind {host}:{port}")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    address = f"{host}:{bound}"
    log.info(
        "gearkv worker listening on %s (model %s, codec %s)",
        address,
        worker.engine.loaded.name,
        worker.codec.codec_id,
    )
    return WorkerServer(server, servicer, health_servicer, address)
