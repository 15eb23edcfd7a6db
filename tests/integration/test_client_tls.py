"""TLS and mutual TLS between the SDK and the real store, with certificates made by openssl."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from gearkv.client import RetryPolicy, TLSOptions
from gearkv.client import errors as e
from test_client_store import make_client

pytestmark = pytest.mark.integration


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _cert(dir_: Path, name: str, cn: str, ca: str, san: str | None = None) -> None:
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=dir_)
    ext: tuple[str, ...] = ()
    if san:
        (dir_ / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        ext = ("-extfile", f"{name}.ext")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", *ext, cwd=dir_)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make test certificates")
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN=gearkv test {ca}", cwd=d)  # fmt: skip
    _cert(d, "server", "localhost", "ca", "DNS:localhost,IP:127.0.0.1")
    _cert(d, "client", "gearkv-client", "ca")
    _cert(d, "stranger", "gearkv-stranger", "other-ca")
    return d


@pytest.fixture
def tls_store(pki: Path, redis_server: Any, store_factory: Any) -> Any:
    return store_factory(
        redis_server.url,
        tls_cert=str(pki / "server.pem"),
        tls_key=str(pki / "server.key"),
        tls_client_ca=str(pki / "ca.pem"),
    )


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_mutual_tls_round_trip(kind: str, pki: Path, tls_store: Any) -> None:
    tls = TLSOptions.from_files(ca=pki / "ca.pem", cert=pki / "client.pem", key=pki / "client.key")
    port = tls_store.address.rsplit(":", 1)[1]
    for target, opts in [
        (f"grpcs://127.0.0.1:{port}", tls),
        (
            f"127.0.0.1:{port}",
            TLSOptions(tls.root_certificates, tls.certificate_chain, tls.private_key, "localhost"),
        ),
    ]:
        kv = make_client(kind, target, tls_store.tokens["alice"], tls=opts)
        try:
            assert (await kv.stats()).tenant == "alice"
        finally:
            await kv.close()


@pytest.mark.parametrize(
    ("cert", "ca"),
    [(None, "ca"), ("stranger", "ca"), ("client", "other-ca")],
    ids=["no-client-cert", "client-cert-from-another-ca", "server-not-trusted"],
)
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_tls_rejections_are_unavailable(
    kind: str, cert: str | None, ca: str, pki: Path, tls_store: Any
) -> None:
    tls = TLSOptions.from_files(
        ca=pki / f"{ca}.pem",
        cert=pki / f"{cert}.pem" if cert else None,
        key=pki / f"{cert}.key" if cert else None,
    )
    kv = make_client(
        kind, tls_store.address, tls_store.tokens["alice"], tls=tls, retry=RetryPolicy.none(), timeout=5
    )
    try:
        with pytest.raises(e.KVStoreUnavailable):
            await kv.stats()
    finally:
        await kv.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_plaintext_client_cannot_talk_to_tls_store(kind: str, tls_store: Any) -> None:
    kv = make_client(kind, tls_store.address, tls_store.tokens["alice"], retry=RetryPolicy.none(), timeout=5)
    try:
        with pytest.raises(e.KVStoreUnavailable):
            await kv.stats()
    finally:
        await kv.close()
