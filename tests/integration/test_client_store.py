"""The SDK against the real store on a real redis-server; every test body runs with both clients."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from gearkv.client import (
    AsyncKVStoreClient,
    ChatMessage,
    ChunkRef,
    ExponentialJitterBackoff,
    KVStoreClient,
    Manifest,
    Namespace,
    PutChunkResult,
    RetryPolicy,
    keys,
)
from gearkv.client import errors as e
from gearkv.store.backend import COMMIT_IDS_KEPT
from support.store import StoreHandle

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
NS = Namespace(fingerprint="test-model:0001", codec_id="raw/v1", chunk_size=8)
Client = KVStoreClient | AsyncKVStoreClient


class Both:
    """An awaitable view of either client, so one test body drives the sync and the async one.

    Iterators (``get_chunks``, ``list_sessions``) come back as lists.
    """

    def __init__(self, client: Client) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if isinstance(result, AsyncIterator):
                return [x async for x in result]
            if isinstance(result, Iterator):
                return list(result)
            if asyncio.iscoroutine(result):
                return await result
            return result

        return call


def make_client(kind: str, address: str, token: str | None, **kwargs: Any) -> Both:
    cls = KVStoreClient if kind == "sync" else AsyncKVStoreClient
    return Both(cls(address, token=token, **kwargs))


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def kv(kind: str, store: StoreHandle) -> AsyncIterator[Both]:
    client = make_client(kind, store.address, store.tokens["alice"])
    yield client
    await client.close()


async def put_session(
    kv: Both, session_id: str, token_ids: list[int], *, expected_version: int = 0, size: int = 1000
) -> tuple[list[ChunkRef], int]:
    """Push every chunk of ``token_ids`` and commit them as one turn; returns (refs, version)."""
    refs = []
    for span in keys.chain(NS, token_ids):
        blob = os.urandom(size)
        put: PutChunkResult = await kv.put_chunk(
            NS, span.parent_key, token_ids[span.start : span.end], blob, start=span.start, raw_bytes=4 * size
        )
        assert put.key == span.key
        refs.append(ChunkRef(put.key, span.start, span.end, put.stored_bytes, 4 * size))
    manifest = Manifest(session_id, NS, token_ids, refs, [ChatMessage("user", "hi")], turns=1)
    return refs, await kv.commit_turn(manifest, expected_version)


@pytest.mark.parametrize("size", [1, MIB - 1, MIB, MIB + 1, 5 * MIB + 3])
async def test_chunk_round_trip_is_bit_exact(kv: Both, size: int) -> None:
    blob = os.urandom(size)
    put = await kv.put_chunk(NS, "", [1, 2, 3], blob, start=0, raw_bytes=size * 4)
    assert put.key == keys.chunk_key(NS, "", 0, [1, 2, 3]) and not put.deduplicated
    assert await kv.get_chunk(put.key) == blob
    again = await kv.put_chunk(NS, "", [1, 2, 3], memoryview(blob), start=0, raw_bytes=size * 4)
    assert again.deduplicated and again.key == put.key


async def test_get_chunks_pipelined_in_order(kv: Both) -> None:
    tokens = list(range(8 * 6 + 3))
    blobs = []
    for span in keys.chain(NS, tokens):
        blobs.append(os.urandom(MIB + span.start))  # distinct sizes: order mistakes cannot hide
        await kv.put_chunk(
            NS, span.parent_key, tokens[span.start : span.end], blobs[-1], start=span.start, raw_bytes=1
        )
    assert await kv.get_chunks([s.key for s in keys.chain(NS, tokens)]) == blobs
    assert await kv.get_chunks([]) == []


async def test_get_chunks_abandoned_early_leaves_the_client_usable(kind: str, store: StoreHandle) -> None:
    tokens = list(range(8 * 5))
    cls = KVStoreClient if kind == "sync" else AsyncKVStoreClient
    client = cls(store.address, token=store.tokens["alice"], prefetch=3)
    kv = Both(client)
    try:
        blobs = [os.urandom(MIB) for _ in range(5)]
        for span, blob in zip(keys.chain(NS, tokens), blobs, strict=True):
            await kv.put_chunk(
                NS, span.parent_key, tokens[span.start : span.end], blob, start=span.start, raw_bytes=1
            )
        all_keys = [s.key for s in keys.chain(NS, tokens)]
        if isinstance(client, KVStoreClient):
            stream = client.get_chunks(all_keys)
            assert next(stream) == blobs[0]
            stream.close()  # cancels the prefetched downloads
        else:
            astream = client.get_chunks(all_keys)
            assert await astream.__anext__() == blobs[0]
            await astream.aclose()  # type: ignore[attr-defined]
        assert await kv.get_chunks(all_keys[3:]) == blobs[3:]
    finally:
        await kv.close()


async def test_get_chunks_stops_at_first_missing(kv: Both) -> None:
    put = await kv.put_chunk(NS, "", [7], b"present", start=0, raw_bytes=1)
    missing = "f" * 64
    with pytest.raises(e.ChunkNotFound):
        await kv.get_chunks([put.key, missing, put.key])


async def test_prefix_lookup_and_dedup_across_sessions(kv: Both) -> None:
    system_prompt = list(range(100, 124))  # three full chunks
    a = [*system_prompt, 1, 2, 3]
    refs_a, version = await put_session(kv, "chat-a", a)
    assert version == 1

    # A second session sharing the system prompt: its full chunks are already stored.
    b = [*system_prompt, 9, 9]
    dedup = []
    for span in keys.chain(NS, b):
        put = await kv.put_chunk(
            NS, span.parent_key, b[span.start : span.end], b"x", start=span.start, raw_bytes=1
        )
        dedup.append(put.deduplicated)
    assert dedup == [True, True, True, False]

    by_chain = await kv.lookup_prefix(NS, [*system_prompt, 5, 5, 5, 5, 5, 5, 5, 5, 5])
    assert [c.key for c in by_chain.chunks] == [c.key for c in refs_a[:3]]
    assert by_chain.matched_tokens == 24 and by_chain.session_version == 0

    by_session = await kv.lookup_prefix(NS, [*a, 50, 51], session_id="chat-a")
    assert [c.key for c in by_session.chunks] == [c.key for c in refs_a]
    assert by_session.matched_tokens == len(a) and by_session.session_version == 1

    other_ns = Namespace(fingerprint="other-model:0002", codec_id="raw/v1", chunk_size=8)
    assert (await kv.lookup_prefix(other_ns, a)).matched_tokens == 0


async def test_commit_cas_and_idempotent_retry(kv: Both) -> None:
    tokens = list(range(20))
    refs, v1 = await put_session(kv, "chat-cas", tokens)
    assert v1 == 1
    m = Manifest("chat-cas", NS, tokens, refs, turns=2)
    with pytest.raises(e.VersionConflict):
        await kv.commit_turn(m, expected_version=0)
    v2 = await kv.commit_turn(m, expected_version=1, commit_id="turn-2")
    assert v2 == 2
    # The same commit retried (say its reply was lost) returns the version it produced.
    assert await kv.commit_turn(m, expected_version=1, commit_id="turn-2") == 2
    with pytest.raises(e.VersionConflict):
        await kv.commit_turn(m, expected_version=1, commit_id="turn-2b")

    longer = [*tokens, 1, 2, 3, 4]
    ghost = ChunkRef(keys.chunk_key(NS, refs[1].key, 16, longer[16:24]), 16, 24, 1, 1)  # never written
    bad = Manifest("chat-cas", NS, longer, [*refs[:2], ghost], turns=3)
    with pytest.raises(e.PreconditionFailed):
        await kv.commit_turn(bad, expected_version=2)
    assert (await kv.get_session("chat-cas")).version == 2


async def test_a_long_session_keeps_a_bounded_window_of_commit_ids(kv: Both, redis_server: Any) -> None:
    tokens = list(range(20))
    refs, version = await put_session(kv, "chat-long", tokens)
    last = 1 + 2 * COMMIT_IDS_KEPT
    with redis_server.client() as r:
        [hkey] = [k for k in r.scan_iter(match="gkv:s:*chat-long*") if k.endswith(b":h")]
        for turn in range(2, last + 1):
            m = Manifest("chat-long", NS, tokens, refs, turns=turn)
            version = await kv.commit_turn(m, expected_version=version, commit_id=f"turn-{turn}")
            if turn == COMMIT_IDS_KEPT + 1:
                full = r.hlen(hkey)
        assert version == last and r.hlen(hkey) == full  # not one more field per turn
    oldest_kept = last - COMMIT_IDS_KEPT + 1
    for turn in (last, oldest_kept):  # retries within the window replay their own version
        m = Manifest("chat-long", NS, tokens, refs, turns=turn)
        assert await kv.commit_turn(m, expected_version=turn - 1, commit_id=f"turn-{turn}") == turn
    with pytest.raises(e.VersionConflict):  # older than the window: a stale version
        await kv.commit_turn(m, expected_version=oldest_kept - 2, commit_id=f"turn-{oldest_kept - 1}")


async def test_server_side_validation_is_typed(kv: Both) -> None:
    refs, _ = await put_session(kv, "chat-val", list(range(12)))
    gap = Manifest("chat-val", NS, list(range(12)), [refs[1]], turns=1)  # not contiguous from 0
    with pytest.raises(e.InvalidArgument):
        await kv.commit_turn(gap, expected_version=1)


async def test_sessions_get_list_delete(kv: Both) -> None:
    tokens = list(range(10))
    ids = [f"list-{i:02d}" for i in range(5)]
    for sid in ids:
        await put_session(kv, sid, tokens)
    m = await kv.get_session("list-03")
    assert (m.session_id, m.version, m.turns, m.token_ids) == ("list-03", 1, 1, tuple(tokens))
    assert m.messages == (ChatMessage("user", "hi"),) and m.namespace == NS
    assert m.created_ms > 0 and m.stored_bytes == sum(c.stored_bytes for c in m.chunks)

    listed = await kv.list_sessions(page_size=2)
    assert [s.session_id for s in listed] == ids
    assert all(s.version == 1 and s.tokens == len(tokens) for s in listed)

    await kv.delete_session("list-03")
    with pytest.raises(e.SessionNotFound):
        await kv.get_session("list-03")
    with pytest.raises(e.SessionNotFound):
        await kv.delete_session("list-03")
    assert "list-03" not in [s.session_id for s in await kv.list_sessions()]


async def test_stats(kv: Both) -> None:
    await put_session(kv, "chat-stats", list(range(16)), size=5000)
    stats = await kv.stats()
    assert stats.tenant == "alice" and stats.sessions == 1 and stats.chunks == 2
    assert stats.raw_bytes == 2 * 4 * 5000 and stats.stored_bytes >= 2 * 5000
    assert stats.backend == "redis" and stats.manifest_bytes > 0
    assert stats.backend_used_memory_bytes == 0  # several tenants: none is shown the whole backend


async def test_errors_map_to_typed_exceptions(kind: str, kv: Both, store: StoreHandle) -> None:
    with pytest.raises(e.ChunkNotFound):
        await kv.get_chunk("0" * 64)
    with pytest.raises(e.SessionNotFound):
        await kv.get_session("nobody")

    anonymous = make_client(kind, store.address, None)
    wrong = make_client(kind, store.address, "not-a-real-token")
    try:
        for client in (anonymous, wrong):
            with pytest.raises(e.Unauthenticated):
                await client.stats()
    finally:
        await anonymous.close()
        await wrong.close()


async def test_tenants_are_isolated(kind: str, kv: Both, store: StoreHandle) -> None:
    refs, _ = await put_session(kv, "alice-only", list(range(9)))
    bob = make_client(kind, store.address, store.tokens["bob"])
    try:
        with pytest.raises(e.SessionNotFound):
            await bob.get_session("alice-only")
        with pytest.raises(e.ChunkNotFound):
            await bob.get_chunk(refs[0].key)
        assert await bob.list_sessions() == []
        with pytest.raises(e.SessionNotFound):
            await bob.delete_session("alice-only")
    finally:
        await bob.close()
    assert (await kv.get_session("alice-only")).version == 1


async def test_corrupt_value_in_redis_is_chunk_corrupt(kv: Both, redis_server: Any) -> None:
    put = await kv.put_chunk(NS, "", [3, 1, 4], os.urandom(3000), start=0, raw_bytes=1)
    with redis_server.client() as r:
        [redis_key] = list(r.scan_iter(match=f"*{put.key}*"))
        value = bytearray(r.get(redis_key))
        value[-1] ^= 0x01
        r.set(redis_key, bytes(value), keepttl=True)
    with pytest.raises(e.ChunkCorrupt):
        await kv.get_chunk(put.key)


async def test_quota_exceeded_is_not_retried(kind: str, redis_server: Any, store_factory: Any) -> None:
    handle = store_factory(redis_server.url, tenants={"alice": 3000})
    kv = make_client(kind, handle.address, handle.tokens["alice"])
    try:
        await kv.put_chunk(NS, "", [1], bytes(1000), start=0, raw_bytes=1)
        with pytest.raises(e.QuotaExceeded):
            await kv.put_chunk(NS, "", [2], bytes(5000), start=0, raw_bytes=1)
    finally:
        await kv.close()


async def test_deadline_is_enforced(kind: str, store: StoreHandle) -> None:
    kv = make_client(kind, store.address, store.tokens["alice"], retry=RetryPolicy.none())
    try:
        with pytest.raises(e.KVStoreTimeout):
            await kv.put_chunk(NS, "", [1], bytes(8 * MIB), start=0, raw_bytes=1, timeout=0.001)
        # A per-call override does not change the client's default.
        assert (await kv.stats()).tenant == "alice"
    finally:
        await kv.close()


async def test_unreachable_store_is_unavailable_after_retries(kind: str) -> None:
    from gearkv.store.local import free_port

    policy = RetryPolicy(backoff=ExponentialJitterBackoff(0.01, 0.02), attempts=3)
    kv = make_client(kind, f"127.0.0.1:{free_port()}", "t0k3n", retry=policy, timeout=2.0)
    try:
        with pytest.raises(e.KVStoreUnavailable):
            await kv.get_chunk("a" * 64)
    finally:
        await kv.close()


async def test_downloads_switch_between_one_message_and_streaming(kv: Both) -> None:
    """GetSmallChunk first; a chunk over 1 MiB makes the client stream, a small one switches back."""
    small, big = os.urandom(1000), os.urandom(3 * MIB + 5)
    k_small = (await kv.put_chunk(NS, "", [7], small, start=0, raw_bytes=1)).key
    k_big = (await kv.put_chunk(NS, "", [8], big, start=0, raw_bytes=1)).key
    client = kv.client
    assert client._use_small_get()
    assert await kv.get_chunks([k_small, k_big, k_small, k_big]) == [small, big, small, big]
    assert await kv.get_chunk(k_big) == big
    assert not client._use_small_get()  # the last chunk was big: stream the next one
    assert await kv.get_chunk(k_small) == small
    assert client._use_small_get()  # a small chunk came back: one message again
    assert await kv.get_chunk(k_small) == small


def test_small_chunk_rpcs_over_plain_protobuf(store: StoreHandle) -> None:
    """The one-message RPCs speak ordinary protobuf and enforce their 1 MiB limit."""
    import grpc
    from gearkv.api.digest import payload_digest
    from gearkv.api.v1 import kvstore_pb2 as pb
    from gearkv.api.v1 import kvstore_pb2_grpc as pb_grpc

    md = (("authorization", f"Bearer {store.tokens['alice']}"),)
    with grpc.insecure_channel(store.address) as channel:
        stub = pb_grpc.KVStoreStub(channel)  # the generated stub: protobuf on the wire

        def header(data: bytes, tokens: list[int]) -> pb.PutChunkHeader:
            return pb.PutChunkHeader(
                key=keys.chunk_key(NS, "", 0, tokens),
                namespace=pb.Namespace(fingerprint=NS.fingerprint, codec_id=NS.codec_id, chunk_size=8),
                start=0,
                end=len(tokens),
                token_ids=tokens,
                total_bytes=len(data),
                digest=payload_digest(data),
            )

        data = os.urandom(MIB)
        reply = stub.PutSmallChunk(pb.PutChunkRequest(header=header(data, [9]), data=data), metadata=md)
        got = stub.GetSmallChunk(pb.GetChunkRequest(key=reply.key), metadata=md)
        assert got.data == data and got.info.digest == payload_digest(data) and got.info.total_bytes == MIB
        big = os.urandom(MIB + 1)
        with pytest.raises(grpc.RpcError) as err:
            stub.PutSmallChunk(pb.PutChunkRequest(header=header(big, [10]), data=big[:MIB]), metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "PutSmallChunk" in str(
            err.value.details()
        )
        parts = [
            pb.PutChunkRequest(header=header(big, [10]), data=big[:MIB]),
            pb.PutChunkRequest(data=big[MIB:]),
        ]
        key = stub.PutChunk(iter(parts), metadata=md).key
        with pytest.raises(grpc.RpcError) as err:
            stub.GetSmallChunk(pb.GetChunkRequest(key=key), metadata=md)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert b"".join(m.data for m in stub.GetChunk(pb.GetChunkRequest(key=key), metadata=md)) == big
