"""Wire format v1: golden bytes, checksum coverage, truncation, header checks (CPU, no network).

Format v2 (gtc, the entropy stage) has its golden bytes and corruption tests in test_codec_gtc.py.
"""

from __future__ import annotations

import struct
import zlib

import pytest
import torch
from gearkv.codec import (
    Codec,
    CodecError,
    CorruptBlob,
    UnsupportedFormatVersion,
    decode,
    inspect,
)

# Format v1 blobs of golden_layers(). They pin the wire layout and the preset definitions (the header
# carries the config): a change here needs a FORMAT_VERSION bump, since ids like gear3.v1 name both.
GOLDEN_GEAR3 = (
    "474b5600010000007c0100007b22636f6465635f6964223a2267656172332e7631222c22636f6e666967223a7b226b5f"
    "62697473223a332c226b5f67726f7570223a36342c226b5f6c6174655f62697473223a302c226b5f6c6174655f67726f"
    "7570223a302c226b5f6f75746c69657273223a302e30303339303632352c226b5f72616e6b223a302c226c6174655f66"
    "726f6d223a302e302c226d6f6465223a227175616e74222c22706172616d5f62697473223a382c22706f7765725f6974"
    "657273223a332c22726f74617465223a747275652c2273696e6b5f746f6b656e73223a312c22765f62697473223a332c"
    "22765f67726f7570223a36342c22765f6f75746c69657273223a302e302c22765f72616e6b223a307d2c226474797065"
    "223a22666c6f61743136222c226b65795f7368617065223a5b312c322c362c385d2c226c6179657273223a312c227369"
    "6e6b223a312c2273746f72655f6474797065223a22666c6f61743136222c2276616c75655f7368617065223a5b312c32"
    "2c362c385d7d2020435540c05816413cffff1fc049e8ef3bb7c307c0044c883bb0e10dc01e6acb3b2f4662bf5829e33a"
    "e1c526c04191f13a061493bfaea7133b65a926c0d897f03a00c000bd00b80034003c003f00bf00bc0000003a003e00c0"
    "00bd00b80034003cc73f0342033e034200ba00390036003000b000b600b9003a0034000000b400b800ba003900360030"
    "d2a54bff967f007fbfff0094d49494940027af27af28afff7ca1a100a1a1ff0087c0c03f0c333cff83a3390d3fff1fcc"
    "03ac530f8d6812f6103594232e354183c3c0ff00b2b2fefe00fefe75ffff00a3ff00d2a300ff8ebb3500cac23a0380bb"
    "c8c27f47882b09fe370040ef8c10438dba7de5eeffa1bfe9"
)
GOLDEN_FP16 = (
    "474b560001000000740100007b22636f6465635f6964223a22667031362e7631222c22636f6e666967223a7b226b5f62"
    "697473223a332c226b5f67726f7570223a36342c226b5f6c6174655f62697473223a302c226b5f6c6174655f67726f75"
    "70223a302c226b5f6f75746c69657273223a302e302c226b5f72616e6b223a302c226c6174655f66726f6d223a302e30"
    "2c226d6f6465223a2266703136222c22706172616d5f62697473223a382c22706f7765725f6974657273223a332c2272"
    "6f74617465223a747275652c2273696e6b5f746f6b656e73223a312c22765f62697473223a332c22765f67726f757022"
    "3a36342c22765f6f75746c69657273223a302e302c22765f72616e6b223a307d2c226474797065223a22666c6f617431"
    "36222c226b65795f7368617065223a5b312c322c362c385d2c226c6179657273223a312c2273696e6b223a302c227374"
    "6f72655f6474797065223a22666c6f61743136222c2276616c75655f7368617065223a5b312c322c362c385d7d202020"
    "00c000bd00b80034003c003f00bf00bc00b40038003d004000be00ba0000003a003e00c000bd00b80034003c003f00bf"
    "00bc00b40038003d004000be00ba0000003a003e00c000bd00b80034003c003f00bf00bc00b40038003d004000be00ba"
    "0000003a003e00c000bd00b80034003c003f00bf00bc00b40038003d004000be00ba0000003a003e00c000bd00b80034"
    "003c003f00bf00bc00b40038003d004000be00ba0000003a003e00c000bd00b80034003c003f00bf00bc00b40038003d"
    "00ba00390036003000b000b600b9003a00380034000000b400b800ba00390036003000b000b600b9003a003800340000"
    "00b400b800ba00390036003000b000b600b9003a00380034000000b400b800ba00390036003000b000b600b9003a0038"
    "0034000000b400b800ba00390036003000b000b600b9003a00380034000000b400b800ba00390036003000b000b600b9"
    "003a00380034000000b400b800ba00390036003000b000b600b9003a00380034000000b400b800ba00390036003000b0"
    "745c8a1c"
)


def golden_layers() -> list[tuple[torch.Tensor, torch.Tensor]]:
    i = torch.arange(1 * 2 * 6 * 8, dtype=torch.float32).view(1, 2, 6, 8)
    return [((((i * 37) % 17 - 8) / 4).half(), (((i * 11) % 13 - 6) / 8).half())]


def test_golden_bytes_v1() -> None:
    layers = golden_layers()
    assert Codec.from_preset("fp16").encode(layers).hex() == GOLDEN_FP16
    assert Codec.from_preset("gear3").encode(layers).hex() == GOLDEN_GEAR3


def test_golden_blobs_still_decode() -> None:
    ((k, v),) = golden_layers()
    ((k2, v2),) = decode(bytes.fromhex(GOLDEN_FP16))
    assert torch.equal(k2, k) and torch.equal(v2, v)
    ((k3, v3),) = decode(bytes.fromhex(GOLDEN_GEAR3))
    assert torch.equal(k3[:, :, 0], k[:, :, 0])  # the sink token is stored at 16 bits
    assert (k3.float() - k.float()).norm() / k.float().norm() < 0.3
    assert (v3.float() - v.float()).norm() / v.float().norm() < 0.3
    info = inspect(bytes.fromhex(GOLDEN_GEAR3))
    assert (info.format_version, info.codec_id, info.num_layers, info.tokens) == (1, "gear3.v1", 1, 6)
    assert (info.key_shape, info.value_shape, info.dtype) == ((1, 2, 6, 8), (1, 2, 6, 8), "float16")


def small_blob(preset: str = "gear2") -> bytes:
    gen = torch.Generator().manual_seed(0)
    layers = [
        (torch.randn(1, 2, 9, 16, generator=gen), torch.randn(1, 2, 9, 16, generator=gen)) for _ in range(2)
    ]
    return Codec.from_preset(preset).encode(layers)


@pytest.mark.parametrize("preset", ["gear2", "kivi4", "fp16"])
def test_every_corrupted_byte_is_detected(preset: str) -> None:
    blob = small_blob(preset)
    for i in range(len(blob)):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(blob)
            bad[i] ^= flip
            with pytest.raises(CodecError):
                decode(bytes(bad))
            with pytest.raises(CodecError):
                inspect(bytes(bad))


def test_every_truncation_and_extension_is_detected() -> None:
    blob = small_blob()
    for n in range(len(blob)):
        with pytest.raises(CodecError):
            decode(blob[:n])
    for extra in (b"\x00", b"GKV\x00", blob[-4:]):
        with pytest.raises(CorruptBlob):
            decode(blob + extra)


def _reframe(blob: bytes, version: int) -> bytes:
    body = blob[:4] + struct.pack("<H", version) + blob[6:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def test_unknown_format_version() -> None:
    blob = small_blob()
    assert decode(_reframe(blob, 1))[0][0].shape == (1, 2, 9, 16)  # the re-framing itself is sound
    for version in (3, 99, 0xFFFF):
        with pytest.raises(UnsupportedFormatVersion, match=f"version {version}") as raised:
            decode(_reframe(blob, version))
        assert raised.value.version == version and raised.value.supported == (1, 2)
    with pytest.raises(UnsupportedFormatVersion):
        inspect(_reframe(blob, 0))
    # v2 is known, but a v1 config's payload framed as v2 is inconsistent, not silently accepted
    with pytest.raises(CorruptBlob, match="inconsistent blob header"):
        decode(_reframe(blob, 2))


def test_bad_magic_and_non_bytes() -> None:
    blob = small_blob()
    with pytest.raises(CorruptBlob, match="magic"):
        decode(b"XXXX" + blob[4:])
    with pytest.raises(CorruptBlob, match="bytes"):
        decode("not bytes")  # type: ignore[arg-type]
    assert isinstance(CorruptBlob("x"), ValueError)


def test_inconsistent_header_with_valid_checksum() -> None:
    blob = small_blob()
    header_len = struct.unpack_from("<I", blob, 8)[0]
    header = blob[12 : 12 + header_len]
    for old, new in (
        (b'"layers":2', b'"layers":3'),
        (b'"sink":1', b'"sink":9'),
        (b'"gear2.v1"', b'"gear3.v1"'),
    ):
        assert old in header
        forged = blob[:12] + header.replace(old, new) + blob[12 + header_len : -4]
        forged += struct.pack("<I", zlib.crc32(forged))
        with pytest.raises(CorruptBlob):
            decode(forged)


def test_blob_length_matches_inspect() -> None:
    for preset in ("fp16", "raw", "kivi2", "kivi4", "gear2", "gear3", "gear4"):
        blob = small_blob(preset)
        info = inspect(blob)
        assert info.stored_bytes == len(blob)
        assert info.raw_bytes == 2 * 2 * 2 * (2 * 9 * 16)
        assert info.ratio == info.raw_bytes / len(blob)
