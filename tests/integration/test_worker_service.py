"""The Worker gRPC service on 127.0.0.1:0 with the real model and the real store."""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from gearkv.api.v1 import worker_pb2 as pb
from gearkv.api.v1 import worker_pb2_grpc
from gearkv.client import KVStoreClient
from gearkv.store.local import free_port
from gearkv.worker.config import SessionOptions
from gearkv.worker.engine import Engine
from gearkv.worker.metrics import WorkerMetrics
from gearkv.worker.service import start_worker_server
from gearkv.worker.sessions import Worker
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The real model on the worker's path: a transformers FutureWarning (a deprecated call) is an error.
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("error::FutureWarning")]


@pytest.fixture
def served(engine: Engine, store: Any) -> Iterator[tuple[worker_pb2_grpc.WorkerStub, Worker]]:
    client = KVStoreClient(store.address, token=store.tokens["alice"], timeout=20)
    worker = Worker(engine, client, SessionOptions(codec="gear4", chunk_size=64), WorkerMetrics())
    server = start_worker_server(worker, "127.0.0.1", 0)
    channel = grpc.insecure_channel(server.address)
    try:
        yield worker_pb2_grpc.WorkerStub(channel), worker
    finally:
        channel.close()
        server.stop(grace=1.0)
        client.close()


def _chat(stub: Any, session: str, message: str, **params: Any) -> list[pb.GenerateResponse]:
    p = pb.GenerationParams(**({"max_new_tokens": 8} | params))
    return list(stub.Chat(pb.ChatRequest(session_id=session, message=message, params=p), timeout=300))


def test_chat_streams_tokens_then_stats(served: Any, engine: Engine) -> None:
    stub, worker = served
    replies = _chat(stub, "svc-1", "Say hello.", max_new_tokens=12)
    *body, last = replies
    assert body and all(not r.HasField("stats") for r in body)
    tokens = [t for r in replies for t in r.token_ids]
    # an answer ends on EOS (its last token) or, without one, after exactly max_new_tokens
    assert last.HasField("stats")
    if tokens[-1] in engine.eos_ids:
        assert last.finish_reason == "eos" and len(tokens) <= 12
    else:
        assert last.finish_reason == "length" and len(tokens) == 12
    assert sum(len(r.token_ids) for r in replies) == last.stats.tokens_generated
    assert last.stats.outcome == pb.RESUME_OUTCOME_MISS and last.stats.reason == "new_session"
    assert last.stats.codec == "gear4.v1" and last.stats.ttft_s > 0
    worker.wait_for_pushes(60)
    second = _chat(stub, "svc-1", "Again, please.")[-1].stats
    assert second.outcome == pb.RESUME_OUTCOME_HIT and second.source == "hot_cache"
    assert second.tokens_reused > 0 and second.bytes_raw > second.bytes_stored > 0


def test_generate_raw_token_ids_with_and_without_session(served: Any, engine: Engine) -> None:
    stub, worker = served
    ids = engine.tokenizer("The quick brown fox", add_special_tokens=False)["input_ids"]
    params = pb.GenerationParams(max_new_tokens=5)
    replies = list(stub.Generate(pb.GenerateRequest(token_ids=ids, params=params), timeout=300))
    assert replies[-1].stats.tokens_generated == 5 and replies[-1].finish_reason == "length"
    replies = list(
        stub.Generate(pb.GenerateRequest(session_id="raw-1", token_ids=ids, params=params), timeout=300)
    )
    assert replies[-1].stats.prompt_tokens == len(ids)
    worker.wait_for_pushes(60)
    assert worker.client.get_session("raw-1").token_ids[: len(ids)] == tuple(ids)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ChatRequest(session_id="bad id!", message="hi"), "session_id"),
        (pb.ChatRequest(session_id="s", message=""), "message"),
        (
            pb.ChatRequest(session_id="s", message="hi", params=pb.GenerationParams(temperature=11)),
            "temperature",
        ),
        (pb.ChatRequest(session_id="s", message="hi", params=pb.GenerationParams(top_p=1.5)), "top_p"),
        (
            pb.ChatRequest(session_id="s", message="hi", params=pb.GenerationParams(max_new_tokens=5000)),
            "max_new_tokens",
        ),
        (pb.ChatRequest(session_id="s", message="hi", params=pb.GenerationParams(stop=[""])), "stop"),
        (pb.ChatRequest(session_id="new-s", message="hi", rewind_turns=3), "rewind_turns"),
    ],
)
def test_bad_chat_requests_are_invalid_argument(served: Any, request_: pb.ChatRequest, field: str) -> None:
    stub, _ = served
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Chat(request_, timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")


def test_bad_generate_requests_are_invalid_argument(served: Any) -> None:
    stub, _ = served
    for request_, field in [
        (pb.GenerateRequest(token_ids=[]), "token_ids"),
        (pb.GenerateRequest(token_ids=[1, 10**9]), "token_ids"),
        (pb.GenerateRequest(session_id="x" * 200, token_ids=[1, 2]), "session_id"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(request_, timeout=60))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (err.value.details() or "")


def test_second_turn_of_a_busy_session_is_aborted(served: Any) -> None:
    stub, _ = served
    params = pb.GenerationParams(max_new_tokens=200, stop=["\x00never"])
    first = stub.Chat(
        pb.ChatRequest(session_id="busy", message="Count to one hundred.", params=params), timeout=300
    )
    next(first)  # the first turn is now generating
    with pytest.raises(grpc.RpcError) as err:
        _chat(stub, "busy", "Hello?")
    assert err.value.code() == grpc.StatusCode.ABORTED
    first.cancel()


def test_health_is_serving(engine: Engine, store: Any) -> None:
    worker = Worker(engine, None, SessionOptions(), WorkerMetrics())
    server = start_worker_server(worker, "127.0.0.1", 0)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for name in ("", "gearkv.api.v1.Worker"):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(grace=0.5)


@pytest.mark.slow
def test_gearkv_worker_cli_serves_and_stops_on_sigterm(store: Any, tmp_path: Path) -> None:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "gearkv.cli",
        "worker",
        "--store",
        store.address,
        "--token",
        store.tokens["alice"],
        "--port",
        str(port),
        "--threads",
        "1",
        "--codec",
        "gear3",
    ]
    log = tmp_path / "worker.log"  # a file, not a pipe: output nobody reads can never block the worker
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and "listening on" not in log.read_text():
            assert proc.poll() is None, f"worker exited early:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
        assert f"listening on 127.0.0.1:{port}" in log.read_text()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            last = _chat(stub, "cli-1", "Hi!", max_new_tokens=4)[-1]
            assert last.stats.codec == "gear3.v1" and last.stats.tokens_generated == 4
        proc.terminate()
        try:
            rc = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            rc = None
        assert rc == 0, f"exit status {rc} after SIGTERM:\n{log.read_text()[-6000:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_rejects_bad_flags() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gearkv.cli", "worker", "--codec", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "codec" in done.stderr


def test_cli_refuses_a_gtc_codec_without_a_usable_calibration(tmp_path: Path) -> None:
    worker = [sys.executable, "-m", "gearkv.cli", "worker", "--port", "0", "--codec", "gtc2"]
    done = subprocess.run(worker, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "--codec gtc2 needs --codec-calibration FILE" in done.stderr and "Traceback" not in done.stderr
    damaged = tmp_path / "cal.json"
    damaged.write_text('{"format": "gearkv-codec-calibration", "version": 1, "sha256": "0", "body": {}}')
    done = subprocess.run(
        [*worker, "--codec-calibration", str(damaged)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "--codec-calibration: " in done.stderr and "checksum mismatch" in done.stderr
    assert "Traceback" not in done.stderr


# -- cancellation, shutdown, malformed requests ----------------------------------------------------


def long_prompt(tokens: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000, 40000) for _ in range(tokens)]


def in_flight(worker: Worker) -> float:
    value = worker.metrics.registry.get_sample_value("gearkv_worker_turns_in_flight")
    return float(value or 0.0)


def test_a_client_deadline_stops_the_prefill_and_frees_the_session(served: Any) -> None:
    """QA: after a 2 s deadline in a 5.5k-token prefill the worker computed on for 14 s and retries
    of the session got ABORTED. Now the prefill stops within a slice and the session is free."""
    stub, worker = served
    params = pb.GenerationParams(max_new_tokens=4)
    request = pb.GenerateRequest(session_id="deadline-1", token_ids=long_prompt(4000), params=params)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(request, timeout=1.5))  # the prefill takes ~15 s
    expired = time.monotonic()
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    retry = pb.GenerateRequest(session_id="deadline-1", token_ids=[1, 2, 3], params=params)
    while True:
        try:
            last = list(stub.Generate(retry, timeout=60))[-1]
            break
        except grpc.RpcError as exc:
            waited = time.monotonic() - expired
            assert exc.code() == grpc.StatusCode.ABORTED and waited < 1.5, f"{exc.code()} after {waited:.2f}s"
            time.sleep(0.05)
    freed = time.monotonic() - expired
    print(f"the session accepted a new turn {freed:.2f}s after the deadline")
    assert last.stats.tokens_generated == 4
    worker.wait_for_pushes(60)
    assert in_flight(worker) == 0  # the cancelled turn's generator has finished
    cpu = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - cpu < 0.3  # nothing computes on: a running prefill burns ~1 s here


def test_malformed_request_bytes_are_invalid_argument(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    worker = Worker(engine, None, SessionOptions(), WorkerMetrics())
    server = start_worker_server(worker, "127.0.0.1", 0)
    try:
        with grpc.insecure_channel(server.address) as channel:
            for method in ("Chat", "Generate"):
                call = channel.unary_stream(f"/gearkv.api.v1.Worker/{method}")  # bytes in, bytes out
                for garbage in (b"\xff" * 8, b"\x0a\x05ab", b"\x12\x80"):
                    with pytest.raises(grpc.RpcError) as err:
                        list(call(garbage, timeout=30))
                    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert method in (err.value.details() or "") and "malformed" in err.value.details()
            # well-formed requests still get through the interceptor
            stub = worker_pb2_grpc.WorkerStub(channel)
            assert _chat(stub, "ok-1", "Hi", max_new_tokens=2)[-1].stats.tokens_generated == 2
    finally:
        server.stop(grace=0.5)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_sigterm_during_a_long_prefill_exits_within_the_grace_period(tmp_path: Path) -> None:
    """QA: SIGTERM during a 7k-token prefill exited after 24 s. Now: grace, then the turn is cancelled."""
    port, grace = free_port(), 1.0
    cmd = [sys.executable, "-m", "gearkv.cli", "worker", "--port", str(port), "--threads", "2"]
    cmd += ["--grace", str(grace)]
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
    errors: list[grpc.RpcError] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and "listening on" not in log.read_text():
            assert proc.poll() is None, f"worker exited early:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = worker_pb2_grpc.WorkerStub(channel)
        request = pb.GenerateRequest(
            token_ids=long_prompt(5000), params=pb.GenerationParams(max_new_tokens=4)
        )

        def call() -> None:
            try:
                list(stub.Generate(request, timeout=120))
            except grpc.RpcError as exc:
                errors.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(1.5)  # the prefill (~20 s) is under way
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - started
        print(f"exited {took:.2f}s after SIGTERM (grace {grace}s)")
        assert rc == 0, f"exit status {rc} after SIGTERM:\n{log.read_text()[-6000:]}"
        assert took < grace + 2.5, log.read_text()[-3000:]
        caller.join(30)
        channel.close()
        assert errors and errors[0].code() in {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
