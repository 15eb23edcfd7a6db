"""Connection options: TLS material, target parsing and gRPC channel arguments (no I/O but file reads).

Example::

    tls = TLSOptions.from_files(ca="ca.pem", cert="client.pem", key="client.key")
    client = KVStoreClient("grpcs://store.internal:50051", token=token, tls=tls)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from gearkv.client.errors import InvalidArgument

__all__ = [
    "CHANNEL_OPTIONS",
    "GRPC_SCHEMES",
    "MAX_MESSAGE_BYTES",
    "ChannelOption",
    "TLSOptions",
    "parse_target",
]

# Chunk parts are <= 1 MiB, but a manifest or lookup with 1,048,576 token ids takes up to ~5 MiB; the
# store's default cap is the same 8 MiB.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

ChannelOption = tuple[str, int | str]

CHANNEL_OPTIONS: tuple[ChannelOption, ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # The SDK retries itself (gRPC's own retry gives up on requests over 256 KiB).
    ("grpc.enable_retries", 0),
    # Reconnect quickly after a store restart (gRPC's default starts at 1 s and grows to 120 s); the
    # SDK's own jittered retries bound how long a call keeps trying. No keepalive pings: deadlines
    # bound every call, and servers answer frequent pings with GOAWAY.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)

# A target that can resolve to several stores (dns:, an ipv4:/ipv6: list) spreads calls over all of
# them; every store of a deployment serves every call, and calls are independent (a commit's chunks
# may go to one store and the commit to another). A plain host:port keeps gRPC's pick_first: in
# `gearkv bench store` round_robin on a single address measured ~10 % less pull throughput.
BALANCED_SCHEMES = ("dns:", "ipv4:", "ipv6:")
ROUND_ROBIN: ChannelOption = ("grpc.lb_policy_name", "round_robin")


@dataclass(frozen=True, repr=False)
class TLSOptions:
    """TLS (and mutual TLS) for the channel; PEM bytes, never paths.

    Args:
        root_certificates: CA bundle that signs the server's certificate (None = system roots).
        certificate_chain: client certificate for mutual TLS (needs ``private_key``).
        private_key: the client certificate's key.
        server_name_override: expected server name when it differs from the target host (tests).
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name_override: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise InvalidArgument("tls: certificate_chain and private_key must be given together")

    def __repr__(self) -> str:  # never print key material
        return (
            f"TLSOptions(root_certificates={'set' if self.root_certificates else None}, "
            f"mutual={self.certificate_chain is not None}, "
            f"server_name_override={self.server_name_override!r})"
        )

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name_override: str | None = None,
    ) -> TLSOptions:
        """Read PEM files (the one place the SDK touches the filesystem)."""

        def read(p: str | Path | None) -> bytes | None:
            return Path(p).read_bytes() if p is not None else None

        return cls(read(ca), read(cert), read(key), server_name_override)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def channel_options(self) -> tuple[ChannelOption, ...]:
        if self.server_name_override:
            return (("grpc.ssl_target_name_override", self.server_name_override),)
        return ()


# gRPC's own name-resolver schemes, passed to grpc unchanged (https://grpc.github.io/grpc/core/md_doc_naming.html).
GRPC_SCHEMES = ("dns", "unix", "unix-abstract", "ipv4", "ipv6")
_TARGET_HELP = (
    "target must be 'host:port', 'grpc://host:port', 'grpcs://host:port' or a gRPC target "
    "('dns:///host:port', 'unix:/path', 'unix:///abs/path', 'ipv4:a:p,b:p', 'ipv6:[::1]:p')"
)


def parse_target(target: str, tls: TLSOptions | None) -> tuple[str, TLSOptions | None]:
    """Split a target into the address grpc dials and the TLS options (None: plaintext).

    - ``host:port`` (``[::1]:port`` for IPv6): as is; TLS only with ``tls``.
    - ``grpc://host:port``: plaintext (``tls`` is refused); ``grpcs://host:port``: TLS, with the
      system's root certificates unless ``tls`` says otherwise.
    - gRPC's own target syntax goes to grpc unchanged, TLS only with ``tls``: ``dns:///host:port``
      (every address the name resolves to; calls spread over them: round_robin, see ``BALANCED_SCHEMES``),
      ``dns://dns-server/host:port``, ``unix:relative/or/abs/path``, ``unix:///abs/path``,
      ``unix-abstract:name``, and address lists ``ipv4:10.0.0.1:50051,10.0.0.2:50051`` or
      ``ipv6:[::1]:50051,[::2]:50051``.
    """
    if not isinstance(target, str) or not target.strip() or target != target.strip():
        raise InvalidArgument(_TARGET_HELP)
    scheme, colon, rest = target.partition(":")
    if colon and scheme in GRPC_SCHEMES:
        if not rest.strip("/") or any(c.isspace() for c in target):
            raise InvalidArgument(_TARGET_HELP)
        if scheme in ("ipv4", "ipv6") and not all(rest.split(",")):
            raise InvalidArgument(f"target: {scheme}: takes addresses (with :port) separated by commas")
        return target, tls
    scheme, sep, rest = target.partition("://")
    if not sep:
        return target, tls
    if scheme == "grpc":
        if tls is not None:
            raise InvalidArgument("target: grpc:// is plaintext; use grpcs:// with tls options")
        address = rest
    elif scheme == "grpcs":
        address, tls = rest, tls or TLSOptions()
    else:
        raise InvalidArgument(f"target: unsupported scheme {scheme!r}; {_TARGET_HELP}")
    if not address or "/" in address:
        raise InvalidArgument(_TARGET_HELP)
    return address, tls
