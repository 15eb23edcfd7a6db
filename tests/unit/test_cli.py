"""The `gearkv` command as a new user meets it: --version, unknown names, and every option's --help."""

from __future__ import annotations

import argparse
import importlib.metadata
from typing import Any

import pytest
from gearkv.cli import HelpFormatter, main

# Subcommands whose parsers use gearkv.cli.HelpFormatter (`gearkv store` has its own).
COMMANDS = [["worker"], ["chat"], ["demo"], ["bench", "store"], ["bench", "codec"], ["bench", "resume"]]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"gearkv {importlib.metadata.version('gearkv')}\n"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["--frobnicate"], "unknown option '--frobnicate'"),
        (["bench", "frobnicate"], "unknown benchmark 'frobnicate'"),
    ],
)
def test_an_unknown_name_is_named(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _parser_of(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser a subcommand builds (caught where it would parse, so nothing runs)."""

    def catch(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(_Parsed) as caught:
        main(argv)
    return caught.value.parser


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_option_has_help_and_shows_its_default_once(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = _parser_of(argv, monkeypatch)
    assert parser.formatter_class is HelpFormatter
    formatter = parser._get_formatter()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert options
    for action in options:
        help_ = formatter._expand_help(action) if action.help else ""
        assert help_.strip(), f"{action.option_strings[0]} has no help"
        assert help_.count("default") <= 1, f"{action.option_strings[0]}: {help_}"
        assert "(default: None)" not in help_ and "(default: False)" not in help_, help_
        unset = action.default is None or action.default is False or action.default == ""
        if not unset:  # a real default is stated, once
            assert "default" in help_, f"{action.option_strings[0]} hides its default {action.default!r}"


def test_worker_help_shows_sizes_and_no_repeated_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--hot-cache-bytes SIZE" in text and "(default: 1GiB)" in text
    assert "--model MODEL model folder or hub name (default: bundled SmolLM2) [env GEARKV_MODEL] --" in text
    assert "(default: None)" not in text
