"""Tenant isolation, token handling, no-auth mode, TLS and mutual TLS, Redis passwords kept secret."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from gearkv.api.keys import Namespace
from gearkv.api.v1 import kvstore_pb2 as pb
from gearkv.api.v1 import kvstore_pb2_grpc as pb_grpc
from gearkv.store.local import free_port
from support.kv import code_of, commit, get_chunk, manifest, ns_proto, push_session, put_chunk, stub_for
from support.redis_procs import RedisServer
from support.store import StoreHandle

pytestmark = pytest.mark.integration
NS = Namespace("fp-sec", "gear4/v1", 8)
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def test_a_tenant_never_reads_lists_overwrites_or_deletes_another(
    store: StoreHandle, stub: pb_grpc.KVStoreStub
) -> None:
    alice, bob = store.metadata("alice"), store.metadata("bob")
    tokens = list(range(20))
    spans = push_session(stub, alice, NS, tokens)
    assert commit(stub, alice, manifest("shared-name", NS, tokens, spans), 0, "a1") == 1

    assert code_of(get_chunk, stub, bob, spans[0].key) == NOT_FOUND
    found = stub.LookupPrefix(
        pb.LookupPrefixRequest(namespace=ns_proto(NS), token_ids=tokens, session_id="shared-name"),
        metadata=bob,
    )
    assert found.matched_tokens == 0 and not found.chunks and found.session_version == 0
    assert code_of(stub.GetSession, pb.GetSessionRequest(session_id="shared-name"), metadata=bob) == NOT_FOUND
    assert not stub.ListSessions(pb.ListSessionsRequest(), metadata=bob).sessions
    assert (
        code_of(stub.DeleteSession, pb.DeleteSessionRequest(session_id="shared-name"), metadata=bob)
        == NOT_FOUND
    )
    # Bob cannot reference Alice's chunks in a manifest, and his own session of that name is separate.
    assert code_of(commit, stub, bob, manifest("shared-name", NS, tokens, spans), 0, "b1") == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    bob_reply = put_chunk(stub, bob, NS, spans[0], tokens, b"bob's bytes")
    assert not bob_reply.deduplicated  # no cross-tenant dedup: nothing leaks through timing or flags
    assert get_chunk(stub, bob, spans[0].key)[1] == b"bob's bytes"
    assert get_chunk(stub, alice, spans[0].key)[1] != b"bob's bytes"

    got = stub.GetSession(pb.GetSessionRequest(session_id="shared-name"), metadata=alice).manifest
    assert got.version == 1 and [c.key for c in got.chunks] == [s.key for s in spans]
    assert stub.GetStats(pb.GetStatsRequest(), metadata=bob).chunks == 1
    assert stub.GetStats(pb.GetStatsRequest(), metadata=alice).chunks == len(spans)


def test_tokens_are_kept_only_as_hashes(store: StoreHandle) -> None:
    text = repr(store.config)
    assert all(token not in text for token in store.tokens.values())


def test_no_auth_mode_serves_one_default_tenant(
    store_factory: Callable[..., StoreHandle], redis_server: RedisServer
) -> None:
    handle = store_factory(redis_server.url, tenants={}, auth=False)
    channel, stub = stub_for(handle.address)
    with channel:
        assert stub.GetStats(pb.GetStatsRequest(), timeout=5).tenant == "default"
        spans = push_session(stub, (), NS, [1, 2, 3])
        assert commit(stub, (), manifest("demo", NS, [1, 2, 3], spans), 0, "c") == 1


def test_redis_password_works_and_never_leaks(
    store_factory: Callable[..., StoreHandle],
    redis_factory: Callable[..., RedisServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    canary = "canary-S3cr3t-pw"
    redis = redis_factory(password=canary)
    good = store_factory(redis.url)
    channel, stub = stub_for(good.address)
    with channel:
        assert stub.GetStats(pb.GetStatsRequest(), metadata=good.metadata(), timeout=5).backend == "redis"
    wrong_url = redis.url.replace(canary, "wrong-" + canary)
    caplog.set_level(logging.DEBUG)
    bad = store_factory(wrong_url, redis_retry_budget_s=0.2)
    channel, stub = stub_for(bad.address)
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.GetStats(pb.GetStatsRequest(), metadata=bad.metadata(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert canary not in (err.value.details() or "") and canary not in err.value.debug_error_string()
    assert canary not in caplog.text
    registry = bad.server.metrics.registry
    from prometheus_client import generate_latest

    assert canary.encode() not in generate_latest(registry)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (openssl CLI)."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=gearkv-test-ca",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            cwd=d,
        )
    return d


def _secure_stats(address: str, pki: Path, md: object, *, client_cert: bool) -> grpc.StatusCode:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / "client.key").read_bytes() if client_cert else None,
        certificate_chain=(pki / "client.pem").read_bytes() if client_cert else None,
    )
    with grpc.secure_channel(address, creds) as channel:
        stub = pb_grpc.KVStoreStub(channel)
        return code_of(stub.GetStats, pb.GetStatsRequest(), metadata=md, timeout=5)


def test_tls_and_mutual_tls(
    store_factory: Callable[..., StoreHandle], redis_server: RedisServer, pki: Path
) -> None:
    tls = store_factory(redis_server.url, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"))
    assert _secure_stats(tls.address, pki, tls.metadata(), client_cert=False) == grpc.StatusCode.OK
    channel, stub = stub_for(tls.address)  # plaintext against a TLS port fails
    with channel:
        assert code_of(stub.GetStats, pb.GetStatsRequest(), metadata=tls.metadata(), timeout=3) == (
            grpc.StatusCode.UNAVAILABLE
        )
    mtls = store_factory(
        redis_server.url,
        tls_cert=str(pki / "server.pem"),
        tls_key=str(pki / "server.key"),
        tls_client_ca=str(pki / "ca.pem"),
    )
    assert _secure_stats(mtls.address, pki, mtls.metadata(), client_cert=True) == grpc.StatusCode.OK
    assert _secure_stats(mtls.address, pki, mtls.metadata(), client_cert=False) == grpc.StatusCode.UNAVAILABLE
    # A valid certificate does not replace the bearer token.
    assert _secure_stats(mtls.address, pki, (), client_cert=True) == grpc.StatusCode.UNAUTHENTICATED


def test_redis_acl_user_and_tls_to_redis(
    store_factory: Callable[..., StoreHandle], redis_factory: Callable[..., RedisServer], pki: Path
) -> None:
    tls_port = free_port()
    redis = redis_factory(
        [
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(pki / "server.pem"),
            "--tls-key-file", str(pki / "server.key"),
            "--tls-ca-cert-file", str(pki / "ca.pem"),
            "--tls-auth-clients", "no",
        ]
    )  # fmt: skip
    with redis.client() as cli:  # a least-privilege ACL user limited to the store's keys
        cli.execute_command(
            "ACL", "SETUSER", "gearkv", "on", ">acl-pw", "~gkv:*", "+@all", "-@dangerous", "+info"
        )
    url = f"rediss://gearkv:acl-pw@127.0.0.1:{tls_port}/0"
    handle = store_factory(url, redis_tls_ca=str(pki / "ca.pem"))
    md = handle.metadata()
    channel, stub = stub_for(handle.address)
    with channel:
        spans = push_session(stub, md, NS, [1, 2, 3])
        assert commit(stub, md, manifest("tls", NS, [1, 2, 3], spans), 0, "c") == 1
        assert stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=5).chunks == 1
    with redis.client() as cli:
        assert cli.exists(f"gkv:c:alice:{spans[0].key}")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (("missing.pem", "server.key"), "cannot read --tls-cert"),
        (("server.pem", "client.key"), "are not a PEM certificate and its private key"),
        (("ca.key", "server.key"), "are not a PEM certificate and its private key"),
    ],
)
def test_bad_tls_files_are_named_without_a_traceback(
    pki: Path, redis_server: RedisServer, files: tuple[str, str], expected: str
) -> None:
    cert, key = (str(pki / f) for f in files)
    args = ["store", "--no-auth", "--port", "0", "--redis-url", redis_server.url, "--tls-cert", cert]
    proc = subprocess.run(
        [sys.executable, "-m", "gearkv.cli", *args, "--tls-key", key],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert "cannot bind" not in proc.stderr
