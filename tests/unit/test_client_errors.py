"""Every gRPC status code maps to one SDK exception, in one place, with the cause kept."""

from __future__ import annotations

import grpc
import pytest
from gearkv.client import errors
from gearkv.client._base import error_for_status, map_rpc_errors

EXPECTED: dict[grpc.StatusCode, type[errors.KVStoreError]] = {
    grpc.StatusCode.CANCELLED: errors.KVStoreUnavailable,
    grpc.StatusCode.UNKNOWN: errors.KVStoreInternalError,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.KVStoreTimeout,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.VersionConflict,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.KVStoreOverloaded,
    grpc.StatusCode.FAILED_PRECONDITION: errors.PreconditionFailed,
    grpc.StatusCode.ABORTED: errors.VersionConflict,
    grpc.StatusCode.OUT_OF_RANGE: errors.InvalidArgument,
    grpc.StatusCode.UNIMPLEMENTED: errors.KVStoreInternalError,
    grpc.StatusCode.INTERNAL: errors.KVStoreInternalError,
    grpc.StatusCode.UNAVAILABLE: errors.KVStoreUnavailable,
    grpc.StatusCode.DATA_LOSS: errors.DataCorrupt,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
}


def test_table_covers_every_error_status() -> None:
    assert set(EXPECTED) == set(grpc.StatusCode) - {grpc.StatusCode.OK}


@pytest.mark.parametrize("code", sorted(EXPECTED, key=lambda c: c.name))
def test_status_maps_to_exception(code: grpc.StatusCode) -> None:
    err = error_for_status(code, "the message")
    assert type(err) is EXPECTED[code]
    assert err.code == code.name and err.details == "the message"
    assert isinstance(err, errors.KVStoreError) and isinstance(err, errors.GearKVError)


@pytest.mark.parametrize("kind", [errors.ChunkNotFound, errors.SessionNotFound])
def test_not_found_is_specialised_by_call(kind: type[errors.NotFound]) -> None:
    err = error_for_status(grpc.StatusCode.NOT_FOUND, "gone", kind)
    assert type(err) is kind and isinstance(err, errors.NotFound)


@pytest.mark.parametrize(
    ("kind", "corrupt"),
    [(errors.ChunkNotFound, errors.ChunkCorrupt), (errors.SessionNotFound, errors.SessionCorrupt)],
)
def test_data_loss_is_specialised_by_call(
    kind: type[errors.NotFound], corrupt: type[errors.DataCorrupt]
) -> None:
    """A damaged manifest is a SessionCorrupt, not a ChunkCorrupt (it was reported as a chunk)."""
    err = error_for_status(grpc.StatusCode.DATA_LOSS, "damaged", kind)
    assert type(err) is corrupt and isinstance(err, errors.DataCorrupt)


def test_quota_is_not_load_shedding() -> None:
    quota = error_for_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "tenant byte quota exceeded (10 MiB)")
    shed = error_for_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many requests in flight")
    assert type(quota) is errors.QuotaExceeded
    assert type(shed) is errors.KVStoreOverloaded and isinstance(shed, errors.KVStoreUnavailable)


def test_invalid_argument_is_also_a_value_error() -> None:
    assert issubclass(errors.InvalidArgument, ValueError)


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


def test_map_rpc_errors_keeps_the_cause() -> None:
    original = FakeRpcError(grpc.StatusCode.NOT_FOUND, "no such chunk")
    with pytest.raises(errors.ChunkNotFound) as info, map_rpc_errors(errors.ChunkNotFound):
        raise original
    assert info.value.__cause__ is original
    assert "no such chunk" in str(info.value)


def test_map_rpc_errors_handles_missing_details_and_code() -> None:
    with pytest.raises(errors.KVStoreUnavailable, match="no details"), map_rpc_errors():
        raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, None)
    with pytest.raises(errors.KVStoreInternalError), map_rpc_errors():
        raise grpc.RpcError()  # a bare RpcError carries no status at all


def test_map_rpc_errors_leaves_other_exceptions_alone() -> None:
    with pytest.raises(KeyError), map_rpc_errors():
        raise KeyError("x")


def test_errors_and_keys_import_without_grpc() -> None:
    """gearkv.codec and the store share errors/keys; only the clients need grpc."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import gearkv.client.errors, gearkv.client.keys\n"
        "from gearkv.client import Manifest, Namespace, RetryPolicy\n"
        "assert 'grpc' not in sys.modules\n"
        "from gearkv.client import KVStoreClient\n"
        "assert 'grpc' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_errors_after_the_deadline_are_timeouts() -> None:
    """grpc.aio reports INTERNAL when a deadline expires mid-write of a streamed upload."""
    import time

    late = FakeRpcError(grpc.StatusCode.INTERNAL, "Internal error from Core")
    with pytest.raises(errors.KVStoreTimeout), map_rpc_errors(deadline=time.monotonic() - 0.01):
        raise late
    with pytest.raises(errors.KVStoreInternalError), map_rpc_errors(deadline=time.monotonic() + 60):
        raise late  # before the deadline it stays what it is
    with pytest.raises(errors.NotFound), map_rpc_errors(deadline=time.monotonic() - 0.01):
        raise FakeRpcError(grpc.StatusCode.NOT_FOUND, "gone")  # real answers are kept
