"""Free loopback ports, picked by the kernel (never a fixed or default port)."""

from __future__ import annotations

import socket


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port`` right now (a hint; another process may race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, also_free_offset: int | None = None) -> int:
    """A port the kernel just handed out on 127.0.0.1.

    ``also_free_offset`` additionally requires ``port + offset`` to be free (a Redis Cluster node also
    listens on its bus port, port + 10000), so the port is drawn below 55535.
    """
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if also_free_offset is None:
            return port
        if port + also_free_offset <= 65535 and port_is_free(port + also_free_offset):
            return port
    raise RuntimeError("no free loopback port found")
