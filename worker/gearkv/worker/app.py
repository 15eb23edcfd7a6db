"""Assembling a worker from a WorkerConfig: model, engine, store client, metrics, gRPC server."""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
import threading
import time
from typing import Any

import torch
from gearkv.codec import CalibrationError
from gearkv.worker.codec_setup import load_calibration, missing_calibration, needs_calibration
from gearkv.worker.config import WorkerConfig
from gearkv.worker.engine import Engine
from gearkv.worker.fingerprint import model_fingerprint
from gearkv.worker.hf_cache import UnsupportedSharingError
from gearkv.worker.metrics import WorkerMetrics
from gearkv.worker.model import LoadedModel, load_model
from gearkv.worker.service import start_worker_server
from gearkv.worker.sessions import PUSH_DRAIN_S, Worker
from gearkv.worker.sharing import SharingPlanError, load_plan
from prometheus_client import CollectorRegistry, start_http_server

__all__ = ["build_worker", "connect_store", "interrupt_on_sigterm", "serve", "start_http_api"]

log = logging.getLogger("gearkv.worker")


def connect_store(target: str | None, token: str | None, timeout_s: float = 10.0) -> Any:
    """A KVStoreClient for ``target`` (None without a store)."""
    if not target:
        return None
    from gearkv.client import KVStoreClient

    return KVStoreClient(target, token=token, timeout=timeout_s)


def build_worker(
    cfg: WorkerConfig,
    *,
    loaded: LoadedModel | None = None,
    engine: Engine | None = None,
    registry: CollectorRegistry | None = None,
    client: Any = None,
) -> Worker:
    """Load (or reuse) the model, warm it up and wire the store client and metrics.

    With ``cfg.session.sharing_plan`` the engine runs the model with that KVSharer plan; a gtc
    ``cfg.session.codec`` is bound to the calibration in ``cfg.session.codec_calibration``.

    Raises:
        SharingPlanError: the plan file is unreadable or invalid, or made for another model.
        UnsupportedSharingError: the model lacks the attention layout KV sharing needs.
        CalibrationError: a gtc codec without ``--codec-calibration``, an unreadable or damaged
            calibration file, one made for another model, or for another number of stored KV layers
            (a KV sharing plan stores only its owner layers); the message names the flag.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    fingerprint = None
    # The codec calibration, read once, before the model loads (a bad file fails at once); the Worker
    # checks it against the model and the layers it stores.
    calibration = None
    if needs_calibration(cfg.session.codec):
        if not cfg.session.codec_calibration:
            raise missing_calibration(cfg.session.codec)
        calibration = load_calibration(cfg.session.codec_calibration)
    elif cfg.session.codec_calibration:
        log.warning(
            "--codec-calibration is ignored: --codec %s needs no calibration (only gtc2 and gtc3 do)",
            cfg.session.codec,
        )
    if engine is None:
        plan = load_plan(cfg.session.sharing_plan) if cfg.session.sharing_plan else None
        loaded = loaded or load_model(cfg.model, cfg.gguf_file, cfg.device, cfg.dtype)
        if plan is not None or calibration is not None:
            fingerprint = model_fingerprint(loaded)
        if plan is not None:
            assert fingerprint is not None
            plan.check_model(fingerprint)  # before the model is changed
        engine = Engine(loaded, sharing=plan)
        engine.warmup()
    if client is None:
        client = connect_store(cfg.store, cfg.token, cfg.store_timeout_s)
    metrics = WorkerMetrics(registry if registry is not None else CollectorRegistry())
    worker = Worker(engine, client, cfg.session, metrics, fingerprint=fingerprint, calibration=calibration)
    metrics.track_hot_cache(worker.hot)
    return worker


def interrupt_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C (``KeyboardInterrupt``) in the main thread.

    For commands that start child processes (``gearkv demo``, ``gearkv bench resume``): their
    ``with`` blocks then stop redis-server and the store, which are never orphaned. Does nothing
    outside the main thread, where Python cannot install signal handlers.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def start_http_api(cfg: WorkerConfig, registry: CollectorRegistry) -> Any:
    """The OpenAI-compatible HTTP API on ``cfg.http_port``, started (it answers 503 until a Worker is
    attached); None when the port is not set.

    Raises:
        RuntimeError: the port cannot be bound.
    """
    if cfg.http_port is None:
        return None
    from gearkv.worker.openai_api import HttpApi

    api = HttpApi(
        cfg.host,
        cfg.http_port,
        keys=cfg.api_keys,
        connect=lambda token: connect_store(cfg.store, token, cfg.store_timeout_s),
        registry=registry,
    )
    api.start()
    print(f"gearkv worker HTTP API on http://{api.address}/v1", flush=True)
    return api


def serve(cfg: WorkerConfig) -> int:
    """Run ``gearkv worker`` until SIGTERM/SIGINT; returns the exit code."""
    registry = CollectorRegistry()
    try:
        http = start_http_api(cfg, registry)  # before the model loads: /health says "loading"
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    try:
        worker = build_worker(cfg, registry=registry)
    except (SharingPlanError, UnsupportedSharingError) as exc:
        log.error("%s", exc)
        if http is not None:
            http.stop(0)
        return 1
    except CalibrationError as exc:  # a usage error, like a bad flag: no traceback, exit 2
        log.error("%s", exc)
        if http is not None:
            http.stop(0)
        return 2
    # Handlers before the port opens, so a SIGTERM right after it answers still drains the worker.
    # The handler only flips a flag: taking a lock in a signal handler (threading.Event.set) can
    # deadlock against the same lock held by the interrupted main thread.
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    if http is not None:
        http.attach(worker)  # the model is loaded: the HTTP API answers from now on
    try:
        server = start_worker_server(worker, cfg.host, cfg.port)
    except RuntimeError as exc:
        log.error("%s", exc)
        if http is not None:
            http.stop(0)
        return 1
    if cfg.metrics_port is not None:
        start_http_server(cfg.metrics_port, addr=cfg.host, registry=registry)
    print(f"gearkv worker listening on {server.address}", flush=True)
    while not stopping:
        time.sleep(0.2)  # a signal interrupts the sleep; its handler runs here, in the main thread
    log.info("shutting down (grace %.1fs)", cfg.grace_s)
    # A shutdown that outlives its budget (running turns, then pending pushes) dumps every thread's
    # stack and exits non-zero instead of hanging until someone sends SIGKILL.
    faulthandler.dump_traceback_later(cfg.grace_s + PUSH_DRAIN_S + 30, exit=True, file=sys.stderr)
    http_stop = None
    if http is not None:  # its turns and its tenants' pushes, alongside the gRPC server's
        http_stop = threading.Thread(target=http.stop, args=(cfg.grace_s,), name="gearkv-http-stop")
        http_stop.start()
    server.stop(cfg.grace_s)
    if http_stop is not None:
        http_stop.join()
    if worker.client is not None:
        worker.client.close()
    return 0
