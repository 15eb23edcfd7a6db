"""The Worker gRPC service: thin handlers that translate proto messages to :class:`Worker` calls.

A synchronous ``grpc.server`` with a thread pool: turns are CPU/GPU-bound model work, so each one
runs on its own thread (PyTorch releases the GIL in its kernels), and the streamed answer is a plain
generator. Status codes: INVALID_ARGUMENT (the message names the field), ABORTED (session busy),
RESOURCE_EXHAUSTED (too many turns), UNAVAILABLE (shutting down). Standard health checking and
server reflection are served.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from gearkv.api.v1 import worker_pb2 as pb
from gearkv.api.v1 import worker_pb2_grpc
from gearkv.worker.engine import DEFAULT_MAX_NEW_TOKENS, SamplingParams
from gearkv.worker.errors import InvalidRequest, SessionBusy, WorkerError, WorkerOverloaded
from gearkv.worker.sessions import Turn, TurnStats, Worker
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

__all__ = ["SERVICE_NAME", "WorkerServer", "WorkerServicer", "params_from_proto", "start_worker_server"]

log = logging.getLogger("gearkv.worker")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Worker"].full_name
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
    context.abort(grpc.StatusCode.INTERNAL, "worker error")


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    """Chat and Generate over one :class:`Worker`."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.closing = threading.Event()

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
        try:
            for delta in turn:
                if not context.is_active():
                    return
                if delta.text or delta.token_ids:
                    yield pb.GenerateResponse(text=delta.text, token_ids=delta.token_ids)
        except WorkerError as exc:
            _abort_for(context, exc)
        finally:
            turn.close()
        stats = turn.stats or TurnStats()
        yield pb.GenerateResponse(stats=stats_to_proto(stats), finish_reason=turn.finish_reason)


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
        """Refuse new turns, let running ones finish for ``grace`` seconds, then flush pushes."""
        self.servicer.closing.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
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
