"""Per-request state the interceptor sets and the servicer reads (grpc's ContextVar pattern)."""

from __future__ import annotations

from contextvars import ContextVar

tenant_var: ContextVar[str] = ContextVar("gearkv_tenant")


def current_tenant() -> str:
    """The authenticated tenant of the request being handled (set by the interceptor)."""
    return tenant_var.get()


# Monotonic time by which the client stops waiting (None: no deadline); bounds backend retries.
deadline_var: ContextVar[float | None] = ContextVar("gearkv_deadline", default=None)
