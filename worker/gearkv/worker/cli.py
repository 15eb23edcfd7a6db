"""`gearkv worker`: flags and GEARKV_* environment variables -> WorkerConfig -> serve().

Every flag has an environment variable (the flag wins); ``--help`` lists both and the defaults.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from gearkv.api import units
from gearkv.cli import HelpFormatter
from gearkv.worker.config import SessionOptions, WorkerConfig

__all__ = ["config_from_args", "main", "parse_size"]


def parse_size(text: str) -> int:
    """The argparse type of byte-size flags: ``"512MiB"``, ``"1GiB"``, ``"64KB"``, ``"0"`` -> bytes.

    See :func:`gearkv.api.units.parse_size` (every unit a power of 1024).
    """
    try:
        return units.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


# (flag, env var, destination, type, default, help)
_OPTIONS: tuple[tuple[str, str, str, Any, Any, str], ...] = (
    ("--store", "GEARKV_STORE", "store", str, None, "store address host:port (none: hot cache only)"),
    ("--token", "GEARKV_TOKEN", "token", str, None, "bearer token of the tenant in the store"),
    ("--model", "GEARKV_MODEL", "model", str, None, "model folder or hub name (default: bundled SmolLM2)"),
    ("--gguf-file", "GEARKV_GGUF_FILE", "gguf_file", str, None, "GGUF file inside --model"),
    ("--device", "GEARKV_DEVICE", "device", str, None, "cpu, cuda, cuda:1 (default: cuda if available)"),
    (
        "--dtype",
        "GEARKV_DTYPE",
        "dtype",
        str,
        None,
        "float32, float16, bfloat16 (default: fp32 on CPU, fp16 on GPU)",
    ),
    (
        "--codec",
        "GEARKV_CODEC",
        "codec",
        str,
        "gear4",
        "codec preset: fp16 raw kivi2 kivi4 gear2 gear3 gear4",
    ),
    ("--chunk-size", "GEARKV_CHUNK_SIZE", "chunk_size", int, 256, "tokens per stored chunk"),
    (
        "--hot-cache-bytes",
        "GEARKV_HOT_CACHE_BYTES",
        "hot_cache_bytes",
        parse_size,
        "1GiB",
        "local LRU of sessions' exact KV, e.g. 512MiB, 2GiB (0 disables it)",
    ),
    (
        "--min-reuse-tokens",
        "GEARKV_MIN_REUSE_TOKENS",
        "min_reuse_tokens",
        int,
        1,
        "pull a stored prefix only if it covers at least this many tokens",
    ),
    ("--max-turns", "GEARKV_MAX_TURNS", "max_turns_in_flight", int, 4, "turns generated at once"),
    (
        "--chunk-ttl",
        "GEARKV_CHUNK_TTL_S",
        "chunk_ttl_s",
        int,
        0,
        "chunk TTL, seconds (0: the store's own TTL)",
    ),
    (
        "--session-ttl",
        "GEARKV_SESSION_TTL_S",
        "session_ttl_s",
        int,
        0,
        "session TTL, seconds (0: the store's own TTL)",
    ),
    (
        "--store-read-budget",
        "GEARKV_STORE_READ_BUDGET_S",
        "store_read_budget_s",
        float,
        0.5,
        "seconds a turn waits for the store to begin it (retries included) before it goes on from "
        "this worker's copy of the session or recomputes",
    ),
    (
        "--lease-ms",
        "GEARKV_LEASE_MS",
        "lease_ms",
        int,
        30_000,
        "a session's turn lease in the store (renewed while the turn runs): no other worker runs a "
        "turn of the session meanwhile",
    ),
    (
        "--recommit-window",
        "GEARKV_RECOMMIT_WINDOW_S",
        "recommit_window_s",
        float,
        300.0,
        "seconds a turn whose push failed (store away) is retried in the background",
    ),
    ("--host", "GEARKV_WORKER_HOST", "host", str, "127.0.0.1", "interface to bind"),
    ("--port", "GEARKV_WORKER_PORT", "port", int, 50061, "gRPC port (0 = any free port)"),
    (
        "--metrics-port",
        "GEARKV_WORKER_METRICS_PORT",
        "metrics_port",
        int,
        None,
        "serve Prometheus /metrics here",
    ),
    ("--threads", "GEARKV_THREADS", "threads", int, None, "torch intra-op threads"),
    ("--store-timeout", "GEARKV_STORE_TIMEOUT_S", "store_timeout_s", float, 10.0, "deadline of store calls"),
    ("--grace", "GEARKV_GRACE_S", "grace_s", float, 5.0, "graceful shutdown period, seconds"),
    ("--log-level", "GEARKV_LOG_LEVEL", "log_level", str, "INFO", "DEBUG, INFO, WARNING, ERROR"),
)
_SESSION_FIELDS = {
    "codec",
    "chunk_size",
    "hot_cache_bytes",
    "min_reuse_tokens",
    "max_turns_in_flight",
    "chunk_ttl_s",
    "session_ttl_s",
    "store_read_budget_s",
    "lease_ms",
    "recommit_window_s",
}


def _parser(prog: str, env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the GearKV inference worker: chat sessions resumed from the KV store.",
        formatter_class=HelpFormatter,
    )
    for flag, var, dest, typ, default, help_ in _OPTIONS:
        value = default
        if var in env:
            try:
                typ(env[var])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{var}={env[var]!r}: {exc}")
            value = env[var]  # a string default goes through ``type`` and --help shows it as given
        metavar = "SIZE" if typ is parse_size else flag.removeprefix("--").upper().replace("-", "_")
        parser.add_argument(
            flag, dest=dest, type=typ, default=value, metavar=metavar, help=f"{help_} [env {var}]"
        )
    return parser


def config_from_args(
    argv: Sequence[str], prog: str = "gearkv worker", env: Mapping[str, str] | None = None
) -> WorkerConfig:
    """Parse flags (over ``env``, default ``os.environ``); exits with status 2 on bad input."""
    parser = _parser(prog, os.environ if env is None else env)
    ns = vars(parser.parse_args(list(argv)))
    try:
        session = SessionOptions(**{k: ns.pop(k) for k in list(ns) if k in _SESSION_FIELDS})
        from gearkv.codec import PRESETS

        if session.codec not in PRESETS:
            raise ValueError(f"codec must be one of {sorted(PRESETS)}")
        return WorkerConfig(session=session, **ns)
    except ValueError as exc:
        parser.error(str(exc))
    raise AssertionError("unreachable")


def main(argv: Sequence[str], prog: str = "gearkv worker") -> int:
    cfg = config_from_args(argv, prog)
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from gearkv.worker.app import serve

    return serve(cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
