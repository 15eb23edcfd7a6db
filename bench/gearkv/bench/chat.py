"""`gearkv bench chat`: stateless multi-turn chat through the worker's OpenAI-compatible HTTP API.

``--conversations`` conversations run at once, each from its own thread with the official ``openai``
client, each turn re-sending the whole history (as every OpenAI client does) and streaming the answer.
The same script runs twice, against two ``gearkv worker --http-port`` processes on the same model:

- **gearkv**: the worker on a store (its own redis-server and store, started here): each turn pulls the
  stored prefix of its prompt and prefills the rest;
- **recompute**: the same worker without a store: every turn prefills its whole prompt.

Per turn index it reports the time to first token measured by the client (p50 and p95 over the
conversations), the prompt tokens, the tokens prefilled and reused (the worker's ``gearkv`` figures),
and per run the throughput (generated tokens and turns per second of wall time). Greedy decoding,
so both runs see the same conversations as far as the codec's rounding lets them. ``--json FILE``
writes ``rows`` (``turn``, ``ttft_p50_s``, ``ttft_p95_s``, ``ttft_p50_s_recompute``,
``ttft_p95_s_recompute``, ``tokens_prefilled``, ``tokens_prefilled_recompute``, ``tokens_reused``,
``prompt_tokens``) and ``throughput``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .progress import progress

__all__ = ["Row", "main"]

FOLLOW_UPS = (
    "Who is speaking in this passage? Answer in one sentence.",
    "Summarize what happens in two sentences.",
    "What is the mood of the scene?",
    "Quote the most striking line.",
    "What might happen next?",
    "Give the passage a short title.",
    "Which word would you explain to a child, and how?",
)


@dataclass
class Row:
    turn: int
    prompt_tokens: float
    ttft_p50_s: float
    ttft_p95_s: float
    ttft_p50_s_recompute: float
    ttft_p95_s_recompute: float
    tokens_prefilled: float
    tokens_prefilled_recompute: float
    tokens_reused: float
    speedup_p50: float


@dataclass
class Turn:
    conversation: int
    turn: int
    ttft_s: float
    turn_s: float
    prompt_tokens: int
    completion_tokens: int
    tokens_reused: int
    tokens_prefilled: int
    outcome: str


@dataclass
class Run:
    mode: str
    wall_s: float = 0.0
    turns: list[Turn] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def throughput(self) -> dict[str, float]:
        generated = sum(t.completion_tokens for t in self.turns)
        return {
            "wall_s": round(self.wall_s, 3),
            "turns": len(self.turns),
            "errors": len(self.errors),
            "generated_tokens": generated,
            "tokens_per_s": round(generated / self.wall_s, 3) if self.wall_s else 0.0,
            "turns_per_s": round(len(self.turns) / self.wall_s, 4) if self.wall_s else 0.0,
            "turn_s_mean": round(statistics.fmean(t.turn_s for t in self.turns), 4) if self.turns else 0.0,
        }


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linear between the closest ranks."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def scripts(passages: Sequence[str], turns: int) -> list[list[str]]:
    """The user messages of each conversation: a passage and a question, then short follow-ups."""
    out = []
    for i, passage in enumerate(passages):
        first = f"Here is a passage from a play:\n\n{passage}\n\nWhat is happening in it?"
        rest = [FOLLOW_UPS[(i + k) % len(FOLLOW_UPS)] for k in range(turns - 1)]
        out.append([first, *rest])
    return out


def rows_of(gearkv: Run, recompute: Run) -> list[Row]:
    rows = []
    for n in sorted({t.turn for t in gearkv.turns} & {t.turn for t in recompute.turns}):
        g = [t for t in gearkv.turns if t.turn == n]
        r = [t for t in recompute.turns if t.turn == n]
        p50 = percentile([t.ttft_s for t in g], 0.5)
        p50_r = percentile([t.ttft_s for t in r], 0.5)
        rows.append(
            Row(
                turn=n,
                prompt_tokens=round(statistics.fmean(t.prompt_tokens for t in g), 1),
                ttft_p50_s=round(p50, 4),
                ttft_p95_s=round(percentile([t.ttft_s for t in g], 0.95), 4),
                ttft_p50_s_recompute=round(p50_r, 4),
                ttft_p95_s_recompute=round(percentile([t.ttft_s for t in r], 0.95), 4),
                tokens_prefilled=round(statistics.fmean(t.tokens_prefilled for t in g), 1),
                tokens_prefilled_recompute=round(statistics.fmean(t.tokens_prefilled for t in r), 1),
                tokens_reused=round(statistics.fmean(t.tokens_reused for t in g), 1),
                speedup_p50=round(p50_r / p50, 2) if p50 else 0.0,
            )
        )
    return rows


# -- running -----------------------------------------------------------------------------------------


@contextmanager
def worker_process(args: argparse.Namespace, store: Any = None) -> Iterator[str]:
    """``gearkv worker --http-port 0`` (on ``store``, or without one); yields its base URL."""
    cmd = [sys.executable, "-m", "gearkv.cli", "worker", "--port", "0", "--http-port", "0"]
    cmd += ["--threads", str(args.threads), "--max-turns", str(args.conversations)]
    cmd += ["--codec", args.codec, "--chunk-size", str(args.chunk_size), "--log-level", "WARNING"]
    if store is not None:
        cmd += ["--store", store.address, "--token", store.token]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        url, log = "", []
        for line in proc.stdout:
            log.append(line)
            if "HTTP API on http://" in line:
                url = line.split("HTTP API on ", 1)[1].strip()
            if "worker listening on" in line:
                break
        if not url or proc.poll() is not None:
            raise RuntimeError("gearkv worker did not start:\n" + "".join(log[-20:]))
        threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _drain(stream: Any) -> None:
    for _ in stream:  # the worker's later output (warnings) must not fill the pipe and block it
        pass


def converse(
    url: str,
    model: str,
    index: int,
    script: list[str],
    args: argparse.Namespace,
    run: Run,
    tick: Callable[[str], None],
) -> None:
    """One conversation, stateless: every turn re-sends the whole history."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=1800)
    messages: list[Any] = []
    try:
        for number, user in enumerate(script, 1):
            messages.append({"role": "user", "content": user})
            t0 = time.perf_counter()
            ttft, answer, figures, completion = 0.0, "", {}, 0
            stream = client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=args.max_tokens,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    ttft = ttft or time.perf_counter() - t0
                    answer += chunk.choices[0].delta.content
                if chunk.choices and chunk.choices[0].finish_reason:
                    figures = dict((chunk.model_extra or {}).get("gearkv", {}))
                if chunk.usage is not None:
                    completion = chunk.usage.completion_tokens
            run.turns.append(
                Turn(
                    conversation=index,
                    turn=number,
                    ttft_s=ttft or time.perf_counter() - t0,
                    turn_s=time.perf_counter() - t0,
                    prompt_tokens=int(figures.get("prompt_tokens", 0)),
                    completion_tokens=completion,
                    tokens_reused=int(figures.get("tokens_reused", 0)),
                    tokens_prefilled=int(figures.get("tokens_prefilled", 0)),
                    outcome=str(figures.get("outcome", "")),
                )
            )
            tick(f"{run.mode}: conversation {index + 1}, turn {number}")
            messages.append({"role": "assistant", "content": answer})
    except openai.OpenAIError as exc:
        run.errors.append(f"conversation {index}: {type(exc).__name__}: {exc}")
    finally:
        client.close()


def play(
    url: str,
    model: str,
    convs: list[list[str]],
    args: argparse.Namespace,
    mode: str,
    tick: Callable[[str], None],
) -> Run:
    """Every conversation at once, each on its own thread; returns the run's turns and wall time."""
    run = Run(mode)
    lock = threading.Lock()

    def locked_tick(what: str) -> None:
        with lock:
            tick(what)

    threads = [
        threading.Thread(target=converse, args=(url, model, i, script, args, run, locked_tick), daemon=True)
        for i, script in enumerate(convs)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.wall_s = time.perf_counter() - t0
    return run


def _model_name(url: str) -> str:
    import openai

    with openai.OpenAI(base_url=url, api_key="bench", max_retries=2) as client:
        return client.models.list().data[0].id


def _run(args: argparse.Namespace) -> tuple[list[Row], Run, Run]:
    from gearkv.store.local import LocalRedis, LocalStore
    from gearkv.worker.demo import default_text_path, load_passages

    passages = load_passages(default_text_path(), count=args.conversations, chars=args.passage_chars)
    convs = scripts(passages, args.turns)
    runs: dict[str, Run] = {}
    with progress(2 * args.conversations * args.turns, "starting redis, the store and the workers") as tick:
        with ExitStack() as stack:
            redis_url = args.redis_url or stack.enter_context(LocalRedis()).url
            store = stack.enter_context(LocalStore(redis_url, in_process=False))
            with worker_process(args, store) as url:
                runs["gearkv"] = play(url, _model_name(url), convs, args, "gearkv", tick)
        with worker_process(args, None) as url:
            runs["recompute"] = play(url, _model_name(url), convs, args, "recompute", tick)
    return rows_of(runs["gearkv"], runs["recompute"]), runs["gearkv"], runs["recompute"]


def _print(rows: list[Row], gearkv: Run, recompute: Run, args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (
        f"gearkv bench chat: {args.conversations} stateless conversations x {args.turns} turns, "
        f"codec {args.codec}, chunk {args.chunk_size}"
    )
    table = Table(title=title)
    for col in ("turn", "prompt", "reused", "prefill", "prefill (recompute)", "TTFT p50", "p95"):
        table.add_column(col, justify="right")
    for col in ("TTFT p50 (recompute)", "p95 (recompute)", "speed-up p50"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r.turn),
            f"{r.prompt_tokens:.0f}",
            f"{r.tokens_reused:.0f}",
            f"{r.tokens_prefilled:.0f}",
            f"{r.tokens_prefilled_recompute:.0f}",
            f"{r.ttft_p50_s:.2f}s",
            f"{r.ttft_p95_s:.2f}s",
            f"{r.ttft_p50_s_recompute:.2f}s",
            f"{r.ttft_p95_s_recompute:.2f}s",
            f"{r.speedup_p50:.1f}x",
        )
    console = Console(width=None if sys.stdout.isatty() else 140)
    console.print(table)
    for run in (gearkv, recompute):
        t = run.throughput()
        console.print(
            f"{run.mode}: {t['turns']} turns in {t['wall_s']:.1f} s: {t['tokens_per_s']:.1f} generated "
            f"tokens/s, {t['turns_per_s']:.2f} turns/s, {t['turn_s_mean']:.2f} s per turn"
            + (f", {t['errors']} errors" if t["errors"] else "")
        )
        for err in run.errors[:5]:
            console.print(f"  [red]{err}[/red]")


def main(argv: Sequence[str], prog: str = "gearkv bench chat") -> int:
    from gearkv.cli import HelpFormatter

    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="4 conversations x 5 turns, ~600-token passages (minutes)"
    )
    parser.add_argument("--conversations", type=int, default=None, help="conversations at once (default 8)")
    parser.add_argument("--turns", type=int, default=None, help="turns per conversation (default 6)")
    parser.add_argument(
        "--passage-chars", type=int, default=None, help="characters of each opening passage (default 4800)"
    )
    parser.add_argument("--max-tokens", type=int, default=None, help="answer length cap (default 48)")
    parser.add_argument("--codec", default="gear4", help="codec preset of the gearkv run")
    parser.add_argument("--chunk-size", type=int, default=256, help="tokens per stored chunk")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each worker")
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    parser.add_argument("--json", type=Path, default=None, help="write the rows to this JSON file")
    args = parser.parse_args(list(argv))
    quick = {"conversations": 4, "turns": 5, "passage_chars": 2400, "max_tokens": 32}
    full = {"conversations": 8, "turns": 6, "passage_chars": 4800, "max_tokens": 48}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not (1 <= args.conversations <= 64 and 1 <= args.turns <= 32 and 1 <= args.max_tokens <= 4096):
        parser.error("--conversations must be in 1..64, --turns in 1..32, --max-tokens in 1..4096")
    try:
        import openai  # noqa: F401
    except ImportError:
        parser.error("needs the openai package: pip install openai")
    from gearkv.worker.app import interrupt_on_sigterm

    interrupt_on_sigterm()
    rows, gearkv, recompute = _run(args)
    _print(rows, gearkv, recompute, args)
    if args.json is not None:
        config = {k: getattr(args, k) for k in ("conversations", "turns", "passage_chars", "max_tokens")}
        config |= {"codec": args.codec, "chunk_size": args.chunk_size, "threads": args.threads}
        doc = {
            "config": config,
            "rows": [asdict(r) for r in rows],
            "throughput": {"gearkv": gearkv.throughput(), "recompute": recompute.throughput()},
            "errors": gearkv.errors + recompute.errors,
            "turns": {
                "gearkv": [asdict(t) for t in gearkv.turns],
                "recompute": [asdict(t) for t in recompute.turns],
            },
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if gearkv.errors or recompute.errors else 0
