"""Public entry points: ``Codec`` (encode), ``decode``, ``decode_into`` and ``inspect``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from . import _gear, _gtc, _triton
from ._calibration import Calibration
from ._config import PRESETS, CodecConfig, codec_id_of
from ._gear import PartGeometry, part_geometry, part_sections
from ._gtc import GtcGeometry, gtc_sections
from ._wire import Section, order_sections, pack_blob, read_frame, section_views
from .errors import CalibrationMismatch, CorruptBlob, InvalidInput, UnsupportedConfig

__all__ = ["BACKENDS", "Backend", "BlobInfo", "Codec", "decode", "decode_into", "inspect"]

Backend = Literal["auto", "torch", "triton"]
BACKENDS: tuple[Backend, ...] = ("auto", "torch", "triton")

KV = tuple[torch.Tensor, torch.Tensor]
_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}
_FP16_MAX = 65504.0


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_backend(backend: object) -> Backend:
    for name in BACKENDS:
        if backend == name:
            return name
    raise UnsupportedConfig(f"backend must be one of {list(BACKENDS)}, got {backend!r}")


def _use_triton(backend: Backend, device: torch.device) -> bool:
    """Whether a part on ``device`` runs on the Triton kernels; raises BackendUnavailable for "triton"
    where they cannot run. "auto": CUDA tensors when triton imports, torch everywhere else."""
    if backend == "torch":
        return False
    if backend == "auto":
        return device.type == "cuda" and _triton.available()
    _triton.require(device)
    return True


@dataclass(frozen=True)
class BlobInfo:
    """What a blob holds, read from its header without decoding the tensors."""

    format_version: int
    codec_id: str
    config: CodecConfig
    num_layers: int
    key_shape: tuple[int, int, int, int]  # [batch, kv_heads, tokens, head_dim], the same for every layer
    value_shape: tuple[int, int, int, int]
    dtype: str  # the input dtype, which decode returns by default
    tokens: int
    sink_tokens: int  # leading tokens stored at 16 bits
    raw_bytes: int  # the same KV at 16 bits per element
    stored_bytes: int  # len(blob)
    calibration: str = ""  # digest of the Calibration it needs to decode ("" for none)

    @property
    def ratio(self) -> float:
        """Compression ratio against 16-bit KV, counting every byte of the blob."""
        return self.raw_bytes / self.stored_bytes


@dataclass(frozen=True)
class _Sections:
    """A compressed chunk before serialization: the blob's header and its sections, still on the
    input's device. ``encode`` adds only ``pack_blob`` (the copy to host and the CRC); the benchmark
    times the device-side stages alone with ``Codec._encode_sections`` and ``_decode_sections``."""

    header: dict[str, Any]
    plan: _Plan
    tensors: dict[str, torch.Tensor]


@dataclass(frozen=True)
class _Part:
    """One stored part: rows ``start:stop`` of the stacked keys or values [N, tokens, head_dim]."""

    geometry: PartGeometry
    values: bool
    start: int
    stop: int


@dataclass(frozen=True)
class _Plan:
    """The storage plan shared by encoder and decoder: geometry of both parts and the payload order."""

    kind: str  # "quant", "gtc" or "plain"
    store_dtype: torch.dtype  # plain mode: the stored element type; quant mode: 16-bit side data type
    parts: tuple[_Part, ...] | None
    layout: list[Section]
    gtc: tuple[GtcGeometry, GtcGeometry] | None = None  # keys, values


def _plan(cfg: CodecConfig, layers: int, kshape: Sequence[int], vshape: Sequence[int], sink: int,
          store_dtype: torch.dtype, escapes: tuple[int, int] = (0, 0)) -> _Plan:  # fmt: skip
    b, h, t, dk = kshape
    dv = vshape[3]
    n = layers * b * h
    if cfg.mode == "gtc":
        gk = GtcGeometry("k.", True, n, t, dk, sink, escapes[0], cfg.rotate)
        gv = GtcGeometry("v.", False, n, t, dv, sink, escapes[1], cfg.rotate)
        layout = order_sections(gtc_sections(gk, store_dtype) + gtc_sections(gv, store_dtype))
        return _Plan("gtc", store_dtype, None, layout, (gk, gv))
    if cfg.mode != "quant":
        plain: list[Section] = [("k", store_dtype, (n, t, dk)), ("v", store_dtype, (n, t, dv))]
        return _Plan("plain", store_dtype, None, order_sections(plain))
    cut = cfg.late_cut(layers) * b * h
    parts = []
    if cut:
        parts.append(_Part(part_geometry(cfg, True, cut, t, dk, sink), False, 0, cut))
    if cut < n:
        parts.append(_Part(part_geometry(cfg, True, n - cut, t, dk, sink, late=True), False, cut, n))
    parts.append(_Part(part_geometry(cfg, False, n, t, dv, sink), True, 0, n))
    layout = order_sections([s for p in parts for s in part_sections(p.geometry, store_dtype)])
    return _Plan("quant", store_dtype, tuple(parts), layout)


def _check_layers(layers: Sequence[KV]) -> tuple[torch.dtype, torch.Size, torch.Size, torch.device]:
    if isinstance(layers, torch.Tensor) or not isinstance(layers, Sequence):
        raise InvalidInput("layers must be a sequence of (keys, values) tensor pairs")
    if len(layers) == 0:
        raise InvalidInput("layers is empty: encode needs at least one (keys, values) pair")
    first: tuple[torch.dtype, torch.Size, torch.Size, torch.device] | None = None
    for i, pair in enumerate(layers):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise InvalidInput(f"layers[{i}] must be a (keys, values) pair")
        k, v = pair
        for what, t in (("keys", k), ("values", v)):
            if not isinstance(t, torch.Tensor):
                raise InvalidInput(f"layers[{i}] {what} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 4:
                raise InvalidInput(
                    f"layers[{i}] {what} must have rank 4 [batch, kv_heads, tokens, head_dim], got shape "
                    f"{tuple(t.shape)}"
                )
            if t.dtype not in _DTYPES.values():
                raise InvalidInput(
                    f"layers[{i}] {what} dtype {t.dtype} unsupported; use float16, bfloat16 or float32"
                )
            if t.numel() == 0:
                raise InvalidInput(
                    f"layers[{i}] {what} is empty (shape {tuple(t.shape)}); every dimension must be >= 1"
                )
        if k.shape[:3] != v.shape[:3]:
            raise InvalidInput(
                f"layers[{i}] keys {tuple(k.shape)} and values {tuple(v.shape)} "
                "differ in batch, kv_heads or tokens"
            )
        if k.dtype != v.dtype or k.device != v.device:
            raise InvalidInput(f"layers[{i}] keys and values differ in dtype or device")
        if first is None:
            first = (k.dtype, k.shape, v.shape, k.device)
        elif (k.dtype, k.shape, v.shape, k.device) != first:
            raise InvalidInput(
                f"layers[{i}] is {k.dtype} keys {tuple(k.shape)} / values {tuple(v.shape)} on {k.device}, "
                "but "
                f"layers[0] is {first[0]} keys {tuple(first[1])} / values {tuple(first[2])} on {first[3]}: "
                "format v1 needs one shape, dtype and device for all layers of a chunk"
            )
    if first is None:  # unreachable: layers is non-empty
        raise InvalidInput("layers is empty")
    return first


def _stack(tensors: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """[layers, *shape] in ``dtype``, converting while copying (one pass over the input)."""
    if tensors[0].dtype == dtype:
        return torch.stack(tensors)
    out = torch.empty((len(tensors), *tensors[0].shape), dtype=dtype, device=tensors[0].device)
    for i, t in enumerate(tensors):
        out[i].copy_(t)
    return out


def _max_abs(x: torch.Tensor, layers: Sequence[KV], what: int) -> float:
    """Largest |x|; raises InvalidInput naming the first layer with NaN or Inf."""
    lo, hi = torch.aminmax(x)  # one vectorized pass; NaN and Inf propagate
    peak = max(-float(lo), float(hi))
    if not math.isfinite(peak):
        for i, pair in enumerate(layers):
            if not bool(torch.isfinite(pair[what]).all()):
                name = "keys" if what == 0 else "values"
                raise InvalidInput(
                    f"layers[{i}] {name} contain NaN or Inf; only finite values can be encoded"
                )
        raise InvalidInput("input contains NaN or Inf")
    return peak


class Codec:
    """Encodes a chunk's KV (all layers at once) into one self-describing ``bytes`` blob.

    Example::

        codec = Codec.from_preset("gear3")
        blob = codec.encode([(k0, v0), (k1, v1)])   # each [batch, kv_heads, tokens, head_dim]
        layers = decode(blob, device="cuda", dtype=torch.float16)

    ``backend`` picks the implementation: "auto" (the Triton kernels for CUDA tensors when triton
    imports, torch elsewhere), "torch", or "triton" (CUDA; CPU only under ``TRITON_INTERPRET=1``).
    Either writes the same blob, and either decodes it.

    Raises:
        UnsupportedConfig: an unknown ``backend``; BackendUnavailable (a subclass) for "triton" when
            triton does not import.
    """

    def __init__(
        self,
        config: CodecConfig | None = None,
        *,
        backend: Backend = "auto",
        calibration: Calibration | None = None,
    ) -> None:
        if config is None:
            config = PRESETS["gear3"]
        if not isinstance(config, CodecConfig):
            raise UnsupportedConfig(f"config must be a CodecConfig, got {type(config).__name__}")
        if config.needs_calibration:
            if not isinstance(calibration, Calibration):
                raise CalibrationMismatch(
                    "a gtc codec needs a Calibration (gearkv calibrate-codec writes one; "
                    "Calibration.load(path))"
                )
        else:
            calibration = None  # nothing to bind: the blob does not depend on one
        self._config = config
        self._calibration = calibration
        self._codec_id = codec_id_of(config, calibration.digest if calibration else "")
        self._backend = _check_backend(backend)
        if self._backend == "triton":
            _triton.require(None)

    @classmethod
    def from_preset(
        cls,
        name: str,
        backend: Backend = "auto",
        *,
        calibration: Calibration | None = None,
        entropy: str | None = None,
    ) -> Codec:
        """One of ``PRESETS``: fp16, raw, kivi2, kivi4, gear2, gear3, gear4, gtc2, gtc3 (the gtc presets
        need ``calibration``). ``entropy="zstd"`` adds the entropy stage to any preset (format v2);
        ``backend``: see the class."""
        if name not in PRESETS:
            raise UnsupportedConfig(f"unknown codec preset {name!r}; choose one of {sorted(PRESETS)}")
        config = PRESETS[name]
        if entropy is not None:
            config = replace(config, entropy=entropy)  # type: ignore[arg-type]  # checked by CodecConfig
        return cls(config, backend=backend, calibration=calibration)

    @property
    def calibration(self) -> Calibration | None:
        return self._calibration

    @property
    def config(self) -> CodecConfig:
        return self._config

    @property
    def backend(self) -> Backend:
        """The backend asked for ("auto", "torch" or "triton"); "auto" resolves per call by device."""
        return self._backend

    @property
    def codec_id(self) -> str:
        """Stable id of config, format version and calibration (``gear3.v1``, ``gtc2.v2.<digest>``,
        ``custom.v1.<hash12>``): KV stored under one id is never decoded under another."""
        return self._codec_id

    def __repr__(self) -> str:
        return f"Codec({self._codec_id}, backend={self._backend!r})"

    def encode(self, layers: Sequence[KV], *, start: int = 0) -> bytes:
        """Compress every layer of one chunk into one blob.

        Args:
            layers: ``(keys, values)`` per layer, each [batch, kv_heads, tokens, head_dim], fp16/bf16/fp32,
                all layers of one shape, dtype and device (CPU or CUDA). Not modified.
            start: absolute position of the chunk's first token; tokens below ``config.sink_tokens``
                (the attention sink) are stored at 16 bits.

        Raises:
            InvalidInput: wrong rank, mismatched shapes, empty tensors, NaN/Inf, unsupported dtype.
            BackendUnavailable: backend "triton" with tensors its kernels cannot run on.
        """
        chunk = self._encode_sections(layers, start)
        cfg = self._config
        return pack_blob(
            chunk.header, chunk.plan.layout, chunk.tensors, version=cfg.format_version, entropy=cfg.entropy
        )

    def _encode_sections(self, layers: Sequence[KV], start: int = 0) -> _Sections:
        """``encode`` up to the sections, which stay on the input's device."""
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise InvalidInput(f"start must be a non-negative integer token position, got {start!r}")
        cfg = self._config
        dtype, kshape, vshape, device = _check_layers(layers)
        kernels = cfg.mode == "quant" and _use_triton(self._backend, device)
        # The torch path quantizes in fp32: stack and convert in one pass per part. The kernels read
        # the input dtype themselves (the same values), so they get a plain stack.
        work = dtype if cfg.mode != "quant" or kernels else torch.float32
        keys = _stack([k for k, _ in layers], work).view(-1, kshape[2], kshape[3])
        values = _stack([v for _, v in layers], work).view(-1, vshape[2], vshape[3])
        peak = max(_max_abs(keys, layers, 0), _max_abs(values, layers, 1))
        if cfg.mode == "raw":
            store = dtype
        elif dtype == torch.bfloat16:
            store = torch.bfloat16
        elif dtype == torch.float32 and peak > _FP16_MAX:
            if cfg.mode == "fp16":
                raise InvalidInput(
                    f"values up to {peak:.4g} exceed the float16 range ({_FP16_MAX}); use the 'raw' preset"
                )
            store = torch.float32  # side data (sink, outliers, factors) must not overflow
        elif cfg.mode == "gtc" and cfg.rotate and peak * math.sqrt(max(kshape[3], vshape[3])) > _FP16_MAX:
            store = torch.float32  # gtc's means and escapes are rotated values, up to sqrt(head_dim)x peak
        else:
            store = torch.float16
        tokens = kshape[2]
        sink = max(0, min(cfg.sink_tokens - start, tokens)) if cfg.mode in ("quant", "gtc") else 0
        plan = _plan(cfg, len(layers), kshape, vshape, sink, store)
        extra: dict[str, Any] = {}
        if plan.gtc is not None:
            betas = _gtc_betas(cfg, self._calibration, len(layers), kshape, keys.device)
            tensors = {}
            for g, source, beta in zip(plan.gtc, (keys, values), betas, strict=True):
                tensors.update(_gtc.compress_gtc(source, beta, g, store))
            escapes = (len(tensors.get("k.eidx", ())), len(tensors.get("v.eidx", ())))
            plan = _plan(cfg, len(layers), kshape, vshape, sink, store, escapes)
            extra = {
                "escapes": list(escapes),
                "calibration": self._calibration.digest if self._calibration else "",
            }
        elif plan.parts is None:
            tensors = {"k": keys.to(store), "v": values.to(store)}
        else:
            tensors = {}
            compress_part = _triton.compress_part if kernels else _gear.compress_part
            for part in plan.parts:
                source = values if part.values else keys
                tensors.update(compress_part(source[part.start : part.stop], part.geometry, store))
        header: dict[str, Any] = {
            "codec_id": self._codec_id,
            "config": cfg.to_dict(),
            "dtype": _dtype_name(dtype),
            "store_dtype": _dtype_name(store),
            "layers": len(layers),
            "key_shape": list(kshape),
            "value_shape": list(vshape),
            "sink": sink,
            **extra,
        }
        return _Sections(header, plan, tensors)


def _gtc_betas(
    cfg: CodecConfig,
    calibration: Calibration | None,
    layers: int,
    kshape: Sequence[int],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row steps [layers * batch * kv_heads] of keys and values: the preset's step times the
    calibration's per-layer scale."""
    if calibration is None:  # unreachable through Codec and decode, which check first
        raise CalibrationMismatch("a gtc blob needs its Calibration")
    k_scale, v_scale = calibration.scales_for(layers)
    per_layer = kshape[0] * kshape[1]
    k = torch.tensor(k_scale, dtype=torch.float32).repeat_interleave(per_layer) * cfg.k_step
    v = torch.tensor(v_scale, dtype=torch.float32).repeat_interleave(per_layer) * cfg.v_step
    return k.to(device), v.to(device)


def _parse(blob: bytes | bytearray | memoryview) -> tuple[BlobInfo, _Plan, int, int]:
    header, start, version, flags = read_frame(blob)
    try:
        config = CodecConfig.from_dict(header["config"])
        kshape = tuple(int(d) for d in header["key_shape"])
        vshape = tuple(int(d) for d in header["value_shape"])
        layers, sink = int(header["layers"]), int(header["sink"])
        dtype, store = _DTYPES[header["dtype"]], _DTYPES[header["store_dtype"]]
        codec_id = str(header["codec_id"])
        calibration = str(header.get("calibration", ""))
        escapes = tuple(int(e) for e in header.get("escapes", (0, 0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptBlob(f"inconsistent blob header: {exc!r}") from exc
    if (
        len(kshape) != 4 or len(vshape) != 4 or kshape[:3] != vshape[:3] or min(kshape + vshape) < 1
        or layers < 1 or not 0 <= sink <= kshape[2] or codec_id != codec_id_of(config, calibration)
        or version != config.format_version or bool(flags) != (config.entropy == "zstd")
        or len(escapes) != 2 or min(escapes) < 0 or bool(calibration) != config.needs_calibration
    ):  # fmt: skip
        raise CorruptBlob(f"inconsistent blob header: {header}")
    plan = _plan(config, layers, kshape, vshape, sink, store, (escapes[0], escapes[1]))
    raw_bytes = 2 * layers * (_prod(kshape) + _prod(vshape))
    info = BlobInfo(
        version, codec_id, config, layers, kshape, vshape,
        _dtype_name(dtype), kshape[2], sink, raw_bytes, len(blob), calibration,
    )  # fmt: skip
    return info, plan, start, flags


def _check_calibration(info: BlobInfo, calibration: Calibration | None) -> Calibration | None:
    """The calibration a blob needs, checked: never decode under another one (wrong tensors)."""
    if not info.calibration:
        return None
    if calibration is None:
        raise CalibrationMismatch(
            f"this {info.codec_id} blob needs codec calibration {info.calibration}: pass "
            "calibration=Calibration.load(path)"
        )
    if not isinstance(calibration, Calibration):
        raise CalibrationMismatch(f"calibration must be a Calibration, got {type(calibration).__name__}")
    if calibration.digest != info.calibration:
        raise CalibrationMismatch(
            f"this blob was written with codec calibration {info.calibration}, not {calibration.digest}: "
            "decoding under another calibration would return wrong tensors"
        )
    calibration.scales_for(info.num_layers)
    return calibration


def _prod(shape: Sequence[int]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def inspect(blob: bytes | bytearray | memoryview) -> BlobInfo:
    """Read a blob's header (checking magic, version and checksum) without decoding its tensors.

    Raises:
        CorruptBlob, UnsupportedFormatVersion.
    """
    return _parse(blob)[0]


def decode(
    blob: bytes | bytearray | memoryview,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    backend: Backend = "auto",
    calibration: Calibration | None = None,
) -> list[KV]:
    """Decompress a blob into ``(keys, values)`` per layer, each [batch, kv_heads, tokens, head_dim].

    Args:
        device: where the tensors are rebuilt (default CPU); decoding runs there.
        dtype: output dtype (default: the dtype that was encoded).
        backend: "auto", "torch" or "triton", as for ``Codec``; any backend decodes any blob.
        calibration: the ``Calibration`` a gtc blob was written with (``inspect(blob).calibration``
            names it); ignored by other blobs.

    Raises:
        CorruptBlob, UnsupportedFormatVersion, InvalidInput (an unsupported ``dtype``),
        UnsupportedConfig / BackendUnavailable (``backend``), CalibrationMismatch (a gtc blob
        without its calibration, or with another).
    """
    backend = _check_backend(backend)
    info, plan, start, flags = _parse(blob)
    cal = _check_calibration(info, calibration)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    out_dtype = _DTYPES[info.dtype] if dtype is None else dtype
    if out_dtype not in _DTYPES.values():
        raise InvalidInput(f"dtype {out_dtype} unsupported; use float16, bfloat16 or float32")
    keys = torch.empty(info.num_layers, *info.key_shape, dtype=out_dtype, device=dev)
    values = torch.empty(info.num_layers, *info.value_shape, dtype=out_dtype, device=dev)
    _fill(blob, info, plan, start, flags, keys, values, backend, cal)
    return [(keys[i], values[i]) for i in range(info.num_layers)]


def decode_into(
    blob: bytes | bytearray | memoryview,
    keys: torch.Tensor,
    values: torch.Tensor,
    *,
    backend: Backend = "auto",
    calibration: Calibration | None = None,
) -> BlobInfo:
    """Decompress a blob straight into caller-owned ``keys``/``values``.

    Rebuilding a long cache chunk by chunk then needs no per-chunk allocation and no second copy:
    pass one chunk's token range of a session-wide buffer, e.g. ``buf_k[:, :, :, start:end]`` of a
    contiguous ``[layers, batch, kv_heads, tokens, head_dim]`` tensor. Decoding runs on their device
    and writes their dtype.

    Args:
        keys, values: ``[layers, batch, kv_heads, tokens, head_dim]`` of exactly the blob's shapes,
            float16/bfloat16/float32, viewable as ``[layers * batch * kv_heads, tokens, head_dim]``.
        backend: "auto", "torch" or "triton", as for ``Codec``.
        calibration: the ``Calibration`` a gtc blob needs, as for ``decode``.

    Returns:
        The blob's header.

    Raises:
        CorruptBlob, UnsupportedFormatVersion; InvalidInput when the outputs do not fit the blob
        (nothing is written then); UnsupportedConfig / BackendUnavailable (``backend``);
        CalibrationMismatch, as for ``decode``.
    """
    backend = _check_backend(backend)
    info, plan, start, flags = _parse(blob)
    cal = _check_calibration(info, calibration)
    for name, out, shape in (("keys", keys, info.key_shape), ("values", values, info.value_shape)):
        want = (info.num_layers, *shape)
        if tuple(out.shape) != want:
            raise InvalidInput(f"{name} is {tuple(out.shape)}; the blob holds {want}")
        if out.dtype not in _DTYPES.values():
            raise InvalidInput(f"{name} dtype {out.dtype} unsupported; use float16, bfloat16 or float32")
    if keys.device != values.device:
        raise InvalidInput(f"keys on {keys.device} and values on {values.device}: use one device")
    _fill(blob, info, plan, start, flags, keys, values, backend, cal)
    return info


def _fill(
    blob: bytes | bytearray | memoryview,
    info: BlobInfo,
    plan: _Plan,
    start: int,
    flags: int,
    keys: torch.Tensor,
    values: torch.Tensor,
    backend: Backend,
    calibration: Calibration | None = None,
) -> None:
    """Decode the payload into ``keys``/``values`` ``[layers, batch, kv_heads, tokens, head_dim]``."""
    n = info.num_layers * info.key_shape[0] * info.key_shape[1]
    try:  # the parts address rows of [layers * batch * kv_heads, tokens, head_dim]
        key_rows = keys.view(n, info.tokens, info.key_shape[3])
        value_rows = values.view(n, info.tokens, info.value_shape[3])
    except RuntimeError as exc:
        raise InvalidInput(
            "keys/values must be viewable as [layers * batch * kv_heads, tokens, head_dim] "
            "(a token range of a contiguous buffer is)"
        ) from exc
    sections = section_views(blob, start, plan.layout, keys.device, flags)
    betas = None
    if plan.gtc is not None:
        b, h = info.key_shape[:2]
        betas = _gtc_betas(info.config, calibration, info.num_layers, (b, h), keys.device)
    _decompress(plan, sections, key_rows, value_rows, backend, betas)


def _decode_sections(chunk: _Sections, keys: torch.Tensor, values: torch.Tensor, backend: Backend) -> None:
    """Decode ``Codec._encode_sections`` output (on the outputs' device) into ``keys``/``values``
    ``[layers, batch, kv_heads, tokens, head_dim]``, contiguous: the device-side half of ``decode``."""
    b, h, t, dk = chunk.header["key_shape"]
    n = chunk.header["layers"] * b * h
    key_rows, value_rows = keys.view(n, t, dk), values.view(n, t, chunk.header["value_shape"][3])
    if chunk.plan.gtc is not None:
        raise UnsupportedConfig("_decode_sections times the GEAR parts only")
    _decompress(chunk.plan, chunk.tensors, key_rows, value_rows, _check_backend(backend))


def _decompress(
    plan: _Plan,
    sections: dict[str, torch.Tensor],
    key_rows: torch.Tensor,
    value_rows: torch.Tensor,
    backend: Backend,
    betas: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    kernels = plan.parts is not None and _use_triton(backend, key_rows.device)
    decompress_part = _triton.decompress_part if kernels else _gear.decompress_part
    try:
        if plan.gtc is not None:
            if betas is None:  # unreachable: _fill computes them for every gtc blob
                raise CalibrationMismatch("a gtc blob needs its calibration's steps")
            for g, dest, beta in zip(plan.gtc, (key_rows, value_rows), betas, strict=True):
                _gtc.decompress_gtc(sections, beta, g, dest)
        elif plan.parts is None:
            key_rows.copy_(sections["k"])
            value_rows.copy_(sections["v"])
        else:
            for part in plan.parts:
                dest = value_rows if part.values else key_rows
                decompress_part(sections, part.geometry, dest[part.start : part.stop])
    except (RuntimeError, IndexError) as exc:  # only reachable with a crafted blob whose checksum matches
        raise CorruptBlob(f"blob sections are inconsistent: {exc}") from exc
