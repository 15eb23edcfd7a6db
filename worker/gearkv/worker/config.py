"""WorkerConfig: everything ``gearkv worker`` needs, frozen and validated; only the CLI reads env/flags.

Each field the CLI sets declares its flag, variable and help next to its one default
(:func:`gearkv.api.options.option`); ``gearkv worker --help`` is generated from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gearkv.api.limits import MAX_CHUNK_SIZE, MAX_LEASE_MS
from gearkv.api.options import option, size
from gearkv.worker.api_keys import ApiKey

__all__ = ["SessionOptions", "WorkerConfig"]


@dataclass(frozen=True)
class SessionOptions:
    """How the worker stores and reuses KV (frozen; built by the entrypoints from flags/env)."""

    codec: str = option(
        "gear4",
        flag="--codec",
        env="GEARKV_CODEC",
        help="codec preset: fp16 raw kivi2 kivi4 gear2 gear3 gear4 gtc2 gtc3 (gtc2 and gtc3 need "
        "--codec-calibration)",
    )
    codec_calibration: str | None = option(
        None,
        flag="--codec-calibration",
        env="GEARKV_CODEC_CALIBRATION",
        help="codec calibration file from `gearkv calibrate-codec`, made for this model: the gtc presets "
        "need one; stored KV is namespaced by its digest (unset: the other presets need none)",
    )
    chunk_size: int = option(
        256, flag="--chunk-size", env="GEARKV_CHUNK_SIZE", help="tokens per stored chunk"
    )
    hot_cache_bytes: int = option(
        1 << 30,
        flag="--hot-cache-bytes",
        env="GEARKV_HOT_CACHE_BYTES",
        help="local LRU of sessions' exact KV (0 disables it)",
        parse=size,
    )
    # Pull a stored prefix only if it covers at least this many tokens (tiny ones recompute faster).
    min_reuse_tokens: int = option(
        1,
        flag="--min-reuse-tokens",
        env="GEARKV_MIN_REUSE_TOKENS",
        help="pull a stored prefix only if it covers at least this many tokens",
    )
    max_turns_in_flight: int = option(
        4, flag="--max-turns", env="GEARKV_MAX_TURNS", help="turns generated at once"
    )
    chunk_ttl_s: int = option(
        0, flag="--chunk-ttl", env="GEARKV_CHUNK_TTL_S", help="chunk TTL, seconds (0: the store's own TTL)"
    )
    session_ttl_s: int = option(
        0,
        flag="--session-ttl",
        env="GEARKV_SESSION_TTL_S",
        help="session TTL, seconds (0: the store's own TTL)",
    )
    sharing_plan: str | None = option(
        None,
        flag="--sharing-plan",
        env="GEARKV_SHARING_PLAN",
        help="KVSharer plan file from `gearkv calibrate-sharing`: its shared layers reuse their owner "
        "layers' KV, which is all that is cached and stored (unset: no sharing)",
    )
    # Push and commit in a background thread (False: before the turn's last message; for tests).
    background_push: bool = True
    # How long a turn waits for the store to begin it (and for the prefix lookup) before it goes on
    # from what this worker holds, or recomputes; retries included.
    store_read_budget_s: float = option(
        0.5,
        flag="--store-read-budget",
        env="GEARKV_STORE_READ_BUDGET_S",
        help="seconds a turn waits for the store to begin it (retries included) before it goes on from "
        "this worker's copy of the session or recomputes",
    )
    # The session's turn lease: renewed every third of it while the turn runs.
    lease_ms: int = option(
        30_000,
        flag="--lease-ms",
        env="GEARKV_LEASE_MS",
        help="a session's turn lease in the store, ms (renewed while the turn runs): no other worker runs "
        "a turn of the session meanwhile",
    )
    # A push that failed because the store was away is retried in the background this long.
    recommit_window_s: float = option(
        300.0,
        flag="--recommit-window",
        env="GEARKV_RECOMMIT_WINDOW_S",
        help="seconds a turn whose push failed (store away) is retried in the background",
    )

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_SIZE}")
        if self.hot_cache_bytes < 0:
            raise ValueError("hot_cache_bytes must be >= 0 (0 disables the hot cache)")
        if self.min_reuse_tokens < 1:
            raise ValueError("min_reuse_tokens must be >= 1")
        if not 1 <= self.max_turns_in_flight <= 1024:
            raise ValueError("max_turns_in_flight must be in 1..1024")
        if self.chunk_ttl_s < 0 or self.session_ttl_s < 0:
            raise ValueError("chunk_ttl_s and session_ttl_s must be >= 0")
        if not 0.01 <= self.store_read_budget_s <= 60:
            raise ValueError("store_read_budget_s must be in 0.01..60 seconds")
        if not 1000 <= self.lease_ms <= MAX_LEASE_MS:
            raise ValueError(f"lease_ms must be in 1000..{MAX_LEASE_MS}")
        if self.recommit_window_s < 0:
            raise ValueError("recommit_window_s must be >= 0")


@dataclass(frozen=True)
class WorkerConfig:
    """A worker process's settings (``ValueError`` names the bad field).

    ``store`` None runs without a store (hot cache only; every new worker recomputes).
    """

    store: str | None = option(
        None, flag="--store", env="GEARKV_STORE", help="store address host:port (unset: hot cache only)"
    )
    token: str | None = option(
        None, flag="--token", env="GEARKV_TOKEN", help="bearer token of the tenant in the store"
    )
    model: str | None = option(
        None, flag="--model", env="GEARKV_MODEL", help="model folder or hub name (unset: bundled SmolLM2)"
    )
    gguf_file: str | None = option(
        None, flag="--gguf-file", env="GEARKV_GGUF_FILE", help="GGUF file inside --model"
    )
    device: str | None = option(
        None, flag="--device", env="GEARKV_DEVICE", help="cpu, cuda, cuda:1 (unset: cuda if available)"
    )
    dtype: str | None = option(
        None,
        flag="--dtype",
        env="GEARKV_DTYPE",
        help="float32, float16, bfloat16 (unset: fp32 on CPU, fp16 on GPU)",
    )
    host: str = option("127.0.0.1", flag="--host", env="GEARKV_WORKER_HOST", help="interface to bind")
    port: int = option(50061, flag="--port", env="GEARKV_WORKER_PORT", help="gRPC port (0 = any free port)")
    metrics_port: int | None = option(
        None, flag="--metrics-port", env="GEARKV_WORKER_METRICS_PORT", help="serve Prometheus /metrics here"
    )
    threads: int | None = option(None, flag="--threads", env="GEARKV_THREADS", help="torch intra-op threads")
    store_timeout_s: float = option(
        10.0, flag="--store-timeout", env="GEARKV_STORE_TIMEOUT_S", help="deadline of store calls, seconds"
    )
    grace_s: float = option(
        5.0, flag="--grace", env="GEARKV_GRACE_S", help="graceful shutdown period, seconds"
    )
    http_port: int | None = option(
        None,
        flag="--http-port",
        env="GEARKV_WORKER_HTTP_PORT",
        help="serve the OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models, "
        "/health) on this port of --host (0 = any free port; unset: off)",
    )
    api_keys_file: str | None = option(
        None,
        flag="--api-keys-file",
        env="GEARKV_API_KEYS_FILE",
        help='HTTP API keys, JSON {"tenant": {"api_key": "...", "store_token": "..."}} (or that JSON in '
        "GEARKV_API_KEYS): each key's requests use its tenant's store token (unset: one local tenant, "
        "no key checked)",
    )
    # The parsed keys (the CLI loads them from api_keys_file or GEARKV_API_KEYS); () = one local tenant.
    api_keys: tuple[ApiKey, ...] = ()
    session: SessionOptions = field(default_factory=SessionOptions)
    log_level: str = option(
        "INFO", flag="--log-level", env="GEARKV_LOG_LEVEL", help="DEBUG, INFO, WARNING, ERROR"
    )

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be in 0..65535")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError("metrics_port must be in 0..65535")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ValueError("http_port must be in 0..65535")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be >= 1")
        if self.store_timeout_s <= 0 or self.grace_s < 0:
            raise ValueError("store_timeout_s must be > 0 and grace_s >= 0")
        if self.token is not None and not self.token:
            raise ValueError("token must not be empty")
