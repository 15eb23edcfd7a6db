"""The `gearkv` console command: one dispatcher, subcommands imported only when chosen.

Each subcommand module exposes ``main(argv, prog) -> int`` and builds its own argparse parser, so
`gearkv store --help` never imports torch and `gearkv bench codec` never imports grpc. Their parsers
use :class:`HelpFormatter`, which shows each option's default once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "HelpFormatter", "main", "version"]

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("gearkv.worker.demo", "run the scripted multi-turn demo (local Redis, store and worker)"),
    "worker": ("gearkv.worker.cli", "serve the inference worker over gRPC"),
    "chat": ("gearkv.worker.chat", "chat interactively with a running worker"),
    "calibrate-sharing": (
        "gearkv.worker.calibrate",
        "choose layers that share KV (KVSharer) for a model; writes a plan for --sharing-plan",
    ),
    "calibrate-codec": (
        "gearkv.worker.calibrate_codec",
        "calibrate the gtc codecs for a model; writes a file for --codec-calibration",
    ),
    "store": ("gearkv.store.cli", "serve the KV store over gRPC (Redis or Redis Cluster backend)"),
    "bench": ("gearkv.bench.cli", "benchmarks: codec, store, resume"),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: X)`` to an option's help, once, where it tells the user something.

    Not where the help already names its default (``"... (default: cuda if available)"``), nor for a
    default of None, False or "" (an unset option, a flag): argparse's ``ArgumentDefaultsHelpFormatter``
    prints ``(default: None)`` after those. Descriptions keep their line breaks.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_ = action.help or ""
        default = action.default
        unset = (
            default is None
            or default is False
            or (isinstance(default, str) and default in ("", argparse.SUPPRESS))
        )
        if "default" in help_ or unset:
            return help_
        if not action.option_strings and action.nargs not in ("?", "*"):
            return help_
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else "%(default)s"
        return f"{help_} (default: {shown})"


def version() -> str:
    """The installed distribution's version (one source: ``gearkv.client.__version__``)."""
    from gearkv.client import __version__

    return __version__


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: gearkv [--version] <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `gearkv <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(_usage(), file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if args[0] in ("-V", "--version"):
        print(f"gearkv {version()}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        kind = "option" if name.startswith("-") else "command"
        print(f"gearkv: unknown {kind} {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    result: int = module.main(rest, prog=f"gearkv {name}")
    return result


if __name__ == "__main__":
    sys.exit(main())
