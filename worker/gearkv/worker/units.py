"""Byte sizes as people write them on a command line: ``512MiB``, ``1GiB``, ``64KB``, ``0``.

Pure functions, no I/O. Every unit is a power of 1024, whether written the IEC way (``KiB``) or the
short way (``KB``, ``K``): ``64KB`` is 65,536 bytes, as in Redis' ``maxmemory 64kb``. Case and the
space between number and unit do not matter.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_size", "parse_size"]

_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_SIZE = re.compile(r"(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?:(?P<unit>[kmgt])(?:i?b)?|b)?", re.IGNORECASE)
_NAMES = ("B", "KiB", "MiB", "GiB", "TiB")


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number (fractions allowed) and an optional unit, e.g. ``"1.5GiB"``.

    Raises:
        ValueError: not a size (``"lots"``, ``"-1"``, ``"1 PB"``) or a fraction of a byte (``"0.5"``).
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid size {text!r} (e.g. 512MiB, 1GiB, 64KB, 0)")
    value = float(match["num"]) * 1024 ** _POWERS[(match["unit"] or "").lower()]
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"size {text!r} is not a whole number of bytes")
    return int(value)


def format_size(n: int) -> str:
    """``n`` bytes in the largest unit that holds it exactly: ``1073741824`` -> ``"1GiB"``.

    Raises:
        ValueError: ``n`` below 0.
    """
    if n < 0:
        raise ValueError(f"size must be >= 0, got {n}")
    if n == 0:
        return "0"
    power = 0
    while power < len(_NAMES) - 1 and n % 1024 ** (power + 1) == 0:
        power += 1
    return f"{n // 1024**power}{_NAMES[power]}"
