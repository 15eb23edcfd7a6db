"""The `gearkv` console command: one dispatcher, subcommands imported only when chosen.

Each subcommand module exposes ``main(argv, prog) -> int`` and builds its own argparse parser, so
`gearkv store --help` never imports torch and `gearkv bench codec` never imports grpc.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("gearkv.worker.demo", "run the scripted multi-turn demo (local Redis, store and worker)"),
    "worker": ("gearkv.worker.cli", "serve the inference worker over gRPC"),
    "chat": ("gearkv.worker.chat", "chat interactively with a running worker"),
    "store": ("gearkv.store.cli", "serve the KV store over gRPC (Redis or Redis Cluster backend)"),
    "bench": ("gearkv.bench.cli", "benchmarks: codec, store, resume"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: gearkv <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `gearkv <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"gearkv: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    result: int = module.main(rest, prog=f"gearkv {name}")
    return result


if __name__ == "__main__":
    sys.exit(main())
