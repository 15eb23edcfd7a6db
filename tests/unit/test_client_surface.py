"""The SDK's developer surface without a store: targets, channel options, from_env, closed clients,
keyword-only sizes in put_chunk, models that take any sequence, and the version."""

from __future__ import annotations

import importlib.metadata
import warnings
from array import array
from typing import Any

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
        lambda: client.put_chunk(NS, "", [1], b"x", start=0, raw_bytes=1),
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
        lambda: client.put_chunk(NS, "", [1], b"x", start=0, raw_bytes=1),
        lambda: client.delete_session("s"),
    ):
        with pytest.raises(ClientClosed, match="closed"):
            await call()
    with pytest.raises(ClientClosed):
        [x async for x in client.get_chunks(["a" * 64])]
    assert client._channel is None  # a call on a closed client never opens a new channel


IDS = [1, 2, 3, 4]


def test_put_chunk_integers_are_keywords() -> None:
    args = Offline._put_args
    assert args((IDS, b"x"), 4, None, None, 10, 5) == (4, IDS, b"x", 10, 5)
    assert args((), 0, IDS, b"x", 10, None) == (0, IDS, b"x", 10, 0)  # all keywords; ttl_s defaults to 0
    assert args((IDS,), 0, None, b"x", 10, None) == (0, IDS, b"x", 10, 0)
    with pytest.raises(TypeError, match="'start'"):
        args((IDS, b"x"), None, None, None, 10, None)
    with pytest.raises(TypeError, match="'raw_bytes'"):
        args((IDS, b"x"), 0, None, None, None, None)
    with pytest.raises(TypeError, match="'data'"):
        args((IDS,), 0, None, None, 1, None)
    with pytest.raises(TypeError, match="start=, raw_bytes= and ttl_s= are keywords"):
        args((IDS, b"x", 10), 0, None, None, None, None)  # sizes after data, start given
    with pytest.raises(TypeError, match="multiple values for argument 'token_ids'"):
        args((IDS, b"x"), 0, IDS, None, 1, None)


@pytest.mark.parametrize(
    ("positional", "keywords", "expected"),
    [
        ((0, IDS, b"x"), {"raw_bytes": 10}, (0, IDS, b"x", 10, 0)),
        ((4, IDS, b"x", 10), {"ttl_s": 7}, (4, IDS, b"x", 10, 7)),
        ((4, IDS, b"x", 10, 3), {}, (4, IDS, b"x", 10, 3)),
        ((8,), {"token_ids": IDS, "data": b"x", "raw_bytes": 1}, (8, IDS, b"x", 1, 0)),
    ],
)
def test_put_chunk_with_start_third_is_deprecated_but_works(
    positional: tuple[Any, ...], keywords: dict[str, Any], expected: tuple[Any, ...]
) -> None:
    kw = {"start": None, "token_ids": None, "data": None, "raw_bytes": None, "ttl_s": None, **keywords}
    with pytest.warns(DeprecationWarning, match=r"put_chunk\(ns, parent_key, token_ids, data, start="):
        assert Offline._put_args(positional, **kw) == expected


@pytest.mark.parametrize(
    ("positional", "keywords", "message"),
    [
        ((0, IDS, b"x", 1, 2, 3), {}, "at most 7 positional"),
        ((0, IDS, b"x", 1), {"raw_bytes": 2}, "multiple values for argument 'raw_bytes'"),
        ((0, IDS, b"x", 1, 2), {"ttl_s": 3}, "multiple values for argument 'ttl_s'"),
        ((0, IDS, b"x"), {"start": 0, "raw_bytes": 1}, "multiple values for argument 'start'"),
        ((0, IDS, b"x"), {}, "'raw_bytes'"),
    ],
)
def test_put_chunk_old_form_rejects_what_it_always_did(
    positional: tuple[Any, ...], keywords: dict[str, Any], message: str
) -> None:
    kw = {"start": None, "token_ids": None, "data": None, "raw_bytes": None, "ttl_s": None, **keywords}
    with pytest.raises(TypeError, match=message), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        Offline._put_args(positional, **kw)


class _Built(Exception):
    """Raised by a patched _put_chunk_header: what a put_chunk call would upload."""


def _record_header(monkeypatch: pytest.MonkeyPatch, cls: type[KVStoreClientBase]) -> None:
    def header(*args: Any) -> Any:
        raise _Built(args)

    monkeypatch.setattr(cls, "_put_chunk_header", staticmethod(header))


def test_put_chunk_forms_reach_the_same_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    _record_header(monkeypatch, KVStoreClient)
    client = KVStoreClient("127.0.0.1:1")
    want = (NS, "p", 4, IDS, b"x", 10, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the keyword form does not warn
        with pytest.raises(_Built) as info:
            client.put_chunk(NS, "p", IDS, b"x", start=4, raw_bytes=10, ttl_s=3)
        assert info.value.args[0] == want
        with pytest.raises(_Built) as info:
            client.put_chunk(NS, "p", token_ids=IDS, data=b"x", start=4, raw_bytes=10, ttl_s=3)
        assert info.value.args[0] == want
    for call in (
        lambda: client.put_chunk(NS, "p", 4, IDS, b"x", 10, 3),  # deprecated
        lambda: client.put_chunk(NS, "p", 4, IDS, b"x", raw_bytes=10, ttl_s=3),  # deprecated
    ):
        with pytest.warns(DeprecationWarning) as record, pytest.raises(_Built) as info:
            call()
        assert info.value.args[0] == want
        assert record[0].filename == __file__  # points at the caller's line
    client.close()


async def test_async_put_chunk_forms_reach_the_same_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    _record_header(monkeypatch, AsyncKVStoreClient)
    client = AsyncKVStoreClient("127.0.0.1:1")
    want = (NS, "p", 4, IDS, b"x", 10, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(_Built) as info:
            await client.put_chunk(NS, "p", IDS, b"x", start=4, raw_bytes=10)
    assert info.value.args[0] == want
    with pytest.warns(DeprecationWarning) as record, pytest.raises(_Built) as info:
        await client.put_chunk(NS, "p", 4, IDS, b"x", 10)  # deprecated
    assert info.value.args[0] == want
    assert record[0].filename == __file__
    await client.close()


def test_put_chunk_old_form_warns_at_the_callers_line_on_a_closed_client() -> None:
    client = KVStoreClient("127.0.0.1:1")
    client.close()
    with pytest.warns(DeprecationWarning) as record, pytest.raises(ClientClosed):
        client.put_chunk(NS, "", 0, [1], b"x", 1)
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
