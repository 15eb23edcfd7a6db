"""The byte-size parser of the worker's flags (gearkv.worker.units): pure, so tested exhaustively here."""

from __future__ import annotations

import pytest
from gearkv.worker.units import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("0", 0),
        ("7", 7),
        ("7B", 7),
        ("64KB", 64 << 10),
        ("64KiB", 64 << 10),
        ("64k", 64 << 10),
        ("512MiB", 512 << 20),
        ("64m", 64 << 20),
        ("10 mb", 10 << 20),
        ("1GiB", 1 << 30),
        ("1g", 1 << 30),
        ("1.5GiB", 3 << 29),
        ("0.5KiB", 512),
        (".5k", 512),
        ("2TiB", 2 << 40),
        (" 1GiB ", 1 << 30),
    ],
)
def test_sizes_parse_to_bytes(text: str, want: int) -> None:
    assert parse_size(text) == want


@pytest.mark.parametrize("text", ["", "lots", "-1", "1PB", "KB", "1iB", "1e3", "inf", "nan", "1 2", "1GiBs"])
def test_what_is_not_a_size_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_a_fraction_of_a_byte_is_rejected() -> None:
    with pytest.raises(ValueError, match="whole number of bytes"):
        parse_size("0.5")


@pytest.mark.parametrize(
    ("n", "want"),
    [(0, "0"), (1, "1B"), (1536, "1536B"), (1 << 10, "1KiB"), (3 << 20, "3MiB"), (1 << 30, "1GiB")],
)
def test_format_is_exact_and_parses_back(n: int, want: str) -> None:
    assert format_size(n) == want
    assert parse_size(want) == n
