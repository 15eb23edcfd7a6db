"""WorkerConfig: everything ``gearkv worker`` needs, frozen and validated; only the CLI reads env/flags."""

from __future__ import annotations

from dataclasses import dataclass, field

from gearkv.worker.sessions import SessionOptions

__all__ = ["WorkerConfig"]


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
