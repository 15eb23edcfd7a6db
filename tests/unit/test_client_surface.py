"""The SDK's developer surface without a store: targets, channel options, from_env, closed clients,
keyword-only sizes in put_chunk, models that take any sequence, and the version."""

from __future__ import annotations

import importlib.metadata
import warnings
from array import array

import gearkv.client
import pytest
from gearkv.client import AsyncKVStoreClient, ChatMessage, KVStoreClient, Manifest, Namespace, TLSOptions
from gearkv.client._base import KVStoreClientBase
from gearkv.client._options import CHANNEL_OPTIONS, parse_target
from gearkv.client.errors import ClientClosed, InvalidArgument, KVStoreError

NS = Namespace(fingerprint="unit:0001", codec_id="raw/v1", chunk_size=4)


class Offline(KVStoreClientBase):
    """The shared base with no channel at all."""

    def _open(self) -> None:
        pass


@pytest.mark.parametrize(
    "target",
    [
        "dns:///store.internal:50051",
        "dns://8.8.8.8/store.internal:50051",
        "dns:store.internal:50051",
        "unix:/run/gearkv.sock",
        "unix:relative.sock",
        "unix:///run/gearkv.sock",
        "unix-abstract:gearkv",
        "ipv4:10.0.0.1:50051,10.0.0.2:50051",
        "ipv6:[::1]:50051,[::2]:50051",
        "[::1]:50051",
        "localhost:50051",
    ],
)
def test_grpc_targets_pass_through_unchanged(target: str) -> None:
    assert parse_target(target, None) == (target, None)
    tls = TLSOptions(root_certificates=b"ca")
    assert parse_target(target, tls) == (target, tls)  # TLS only when asked for


@pytest.mark.parametrize(
    "target",
    ["unix:", "unix:///", "dns:///", "ipv4:", "ipv4:10.0.0.1:1,", "ipv6:,[::1]:1", " h:1", "http://h:1"],
)
def test_bad_targets_are_invalid_argument(target: str) -> None:
    with pytest.raises(InvalidArgument, match="target"):
        parse_target(target, None)


def test_grpc_and_grpcs_schemes_keep_working() -> None:
    assert parse_target("grpc://h:5", None) == ("h:5", None)
    assert parse_target("grpcs://h:5", None) == ("h:5", TLSOptions())
    with pytest.raises(InvalidArgument, match="plaintext"):
        parse_target("grpc://h:5", TLSOptions())


def test_channel_options_come_after_the_sdks_and_win() -> None:
    default = Offline("h:1")._channel_options()
    assert default == list(CHANNEL_OPTIONS)  # one address: gRPC's own pick_first
    assert ("grpc.lb_policy_name", "round_robin") not in default
    for balanced in ("dns:///h:1", "ipv4:127.0.0.1:1,127.0.0.1:2", "ipv6:[::1]:1"):
        assert ("grpc.lb_policy_name", "round_robin") in Offline(balanced)._channel_options()
    opts = Offline(
        "h:1", channel_options=[("grpc.lb_policy_name", "pick_first"), ("grpc.primary_user_agent", "x")]
    )
    merged = dict(opts._channel_options())
    assert merged["grpc.lb_policy_name"] == "pick_first" and merged["grpc.primary_user_agent"] == "x"
    assert merged["grpc.max_send_message_length"] == dict(CHANNEL_OPTIONS)["grpc.max_send_message_length"]
    for bad in ([("a",)], [(1, 2)], [("a", 1.5)], [("a", None)], ["ab"]):
        with pytest.raises(InvalidArgument, match="channel_options"):
            Offline("h:1", channel_options=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [KVStoreClient, AsyncKVStoreClient])
def test_from_env(cls: type[KVStoreClient] | type[AsyncKVStoreClient]) -> None:
    env = {"GEARKV_STORE": "dns:///h:7", "GEARKV_TOKEN": "t0k3n", "GEARKV_STORE_TIMEOUT_S": "2.5"}
    client = cls.from_env(env)
    assert isinstance(client, cls) and client.target == "dns:///h:7"
    assert client._call_kwargs(None) == {"timeout": 2.5, "metadata": (("authorization", "Bearer t0k3n"),)}
    assert cls.from_env(env, timeout=1.0)._call_kwargs(None)["timeout"] == 1.0  # keywords win
    assert cls.from_env({"GEARKV_STORE": "h:7"})._call_kwargs(None) == {"timeout": 10.0, "metadata": ()}
    with pytest.raises(InvalidArgument, match="GEARKV_STORE is not set"):
        cls.from_env({})
    with pytest.raises(InvalidArgument, match="GEARKV_STORE_TIMEOUT_S"):
        cls.from_env({"GEARKV_STORE": "h:7", "GEARKV_STORE_TIMEOUT_S": "soon"})
    with pytest.raises(InvalidArgument, match="GEARKV_STORE_TIMEOUT_S"):
        cls.from_env({"GEARKV_STORE": "h:7", "GEARKV_STORE_TIMEOUT_S": "-1"})


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEARKV_STORE", "h:9")
    monkeypatch.delenv("GEARKV_TOKEN", raising=False)
    with KVStoreClient.from_env() as client:
        assert client.target == "h:9"


def test_closed_sync_client_raises_client_closed() -> None:
    client = KVStoreClient("127.0.0.1:1")
    client.close()
    client.close()  # twice is harmless
    assert client.closed
    for call in (
        client.stats,
        client.ping,
        lambda: client.get_chunk("a" * 64),
        lambda: list(client.get_chunks(["a" * 64])),
        lambda: client.put_chunk(NS, "", 0, [1], b"x", raw_bytes=1),
        lambda: list(client.list_sessions()),
        lambda: client.delete_session("s"),
    ):
        with pytest.raises(ClientClosed, match="closed") as info:
            call()
        assert isinstance(info.value, KVStoreError) and not isinstance(info.value, ValueError)


async def test_closed_async_client_raises_client_closed() -> None:
    client = AsyncKVStoreClient("127.0.0.1:1")
    async with client:
        pass
    await client.close()
    assert client.closed
    for call in (
        client.stats,
        client.ping,
        lambda: client.get_chunk("a" * 64),
        lambda: client.put_chunk(NS, "", 0, [1], b"x", raw_bytes=1),
        lambda: client.delete_session("s"),
    ):
        with pytest.raises(ClientClosed, match="closed"):
            await call()
    with pytest.raises(ClientClosed):
        [x async for x in client.get_chunks(["a" * 64])]
    assert client._channel is None  # a call on a closed client never opens a new channel


def test_put_chunk_sizes_are_keywords() -> None:
    assert Offline._put_sizes((), 10, 5) == (10, 5)
    with pytest.raises(TypeError, match="raw_bytes"):
        Offline._put_sizes((), None, 0)
    with pytest.warns(DeprecationWarning, match="raw_bytes="):
        assert Offline._put_sizes((10,), None, 7) == (10, 7)  # the worker's current call
    with pytest.warns(DeprecationWarning):
        assert Offline._put_sizes((10, 3), None, 0) == (10, 3)
    for legacy, raw, ttl in (((1, 2, 3), None, 0), ((1,), 2, 0), ((1, 2), None, 3)):
        with pytest.raises(TypeError), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            Offline._put_sizes(legacy, raw, ttl)


def test_put_chunk_positional_sizes_warn_at_the_callers_line() -> None:
    client = KVStoreClient("127.0.0.1:1")
    client.close()
    with pytest.warns(DeprecationWarning) as record, pytest.raises(ClientClosed):
        client.put_chunk(NS, "", 0, [1], b"x", 1)  # type: ignore[misc]
    assert record[0].filename == __file__


def test_manifest_takes_any_sequence() -> None:
    import numpy as np

    refs = [gearkv.client.ChunkRef("a" * 64, 0, 4)]
    for ids in (range(6), [0, 1, 2, 3, 4, 5], (0, 1, 2, 3, 4, 5), array("I", range(6)), np.arange(6)):
        m = Manifest("s", NS, ids, refs, [ChatMessage("user", "hi")])
        assert m.token_ids == (0, 1, 2, 3, 4, 5) and all(type(t) is int for t in m.token_ids)
        assert isinstance(m.chunks, tuple) and isinstance(m.messages, tuple)
        hash(m.token_ids)
    with pytest.raises(TypeError):
        Manifest("s", NS, [1.5])


def test_version() -> None:
    assert gearkv.client.__version__ == importlib.metadata.version("gearkv")
    assert "__version__" in gearkv.client.__all__
