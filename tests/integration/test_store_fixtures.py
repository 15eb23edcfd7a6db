"""The test harness itself: real redis-server processes start, answer, restart and form a cluster."""

from __future__ import annotations

import pytest
import redis
from support.redis_procs import RedisCluster, RedisServer

pytestmark = pytest.mark.integration


def test_redis_server_restarts_on_same_port(redis_server: RedisServer) -> None:
    with redis_server.client() as cli:
        assert cli.set(b"k", b"v")
    port = redis_server.port
    redis_server.stop()
    with pytest.raises(redis.ConnectionError), redis_server.client(socket_connect_timeout=0.5) as cli:
        cli.ping()
    redis_server.start()
    assert redis_server.port == port
    with redis_server.client() as cli:
        assert cli.get(b"k") is None  # no persistence: restarted empty


def test_cluster_is_healthy(redis_cluster: RedisCluster) -> None:
    assert len(redis_cluster.masters()) == 3
    assert len(redis_cluster.replicas()) == 3
    client = redis.RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    try:
        for i in range(50):
            client.set(f"fixture-{i}", b"x")
        assert client.get("fixture-7") == b"x"
    finally:
        client.close()
