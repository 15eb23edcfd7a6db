"""The `gearkv` command as a new user meets it: --version, unknown names, and every option's --help.

`gearkv store` and `gearkv worker` options come from their config dataclasses (gearkv.api.options):
each states its help, variable and default once, and variables sit between flags and defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import re
from typing import Any

import gearkv.store.cli as store_cli
import gearkv.worker.cli as worker_cli
import pytest
from gearkv.api.options import Option, size
from gearkv.api.units import format_size
from gearkv.cli import HelpFormatter, main
from gearkv.store.config import StoreConfig
from gearkv.worker.config import SessionOptions, WorkerConfig

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
    assert "--hot-cache-bytes SIZE" in text and "default 1GiB]" in text
    model = "model folder or hub name (unset: bundled SmolLM2) [env GEARKV_MODEL; default not set]"
    assert f"--model MODEL {model} --" in text
    assert "(default: None)" not in text and "(default:" not in text


# -- `gearkv store` and `gearkv worker`: options generated from the config dataclasses ------------------

CONFIGS: dict[str, tuple[type, ...]] = {"store": (StoreConfig,), "worker": (WorkerConfig, SessionOptions)}
# Options of `gearkv store` that are not StoreConfig fields (they become tenants and auth).
NOT_FIELDS = {"--tokens-file", "--no-auth"}


def _declared(classes: tuple[type, ...]) -> list[tuple[dataclasses.Field[Any], Option]]:
    return [
        (f, opt)
        for cls in classes
        for f in dataclasses.fields(cls)
        for opt in f.metadata.values()
        if isinstance(opt, Option)
    ]


def _help_text(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.fixture(autouse=True)
def _no_gearkv_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment running the tests must not set the options under test."""
    for name in [n for n in os.environ if n.startswith("GEARKV_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_help_states_each_option_its_variable_and_default_once(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help_text(command, capsys)
    parser = _parser_of([command], monkeypatch)
    formatter = parser._get_formatter()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) == len(_declared(CONFIGS[command])) + (len(NOT_FIELDS) if command == "store" else 0)
    for action in options:
        flag = action.option_strings[0]
        help_ = " ".join(formatter._expand_help(action).split())
        match = re.fullmatch(
            r"(?P<what>.+) \[env (?P<env>GEARKV_[A-Z_]+); default (?P<default>[^;\]]+)\]", help_
        )
        assert match, f"{flag}: {help_!r}"
        assert match["what"].strip() and "default" not in match["what"].replace("'default'", ""), help_
        assert "(default" not in help_, f"{flag} shows its default twice: {help_}"
        # the variable once in the whole --help (the store's epilog names GEARKV_TOKENS, another one)
        assert len(re.findall(rf"\b{match['env']}\b", text)) == 1, match["env"]
        assert f"{flag} " in text


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_declared_field_is_an_option_with_its_default(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help_text(command, capsys)
    declared = _declared(CONFIGS[command])
    assert declared
    for f, opt in declared:
        assert opt.help and opt.env.startswith("GEARKV_") and opt.flag.startswith("--"), f.name
        if f.default is None:
            shown = "not set"
        elif isinstance(f.default, bool):
            shown = "on" if f.default else "off"
        elif opt.parse is size:
            shown = format_size(f.default)
        else:
            shown = str(f.default)
        assert f"[env {opt.env}; default {shown}]" in text, f.name
    assert len({opt.flag for _, opt in declared}) == len(declared)
    assert len({opt.env for _, opt in declared}) == len(declared)


def _store(argv: list[str], env: dict[str, str]) -> StoreConfig:
    return store_cli.config_from_args(store_cli.build_parser("gearkv store", env).parse_args(argv), env)


def test_flag_over_variable_over_dataclass_default() -> None:
    assert WorkerConfig().store_timeout_s == 10.0 and StoreConfig(auth=False).redis_timeout_s == 2.0
    var, flag = "GEARKV_STORE_TIMEOUT_S", "--store-timeout"
    assert worker_cli.config_from_args([], env={}).store_timeout_s == 10.0
    assert worker_cli.config_from_args([], env={var: "7"}).store_timeout_s == 7.0
    assert worker_cli.config_from_args([flag, "3"], env={var: "7"}).store_timeout_s == 3.0
    assert worker_cli.config_from_args([], env={"GEARKV_LEASE_MS": "5000"}).session.lease_ms == 5000
    assert (
        worker_cli.config_from_args(["--lease-ms", "2000"], env={"GEARKV_LEASE_MS": "5000"}).session.lease_ms
        == 2000
    )
    var, flag = "GEARKV_REDIS_TIMEOUT_S", "--redis-timeout"
    assert _store([], {}).redis_timeout_s == 2.0
    assert _store([], {var: "7"}).redis_timeout_s == 7.0
    assert _store([flag, "3"], {var: "7"}).redis_timeout_s == 3.0
    assert _store([], {"GEARKV_REDIS_CLUSTER": "yes"}).cluster
    assert not _store([], {"GEARKV_REDIS_CLUSTER": "0"}).cluster
    assert _store(["--cluster"], {"GEARKV_REDIS_CLUSTER": "off"}).cluster


@pytest.mark.parametrize(
    ("command", "var", "value"),
    [
        ("store", "GEARKV_PORT", "abc"),
        ("store", "GEARKV_MAX_MESSAGE_BYTES", "lots"),
        ("store", "GEARKV_REDIS_CLUSTER", "maybe"),
        ("worker", "GEARKV_CHUNK_SIZE", "x"),
        ("worker", "GEARKV_STORE_TIMEOUT_S", "soon"),
        ("worker", "GEARKV_HOT_CACHE_BYTES", "1PB"),
    ],
)
def test_a_bad_variable_exits_2_naming_it(
    command: str, var: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(var, value)
    code: object
    try:
        code = main([command])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert var in err and repr(value) in err, err


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_byte_flag_takes_a_size(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = _parser_of([command], monkeypatch)
    monkeypatch.undo()
    sized = {a.option_strings[0]: a.dest for a in parser._actions if a.metavar == "SIZE"}
    assert sized == {opt.flag: f.name for f, opt in _declared(CONFIGS[command]) if f.name.endswith("_bytes")}
    for flag, dest in sized.items():
        assert getattr(parser.parse_args([flag, "512MiB"]), dest) == 512 << 20
        assert getattr(parser.parse_args([flag, "4096"]), dest) == 4096
    if command == "worker":
        cfg = worker_cli.config_from_args([], env={"GEARKV_HOT_CACHE_BYTES": "512MiB"})
        assert cfg.session.hot_cache_bytes == 512 << 20
    else:
        cfg2 = _store(["--max-message-bytes", "512MiB"], {"GEARKV_DOWNLOAD_PART_BYTES": "512KiB"})
        assert (cfg2.max_message_bytes, cfg2.download_part_bytes) == (512 << 20, 512 << 10)
