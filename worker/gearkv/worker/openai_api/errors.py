"""Errors of the HTTP API as OpenAI error objects with their HTTP status.

::

    ApiError(status, message, type, code, param)
    ├── 400 invalid_request_error   a malformed body or an unsupported parameter (``param`` names it)
    ├── 401 invalid_request_error   missing or unknown API key (code invalid_api_key)
    ├── 404 invalid_request_error   unknown model (code model_not_found) or route
    ├── 413 invalid_request_error   body too large
    ├── 429 rate_limit_error        the worker sheds load: its turns in flight are at the maximum
    ├── 503 server_error            the model is not loaded yet, or the worker is shutting down
    └── 500 server_error            anything else (logged; the body says no more)

The worker's own errors (:mod:`gearkv.worker.errors`) are translated at one point, :func:`from_worker`.
Store faults are never errors: a turn recomputes and says so in its ``gearkv`` figures.
"""

from __future__ import annotations

from typing import Any

from gearkv.worker.errors import InvalidRequest, SessionBusy, TurnCancelled, WorkerError, WorkerOverloaded

__all__ = ["ApiError", "from_worker"]


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    @classmethod
    def bad_request(cls, message: str, param: str | None = None, code: str | None = None) -> ApiError:
        return cls(400, message, param=param, code=code)

    @classmethod
    def unauthorized(cls, message: str) -> ApiError:
        return cls(401, message, code="invalid_api_key", headers={"www-authenticate": "Bearer"})

    @classmethod
    def model_not_found(cls, model: str) -> ApiError:
        return cls(
            404, f"The model {model!r} does not exist on this worker", param="model", code="model_not_found"
        )

    @classmethod
    def unavailable(cls, message: str, code: str) -> ApiError:
        return cls(503, message, type="server_error", code=code, headers={"retry-after": "1"})


def from_worker(exc: WorkerError) -> ApiError:
    """The API error for a worker error (the one translation point)."""
    if isinstance(exc, InvalidRequest):
        text = str(exc)
        code = "context_length_exceeded" if "context" in text else None
        return ApiError.bad_request(text, code=code)
    if isinstance(exc, WorkerOverloaded):
        return ApiError(
            429,
            f"the worker is at capacity ({exc}); retry shortly",
            type="rate_limit_error",
            code="worker_overloaded",
            headers={"retry-after": "1"},
        )
    if isinstance(exc, SessionBusy):  # stateless turns have no session; kept for completeness
        return ApiError(409, str(exc), code="session_busy")
    if isinstance(exc, TurnCancelled):
        return ApiError.unavailable("the turn was cancelled (the worker is shutting down)", "turn_cancelled")
    return ApiError(500, "worker error", type="server_error", code="internal_error")
