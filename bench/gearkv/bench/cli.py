"""`gearkv bench <name>`: each benchmark prints a table and writes JSON with --json FILE."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

BENCHMARKS: dict[str, tuple[str, str]] = {
    "codec": ("gearkv.bench.codec", "compression ratio, error, continuation quality, throughput"),
    "store": ("gearkv.bench.store", "store throughput and latency against raw Redis"),
    "resume": ("gearkv.bench.resume", "time to first token: resume from the store vs recompute"),
    "chat": ("gearkv.bench.chat", "stateless multi-turn chat through the OpenAI API: GearKV vs recompute"),
    "sharing": ("gearkv.bench.sharing", "KVSharer: bytes per token with and without GEAR, perplexity ratio"),
    "faults": ("gearkv.bench.faults", "fault scenarios, fuzzing and a load ramp: one reliability report"),
    "fuzz": ("gearkv.bench.fuzz", "property-based fuzzing of every store and worker RPC"),
    "load": ("gearkv.bench.load", "sessions x turns ramped until p99 or errors pass a limit"),
}


def main(argv: Sequence[str], prog: str = "gearkv bench") -> int:
    args = list(argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in BENCHMARKS:
        asked = bool(args) and args[0] in ("-h", "--help")
        out = sys.stdout if asked else sys.stderr
        if args and not asked:
            print(f"{prog}: unknown benchmark {args[0]!r}\n", file=out)
        width = max(map(len, BENCHMARKS))
        print(f"usage: {prog} <benchmark> [options]\n\nbenchmarks:", file=out)
        for name, (_, help_) in BENCHMARKS.items():
            print(f"  {name:<{width}}  {help_}", file=out)
        print(f"\nRun `{prog} <benchmark> --help` for a benchmark's options.", file=out)
        return 0 if asked else 2
    module = importlib.import_module(BENCHMARKS[args[0]][0])
    result: int = module.main(args[1:], prog=f"{prog} {args[0]}")
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
