"""What a resumed turn costs the store and Redis: a commit's work must not grow with the history.

A resumed turn is what the worker does: BeginTurn (its manifest copy is current, so none comes back),
LookupPrefix, PutSmallChunk for the chunks the turn adds, CommitTurn. Redis work is counted on a real
``redis-server`` with ``INFO commandstats``, which counts the commands the store sends and those its
Lua scripts run; store RPCs are counted by the store's own ``gearkv_store_requests_total``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis
from gearkv.api.keys import Namespace, chain
from gearkv.api.records import SessionSummary
from gearkv.api.v1 import kvstore_pb2 as pb
from gearkv.store.backend import ManifestMark
from gearkv.store.errors import Aborted
from gearkv.store.redis_keys import session_redis_key
from support.kv import commit, manifest, ns_proto, payload_for, push_session, put_requests, stub_for
from support.redis_procs import RedisServer
from support.store import StoreHandle

pytestmark = pytest.mark.integration
NS = Namespace("fp-costs", "gear4/v1", 8)
_NOT_COUNTED = {"info", "config|resetstat", "config"}


def _redis_calls(cli: redis.Redis) -> Counter[str]:
    stats = cli.info("commandstats")
    return Counter(
        {
            name.removeprefix("cmdstat_"): int(v["calls"])
            for name, v in stats.items()
            if name.removeprefix("cmdstat_") not in _NOT_COUNTED
        }
    )


def _rpc_calls(store: StoreHandle) -> float:
    registry = store.server.metrics.registry
    return sum(
        s.value
        for metric in registry.collect()
        if metric.name == "gearkv_store_requests"
        for s in metric.samples
        if s.name == "gearkv_store_requests_total"
    )


class _Meter:
    """Counts Redis commands (by name) and store RPCs between ``start`` and ``stop``."""

    def __init__(self, store: StoreHandle, cli: redis.Redis) -> None:
        self._store, self._cli = store, cli
        self.redis: dict[str, Counter[str]] = {}
        self.rpcs: dict[str, int] = {}

    def measure(self, what: str, fn: Callable[[], Any]) -> Any:
        redis0, rpc0 = _redis_calls(self._cli), _rpc_calls(self._store)
        out = fn()
        self.rpcs[what] = int(_rpc_calls(self._store) - rpc0)
        self.redis[what] = _redis_calls(self._cli) - redis0
        return out


def _resumed_turn(store: StoreHandle, cli: redis.Redis, history_chunks: int, sid: str) -> _Meter:
    """A session with ``history_chunks`` chunks (the last a tail), then one resumed turn of 12 tokens."""
    md = store.metadata()
    channel, stub = stub_for(store.address)
    history = list(range(history_chunks * NS.chunk_size - 3))
    with channel:
        spans = push_session(stub, md, NS, history, size=200)
        assert commit(stub, md, manifest(sid, NS, history, spans), 0, "c1") == 1
        tokens = [*history, *range(10_000, 10_012)]
        meter = _Meter(store, cli)
        lease = {"session_id": sid, "holder": "w1", "lease_id": "l2", "lease_ms": 30_000}
        begun = meter.measure(
            "BeginTurn", lambda: stub.BeginTurn(pb.BeginTurnRequest(known_version=1, **lease), metadata=md)
        )
        assert begun.version == 1 and not begun.HasField("manifest")
        found = meter.measure(
            "LookupPrefix",
            lambda: stub.LookupPrefix(
                pb.LookupPrefixRequest(namespace=ns_proto(NS), token_ids=tokens, session_id=sid), metadata=md
            ),
        )
        assert found.matched_tokens == len(history)
        have = {c.key for c in found.chunks}
        new = [s for s in chain(NS, tokens) if s.key not in have]

        def put_new() -> None:
            for span in new:
                [req] = put_requests(NS, span, tokens, payload_for(span, 200))
                stub.PutSmallChunk(req, metadata=md)

        meter.measure("PutSmallChunk", put_new)
        turn2 = manifest(sid, NS, tokens, chain(NS, tokens), turns=2)
        request = pb.CommitTurnRequest(
            manifest=turn2, expected_version=1, commit_id="c2", holder="w1", lease_id="l2"
        )
        reply = meter.measure("CommitTurn", lambda: stub.CommitTurn(request, metadata=md))
        assert reply.version == 2
    return meter


def test_a_commit_does_not_grow_with_the_history(
    store_factory: Callable[..., StoreHandle], redis_server: RedisServer
) -> None:
    store = store_factory(redis_server.url)
    with redis_server.client() as cli:
        _resumed_turn(store, cli, 2, "warm-up")  # loads the Lua scripts into Redis
        short, long = (_resumed_turn(store, cli, n, f"cost-{n}") for n in (4, 64))
    for n, meter in ((4, short), (64, long)):
        costs = {what: (meter.rpcs[what], meter.redis[what].total()) for what in meter.rpcs}
        print(f"resumed turn at {n} chunks of history: (RPCs, Redis commands) {costs}")
        print(f"  commit's Redis commands: {dict(meter.redis['CommitTurn'])}")
    assert short.rpcs == long.rpcs
    assert short.redis["CommitTurn"] == long.redis["CommitTurn"], (
        "a commit's Redis work grew with the history"
    )
    assert short.redis["BeginTurn"] == long.redis["BeginTurn"]
    assert short.redis["PutSmallChunk"] == long.redis["PutSmallChunk"]


def test_a_commit_keeps_created_ms_and_relies_only_on_the_current_mark(
    store: StoreHandle, redis_server: RedisServer
) -> None:
    md = store.metadata()
    channel, stub = stub_for(store.address)
    tokens = list(range(20))
    with channel, redis_server.client() as cli:
        spans = push_session(stub, md, NS, tokens)
        assert commit(stub, md, manifest("marks", NS, tokens, spans), 0, "c1") == 1
        get = pb.GetSessionRequest(session_id="marks")
        created = stub.GetSession(get, metadata=md).manifest.created_ms
        cli.hdel(session_redis_key("alice", "marks"), "mk")  # a session committed before marks
        longer = [*tokens, 20, 21, 22, 23]
        spans2 = push_session(stub, md, NS, longer)
        assert commit(stub, md, manifest("marks", NS, longer, spans2, turns=2), 1, "c2") == 2
        assert commit(stub, md, manifest("marks", NS, longer, spans2, turns=3), 2, "c3") == 3
        got = stub.GetSession(get, metadata=md).manifest
        assert got.created_ms == created and got.updated_ms >= created

        async def stale_base(server: Any) -> None:
            summary = SessionSummary("marks", 4, 4, len(longer), 0, 0, 0)
            wrong = ManifestMark.of([spans[0].key], created, created)
            await server.backend.commit_session(
                "alice",
                "marks",
                expected_version=3,
                commit_id="c4",
                manifest=b"x",
                summary=summary,
                ttl_ms=60_000,
                mark=wrong,
                base=wrong,
            )

        with pytest.raises(Aborted, match="changed"):
            store.call(stale_base)
        assert stub.GetSession(get, metadata=md).manifest.version == 3
