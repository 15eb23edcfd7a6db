"""Turn leases (BeginTurn / EndTurn / CommitTurn with a holder) through the SDK, on standalone Redis, a
Redis Cluster and the in-memory fake backend: one turn of a session at a time, across workers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from gearkv.client import ChatMessage, KVStoreClient, Manifest, Namespace
from gearkv.client.errors import InvalidArgument, TurnInProgress, VersionConflict
from support.fake_backend import FakeBackend
from support.redis_procs import RedisCluster, RedisServer
from support.store import StoreHandle, start_store_thread, store_config

pytestmark = pytest.mark.integration

NS = Namespace("lease-model:1", "raw/v1", 16)


@pytest.fixture(params=["redis", "cluster", "fake"])
def client(
    request: pytest.FixtureRequest,
    store_factory: Callable[..., StoreHandle],
    redis_factory: Callable[..., RedisServer],
) -> Iterator[KVStoreClient]:
    if request.param == "fake":
        cfg, tokens = store_config("redis://127.0.0.1:1/0")
        handle = start_store_thread(cfg, tokens, backend=FakeBackend())
    elif request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        handle = store_factory(cluster.url)
    else:
        handle = store_factory(redis_factory().url)
    with KVStoreClient(handle.address, token=handle.tokens["alice"], timeout=10) as c:
        yield c
    if request.param == "fake":
        handle.stop()


def turn(session: str, n: int) -> Manifest:
    return Manifest(session, NS, (), (), (ChatMessage("user", f"turn {n}"),), turns=n)


def sid(name: str) -> str:
    return f"{name}-{time.monotonic_ns()}"  # the cluster is shared by the whole test session


def test_one_turn_at_a_time_and_the_commit_gives_the_lease_back(client: KVStoreClient) -> None:
    s = sid("one")
    start = client.begin_turn(s, holder="worker-a", lease_id="a1")
    assert (start.version, start.manifest, start.abandoned_turn) == (0, None, False)
    with pytest.raises(TurnInProgress, match="another worker"):
        client.begin_turn(s, holder="worker-b", lease_id="b1")
    with pytest.raises(VersionConflict, match="another worker"):  # b cannot commit meanwhile either
        client.commit_turn(turn(s, 1), 0, holder="worker-b", lease_id="b1")
    # a renewal by the holder is fine (same lease id, or its next turn's id)
    assert client.begin_turn(s, holder="worker-a", lease_id="a1").version == 0
    assert client.commit_turn(turn(s, 1), 0, holder="worker-a", lease_id="a1") == 1
    start = client.begin_turn(s, holder="worker-b", lease_id="b1")
    assert start.version == 1 and start.manifest is not None and start.manifest.turns == 1
    assert not start.abandoned_turn
    # the version the caller knows: no manifest sent again
    assert client.begin_turn(s, holder="worker-b", lease_id="b1", known_version=1).manifest is None


def test_end_turn_releases_and_an_expired_lease_marks_the_turn_abandoned(client: KVStoreClient) -> None:
    s = sid("end")
    client.begin_turn(s, holder="worker-a", lease_id="a1")
    client.end_turn(s, "not-mine")  # someone else's id: ignored
    with pytest.raises(TurnInProgress):
        client.begin_turn(s, holder="worker-b", lease_id="b1")
    client.end_turn(s, "a1")
    assert not client.begin_turn(s, holder="worker-b", lease_id="b1", lease_ms=200).abandoned_turn
    time.sleep(0.3)  # b's lease expires with neither a commit nor an EndTurn
    start = client.begin_turn(s, holder="worker-c", lease_id="c1")
    assert (start.abandoned_turn, start.abandoned_holder) == (True, "worker-b")
    client.end_turn(s, "c1")  # giving back the new lease keeps the mark for the next turn
    assert client.begin_turn(s, holder="worker-d", lease_id="d1").abandoned_turn
    assert client.commit_turn(turn(s, 1), 0, holder="worker-d", lease_id="d1") == 1
    assert not client.begin_turn(s, holder="worker-e", lease_id="e1").abandoned_turn


def test_commits_without_a_holder_still_work_and_bad_lease_fields_are_named(client: KVStoreClient) -> None:
    s = sid("plain")
    assert client.commit_turn(turn(s, 1), 0) == 1  # the README's flow: no lease involved
    with pytest.raises(InvalidArgument, match="holder"):
        client.begin_turn(s, holder="has space", lease_id="x")
    with pytest.raises(InvalidArgument, match="lease_ms"):
        client.begin_turn(s, holder="w", lease_id="x", lease_ms=10)
    with pytest.raises(InvalidArgument, match="session_id"):
        client.begin_turn("bad id!", holder="w", lease_id="x")
