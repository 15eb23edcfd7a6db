"""The store's one error tree; the interceptor maps each class to a gRPC status code.

    StoreError
    ├── InvalidArgument      INVALID_ARGUMENT (message names the field and the limit)
    ├── NotFound             NOT_FOUND
    ├── DataLoss             DATA_LOSS (digest mismatch in transit or in storage)
    ├── ResourceExhausted    RESOURCE_EXHAUSTED (quota, load shedding, Redis out of memory)
    ├── Aborted              ABORTED (manifest version moved on)
    ├── FailedPrecondition   FAILED_PRECONDITION (manifest references a missing chunk)
    ├── Unauthenticated      UNAUTHENTICATED
    ├── StreamIdle           DEADLINE_EXCEEDED (a client stream sent nothing for too long)
    └── BackendUnavailable   UNAVAILABLE (Redis unreachable after bounded retries)

Messages are written for clients: they never carry exception text from Redis, secrets or tracebacks.
"""

from __future__ import annotations

import grpc


class StoreError(Exception):
    """Base class: ``code`` is the gRPC status, ``str(self)`` the client-facing message."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(StoreError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(StoreError):
    code = grpc.StatusCode.NOT_FOUND


class DataLoss(StoreError):
    code = grpc.StatusCode.DATA_LOSS


class ResourceExhausted(StoreError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Aborted(StoreError):
    code = grpc.StatusCode.ABORTED


class FailedPrecondition(StoreError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(StoreError):
    code = grpc.StatusCode.UNAUTHENTICATED


class StreamIdle(StoreError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class BackendUnavailable(StoreError):
    code = grpc.StatusCode.UNAVAILABLE
