"""`gearkv chat`: an interactive client for a running worker (one session, streamed answers).

Type a message and press Enter; ``/stats`` toggles the per-turn statistics line, ``/rewind N`` makes
the next message replace the last N turns, ``/quit`` (or Ctrl-D) leaves.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Sequence

from gearkv.cli import HelpFormatter

__all__ = ["main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _rewind_turns(line: str) -> int | None:
    """``/rewind`` -> 1, ``/rewind N`` -> N (N >= 1); None for anything else (an error is printed)."""
    parts = line.split()
    if len(parts) == 1:
        return 1
    if len(parts) == 2 and parts[1].isascii() and parts[1].isdigit() and int(parts[1]) >= 1:
        return int(parts[1])
    print(f"error: /rewind takes one whole number of turns >= 1, got {line[7:].strip()!r}", file=sys.stderr)
    return None


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Chat with a running GearKV worker.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--worker",
        default=os.environ.get("GEARKV_WORKER", "127.0.0.1:50061"),
        help="worker address host:port [env GEARKV_WORKER]",
    )
    p.add_argument("--session", default=None, help="session id to continue (default: a new random one)")
    p.add_argument("--system", default="", help="system prompt for a new session")
    p.add_argument("--max-new-tokens", type=_positive_int, default=256, help="answer length cap per turn")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep this much probability")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (0: a random one per turn)")
    p.add_argument("--timeout", type=float, default=600.0, help="deadline of one turn, seconds")
    p.add_argument("--no-stats", action="store_true", help="hide the statistics line after each answer")
    return p


def _stats_line(stats: object) -> str:
    from gearkv.api.v1 import worker_pb2 as pb

    s: pb.TurnStats = stats  # type: ignore[assignment]
    outcome = pb.ResumeOutcome.Name(s.outcome).removeprefix("RESUME_OUTCOME_").lower()
    why = f" ({s.reason})" if s.reason else ""
    return (
        f"[{outcome}{why}, {s.tokens_reused} reused from {s.source or '-'} / {s.tokens_prefilled} prefilled, "
        f"TTFT {s.ttft_s:.2f}s, {s.tokens_generated} tokens in {s.decode_s:.2f}s, codec {s.codec}]"
    )


def main(argv: Sequence[str], prog: str = "gearkv chat") -> int:
    args = _parser(prog).parse_args(list(argv))
    import grpc
    from gearkv.api.v1 import worker_pb2 as pb
    from gearkv.api.v1 import worker_pb2_grpc

    session = args.session or f"chat-{secrets.token_hex(4)}"
    show_stats = not args.no_stats
    rewind = 0
    params = pb.GenerationParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    print(f"session {session} on {args.worker} (/stats, /rewind N, /quit)")
    with grpc.insecure_channel(args.worker) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        while True:
            try:
                line = input("you> ").strip()
            except (EOFError, KeyboardInterrupt):
                print()
                return 0
            if not line:
                continue
            if line in ("/quit", "/exit"):
                return 0
            if line == "/stats":
                show_stats = not show_stats
                continue
            if line.split()[0] == "/rewind":
                turns = _rewind_turns(line)
                if turns is not None:
                    rewind = turns
                    print(f"(the next message replaces the last {rewind} turn(s))")
                continue
            request = pb.ChatRequest(
                session_id=session,
                message=line,
                params=params,
                system_prompt=args.system,
                rewind_turns=rewind,
            )
            rewind = 0
            print("bot> ", end="", flush=True)
            try:
                for reply in stub.Chat(request, timeout=args.timeout):
                    if reply.text:
                        print(reply.text, end="", flush=True)
                    if reply.HasField("stats") and show_stats:
                        print(f"\n{_stats_line(reply.stats)}", end="")
                print()
            except grpc.RpcError as err:
                print(f"\nerror: {err.code().name}: {err.details()}", file=sys.stderr)
            except KeyboardInterrupt:
                print("\n(interrupted)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
