"""Byte sizes as people write them in flags, variables and config files: ``512MiB``, ``1GiB``, ``64KB``.

Pure functions, no I/O, shared by every GearKV command line (store and worker). Every unit is a power of
1024, written the IEC way (``KiB``) or the short way (``KB``, ``K``): ``64KB`` is 65,536 bytes, as in
Redis' ``maxmemory 64kb``. Case and a space between number and unit do not matter; a plain number is
bytes.
"""

from __future__ import annotations

import re

__all__ = ["format_size", "parse_size"]

_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_SIZE = re.compile(r"(?P<int>\d+)(?:\.(?P<frac>\d+))?\s*(?:(?P<unit>[kmgt])(?:i?b)?|b)?", re.IGNORECASE)
_NAMES = ("B", "KiB", "MiB", "GiB", "TiB")


def parse_size(text: str | int) -> int:
    """Bytes in ``text``: a whole or decimal number and an optional unit, e.g. ``"1.5GiB"``, ``"4096"``.

    Raises:
        ValueError: not a size (``"lots"``, ``"-1"``, ``"1PB"``) or not a whole number of bytes
            (``"0.5"``); the message gives examples.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"invalid size {text!r}: must be >= 0")
        return text
    match = _SIZE.fullmatch(str(text).strip())
    if match is None:
        raise ValueError(f"invalid size {text!r} (e.g. 512MiB, 1GiB, 64KB, 4096)")
    frac = match["frac"] or ""
    scale = 1024 ** _POWERS[(match["unit"] or "").lower()]
    # Exact integer arithmetic: (int + frac / 10**len(frac)) * scale, no float rounding.
    numerator = (int(match["int"]) * 10 ** len(frac) + int(frac or "0")) * scale
    whole, rest = divmod(numerator, 10 ** len(frac))
    if rest:
        raise ValueError(f"size {text!r} is not a whole number of bytes")
    return int(whole)


def format_size(n: int) -> str:
    """``n`` bytes in the largest unit that holds it exactly: ``1073741824`` -> ``"1GiB"``, ``1000`` ->
    ``"1000B"``; ``parse_size(format_size(n)) == n``.

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
