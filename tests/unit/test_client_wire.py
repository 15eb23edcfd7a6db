"""gearkv.api.wire: the zero-copy chunk-stream codecs read and write exactly what protobuf does."""

from __future__ import annotations

import pytest
from gearkv.api.digest import DIGEST_BYTES, PayloadHasher, payload_digest
from gearkv.api.v1 import kvstore_pb2 as pb
from gearkv.api.wire import (
    GetPart,
    PutPart,
    WireError,
    decode_get_part,
    decode_put_part,
    encode_get_part,
    encode_put_part,
)
from hypothesis import given, settings
from hypothesis import strategies as st

HEADER = pb.PutChunkHeader(
    key="a" * 64,
    namespace=pb.Namespace(fingerprint="fp", codec_id="gear4/v1", chunk_size=8),
    token_ids=[1, 2, 300000],
    total_bytes=5,
    digest=bytes(16),
)
INFO = pb.ChunkInfo(key="b" * 64, total_bytes=3, digest=bytes(range(16)), start=8, end=16)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=4000), with_header=st.booleans())
def test_put_part_bytes_equal_protobufs(data: bytes, with_header: bool) -> None:
    header = HEADER if with_header else None
    ours = encode_put_part(PutPart(header, memoryview(data)))
    theirs = pb.PutChunkRequest(header=header, data=data).SerializeToString()
    assert ours == theirs
    back = decode_put_part(theirs)
    assert back.header == header and bytes(back.data) == data


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=4000), with_info=st.booleans())
def test_get_part_bytes_equal_protobufs(data: bytes, with_info: bool) -> None:
    info = INFO if with_info else None
    ours = encode_get_part(GetPart(info, data))
    assert ours == pb.GetChunkResponse(info=info, data=data).SerializeToString()
    back = decode_get_part(ours)
    assert back.info == info and bytes(back.data) == data


def test_big_parts_need_multibyte_lengths_and_decode_as_views() -> None:
    data = bytes(range(256)) * 5000  # 1.28 MB: a 3-byte length varint
    raw = encode_get_part(GetPart(INFO, memoryview(data)))
    assert pb.GetChunkResponse.FromString(raw).data == data
    back = decode_get_part(raw)
    assert isinstance(back.data, memoryview) and back.data.obj is raw  # no copy on the way in


def test_decoder_follows_protobuf_merge_rules() -> None:
    """Fields out of order, repeated (field 1 merged, field 2 last wins) and unknown fields skipped."""
    unknown = b"\x18\x96\x01" + b"\x25\x01\x02\x03\x04" + b"\x29" + bytes(8) + b"\x3a\x02hi"
    part1 = pb.GetChunkResponse(info=pb.ChunkInfo(key="k", total_bytes=7)).SerializeToString()
    part2 = pb.GetChunkResponse(info=pb.ChunkInfo(start=3), data=b"first").SerializeToString()
    late = pb.GetChunkResponse(data=b"second").SerializeToString()
    raw = late + unknown + part1 + part2 + late
    expected = pb.GetChunkResponse.FromString(raw)
    back = decode_get_part(raw)
    assert back.info == expected.info and bytes(back.data) == expected.data == b"second"
    assert (back.info.key, back.info.total_bytes, back.info.start) == ("k", 7, 3)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x12\x05abc",  # length past the end
        b"\x12",  # missing length
        b"\x12\xff\xff",  # truncated varint
        b"\x0b",  # group wire type
        b"\x02\x00",  # field number 0
        b"\x29\x00\x00",  # fixed64 past the end
        b"\x12" + b"\xff" * 11,  # overlong varint
    ],
)
def test_malformed_messages_raise_wire_error(raw: bytes) -> None:
    with pytest.raises(WireError):
        decode_put_part(raw)
    with pytest.raises(WireError):
        decode_get_part(raw)


def test_protobuf_messages_pass_through() -> None:
    msg = pb.PutChunkRequest(header=HEADER, data=b"xyz")
    assert encode_put_part(msg) == msg.SerializeToString()
    assert PutPart.of(msg) == PutPart(HEADER, b"xyz")
    assert GetPart.of(pb.GetChunkResponse(data=b"q")) == GetPart(None, b"q")


def test_digest_is_xxh3_128_and_incremental_matches() -> None:
    data = bytes(range(256)) * 9000
    h = PayloadHasher()
    for lo in range(0, len(data), 100_000):
        h.update(memoryview(data)[lo : lo + 100_000])
    assert h.digest() == payload_digest(data) and len(payload_digest(b"")) == DIGEST_BYTES == 16
    assert payload_digest(b"a") != payload_digest(b"b")
