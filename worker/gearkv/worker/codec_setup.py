"""The worker's codec: a preset, bound to the calibration the gtc presets need, checked at start-up.

A calibration (``--codec-calibration FILE``, from ``gearkv calibrate-codec``) is loaded once, checked
against the model's fingerprint and against the KV layers the worker stores, and bound to the codec:
its digest ends the codec id (``gtc2.v2.<digest>``), so stored KV is namespaced by it and KV of one
calibration is never looked up under another; every decode passes it too. Each problem is a
``CalibrationError`` whose message names the flag (the CLI logs it and exits 2).
"""

from __future__ import annotations

import os

from gearkv.codec import PRESETS, Calibration, CalibrationError, CalibrationMismatch, Codec

__all__ = [
    "CALIBRATION_FLAG",
    "load_calibration",
    "missing_calibration",
    "needs_calibration",
    "worker_codec",
]

CALIBRATION_FLAG = "--codec-calibration"


def needs_calibration(preset: str) -> bool:
    """Whether codec preset ``preset`` (a gtc one) needs a calibration; False for unknown names."""
    config = PRESETS.get(preset)
    return config is not None and config.needs_calibration


def missing_calibration(preset: str) -> CalibrationMismatch:
    """The error of a gtc preset given no calibration, naming the flag."""
    return CalibrationMismatch(
        f"--codec {preset} needs {CALIBRATION_FLAG} FILE: a codec calibration of this model "
        "(write one with `gearkv calibrate-codec`)"
    )


def load_calibration(path: str | os.PathLike[str]) -> Calibration:
    """Read and verify a calibration file.

    Raises:
        CalibrationError: unreadable, not a calibration file, damaged (checksum) or malformed; the
            message names the flag and the file.
    """
    try:
        return Calibration.load(path)
    except CalibrationError as exc:
        raise CalibrationError(f"{CALIBRATION_FLAG}: {exc}") from exc


def worker_codec(
    preset: str,
    calibration: Calibration | None,
    *,
    fingerprint: str,
    kv_layers: int,
    sharing: bool = False,
) -> Codec:
    """The codec of preset ``preset``; a gtc preset bound to ``calibration``, checked.

    Args:
        fingerprint: the model's fingerprint (without the sharing plan's digest).
        kv_layers: the KV layers a chunk holds (with a KV sharing plan: its owner layers only).
        sharing: the model runs a KV sharing plan (for the message only).

    Raises:
        CalibrationMismatch: a gtc preset without a calibration, a calibration made for another model,
            or one for another number of KV layers (e.g. the full model under a sharing plan).
        UnsupportedConfig: an unknown preset.
    """
    if not needs_calibration(preset):
        return Codec.from_preset(preset)
    if calibration is None:
        raise missing_calibration(preset)
    try:
        calibration.check_model(fingerprint)
    except CalibrationMismatch as exc:
        raise CalibrationMismatch(f"{CALIBRATION_FLAG}: {exc}") from exc
    if calibration.layers != kv_layers:
        if sharing:
            raise CalibrationMismatch(
                f"{CALIBRATION_FLAG}: calibration {calibration.digest} covers {calibration.layers} KV "
                f"layers, but with --sharing-plan only the {kv_layers} owner layers are stored: --codec "
                f"{preset} with a KV sharing plan needs a calibration of exactly those layers (or use a "
                "preset without calibration, e.g. gear4)"
            )
        raise CalibrationMismatch(
            f"{CALIBRATION_FLAG}: calibration {calibration.digest} covers {calibration.layers} KV layers; "
            f"this model stores {kv_layers}"
        )
    return Codec.from_preset(preset, calibration=calibration)
