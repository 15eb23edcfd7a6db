"""The SDK examples in README.md and docs/client.md type-check (mypy, the project's own config).

Every ```python block that imports from ``gearkv.client`` is checked as a module of its own, so an
example that calls the SDK the wrong way (a removed argument, a wrong type) fails the test run; the
README's example is also executed (tests/integration/test_readme_example.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mypy import api

REPO = Path(__file__).resolve().parents[2]
DOCS = (REPO / "README.md", REPO / "docs/client.md")
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def sdk_examples() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        blocks = [b for b in _BLOCK.findall(doc.read_text()) if "from gearkv.client import" in b]
        found += [(f"{doc.relative_to(REPO)}#{i}", b) for i, b in enumerate(blocks)]
    return found


def test_the_docs_have_sdk_examples() -> None:
    names = [name for name, _ in sdk_examples()]
    assert any(n.startswith("README.md") for n in names) and any(n.startswith("docs/") for n in names)


def test_sdk_examples_type_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = []
    for i, (name, code) in enumerate(sdk_examples()):
        path = tmp_path / f"example_{i}.py"
        path.write_text(f"# {name}\n{code}")
        files.append(str(path))
    monkeypatch.chdir(REPO)  # the config's mypy_path is relative to the repository
    stdout, stderr, status = api.run(["--config-file", str(REPO / "pyproject.toml"), *files])
    assert status == 0, f"mypy on the docs' SDK examples:\n{stdout}{stderr}"
