"""Bit packing of integer codes: ``pack_bits``/``unpack_bits`` for 2, 3, 4 and 8 bits.

Codes are uint8 tensors holding values below ``2**bits``. 2- and 4-bit codes share bytes (4 or 2 per
byte, first code in the low bits). 3-bit codes are stored as two bit planes: the low two bits of every
code packed like 2-bit codes, then the high bit of every code packed eight to a byte, so 3 bits per code
exactly. Unpacking is a table lookup per byte (one gather), the fastest form on CPU.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["pack_bits", "packed_size", "unpack_bits"]


def _plane_size(count: int, bits: int) -> int:
    per = 8 // bits
    return (count + per - 1) // per


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits occupy once packed."""
    if bits == 3:
        return _plane_size(count, 2) + _plane_size(count, 1)
    return _plane_size(count, bits)


def _pack_plane(flat: torch.Tensor, bits: int) -> torch.Tensor:
    per = 8 // bits
    pad = (-flat.numel()) % per
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    c = flat.view(-1, per)
    out = c[:, 0].clone()
    for i in range(1, per):  # at most 7 shifts, each over the whole tensor
        out |= c[:, i] << (bits * i)
    return out


@functools.lru_cache(maxsize=16)
def _table(bits: int, shift: int, device: str) -> torch.Tensor:
    """[256, 8 // bits] uint8: the codes held by each byte value (shifted left by ``shift``)."""
    b = torch.arange(256, dtype=torch.uint8)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8)
    return (((b.unsqueeze(1) >> shifts) & ((1 << bits) - 1)) << shift).contiguous().to(device)


def _unpack_plane(packed: torch.Tensor, bits: int, shift: int, count: int) -> torch.Tensor:
    table = _table(bits, shift, str(packed.device))
    return table.index_select(0, packed.int()).view(-1)[:count]


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a uint8 tensor of codes (flattened) into ``packed_size(codes.numel(), bits)`` bytes."""
    flat = codes.reshape(-1)
    if bits == 8:
        return flat.contiguous()
    if bits == 3:
        return torch.cat([_pack_plane(flat & 3, 2), _pack_plane(flat >> 2, 1)])
    return _pack_plane(flat, bits)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: the first ``count`` codes as a flat uint8 tensor."""
    if bits == 8:
        return packed[:count]
    if bits == 3:
        low = _plane_size(count, 2)
        return _unpack_plane(packed[:low], 2, 0, count) | _unpack_plane(packed[low:], 1, 2, count)
    return _unpack_plane(packed, bits, 0, count)
