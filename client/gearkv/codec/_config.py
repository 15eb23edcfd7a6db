"""CodecConfig: a small frozen description of one codec setting, plus the named presets."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from ._calibration import DIGEST_CHARS
from .errors import UnsupportedConfig

__all__ = [
    "ENTROPY",
    "FORMAT_VERSION",
    "FORMAT_VERSIONS",
    "PRESETS",
    "CodecConfig",
    "codec_id_of",
    "split_codec_id",
]

FORMAT_VERSION = 2  # the newest: v2 adds the gtc mode and the entropy-coded payload
FORMAT_VERSIONS = (1, 2)
ENTROPY = ("none", "zstd")
MAX_STEP = 8.0
SUPPORTED_BITS = (2, 3, 4, 8)
SUPPORTED_GROUPS = (16, 32, 64, 128, 256)
OUTLIER_BLOCK = 256  # outliers are chosen per block of 256 elements, so an offset fits one byte
MAX_SINK_TOKENS = 64
MAX_RANK = 64
MAX_POWER_ITERS = 16

Mode = Literal["quant", "fp16", "raw", "gtc"]
Entropy = Literal["none", "zstd"]


@dataclass(frozen=True)
class CodecConfig:
    """How one chunk of KV is stored.

    ``mode="fp16"`` stores 16-bit floats (bit-exact for fp16/bf16 input, bf16 stays bf16);
    ``mode="raw"`` stores the input's own dtype bit-exactly; ``mode="quant"`` is GEAR:
    X ≈ D + S + L, with D the grouped quantization (keys per channel over groups of ``k_group``
    tokens, values per token over groups of ``v_group`` dims), S the sparse outliers kept exactly
    (a fraction of elements, chosen per block of 256), L a rank-``*_rank`` residual per KV head.

    Args:
        k_bits / v_bits: code width of keys / values (2, 3, 4 or 8).
        k_group / v_group: quantization group length (16 … 256).
        param_bits: 8 = u8 log-domain scale + u8 linear minimum per group (with fp32
            normalisers per head); 16 = 16-bit scale and minimum (KIVI style).
        rotate: orthonormal block Walsh-Hadamard rotation along head_dim before quantizing.
        sink_tokens: tokens at absolute positions below this are kept at 16 bits (attention sink).
        k_outliers / v_outliers: fraction of elements kept exactly; 0 or a multiple of 1/256.
        k_rank / v_rank: rank of the low-rank residual per head (0 = off).
        power_iters: subspace-iteration rounds used to find the low-rank factors.
        k_late_bits / k_late_group: bits and group of the keys of the later layers (0 = as the others);
            later layers gain most from extra key bits.
        late_from: where the later layers start, as a fraction of the layer count (rounded).
        k_step / v_step (``mode="gtc"`` only): the quantization step of keys (times each channel's
            spread) and values (times each token's spread), before the calibration's per-layer scale.
        entropy: "zstd" entropy-codes the blob's payload (format v2); "none" stores it as is.

    ``mode="gtc"`` (format v2, needs a ``Calibration``) quantizes rotated KV with a step instead of a
    range and leaves the rate to the entropy stage: see ``gearkv.codec._gtc``. It uses ``rotate``,
    ``sink_tokens``, ``k_step``, ``v_step`` and ``entropy``; the GEAR fields are ignored.
    """

    mode: Mode = "quant"
    k_bits: int = 3
    v_bits: int = 3
    k_group: int = 64
    v_group: int = 64
    param_bits: int = 8
    rotate: bool = True
    sink_tokens: int = 1
    k_outliers: float = 0.0
    v_outliers: float = 0.0
    k_rank: int = 0
    v_rank: int = 0
    power_iters: int = 3
    k_late_bits: int = 0
    k_late_group: int = 0
    late_from: float = 0.0
    k_step: float = 0.0
    v_step: float = 0.0
    entropy: Entropy = "none"

    def __post_init__(self) -> None:
        if self.mode not in ("quant", "fp16", "raw", "gtc"):
            raise UnsupportedConfig(f"mode must be 'quant', 'fp16', 'raw' or 'gtc', got {self.mode!r}")
        if self.entropy not in ENTROPY:
            raise UnsupportedConfig(f"entropy must be one of {list(ENTROPY)}, got {self.entropy!r}")
        for name in ("k_step", "v_step"):
            step = getattr(self, name)
            if isinstance(step, bool) or not isinstance(step, int | float) or not 0.0 <= step <= MAX_STEP:
                raise UnsupportedConfig(f"{name} must be a number in [0, {MAX_STEP}], got {step!r}")
            if self.mode == "gtc" and not step > 0:
                raise UnsupportedConfig(f"{name} must be > 0 for mode 'gtc', got {step!r}")
        for name in ("k_bits", "v_bits"):
            _check_choice(name, getattr(self, name), SUPPORTED_BITS)
        for name in ("k_group", "v_group"):
            _check_choice(name, getattr(self, name), SUPPORTED_GROUPS)
        _check_choice("param_bits", self.param_bits, (8, 16))
        if not isinstance(self.rotate, bool):
            raise UnsupportedConfig(f"rotate must be a bool, got {self.rotate!r}")
        _check_int("sink_tokens", self.sink_tokens, 0, MAX_SINK_TOKENS)
        _check_int("k_rank", self.k_rank, 0, MAX_RANK)
        _check_int("v_rank", self.v_rank, 0, MAX_RANK)
        _check_int("power_iters", self.power_iters, 1, MAX_POWER_ITERS)
        _check_choice("k_late_bits", self.k_late_bits, (0, *SUPPORTED_BITS))
        _check_choice("k_late_group", self.k_late_group, (0, *SUPPORTED_GROUPS))
        late = self.late_from
        if isinstance(late, bool) or not isinstance(late, int | float) or not 0.0 <= late <= 1.0:
            raise UnsupportedConfig(f"late_from must be a fraction in [0, 1], got {late!r}")
        for name in ("k_outliers", "v_outliers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 0.25:
                raise UnsupportedConfig(f"{name} must be a fraction in [0, 0.25], got {value!r}")
            per_block = value * OUTLIER_BLOCK
            if value and (per_block < 1 or abs(per_block - round(per_block)) > 1e-6):
                raise UnsupportedConfig(
                    f"{name} must be 0 or a multiple of 1/{OUTLIER_BLOCK} (outliers are counted per block "
                    f"of {OUTLIER_BLOCK} elements), got {value!r}"
                )

    @property
    def k_outliers_per_block(self) -> int:
        return round(self.k_outliers * OUTLIER_BLOCK)

    @property
    def v_outliers_per_block(self) -> int:
        return round(self.v_outliers * OUTLIER_BLOCK)

    @property
    def needs_calibration(self) -> bool:
        return self.mode == "gtc"

    @property
    def format_version(self) -> int:
        """The blob format this config writes: v1 unless it needs v2 (gtc, an entropy stage)."""
        return 2 if self.mode == "gtc" or self.entropy != "none" else 1

    def late_cut(self, layers: int) -> int:
        """Index of the first layer whose keys use ``k_late_bits`` (``layers`` when there is none)."""
        if not self.k_late_bits:
            return layers
        return min(layers, max(0, round(layers * self.late_from)))

    def to_dict(self) -> dict[str, Any]:
        """Every field, except the format-v2 fields at their defaults: a v1 config (and so its blobs'
        headers and custom codec ids) reads as it did before v2 existed."""
        out = asdict(self)
        for name, default in _V2_DEFAULTS.items():
            if out[name] == default:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodecConfig:
        """Rebuild a config from ``to_dict`` output; unknown or missing keys raise UnsupportedConfig."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise UnsupportedConfig(f"unknown codec config fields {sorted(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:  # a wrongly typed field that slipped past the checks
            raise UnsupportedConfig(f"invalid codec config: {exc}") from exc


_V2_DEFAULTS: dict[str, Any] = {"k_step": 0.0, "v_step": 0.0, "entropy": "none"}


def _check_choice(name: str, value: object, choices: tuple[int, ...]) -> None:
    if isinstance(value, bool) or value not in choices:
        raise UnsupportedConfig(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise UnsupportedConfig(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


PRESETS: dict[str, CodecConfig] = {
    "fp16": CodecConfig(mode="fp16"),
    "raw": CodecConfig(mode="raw"),
    # KIVI-style: 16-bit scale and minimum per group of 32, no rotation, sink, outliers or low rank.
    "kivi2": CodecConfig(
        k_bits=2, v_bits=2, k_group=32, v_group=32, param_bits=16, rotate=False, sink_tokens=0
    ),
    "kivi4": CodecConfig(
        k_bits=4, v_bits=4, k_group=32, v_group=32, param_bits=16, rotate=False, sink_tokens=0
    ),
    # GEAR with the improvements measured on SmolLM2 (see docs/codec.md for the ablation).
    "gear2": CodecConfig(
        k_bits=2,
        v_bits=2,
        k_group=32,
        v_group=64,
        k_outliers=1 / 256,
        k_late_bits=3,
        k_late_group=64,
        late_from=2 / 3,
    ),
    "gear3": CodecConfig(k_bits=3, v_bits=3, k_group=64, v_group=64, k_outliers=1 / 256),
    "gear4": CodecConfig(k_bits=4, v_bits=4, k_group=64, v_group=64),
    # Calibrated, entropy-coded (format v2): see _gtc.py and docs/codec.md for the measurements.
    "gtc2": CodecConfig(mode="gtc", k_step=0.9, v_step=1.8, entropy="zstd"),
    "gtc3": CodecConfig(mode="gtc", k_step=0.5, v_step=1.0, entropy="zstd"),
}


def codec_id_of(config: CodecConfig, calibration_digest: str = "") -> str:
    """A short, stable, printable id: ``<preset>.v1``, ``<preset>.zstd.v2`` (a preset with the entropy
    stage added), ``gtc2.v2.<calibration digest>``, or ``custom.v<N>.<hash12>[.<calibration>]``."""
    version = config.format_version
    tail = f".{calibration_digest}" if calibration_digest else ""
    for name, preset in PRESETS.items():
        if preset == config:
            return f"{name}.v{version}{tail}"
    if config.entropy != "none":
        for name, preset in PRESETS.items():
            if preset.entropy == "none" and preset == replace(config, entropy="none"):
                return f"{name}.{config.entropy}.v{version}{tail}"
    canon = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    digest = hashlib.blake2b(canon.encode(), digest_size=6).hexdigest()
    return f"custom.v{version}.{digest}{tail}"


def split_codec_id(codec_id: str) -> tuple[str, str]:
    """``(codec, calibration digest)`` of a codec id: ``gtc2.v2.<digest>`` -> ``("gtc2.v2", digest)``;
    ``("gear3.v1", "")`` for an id that names no calibration."""
    head, _, tail = codec_id.rpartition(".")
    if head and len(tail) == DIGEST_CHARS and all(c in "0123456789abcdef" for c in tail):
        return head, tail
    return codec_id, ""
