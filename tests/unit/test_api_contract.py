"""The API contract (gearkv.api): one set of limits and checks, and imports that run one way only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from gearkv.api import keys, limits
from gearkv.api.errors import GearKVError, InvalidField
from gearkv.api.records import SessionSummary

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "gearkv.api": ROOT / "proto/gearkv/api",
    "gearkv.store": ROOT / "store/gearkv/store",
    "gearkv.codec": ROOT / "client/gearkv/codec",
    "gearkv.client": ROOT / "client/gearkv/client",
}
# What each package may not import (at module level or inside a function alike).
FORBIDDEN = {
    "gearkv.api": ("gearkv.client", "gearkv.codec", "gearkv.store", "gearkv.worker", "gearkv.bench"),
    "gearkv.store": ("gearkv.client", "gearkv.codec", "gearkv.worker"),
    "gearkv.codec": ("gearkv.client", "gearkv.store", "gearkv.worker"),
    "gearkv.client": ("gearkv.store", "gearkv.worker"),
}


def _imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in ``path`` names (``from gearkv import x``
    counts as ``gearkv.x``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _hand_written(package: str) -> list[Path]:
    return [p for p in sorted(PACKAGES[package].rglob("*.py")) if "_pb2" not in p.name]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package: str) -> None:
    """The store never imports the SDK; the contract imports none of its users; the codec stands alone."""
    files = _hand_written(package)
    assert files, f"no modules found for {package}"
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in sorted(_imported_modules(path))
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package])
    ]
    assert not bad, "\n".join(bad)


def test_the_import_scan_sees_every_form(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import gearkv.client\nfrom gearkv import codec\ndef f():\n    from gearkv.client.keys import x\n"
    )
    assert {"gearkv.client", "gearkv.codec", "gearkv.client.keys"} <= _imported_modules(probe)


def test_the_sdk_and_the_store_share_the_contract() -> None:
    import gearkv.client
    import gearkv.client.keys
    from gearkv.client.errors import GearKVError as ClientRoot
    from gearkv.codec import CodecError
    from gearkv.store import backend

    assert gearkv.client.keys.Namespace is keys.Namespace and gearkv.client.keys.chain is keys.chain
    assert gearkv.client.Namespace is keys.Namespace
    assert gearkv.client.SessionSummary is SessionSummary is backend.SessionSummary
    assert ClientRoot is GearKVError and issubclass(CodecError, GearKVError)


CHECKS = [
    (lambda: limits.check_key("A" * 64, "header.key"), "header.key must be 64 lowercase hex"),
    (lambda: limits.check_session_id("a b"), "session_id must be 1-128 chars"),
    (lambda: limits.check_session_id("x" * 129, "manifest.session_id"), "manifest.session_id"),
    (lambda: limits.check_id("", "commit_id"), "commit_id must be 1-64 printable"),
    (lambda: limits.check_id("c" * 65, "holder"), "holder must be 1-64"),
    (lambda: limits.check_id("abc\n", "lease_id"), "lease_id"),  # a trailing newline is no id
    (lambda: limits.check_uint(True, "start", limits.MAX_U32), r"start must be an integer in 0..4294967295"),
    (lambda: limits.check_uint(0, "page_size", limits.MAX_PAGE_SIZE, low=1), r"page_size .* 1..1000"),
    (lambda: limits.check_token_count(limits.MAX_TOKENS + 1, "token_ids"), "the limit is 1048576"),
    (lambda: limits.check_token_ids([2**32], "token_ids"), r"entries must be integers in 0..4294967295"),
    (lambda: limits.check_lease_ms(99), r"lease_ms must be 100-600000 \(0 = 30000\)"),
    (lambda: limits.check_lease_ms(600_001), "lease_ms"),
    (lambda: keys.Namespace("fp", "c", limits.MAX_CHUNK_SIZE + 1), "chunk_size must be in 1..65536"),
]


@pytest.mark.parametrize(("check", "message"), CHECKS, ids=[m for _, m in CHECKS])
def test_checks_name_the_field_and_the_limit(check: object, message: str) -> None:
    with pytest.raises(InvalidField, match=message) as err:
        check()  # type: ignore[operator]
    assert isinstance(err.value, ValueError) and isinstance(err.value, GearKVError)


def test_edge_values_pass() -> None:
    assert limits.check_key("ab" * 32) == "ab" * 32
    assert limits.check_session_id("s" * 128) == "s" * 128
    assert limits.check_id("~" * 64, "commit_id") == "~" * 64
    assert limits.check_lease_ms(0) == 0 and limits.check_lease_ms(limits.MAX_LEASE_MS) == 600_000
    assert limits.check_token_ids(range(3), "token_ids") == [0, 1, 2]
    assert limits.check_uint(limits.MAX_U64, "version", limits.MAX_U64) == 2**64 - 1


def test_each_side_maps_a_contract_violation_to_its_own_invalid_argument() -> None:
    from gearkv.client import errors as client_errors
    from gearkv.client._base import check_id, check_lease_ms
    from gearkv.store import errors as store_errors
    from gearkv.store import validation

    with pytest.raises(client_errors.InvalidArgument, match="lease_id must be 1-64"):
        check_id("abc\n", "lease_id")
    with pytest.raises(client_errors.InvalidArgument, match="lease_ms must be 100-600000"):
        check_lease_ms(99)
    with pytest.raises(store_errors.InvalidArgument, match="commit_id must be 1-64"):
        validation.commit_id("abc\n")
    with pytest.raises(store_errors.InvalidArgument, match="lease_ms must be 100-600000"):
        validation.lease_ms(99)
    assert validation.lease_ms(0) == limits.DEFAULT_LEASE_MS and validation.lease_ms(150) == 150


def test_the_contract_loads_without_grpc_and_the_codec_without_the_sdk() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import gearkv.api.digest, gearkv.api.errors, gearkv.api.keys\n"
        "import gearkv.api.limits, gearkv.api.records\n"
        "assert not {'grpc', 'google.protobuf'} & set(sys.modules), 'the contract pulled in grpc/protobuf'\n"
        "import gearkv.codec\n"
        "assert 'gearkv.client' not in sys.modules, 'the codec pulled in the SDK'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
