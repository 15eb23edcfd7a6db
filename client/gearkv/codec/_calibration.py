"""``Calibration``: what the calibrated (gtc) codecs know about one model, in a small checksummed file.

A calibration holds, per layer, how much coarser (> 1) or finer (< 1) than the preset's step the keys and
the values of that layer are quantized. ``gearkv calibrate-codec`` chooses them from the next-token KL
that quantizing each layer alone costs on calibration text (bit allocation against KL, not MSE). The file
is bound to the model's fingerprint; a blob names the calibration it was written with by ``digest``, and
decoding under any other calibration is refused.

File format (UTF-8 JSON)::

    {"format": "gearkv-codec-calibration", "version": 1, "sha256": <hex of the canonical body>,
     "body": {"fingerprint", "model", "layers", "k_scale", "v_scale", "text", "created", "stats"}}
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CalibrationError, CalibrationMismatch

__all__ = ["CALIBRATION_FORMAT", "CALIBRATION_VERSION", "DIGEST_CHARS", "Calibration"]

CALIBRATION_FORMAT = "gearkv-codec-calibration"
CALIBRATION_VERSION = 1
MAX_LAYERS = 1024
DIGEST_CHARS = 16  # hex digits of ``Calibration.digest``, the last dot-separated part of a gtc codec id
SCALE_RANGE = (1 / 16, 16.0)
_MAX_FILE = 4 << 20


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True)
class Calibration:
    """Per-layer step scales of the gtc codecs for one model.

    Args:
        fingerprint: the model fingerprint (``gearkv.worker.fingerprint.model_fingerprint``) it was
            calibrated on; "" for a calibration not bound to a model (tests, uniform scales).
        layers: KV layers the codec sees (a chunk must have exactly this many).
        k_scale / v_scale: per layer, the factor on the preset's key / value step.
        model / text / created / stats: provenance, shown by ``gearkv calibrate-codec`` and the bench.
    """

    fingerprint: str
    layers: int
    k_scale: tuple[float, ...]
    v_scale: tuple[float, ...]
    model: str = ""
    text: str = ""
    created: str = ""
    stats: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (
            not isinstance(self.layers, int)
            or isinstance(self.layers, bool)
            or not 1 <= self.layers <= MAX_LAYERS
        ):
            raise CalibrationError(f"layers must be an integer in [1, {MAX_LAYERS}], got {self.layers!r}")
        for name in ("k_scale", "v_scale"):
            scales = getattr(self, name)
            if len(scales) != self.layers:
                raise CalibrationError(f"{name} has {len(scales)} entries for {self.layers} layers")
            for i, s in enumerate(scales):
                if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s):
                    raise CalibrationError(f"{name}[{i}] must be a finite number, got {s!r}")
                if not SCALE_RANGE[0] <= s <= SCALE_RANGE[1]:
                    raise CalibrationError(f"{name}[{i}] = {s} is outside {list(SCALE_RANGE)}")
            # rounded as the file and the digest hold them: a calibration and its loaded copy decode alike
            object.__setattr__(self, name, tuple(round(float(s), 6) for s in scales))
        if not isinstance(self.fingerprint, str) or len(self.fingerprint) > 256:
            raise CalibrationError("fingerprint must be a string of at most 256 characters")

    @classmethod
    def uniform(cls, layers: int, fingerprint: str = "", **provenance: Any) -> Calibration:
        """Every layer at the preset's steps: the gtc codecs without a model-specific allocation."""
        return cls(fingerprint, layers, (1.0,) * layers, (1.0,) * layers, **provenance)

    def body(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "model": self.model,
            "layers": self.layers,
            "k_scale": [round(s, 6) for s in self.k_scale],
            "v_scale": [round(s, 6) for s in self.v_scale],
            "text": self.text,
            "created": self.created,
            "stats": dict(self.stats),
        }

    @property
    def digest(self) -> str:
        """``DIGEST_CHARS`` hex digits naming what decoding depends on (fingerprint, layers, scales),
        not provenance."""
        core = {k: v for k, v in self.body().items() if k in ("fingerprint", "layers", "k_scale", "v_scale")}
        return hashlib.sha256(_canonical(core)).hexdigest()[:DIGEST_CHARS]

    def check_model(self, fingerprint: str) -> None:
        """Raise CalibrationMismatch unless this calibration was made for ``fingerprint``."""
        if self.fingerprint and self.fingerprint != fingerprint:
            raise CalibrationMismatch(
                f"codec calibration {self.digest} was made for model {self.fingerprint}, not {fingerprint}; "
                "run gearkv calibrate-codec for this model"
            )

    def to_json(self) -> str:
        body = self.body()
        doc = {
            "format": CALIBRATION_FORMAT,
            "version": CALIBRATION_VERSION,
            "sha256": hashlib.sha256(_canonical(body)).hexdigest(),
            "body": body,
        }
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the file atomically (a reader never sees half of it)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(out)
        return out

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "calibration") -> Calibration:
        try:
            doc = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CalibrationError(
                f"{source}: not a codec calibration file (unreadable JSON: {exc})"
            ) from exc
        if not isinstance(doc, dict) or doc.get("format") != CALIBRATION_FORMAT:
            raise CalibrationError(
                f"{source}: not a codec calibration file (format is not {CALIBRATION_FORMAT!r})"
            )
        if doc.get("version") != CALIBRATION_VERSION:
            raise CalibrationError(
                f"{source}: calibration file version {doc.get('version')!r} unsupported; this codec reads "
                f"[{CALIBRATION_VERSION}]"
            )
        body = doc.get("body")
        if not isinstance(body, dict):
            raise CalibrationError(f"{source}: calibration file has no body")
        try:
            digest = hashlib.sha256(_canonical(body)).hexdigest()
        except (TypeError, ValueError) as exc:
            raise CalibrationError(f"{source}: calibration body is not plain JSON: {exc}") from exc
        if digest != doc.get("sha256"):
            raise CalibrationError(
                f"{source}: checksum mismatch: the calibration file is damaged or was edited"
            )
        try:
            return cls(
                fingerprint=str(body["fingerprint"]),
                layers=body["layers"],
                k_scale=tuple(body["k_scale"]),
                v_scale=tuple(body["v_scale"]),
                model=str(body.get("model", "")),
                text=str(body.get("text", "")),
                created=str(body.get("created", "")),
                stats=dict(body.get("stats") or {}),
            )
        except (KeyError, TypeError) as exc:
            raise CalibrationError(f"{source}: calibration body lacks or mistypes a field: {exc!r}") from exc

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        """Read and verify a calibration file; CalibrationError names what is wrong with it."""
        p = Path(path)
        try:
            if p.stat().st_size > _MAX_FILE:
                raise CalibrationError(
                    f"{p}: {p.stat().st_size} bytes is too large for a codec calibration file"
                )
            text = p.read_bytes()
        except OSError as exc:
            raise CalibrationError(f"cannot read codec calibration {p}: {exc.strerror or exc}") from exc
        return cls.from_json(text, source=str(p))

    def scales_for(self, layers: int) -> tuple[Sequence[float], Sequence[float]]:
        """The per-layer key and value scales for a chunk of ``layers`` layers."""
        if layers != self.layers:
            raise CalibrationMismatch(
                f"codec calibration {self.digest} is for {self.layers} KV layers, the chunk has {layers}"
            )
        return self.k_scale, self.v_scale
