"""Command-line options declared once, on the config dataclasses' own fields.

A field made with :func:`option` carries its flag, ``GEARKV_*`` variable and help next to its default,
so the default is written in one place. :func:`add_dataclass_options` turns those fields into argparse
options whose help states the variable and the default once; :func:`build` makes the dataclass from
the flags given, over the variables set, over the defaults. Shared by ``gearkv store`` and
``gearkv worker``: stdlib and :mod:`gearkv.api.units` only (the store never imports gearkv.client).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from gearkv.api.units import format_size, parse_size

__all__ = ["Option", "add_dataclass_options", "build", "option", "size", "switch"]

T = TypeVar("T")
_KEY = "gearkv.option"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def size(text: str) -> int:
    """The argparse type of byte flags (``4096``, ``64KB``, ``512MiB``); a ValueError on bad input, so
    argparse's error reads ``invalid size value: 'lots'``."""
    return parse_size(text)


def switch(text: str) -> bool:
    """A boolean variable's value: 1/true/yes/on or 0/false/no/off (a typo is an error, not "off")."""
    if text.strip().lower() in _TRUE | _FALSE:
        return text.strip().lower() in _TRUE
    raise ValueError(f"invalid switch {text!r}")


@dataclasses.dataclass(frozen=True)
class Option:
    """A field's command-line face. ``parse`` None: taken from the field's type (int, float, str, bool)."""

    flag: str
    env: str
    help: str
    parse: Callable[[str], Any] | None = None


def option(default: Any, *, flag: str, env: str, help: str, parse: Callable[[str], Any] | None = None) -> Any:
    """A dataclass field defaulting to ``default`` that the CLI sets from ``flag`` or ``env``.

    Typed ``Any`` so ``port: int = option(50051, ...)`` checks; ``parse=size`` makes a byte flag.
    """
    return dataclasses.field(default=default, metadata={_KEY: Option(flag, env, help, parse)})


def _parse_of(opt: Option, hint: Any) -> Callable[[str], Any]:
    if isinstance(hint, types.UnionType):  # ``int | None`` -> int
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return opt.parse or (switch if hint is bool else hint)


def _fields(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Option, Callable[[str], Any]]]:
    """``cls``'s option fields with their parsers, then those of its nested config dataclasses."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            yield from _fields(hint)
        elif (opt := f.metadata.get(_KEY)) is not None:
            yield f, opt, _parse_of(opt, hint)


def _shown(default: Any, parse: Callable[[str], Any]) -> str:
    if default is None:
        return "not set"
    if parse is switch:
        return "on" if default else "off"
    return format_size(default) if parse is size else str(default)


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per :func:`option` field of ``cls`` (nested dataclasses included), dest = field name.

    Every option defaults to None, so :func:`build` can tell a flag left out (the variable or the
    field's default then applies) from one given; the help ends ``[env VAR; default X]``, the only
    place the default is shown (formatters add none for a None default).
    """
    for f, opt, parse in _fields(cls):
        help_ = f"{opt.help} [env {opt.env}; default {_shown(f.default, parse)}]".replace("%", "%%")
        if parse is switch:
            parser.add_argument(opt.flag, dest=f.name, action="store_true", default=None, help=help_)
            continue
        metavar = opt.flag.removeprefix("--").upper().replace("-", "_")
        if parse is size:
            metavar, help_ = "SIZE", help_.replace(" [env", " (bytes, or 64KB, 512MiB, 1GiB) [env", 1)
        parser.add_argument(opt.flag, dest=f.name, type=parse, default=None, metavar=metavar, help=help_)


def _from_env(opt: Option, parse: Callable[[str], Any], text: str) -> Any:
    try:
        return parse(text)
    except ValueError as exc:
        if parse is size:  # parse_size's message names the value and gives examples
            raise ValueError(f"{opt.env} must be {exc}") from None
        what = {int: "an integer", float: "a number", switch: "one of 1/true/yes/on/0/false/no/off"}
        raise ValueError(f"{opt.env} must be {what.get(parse, 'valid')}, not {text!r}") from None


def build(cls: type[T], namespace: argparse.Namespace, env: Mapping[str, str], **given: Any) -> T:
    """``cls`` from flags in ``namespace`` over non-empty ``env`` variables over field defaults.

    ``given`` sets fields outright (those the CLI derives itself). Nested config dataclasses are
    built the same way. Raises ValueError naming the variable whose value does not parse, or the
    dataclass's own validation error.
    """
    hints = typing.get_type_hints(cls)
    values = dict(given)
    for f in dataclasses.fields(typing.cast(Any, cls)):
        hint = hints[f.name]
        if f.name in values:
            continue
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            values[f.name] = build(hint, namespace, env)
        elif (opt := f.metadata.get(_KEY)) is not None:
            value = getattr(namespace, f.name, None)
            if value is None and env.get(opt.env):
                value = _from_env(opt, _parse_of(opt, hint), env[opt.env])
            if value is not None:
                values[f.name] = value
    return cls(**values)
