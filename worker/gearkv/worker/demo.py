"""`gearkv demo`: a scripted multi-turn chat whose every turn resumes from the store on a fresh worker.

Starts a local redis-server on a free port (unless ``--redis-url``), the store (a child process, or
in-process with ``--store-in-process``) and the worker in this process, and plays a conversation
about passages of Shakespeare that grows past 2,000 tokens of context. Each turn runs on a *fresh*
Worker (empty hot cache, served over gRPC on a new port), so the KV of the earlier turns can only
come from the store. For every turn it shows the streamed answer, tokens reused vs prefilled, time
to first token resumed vs a cold prefill of the same conversation (both measured), and the session's
KV bytes raw (16-bit) vs stored. Ends with a summary table and stops everything it started.

With ``--sharing-plan FILE`` (from ``gearkv calibrate-sharing``) the model runs with that KVSharer
plan, and the table also shows the layers shared and the stored bytes they saved.

``--codec gtc2`` / ``gtc3`` (the calibrated presets) use ``--codec-calibration FILE`` when given;
otherwise the model is calibrated on first use (``ensure_calibration``, a few minutes on a CPU, shown
as it goes) and the file is cached per model (under ``~/.cache/gearkv``, ``$GEARKV_CACHE_DIR``), so
later runs start at once.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gearkv.cli import HelpFormatter

__all__ = ["TurnRow", "build_script", "default_text_path", "demo_calibration", "load_passages", "main"]

_BUNDLED = Path(__file__).with_name("demo_passages.txt")
_QUESTIONS = (
    "I'd like to talk about some passages from Shakespeare's plays. Here is the first one:\n\n{p}\n\n"
    "What are the speakers upset about in this passage?",
    "Here is a second passage, from another play:\n\n{p}\n\n"
    "Who are the speakers, and what are they discussing?",
    "A third passage:\n\n{p}\n\nDescribe the mood of this scene in two sentences.",
    "And a fourth one:\n\n{p}\n\nWho is the most important speaker here, and what do they want?",
    "Looking back at all four passages, which one is the most dramatic, and why?",
    "Thank you! Give each of the four passages a short title.",
)


@dataclass
class TurnRow:
    """One turn's figures, as written to ``--json`` (``turns`` list)."""

    turn: int
    prompt_tokens: int
    tokens_reused: int
    tokens_prefilled: int
    tokens_generated: int
    ttft_s: float
    ttft_cold_s: float
    ttft_client_s: float
    bytes_raw: int
    bytes_stored: int
    bytes_pulled: int
    pull_s: float
    decompress_s: float
    compress_s: float
    outcome: str
    reason: str
    source: str
    answer: str
    shared_layers: int = 0
    bytes_saved_raw: int = 0  # what the shared layers' KV would have added (16-bit)
    bytes_saved_stored: int = 0  # ... stored, at the turn's own compression ratio


def default_text_path() -> Path | None:
    """The text passages come from: ``$GEARKV_DEMO_TEXT``, else tinyshakespeare in shared/data.

    Returns:
        The path, or None when none is found (:func:`load_passages` then uses the bundled passages).
    """
    env = os.environ.get("GEARKV_DEMO_TEXT")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3]
    for candidate in (
        repo / ".." / "shared" / "data" / "tinyshakespeare.txt",
        repo / "shared" / "data" / "tinyshakespeare.txt",
    ):
        if candidate.is_file():
            return candidate
    return None


def load_passages(path: Path | None, count: int = 4, chars: int = 1500) -> list[str]:
    """``count`` passages of about ``chars`` characters, whole speeches, spread over the text.

    Falls back to the passages bundled with the package when ``path`` is None or unreadable.
    """
    try:
        text = path.read_text(encoding="utf-8") if path is not None else ""
    except OSError:
        text = ""
    step = 250_000 if len(text) > 250_000 * count else len(text) // (count + 1)
    if step < chars * 2:
        bundled = _BUNDLED.read_text(encoding="utf-8").split("\n\n", 1)[1]
        return [p.strip() for p in bundled.split("=====")][:count]
    out = []
    for i in range(count):
        start = text.index("\n\n", step * i) + 2
        end = start
        while end - start < chars:
            nxt = text.find("\n\n", end + 1)
            if nxt < 0:
                break
            end = nxt
        out.append(text[start:end].strip())
    return out


def build_script(passages: Sequence[str], turns: int) -> list[str]:
    """The user messages of the scripted conversation (passages first, then questions about them)."""
    script = []
    for i in range(turns):
        template = _QUESTIONS[i % len(_QUESTIONS)]
        passage = passages[i % len(passages)] if "{p}" in template else ""
        script.append(template.format(p=passage))
    return script


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Play a scripted multi-turn chat; every turn resumes its KV cache from the store "
        "on a fresh worker, compared with a cold prefill of the same conversation.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--redis-url", help="use this Redis instead of starting redis-server on a free port")
    p.add_argument("--model", help="model folder or hub name (default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--gguf-file", help="GGUF file inside --model")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", help="float32, float16 or bfloat16")
    p.add_argument(
        "--codec",
        default="gear4",
        help="codec preset (fp16 raw kivi2 kivi4 gear2 gear3 gear4 gtc2 gtc3; gtc2 and gtc3 are calibrated "
        "for the model on first use, see --codec-calibration)",
    )
    p.add_argument(
        "--codec-calibration",
        type=Path,
        default=None,
        metavar="FILE",
        help="codec calibration file from `gearkv calibrate-codec` for --codec gtc2/gtc3 (default: "
        "calibrate the model on first use and cache the file per model under ~/.cache/gearkv)",
    )
    p.add_argument("--chunk-size", type=int, default=256, help="tokens per stored chunk")
    p.add_argument("--turns", type=int, default=6, help="number of turns (at least 5 for the full story)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="answer length cap per turn")
    p.add_argument("--text", type=Path, default=None, help="text to take passages from (tinyshakespeare)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: min(2, CPUs))")
    p.add_argument("--no-cold", action="store_true", help="skip the cold-prefill comparison")
    p.add_argument(
        "--store-in-process",
        action="store_true",
        help="run the store in this process instead of a child process",
    )
    p.add_argument(
        "--sharing-plan",
        type=Path,
        default=None,
        help="KVSharer plan file from `gearkv calibrate-sharing` (the worker's --sharing-plan)",
    )
    p.add_argument(
        "--openai",
        action="store_true",
        help="drive the conversation with the openai package through each fresh worker's "
        "OpenAI-compatible HTTP API (stateless: the whole history re-sent every turn)",
    )
    p.add_argument(
        "--prometheus",
        action="store_true",
        help="run Prometheus (the prometheus binary) beside the demo, scraping the store and the "
        "workers; prints its URL and the queries that show the savings, and reads them back at the end",
    )
    p.add_argument("--json", type=Path, default=None, help="write per-turn figures to this file")
    return p


# The queries that show what the demo saves, as a user would type them in Prometheus (label: query).
SAVINGS_QUERIES = (
    ("KV held now, 16-bit equivalent (bytes)", "sum(max by (tenant) (gearkv_store_live_raw_bytes))"),
    ("KV held now, stored (bytes)", "sum(max by (tenant) (gearkv_store_live_stored_bytes))"),
    (
        "compression ratio now",
        "sum(max by (tenant) (gearkv_store_live_raw_bytes)) / "
        "sum(max by (tenant) (gearkv_store_live_stored_bytes) > 0)",
    ),
    ("prompt tokens reused, by source", "sum by (source) (gearkv_worker_tokens_reused_total)"),
    ("prompt tokens prefilled", "sum(gearkv_worker_tokens_prefilled_total)"),
    (
        "mean time to first token, resumed vs cold (s)",
        "sum by (path) (gearkv_worker_ttft_seconds_sum) "
        "/ sum by (path) (gearkv_worker_ttft_seconds_count > 0)",
    ),
)


def _alert_rules() -> list[Path]:
    """deploy/prometheus/alerts.yml of a source checkout (absent from an installed wheel)."""
    path = Path(__file__).resolve().parents[3] / "deploy/prometheus/alerts.yml"
    return [path] if path.exists() else []


def _start_prometheus(stack: ExitStack, store_metrics: str, registry: Any, console: Any) -> Any:
    """Serve ``registry`` on a free port and run Prometheus scraping it and the store; print how to
    watch the savings live."""
    from gearkv.store.local import LocalPrometheus, free_port
    from prometheus_client import start_http_server

    port = free_port()
    http, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    stack.callback(http.shutdown)
    targets = {"gearkv-store": [store_metrics], "gearkv-worker": [f"127.0.0.1:{port}"]}
    with console.status("starting prometheus..."):
        prom = stack.enter_context(LocalPrometheus(targets, rule_files=_alert_rules(), interval_s=1.0))
    console.print(f"[bold]prometheus[/] {prom.url} (scraping the store and the workers every second)")
    console.print("  watch the savings live, e.g. in its Graph tab:")
    for label, query in SAVINGS_QUERIES:
        console.print(f"  [dim]{label}:[/] {query}", soft_wrap=True, highlight=False)
    return prom


def _read_back(prom: Any, console: Any, timeout: float = 20.0) -> dict[str, Any]:
    """The savings as Prometheus has them (after the store's next refresh and a scrape)."""
    since = time.time()
    deadline = time.monotonic() + timeout
    refreshed = "max(gearkv_store_live_refresh_timestamp_seconds)"
    while time.monotonic() < deadline:  # the store refreshes its live gauges every 5 s
        last = prom.value(refreshed)
        if last is not None and last > since:
            break
        time.sleep(0.5)
    time.sleep(1.5)  # one more scrape of the workers' last counters
    figures: dict[str, Any] = {
        "raw_bytes": prom.value(SAVINGS_QUERIES[0][1]),
        "stored_bytes": prom.value(SAVINGS_QUERIES[1][1]),
        "ratio": prom.value(SAVINGS_QUERIES[2][1]),
        "tokens_reused": {
            r["metric"].get("source", ""): float(r["value"][1]) for r in prom.query(SAVINGS_QUERIES[3][1])
        },
        "tokens_prefilled": prom.value(SAVINGS_QUERIES[4][1]),
        "mean_ttft_s": {
            r["metric"].get("path", ""): float(r["value"][1]) for r in prom.query(SAVINGS_QUERIES[5][1])
        },
    }
    raw, kept = figures["raw_bytes"] or 0.0, figures["stored_bytes"] or 0.0
    reused = sum(figures["tokens_reused"].values())
    ttft = figures["mean_ttft_s"]
    console.print(f"[bold]read back from Prometheus[/] ({prom.url}):")
    console.print(
        f"  KV held now: {_mib(int(raw))} 16-bit equivalent, {_mib(int(kept))} stored"
        + (f" ({raw / kept:.1f}x, {_mib(int(raw - kept))} saved)" if kept else "")
    )
    console.print(f"  prompt tokens: {reused:.0f} reused, {figures['tokens_prefilled'] or 0:.0f} prefilled")
    if ttft:
        console.print(
            "  mean time to first token: " + ", ".join(f"{p} {v:.2f} s" for p, v in sorted(ttft.items()))
        )
    return figures


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def main(argv: Sequence[str], prog: str = "gearkv demo") -> int:
    args = _parser(prog).parse_args(list(argv))
    if not 1 <= args.turns <= 64:
        print(f"{prog}: --turns must be in 1..64", file=sys.stderr)
        return 2
    if not 1 <= args.max_new_tokens <= 4096:
        print(f"{prog}: --max-new-tokens must be in 1..4096", file=sys.stderr)
        return 2
    from gearkv.codec import PRESETS

    if args.codec not in PRESETS:
        print(f"{prog}: --codec must be one of {sorted(PRESETS)}", file=sys.stderr)
        return 2
    from gearkv.worker.codec_setup import needs_calibration

    if needs_calibration(args.codec) and args.sharing_plan is not None and args.codec_calibration is None:
        print(
            f"{prog}: --codec {args.codec} with --sharing-plan: a calibration made on first use covers "
            "all the model's layers, but only the plan's owner layers are stored; pass "
            "--codec-calibration FILE of those layers, or use another codec (e.g. gear4)",
            file=sys.stderr,
        )
        return 2
    if args.prometheus and (args.openai or args.store_in_process):
        print(
            f"{prog}: --prometheus runs with the store as a child process, without --openai", file=sys.stderr
        )
        return 2
    from gearkv.worker.app import interrupt_on_sigterm

    interrupt_on_sigterm()
    try:
        if args.openai:
            from gearkv.worker.openai_demo import run

            return run(args)
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130


def demo_calibration(
    args: argparse.Namespace, loaded: Any, fingerprint: str, status: Any, console: Any
) -> Any:
    """The codec calibration for ``args.codec`` (None for the presets that need none): the
    ``--codec-calibration`` file, else this model's cached one, made on first use with its progress
    shown in ``status`` (a rich status). Call it before a sharing plan changes the model.

    Raises:
        CalibrationError: an unreadable or damaged ``--codec-calibration`` file.
    """
    from gearkv.worker.codec_setup import load_calibration, needs_calibration

    if not needs_calibration(args.codec):
        return None
    if args.codec_calibration is not None:
        cal = load_calibration(args.codec_calibration)
        console.print(f"[bold]codec calibration[/] {cal.digest} from {args.codec_calibration}")
        return cal
    from gearkv.worker.codec_calibration import default_calibration_path, ensure_calibration

    path = default_calibration_path(fingerprint)
    measured: list[int] = []

    def progress(done: int, total: int, what: str) -> None:
        measured.append(done)
        status.update(
            f"calibrating codec {args.codec} for this model (first use only; cached in {path}): "
            f"{done}/{total}, {what}"
        )

    status.update(f"codec {args.codec}: looking for this model's calibration in {path}...")
    cal = ensure_calibration(loaded, fingerprint, path, progress=progress)
    how = "made on first use and cached in" if measured else "cached in"
    console.print(f"[bold]codec calibration[/] {cal.digest} ({cal.layers} layers), {how} {path}")
    return cal


def _run(args: argparse.Namespace) -> int:
    import grpc
    import torch
    from gearkv.api.v1 import worker_pb2 as wpb
    from gearkv.api.v1 import worker_pb2_grpc
    from gearkv.client import KVStoreClient
    from gearkv.codec import CalibrationError
    from gearkv.store.local import LocalRedis, LocalStore, free_port
    from gearkv.worker.codec_setup import worker_codec
    from gearkv.worker.config import SessionOptions
    from gearkv.worker.engine import Engine, SamplingParams
    from gearkv.worker.fingerprint import model_fingerprint
    from gearkv.worker.metrics import WorkerMetrics
    from gearkv.worker.model import load_model
    from gearkv.worker.service import start_worker_server
    from gearkv.worker.sessions import Worker
    from gearkv.worker.sharing import SharingPlanError, load_plan
    from rich.console import Console, Group
    from rich.live import Live
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = Console(width=None if sys.stdout.isatty() else 110)
    try:
        plan = load_plan(args.sharing_plan) if args.sharing_plan is not None else None
    except SharingPlanError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    torch.set_num_threads(args.threads or max(1, min(2, os.cpu_count() or 1)))
    passages = load_passages(args.text or default_text_path())
    script = build_script(passages, args.turns)
    rows: list[TurnRow] = []

    with ExitStack() as stack:
        with console.status("starting redis-server and the store..."):
            redis_url = args.redis_url
            if not redis_url:
                redis = stack.enter_context(LocalRedis())
                redis_url = redis.url
            store_metrics = f"127.0.0.1:{free_port()}" if args.prometheus else ""
            extra = ["--metrics-port", store_metrics.rpartition(":")[2]] if args.prometheus else []
            store = stack.enter_context(
                LocalStore(redis_url, in_process=args.store_in_process, extra_args=extra)
            )
        console.print(f"[bold]store[/] {store.address} on {redis_url}")
        # One set of worker metrics for every fresh worker, so that Prometheus sees the whole session.
        shared_metrics = WorkerMetrics() if args.prometheus else None
        prom = (
            _start_prometheus(stack, store_metrics, shared_metrics.registry, console)
            if shared_metrics
            else None
        )
        with console.status("loading the model (the first run converts the GGUF file, ~30 s)...") as loading:
            loaded = load_model(args.model, args.gguf_file, args.device, args.dtype)
            fingerprint = model_fingerprint(loaded)
            if plan is not None:
                try:
                    plan.check_model(fingerprint)
                except SharingPlanError as exc:
                    console.print(f"[red]{exc}[/red]")
                    return 2
            try:  # on the model as loaded, before a sharing plan changes it
                calibration = demo_calibration(args, loaded, fingerprint, loading, console)
            except CalibrationError as exc:
                console.print(f"[red]{exc}[/red]")
                return 2
            loading.update("warming up the model...")
            engine = Engine(loaded, sharing=plan)
            engine.warmup()
            try:  # the checks every fresh worker makes: refused here once, clearly
                worker_codec(
                    args.codec,
                    calibration,
                    fingerprint=fingerprint,
                    kv_layers=engine.kv_layers,
                    sharing=plan is not None,
                )
            except CalibrationError as exc:
                console.print(f"[red]{exc}[/red]")
                return 2
        console.print(f"[bold]model[/] {loaded.name} on {loaded.device} ({loaded.dtype}); codec {args.codec}")
        shared = plan.shared_layers if plan is not None else 0
        if plan is not None:
            pairs = ", ".join(f"{a}->{b}" for a, b in plan.shared) or "none"
            console.print(
                f"[bold]KVSharer[/] {shared} of {plan.num_layers} layers share an earlier layer's KV "
                f"({pairs}); calibrated held-out perplexity x{plan.quality.ppl_ratio:.3f}"
            )
        client = KVStoreClient(store.address, token=store.token)
        stack.callback(client.close)
        options = SessionOptions(codec=args.codec, chunk_size=args.chunk_size, hot_cache_bytes=0)
        session_id = f"demo-{secrets.token_hex(4)}"
        history: list[dict[str, str]] = []
        params = wpb.GenerationParams(max_new_tokens=args.max_new_tokens)

        for number, message in enumerate(script, 1):
            worker = Worker(
                engine,
                client,
                options,
                shared_metrics or WorkerMetrics(),
                fingerprint=fingerprint,
                calibration=calibration,
            )
            if shared_metrics is not None:
                shared_metrics.track_hot_cache(worker.hot)
            server = start_worker_server(worker, "127.0.0.1", 0)
            title = f"turn {number}/{len(script)} · fresh worker {server.address} · session {session_id}"
            console.rule(title)
            shown = message if len(message) < 240 else f"{message[:110]}\n  [...]\n{message[-110:]}"
            console.print(Text("user: ", style="bold cyan") + Text(shown))
            answer = ""
            stats: Any = None
            t_send = time.perf_counter()
            t_first = 0.0
            try:
                with grpc.insecure_channel(server.address) as channel:
                    stub = worker_pb2_grpc.WorkerStub(channel)
                    request = wpb.ChatRequest(session_id=session_id, message=message, params=params)
                    status = Text(
                        "resuming the session from the store, prefilling the new tokens...", style="yellow"
                    )
                    with Live(
                        Panel(Group(Text(""), status), title="assistant"),
                        console=console,
                        refresh_per_second=8,
                        transient=False,
                    ) as live:
                        for reply in stub.Chat(request, timeout=1800):
                            if reply.text and not t_first:
                                t_first = time.perf_counter() - t_send
                                status = Text(
                                    f"first token after {t_first:.2f} s; generating...", style="green"
                                )
                            answer += reply.text
                            if reply.HasField("stats"):
                                stats = reply.stats
                                status = Text(f"done ({reply.finish_reason})", style="green")
                            live.update(Panel(Group(Text(answer), status), title="assistant"))
            finally:
                server.stop(grace=1.0)  # waits for this turn's push + commit
            console.line()
            push = worker.last_push(session_id)
            history += [{"role": "user", "content": message}]
            cold = 0.0
            if not args.no_cold:
                with console.status("measuring a cold prefill of the same conversation..."):
                    prompt = engine.encode_chat(history)
                    t0 = time.perf_counter()
                    gen = engine.generate(prompt, SamplingParams(max_new_tokens=1))
                    gen.run()
                    cold = gen.first_token_at - t0
            history += [{"role": "assistant", "content": answer}]
            row = TurnRow(
                turn=number,
                prompt_tokens=stats.prompt_tokens,
                tokens_reused=stats.tokens_reused,
                tokens_prefilled=stats.tokens_prefilled,
                tokens_generated=stats.tokens_generated,
                ttft_s=round(stats.ttft_s, 4),
                ttft_cold_s=round(cold, 4),
                ttft_client_s=round(t_first, 4),
                bytes_raw=push.bytes_raw if push and not push.error else stats.bytes_raw,
                bytes_stored=push.bytes_stored if push and not push.error else stats.bytes_stored,
                bytes_pulled=stats.bytes_pulled,
                pull_s=round(stats.pull_s, 4),
                decompress_s=round(stats.decompress_s, 4),
                compress_s=round(push.compress_s, 4) if push else 0.0,
                outcome=wpb.ResumeOutcome.Name(stats.outcome).removeprefix("RESUME_OUTCOME_").lower(),
                reason=stats.reason,
                source=stats.source,
                answer=answer,
            )
            if shared:
                # the same tokens' KV for the shared layers too: per layer it is the same size
                row.shared_layers = shared
                row.bytes_saved_raw = row.bytes_raw * shared // engine.kv_layers
                row.bytes_saved_stored = row.bytes_stored * shared // engine.kv_layers
            rows.append(row)
            speedup = f" ({row.ttft_cold_s / row.ttft_s:.1f}x faster)" if cold and row.ttft_s else ""
            console.print(
                f"[bold]{row.outcome}[/]{' (' + row.reason + ')' if row.reason else ''}: "
                f"{row.tokens_reused} tokens reused from the {row.source or 'nowhere'}, "
                f"{row.tokens_prefilled} prefilled · TTFT {row.ttft_s:.2f} s resumed vs "
                f"{row.ttft_cold_s:.2f} s cold{speedup} · session KV {_mib(row.bytes_raw)} raw -> "
                f"{_mib(row.bytes_stored)} stored"
                + (f" · push failed: {push.error}" if push and push.error else "")
            )

        title = f"GearKV demo: {loaded.name}, codec {args.codec}, chunk {args.chunk_size} tokens"
        if plan is not None:
            title += f", {shared}/{plan.num_layers} layers shared"
        table = Table(title=title)
        columns = ["turn", "context", "reused", "prefill", "outcome", "TTFT", "cold", "gain"]
        columns += ["KV raw", "stored", "ratio"] + (["saved"] if plan is not None else [])
        for col in columns:
            table.add_column(col, justify="right", no_wrap=True)
        for r in rows:
            table.add_row(
                str(r.turn),
                str(r.prompt_tokens),
                str(r.tokens_reused),
                str(r.tokens_prefilled),
                r.outcome,
                f"{r.ttft_s:.2f}s",
                f"{r.ttft_cold_s:.2f}s" if r.ttft_cold_s else "-",
                f"{r.ttft_cold_s / r.ttft_s:.1f}x" if r.ttft_cold_s and r.ttft_s else "-",
                f"{r.bytes_raw / (1 << 20):.1f}M",
                f"{r.bytes_stored / (1 << 20):.1f}M",
                f"{r.bytes_raw / r.bytes_stored:.1f}x" if r.bytes_stored else "-",
                *([f"{r.bytes_saved_stored / (1 << 20):.1f}M"] if plan is not None else []),
            )
        console.print(table)
        if plan is not None and rows:
            last = rows[-1]
            console.print(
                f"KVSharer: {shared} shared layers kept {_mib(last.bytes_saved_raw)} raw "
                f"({_mib(last.bytes_saved_stored)} stored) of this session's KV out of the cache and "
                "the store (KV raw and stored above are the owner layers only)."
            )
        figures = _read_back(prom, console) if prom is not None else None
        if args.json is not None:
            doc = {
                "model": loaded.name,
                "device": str(loaded.device),
                "dtype": str(loaded.dtype).removeprefix("torch."),
                "codec": args.codec,
                "codec_calibration": calibration.digest if calibration is not None else None,
                "chunk_size": args.chunk_size,
                "sharing_plan": plan.to_json() if plan is not None else None,
                "turns": [asdict(r) for r in rows],
            }
            if figures is not None:
                doc["prometheus"] = figures
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
            console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
