"""`gearkv store`: flags and GEARKV_* environment variables -> StoreConfig -> serve().

Every flag has an environment variable (the flag wins); ``--help`` lists both and the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from gearkv.api.units import format_size, parse_size
from gearkv.store.auth import parse_tenants
from gearkv.store.config import StoreConfig

_DEFAULTS = {f.name: f.default for f in fields(StoreConfig)}
log = logging.getLogger("gearkv.store")


def size(text: str) -> int:
    """A byte count: ``4096``, ``64KB``, ``512MiB``, ``1GiB`` (units are powers of 1024)."""
    return parse_size(text)


# (flag, env var, StoreConfig field, type, help)
_OPTIONS: tuple[tuple[str, str, str, Callable[[str], Any], str], ...] = (
    (
        "--redis-url",
        "GEARKV_REDIS_URL",
        "redis_url",
        str,
        "redis://[user:pass@]host:port/db, rediss:// for TLS, redis+cluster://host:port for Redis Cluster",
    ),
    ("--host", "GEARKV_HOST", "host", str, "interface to bind the gRPC port on"),
    ("--port", "GEARKV_PORT", "port", int, "gRPC port (0 = any free port)"),
    ("--chunk-ttl", "GEARKV_CHUNK_TTL_S", "default_chunk_ttl_s", int, "default chunk TTL, seconds"),
    ("--max-chunk-ttl", "GEARKV_MAX_CHUNK_TTL_S", "max_chunk_ttl_s", int, "cap on a requested chunk TTL"),
    ("--session-ttl", "GEARKV_SESSION_TTL_S", "default_session_ttl_s", int, "default session TTL, seconds"),
    ("--max-session-ttl", "GEARKV_MAX_SESSION_TTL_S", "max_session_ttl_s", int, "cap on a session TTL"),
    ("--max-chunk-bytes", "GEARKV_MAX_CHUNK_BYTES", "max_chunk_bytes", size, "largest accepted chunk"),
    (
        "--max-message-bytes",
        "GEARKV_MAX_MESSAGE_BYTES",
        "max_message_bytes",
        size,
        "gRPC message size cap (send and receive)",
    ),
    (
        "--download-part-bytes",
        "GEARKV_DOWNLOAD_PART_BYTES",
        "download_part_bytes",
        size,
        "size of the parts GetChunk streams (16 KiB - 1 MiB)",
    ),
    (
        "--max-in-flight",
        "GEARKV_MAX_IN_FLIGHT",
        "max_in_flight",
        int,
        "requests handled at once; more get RESOURCE_EXHAUSTED",
    ),
    ("--redis-timeout", "GEARKV_REDIS_TIMEOUT_S", "redis_timeout_s", float, "Redis socket timeout, seconds"),
    (
        "--redis-retry-budget",
        "GEARKV_REDIS_RETRY_BUDGET_S",
        "redis_retry_budget_s",
        float,
        "time one operation may spend retrying Redis errors before UNAVAILABLE",
    ),
    (
        "--redis-max-connections",
        "GEARKV_REDIS_MAX_CONNECTIONS",
        "redis_max_connections",
        int,
        "Redis connection pool size (per node in a cluster)",
    ),
    (
        "--redis-tls-ca",
        "GEARKV_REDIS_TLS_CA",
        "redis_tls_ca",
        str,
        "CA bundle to verify Redis's TLS certificate",
    ),
    ("--grace", "GEARKV_GRACE_S", "grace_s", float, "graceful shutdown period on SIGTERM, seconds"),
    ("--metrics-port", "GEARKV_METRICS_PORT", "metrics_port", int, "serve Prometheus /metrics on this port"),
    ("--tls-cert", "GEARKV_TLS_CERT", "tls_cert", str, "PEM certificate chain for TLS on the gRPC port"),
    ("--tls-key", "GEARKV_TLS_KEY", "tls_key", str, "PEM private key for --tls-cert"),
    (
        "--tls-client-ca",
        "GEARKV_TLS_CLIENT_CA",
        "tls_client_ca",
        str,
        "PEM CA bundle: require client certificates signed by it (mutual TLS)",
    ),
    ("--log-level", "GEARKV_LOG_LEVEL", "log_level", str, "DEBUG, INFO, WARNING or ERROR"),
)
_TRUE = {"1", "true", "yes", "on"}
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def build_parser(prog: str, env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the GearKV KV store over gRPC, backed by Redis or Redis Cluster.",
        epilog=(
            "Tenants and tokens: --tokens-file FILE or GEARKV_TOKENS hold a JSON object "
            '{"tenant": {"token_sha256": "<hex>", "quota_bytes": N}} (or {"token": "..."}, hashed at load; '
            "quota_bytes in bytes, 0 = no quota); "
            "GEARKV_TOKENS also takes name=token,name=token. --no-auth serves one tenant 'default' "
            "without tokens (local demos only); with no tokens at all the store does the same, but only "
            "when bound to a loopback host."
        ),
    )
    for flag, var, name, kind, help_ in _OPTIONS:
        default = _DEFAULTS[name]
        metavar = None
        if kind is size and isinstance(default, int):
            default, metavar = format_size(default), "SIZE"
            help_ += " (bytes, or a size: 64KB, 512MiB, 1GiB)"
        parser.add_argument(
            flag,
            dest=name,
            type=kind,
            default=None,
            metavar=metavar,
            help=f"{help_} [env {var}; default {'not set' if default is None else default}]",
        )
    parser.add_argument(
        "--cluster",
        action="store_true",
        default=None,
        help="treat --redis-url as a Redis Cluster seed [env GEARKV_REDIS_CLUSTER; default off]",
    )
    parser.add_argument(
        "--tokens-file",
        default=None,
        help="tenant tokens (JSON, see below) [env GEARKV_TOKENS_FILE; default not set]",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        default=None,
        help="no tokens: every caller is tenant 'default' [env GEARKV_NO_AUTH; default off]",
    )
    return parser


def config_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> StoreConfig:
    """Merge flags over GEARKV_* variables over defaults. Raises ValueError naming the bad setting."""
    values: dict[str, Any] = {}
    for _flag, var, name, kind, _help in _OPTIONS:
        value = getattr(args, name)
        if value is None and env.get(var):
            try:
                value = kind(env[var])
            except ValueError as exc:
                detail = str(exc) if kind is size else f"a {getattr(kind, '__name__', 'value')}"
                raise ValueError(f"{var} must be {detail}") from None
        if value is not None:
            values[name] = value
    cluster = args.cluster or env.get("GEARKV_REDIS_CLUSTER", "").lower() in _TRUE
    no_auth = _no_auth(args, env)
    tokens_file = args.tokens_file or env.get("GEARKV_TOKENS_FILE")
    tenants: tuple[Any, ...] = ()
    if tokens_file:
        try:
            text = Path(tokens_file).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read tokens file {tokens_file}: {exc.strerror}") from None
        tenants = parse_tenants(text)
    elif env.get("GEARKV_TOKENS"):
        tenants = parse_tenants(env["GEARKV_TOKENS"])
    auth = not no_auth
    if auth and not tenants:
        host = values.get("host", _DEFAULTS["host"])
        if host not in _LOOPBACK:
            raise ValueError(
                f"no tenant tokens configured and --host {host} is not loopback: give --tokens-file or "
                "GEARKV_TOKENS (or --no-auth to serve without authentication on purpose)"
            )
        auth = False  # loopback only: the local demo works with no setup (main says so in its log)
    return StoreConfig(cluster=cluster, auth=auth, tenants=tenants, **values)


def _no_auth(args: argparse.Namespace, env: Mapping[str, str]) -> bool:
    return bool(args.no_auth) or env.get("GEARKV_NO_AUTH", "").lower() in _TRUE


def auth_notice(cfg: StoreConfig, no_auth_asked: bool) -> str | None:
    """The start-up warning when the store serves without authentication (None when auth is on)."""
    if cfg.auth:
        return None
    if no_auth_asked:
        return "serving tenant 'default' WITHOUT authentication (--no-auth): every caller is that tenant"
    return (
        "no tenant tokens configured: serving tenant 'default' WITHOUT authentication "
        f"(allowed on loopback host {cfg.host} only)"
    )


def main(argv: Sequence[str] | None = None, prog: str = "gearkv store") -> int:
    env = os.environ
    args = build_parser(prog, env).parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        cfg = config_from_args(args, env)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, cfg.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    notice = auth_notice(cfg, _no_auth(args, env))
    if notice is not None:
        log.warning("%s", notice)
    from gearkv.store.tuning import keep_freed_memory

    keep_freed_memory()
    return asyncio.run(serve_cfg(cfg))


async def serve_cfg(cfg: StoreConfig) -> int:
    from gearkv.store.server import serve

    return await serve(cfg)


if __name__ == "__main__":
    sys.exit(main())
