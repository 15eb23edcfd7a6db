"""WorkerConfig: everything ``gearkv worker`` needs, frozen and validated; only the CLI reads env/flags."""

from __future__ import annotations

from dataclasses import dataclass, field

from gearkv.api.limits import MAX_CHUNK_SIZE, MAX_LEASE_MS

__all__ = ["SessionOptions", "WorkerConfig"]


@dataclass(frozen=True)
class SessionOptions:
    """How the worker stores and reuses KV (frozen; built by the entrypoints from flags/env)."""

    codec: str = "gear4"
    chunk_size: int = 256
    hot_cache_bytes: int = 1 << 30
    # Pull a stored prefix only if it covers at least this many tokens (tiny ones recompute faster).
    min_reuse_tokens: int = 1
    max_turns_in_flight: int = 4
    chunk_ttl_s: int = 0
    session_ttl_s: int = 0
    # Push and commit in a background thread (False: before the turn's last message; for tests).
    background_push: bool = True
    # How long a turn waits for the store to begin it (and for the prefix lookup) before it goes on
    # from what this worker holds, or recomputes; retries included.
    store_read_budget_s: float = 0.5
    # The session's turn lease: renewed every third of it while the turn runs.
    lease_ms: int = 30_000
    # A push that failed because the store was away is retried in the background this long.
    recommit_window_s: float = 300.0

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

    store: str | None = None
    token: str | None = None
    model: str | None = None
    gguf_file: str | None = None
    device: str | None = None
    dtype: str | None = None
    host: str = "127.0.0.1"
    port: int = 50061
    metrics_port: int | None = None
    threads: int | None = None
    store_timeout_s: float = 10.0
    grace_s: float = 5.0
    session: SessionOptions = field(default_factory=SessionOptions)
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be in 0..65535")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError("metrics_port must be in 0..65535")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be >= 1")
        if self.store_timeout_s <= 0 or self.grace_s < 0:
            raise ValueError("store_timeout_s must be > 0 and grace_s >= 0")
        if self.token is not None and not self.token:
            raise ValueError("token must not be empty")
