"""The README's Python usage example, executed verbatim against a real store and Redis."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.store import StoreHandle

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DOC = REPO / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def example_code(path: Path, needle: str = "KVStoreClient") -> str:
    """The first ```python block of ``path`` that contains ``needle``."""
    for block in _BLOCK.findall(path.read_text()):
        if needle in block:
            return str(block)
    raise AssertionError(f"{path} has no python block using {needle!r}")


def test_example_is_short() -> None:
    code = example_code(EXAMPLE_DOC)
    assert len(code.strip().splitlines()) <= 20


def test_readme_example_runs(store: StoreHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEARKV_STORE", store.address)
    monkeypatch.setenv("GEARKV_TOKEN", store.tokens["alice"])
    code = example_code(EXAMPLE_DOC)
    exec(compile(code, str(EXAMPLE_DOC), "exec"), {"__name__": "readme_example"})
