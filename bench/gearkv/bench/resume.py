"""`gearkv bench resume`: time to first token resuming a session from the store vs recomputing it.

For each context length (512, 1k, 2k, 4k tokens of Shakespeare) and codec preset (fp16, gear4,
gear3, gear2) a session holding that context is committed to the store by one worker; a *fresh*
worker (empty hot cache) then continues it with a short follow-up (16 new tokens; each repeat its
own, so that no run reuses the follow-up a previous one committed). Figures, medians over
``--repeat`` runs:

- ``resume_s``: the fresh worker's time to first token (session read, prefix lookup, pipelined
  pull + decode, cache rebuild, prefill of the 16 new tokens, first token);
- ``recompute_s``: time to first token prefilling the whole context + follow-up from scratch;
- ``overhead_s``: ``resume_s`` minus the new tokens' prefill: what resuming costs;
- ``redis_get_s`` + ``decode_s``: its floor, measured alone in the same run: one redis-py pipeline
  GET of the same stored values straight from Redis, and the codec decoding the blobs in memory.

Targets on a 2-core CPU: resume >= 10x faster than recompute at 2k tokens, and overhead <= 1.5x
the floor. Starts its own redis-server and store (or uses ``--redis-url``) and stops them after.

On loopback bytes cost nothing to move, so fp16 resumes about as fast as gear4. ``--link-gbps
1,10,25`` shows where compression pays: the fresh worker then also resumes through a local
bandwidth-shaping proxy (``gearkv.bench.shaped_link``, each direction held to that many Gbit/s) in
front of the store, at each speed (the committing worker stays on loopback), and each row carries
its ``link_gbps`` (None: loopback, no proxy) and ``link_bytes`` (bytes that crossed the link from the
store per resume). The repeats go round the link speeds in turn, so that all see the same machine
load. The proxy is Python: it forwards ~9 Gbit/s at most on a 2-core machine, so faster links are
capped there.

The calibrated presets (``--presets gtc2 gtc3``) run with ``--codec-calibration FILE`` (from ``gearkv
calibrate-codec``) when given; otherwise the model is calibrated on first use (``ensure_calibration``:
a few minutes on a CPU, a step of the progress bar) and the file cached per model under
``~/.cache/gearkv``. Both workers of a preset (the one that commits and the fresh one that resumes)
use that calibration, and so does the floor's in-memory decode.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .progress import progress

__all__ = ["Row", "main"]

CONTEXTS = (512, 1024, 2048, 4096)
PRESETS = ("fp16", "gear4", "gear3", "gear2")
NEW_TOKENS = 16


@dataclass
class Row:
    context_tokens: int
    preset: str
    resume_s: float
    recompute_s: float
    overhead_s: float
    redis_get_s: float
    decode_s: float
    floor_s: float
    overhead_vs_floor: float
    speedup: float
    pull_s: float
    prefill_new_s: float
    chunks: int
    bytes_raw: int
    bytes_stored: int
    ratio: float
    # With --link-gbps: the link the resume went through (None: loopback, no proxy) and the bytes
    # that crossed it from the store per resume (median; 0 without a link).
    link_gbps: float | None = None
    link_bytes: int = 0


def _median(fn: Callable[[], float], repeat: int) -> float:
    return statistics.median(fn() for _ in range(repeat))


def _context_ids(tokenizer: Any, tokens: int) -> list[int]:
    from gearkv.worker.demo import default_text_path, load_passages

    path = default_text_path()
    text = path.read_text(encoding="utf-8") if path is not None else "\n\n".join(load_passages(None))
    ids: list[int] = tokenizer(text[: tokens * 8], add_special_tokens=False)["input_ids"]
    while len(ids) < tokens:
        ids = ids + ids
    return [int(i) for i in ids[:tokens]]


def _followups(ids: Sequence[int], count: int, avoid: int) -> list[list[int]]:
    """``count`` follow-ups of ``NEW_TOKENS`` tokens from ``ids``, each starting with a token other
    than the previous one's first (and than ``avoid``, the writer's own next token), so that every
    resume diverges from the committed session exactly at the end of the context.
    """
    out: list[list[int]] = []
    last = avoid
    for at in range(0, len(ids) - NEW_TOKENS + 1, NEW_TOKENS):
        piece = list(ids[at : at + NEW_TOKENS])
        if piece[0] not in (last, avoid):
            out.append(piece)
            last = piece[0]
            if len(out) == count:
                return out
    raise RuntimeError(f"the text has too few distinct follow-ups for {count} repeats")


def _gbps_list(text: str) -> list[float]:
    """``--link-gbps``: comma-separated positive link speeds in Gbit/s, e.g. ``1,10,25``."""
    try:
        speeds = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not speeds or not all(0 < g < float("inf") for g in speeds):
        raise argparse.ArgumentTypeError(f"link speeds must be positive numbers of Gbit/s: {text!r}")
    return sorted(set(speeds))


def _check_presets(names: Sequence[str]) -> list[str]:
    """The presets the worker cannot build, each with the codec's reason (the worker's own lookup,
    ``Codec.from_preset``, decides, so any preset the codec knows is accepted; a calibrated one is
    tried with a stand-in calibration, its own comes with the model)."""
    from gearkv.codec import Calibration, Codec, CodecError
    from gearkv.worker.codec_setup import needs_calibration

    bad = []
    for name in names:
        try:
            Codec.from_preset(name, calibration=Calibration.uniform(1) if needs_calibration(name) else None)
        except CodecError as err:
            bad.append(f"{name}: {err}")
    return bad


def main(argv: Sequence[str], prog: str = "gearkv bench resume") -> int:
    from gearkv.cli import HelpFormatter

    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2k tokens of context only (a few minutes)")
    parser.add_argument(
        "--contexts",
        type=int,
        nargs="+",
        default=None,
        metavar="TOKENS",
        help=f"context lengths (default: {' '.join(map(str, CONTEXTS))}, with --quick 2048)",
    )
    parser.add_argument(
        "--presets",
        nargs="+",
        default=list(PRESETS),
        metavar="PRESET",
        help=f"codec presets, any the codec knows (default: {' '.join(PRESETS)}; gtc2 gtc3 take "
        "--codec-calibration)",
    )
    parser.add_argument(
        "--link-gbps",
        type=_gbps_list,
        default=None,
        metavar="LIST",
        help="also resume through a link shaped to each of these speeds in Gbit/s, e.g. 1,10,25 "
        "(default: loopback only)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per figure, median reported (default: 3, with --quick 2)",
    )
    parser.add_argument(
        "--codec-calibration",
        type=Path,
        default=None,
        metavar="FILE",
        help="codec calibration file from `gearkv calibrate-codec` for the gtc presets, passed to both "
        "workers (default: calibrate the model on first use and cache the file under ~/.cache/gearkv)",
    )
    parser.add_argument("--chunk-size", type=int, default=256, help="tokens per stored chunk")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    parser.add_argument("--store-in-process", action="store_true", help="run the store in this process")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="write the rows to this JSON file, and the plot beside it (same name, .png)",
    )
    parser.add_argument(
        "--plot-from",
        type=Path,
        default=None,
        metavar="JSON",
        help="only draw the plot of an earlier run's --json file (written beside it, .png)",
    )
    args = parser.parse_args(list(argv))
    if args.plot_from is not None:
        doc = json.loads(args.plot_from.read_text())
        out = write_plot([Row(**r) for r in doc["rows"]], args.plot_from.with_suffix(".png"))
        print(f"wrote {out}", file=sys.stderr)
        return 0
    contexts = args.contexts or ([2048] if args.quick else list(CONTEXTS))
    repeat = args.repeat or (2 if args.quick else 3)
    if repeat < 1 or any(c < 32 for c in contexts):
        parser.error("--repeat must be >= 1 and contexts >= 32 tokens")
    bad = _check_presets(args.presets)
    if bad:
        parser.error(f"unusable presets: {'; '.join(bad)}")
    args.calibration = None  # the Calibration of --codec-calibration, read before the model loads
    if args.codec_calibration is not None:
        from gearkv.codec import CalibrationError
        from gearkv.worker.codec_setup import load_calibration

        try:
            args.calibration = load_calibration(args.codec_calibration)
        except CalibrationError as exc:
            parser.error(str(exc))
    links: list[float | None] = [None, *(args.link_gbps or ())]
    from gearkv.worker.app import interrupt_on_sigterm

    interrupt_on_sigterm()
    from gearkv.codec import CalibrationError

    try:
        rows = _run(contexts, args.presets, repeat, args, links)
    except CalibrationError as exc:  # --codec-calibration of another model (or layer count)
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    _print(rows)
    if args.json is not None:
        doc = {
            "benchmark": "resume",
            "new_tokens": NEW_TOKENS,
            "repeat": repeat,
            "threads": args.threads,
            "chunk_size": args.chunk_size,
            "link_gbps": args.link_gbps,
            "rows": [asdict(r) for r in rows],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
        print(f"wrote {write_plot(rows, args.json.with_suffix('.png'))}", file=sys.stderr)
    return 0


def write_plot(rows: Sequence[Row], path: Path) -> Path:
    """Draw a PNG at ``path``: resumed vs recomputed time to first token by context length (left)
    and the bytes one session holds per preset at the longest context (right). With rows from
    ``--link-gbps``, the left becomes resume time by link speed per preset, one panel per context,
    beside the recompute time."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    contexts = sorted({r.context_tokens for r in rows})
    if any(r.link_gbps is not None for r in rows):
        fig, axes = plt.subplots(
            1,
            len(contexts) + 1,
            figsize=(5.5 * len(contexts) + 4.5, 4.4),
            gridspec_kw={"width_ratios": [3] * len(contexts) + [2]},
        )
        for ax, ctx in zip(axes[:-1], contexts, strict=True):
            _plot_links(ax, [r for r in rows if r.context_tokens == ctx], ctx)
        _plot_held(axes[-1], rows)
    else:
        fig, (ttft, held) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
        _plot_contexts(ttft, rows)
        _plot_held(held, rows)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_contexts(ttft: Any, rows: Sequence[Row]) -> None:
    """Resumed (per preset) and recomputed time to first token by context length."""
    rows = [r for r in rows if r.link_gbps is None]
    contexts = sorted({r.context_tokens for r in rows})
    presets = list(dict.fromkeys(r.preset for r in rows))
    recompute = {c: statistics.median(r.recompute_s for r in rows if r.context_tokens == c) for c in contexts}
    ttft.plot(
        contexts, [recompute[c] for c in contexts], "o-", color="black", label="recomputed (prefill all)"
    )
    for preset in presets:
        mine = sorted((r.context_tokens, r.resume_s) for r in rows if r.preset == preset)
        ttft.plot(
            [c for c, _ in mine], [t for _, t in mine], "o--", label=f"resumed from the store, {preset}"
        )
    for c in contexts:
        best = min(r.resume_s for r in rows if r.context_tokens == c)
        ttft.annotate(
            f"{recompute[c] / best:.0f}x",
            (c, best),
            textcoords="offset points",
            xytext=(0, -14),
            ha="center",
            fontsize=8,
        )
    ttft.set_ylim(bottom=min(r.resume_s for r in rows) / 2)  # room for the speed-up labels
    ttft.set_xscale("log", base=2)
    ttft.set_yscale("log")
    ttft.set_xticks(contexts, [f"{c:,}" for c in contexts])
    ttft.set_xlabel("context (tokens)")
    ttft.set_ylabel("time to first token (s)")
    ttft.set_title(f"Time to first token, {NEW_TOKENS} new tokens")
    ttft.grid(True, which="both", alpha=0.3)
    ttft.legend(fontsize=8)


def _plot_links(ax: Any, rows: Sequence[Row], ctx: int) -> None:
    """Resume time by link speed per preset (log x; loopback at the right end), and recompute."""
    speeds = sorted({r.link_gbps for r in rows if r.link_gbps is not None})
    loopback_x = speeds[-1] * 4  # loopback, no proxy: drawn right of the fastest link

    def x_of(g: float | None) -> float:
        return loopback_x if g is None else g

    recompute = statistics.median(r.recompute_s for r in rows)
    ax.axhline(recompute, color="black", linestyle="-", label=f"recomputed (prefill all), {recompute:.2f}s")
    for preset in dict.fromkeys(r.preset for r in rows):
        mine = sorted(((x_of(r.link_gbps), r) for r in rows if r.preset == preset), key=lambda p: p[0])
        linked = [(x, r.resume_s) for x, r in mine if r.link_gbps is not None]
        (line,) = ax.plot(
            [x for x, _ in linked],
            [t for _, t in linked],
            "o-",
            label=f"{preset} ({mine[0][1].bytes_stored / 1e6:.1f} MB held, {mine[0][1].ratio:.1f}x)",
        )
        loop = [(x, r.resume_s) for x, r in mine if r.link_gbps is None]
        if loop and linked:
            ax.plot(
                [linked[-1][0], loop[0][0]],
                [linked[-1][1], loop[0][1]],
                ":",
                color=line.get_color(),
            )
            ax.plot([loop[0][0]], [loop[0][1]], "s", color=line.get_color())
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([*speeds, loopback_x], [f"{g:g}" for g in speeds] + ["loopback"])
    ax.minorticks_off()
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("link speed (Gbit/s, each direction)")
    ax.set_ylabel("time to first token (s)")
    ax.set_title(f"Resuming {ctx:,} tokens through a shaped link")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _plot_held(held: Any, rows: Sequence[Row]) -> None:
    """The bytes one session holds per preset at the longest context, raw vs stored."""
    contexts = sorted({r.context_tokens for r in rows})
    longest = contexts[-1]
    at = {r.preset: r for r in rows if r.context_tokens == longest}
    names = list(at)
    mib = float(1 << 20)
    raw = [at[p].bytes_raw / mib for p in names]
    stored = [at[p].bytes_stored / mib for p in names]
    xs = range(len(names))
    held.bar([x - 0.2 for x in xs], raw, width=0.4, color="lightgray", label="16-bit equivalent")
    bars = held.bar([x + 0.2 for x in xs], stored, width=0.4, color="tab:blue", label="stored")
    for bar, preset in zip(bars, names, strict=True):
        ratio = at[preset].bytes_raw / at[preset].bytes_stored if at[preset].bytes_stored else 0
        held.annotate(
            f"{ratio:.1f}x",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            textcoords="offset points",
            xytext=(0, 2),
            ha="center",
            fontsize=8,
        )
    held.set_xticks(list(xs), names)
    held.set_ylabel("MiB")
    held.set_title(f"KV held per session at {longest:,} tokens")
    held.legend(fontsize=8)


def _run(
    contexts: Sequence[int],
    presets: Sequence[str],
    repeat: int,
    args: argparse.Namespace,
    links: Sequence[float | None] = (None,),
) -> list[Row]:
    """The rows, per context, preset and link (None: loopback), in that order."""
    from contextlib import ExitStack

    import redis
    import torch
    from gearkv.client import KVStoreClient
    from gearkv.store.local import LocalRedis, LocalStore
    from gearkv.store.redis_keys import chunk_redis_key
    from gearkv.worker.codec_setup import needs_calibration, worker_codec
    from gearkv.worker.config import SessionOptions
    from gearkv.worker.engine import Engine, SamplingParams
    from gearkv.worker.fingerprint import model_fingerprint
    from gearkv.worker.metrics import WorkerMetrics
    from gearkv.worker.model import load_model
    from gearkv.worker.sessions import Worker

    from .shaped_link import ShapedLink

    torch.set_num_threads(args.threads)
    rows: list[Row] = []
    with ExitStack() as stack:
        url = args.redis_url
        if not url:
            url = stack.enter_context(LocalRedis()).url
        store = stack.enter_context(LocalStore(url, in_process=args.store_in_process))
        client = KVStoreClient(store.address, token=store.token, timeout=60)
        stack.callback(client.close)
        rclient = redis.Redis.from_url(url)
        stack.callback(rclient.close)
        # The fresh workers' way to the store per link speed: loopback, or a shaped link's client.
        host, _, port = store.address.rpartition(":")
        shaped: dict[float | None, tuple[Any, ShapedLink | None]] = {None: (client, None)}
        for gbps in links:
            if gbps is not None:
                proxy = stack.enter_context(ShapedLink(host, int(port), gbps=gbps))
                linked = KVStoreClient(proxy.address, token=store.token, timeout=60)
                stack.callback(linked.close)
                linked.ping()  # connected before anything is timed
                shaped[gbps] = (linked, proxy)
        # Steps: the model (and its codec calibration, for gtc presets), then per context its
        # recompute and per preset the push and each resume.
        resumes = repeat * len(links)
        calibrated = any(needs_calibration(p) for p in presets)
        steps = 1 + int(calibrated) + len(contexts) * (1 + len(presets) * (1 + resumes))
        tick = stack.enter_context(progress(steps, first="loading the model"))
        loaded = load_model()
        fingerprint = model_fingerprint(loaded)
        calibration = getattr(args, "calibration", None) if calibrated else None
        if calibrated:
            if calibration is None:  # on the model, before anything else runs on it
                from gearkv.worker.codec_calibration import ensure_calibration

                calibration = ensure_calibration(loaded, fingerprint)
            tick(f"codec calibration {calibration.digest} ready")
        engine = Engine(loaded)
        engine.warmup()
        for preset in presets:  # the workers' own checks (model, layers), before anything is timed
            worker_codec(
                preset,
                calibration if needs_calibration(preset) else None,
                fingerprint=fingerprint,
                kv_layers=engine.kv_layers,
            )
        tick("model ready")
        one = SamplingParams(max_new_tokens=1)
        for ctx in contexts:
            ids = _context_ids(engine.tokenizer, ctx + NEW_TOKENS * (resumes + 8))
            context = ids[:ctx]
            prompts = [[*context, *f] for f in _followups(ids[ctx:], resumes, avoid=0)]
            prompt = prompts[0]

            def recompute(prompt: list[int] = prompt) -> float:
                t0 = time.perf_counter()
                gen = engine.generate(prompt, one).run()
                return gen.first_token_at - t0

            recompute_s = _median(recompute, repeat)
            tick(f"{ctx} tokens: recompute {recompute_s:.2f}s")
            for preset in presets:
                opts = SessionOptions(codec=preset, chunk_size=args.chunk_size, hot_cache_bytes=0)
                session = f"bench-{preset}-{ctx}"
                cal = calibration if needs_calibration(preset) else None
                writer = Worker(
                    engine, client, opts, WorkerMetrics(), fingerprint=fingerprint, calibration=cal
                )
                first = writer.generate([*context, 0], one, session_id=session).run()
                assert first.push is not None
                pushed = first.push.result()
                if pushed.error:
                    raise RuntimeError(f"push failed: {pushed.error} {pushed.detail}")
                writer.close()
                tick(f"{ctx} tokens, {preset}: session pushed")
                refs = [r for r in pushed.chunks if r.start < ctx]
                rkeys = [chunk_redis_key(store.tenant, r.key) for r in refs]
                blobs = [client.get_chunk(r.key) for r in refs]
                # Each repeat measures a resume and then its floor back to back, so that both see the
                # same machine load; every resume rewrites the session but keeps its context chunks.
                # The repeats go round the links in turn (loopback, then each speed).
                samples: dict[float | None, list[tuple[float, ...]]] = {g: [] for g in links}
                turns = [(i, gbps) for i in range(repeat) for gbps in links]
                for n, ((i, gbps), follow_up) in enumerate(zip(turns, prompts, strict=True), 1):
                    via, link = shaped[gbps]
                    before = link.bytes_to_client if link is not None else 0
                    fresh = Worker(
                        engine, via, opts, WorkerMetrics(), fingerprint=fingerprint, calibration=cal
                    )
                    turn = fresh.generate(follow_up, one, session_id=session).run()
                    fresh.close()
                    crossed = link.bytes_to_client - before if link is not None else 0
                    s = turn.stats
                    assert s is not None
                    if s.source != "store" or s.tokens_reused != ctx:
                        raise RuntimeError(f"resume did not reuse exactly the {ctx}-token context: {s}")
                    get_s = _redis_get(rclient, rkeys)
                    dec_s = _decode_all(blobs, engine.device, engine.loaded.dtype, cal)
                    samples[gbps].append(
                        (s.ttft_s, s.ttft_s - s.prefill_s, s.pull_s, get_s, dec_s, float(crossed))
                    )
                    if n < len(turns):
                        tick(
                            f"{ctx} tokens, {preset}, {_link_name(gbps)}: "
                            f"resume {i + 1}/{repeat} {s.ttft_s:.3f}s"
                        )
                raw = sum(r.raw_bytes for r in refs)
                stored = sum(r.stored_bytes for r in refs)
                for gbps in links:
                    resume_s, overhead_s, pull_s, redis_get_s, decode_s, crossed_b = (
                        statistics.median(x[k] for x in samples[gbps]) for k in range(6)
                    )
                    floor = redis_get_s + decode_s
                    row = Row(
                        context_tokens=ctx,
                        preset=preset,
                        resume_s=round(resume_s, 4),
                        recompute_s=round(recompute_s, 4),
                        overhead_s=round(overhead_s, 4),
                        redis_get_s=round(redis_get_s, 4),
                        decode_s=round(decode_s, 4),
                        floor_s=round(floor, 4),
                        overhead_vs_floor=round(overhead_s / floor, 2) if floor else 0.0,
                        speedup=round(recompute_s / resume_s, 1) if resume_s else 0.0,
                        pull_s=round(pull_s, 4),
                        prefill_new_s=round(resume_s - overhead_s, 4),
                        chunks=len(refs),
                        bytes_raw=raw,
                        bytes_stored=stored,
                        ratio=round(raw / stored, 2) if stored else 0.0,
                        link_gbps=gbps,
                        link_bytes=int(crossed_b),
                    )
                    rows.append(row)
                summary = ", ".join(
                    f"{_link_name(r.link_gbps)} {r.resume_s:.3f}s" for r in rows[-len(links) :]
                )
                tick(f"{ctx} tokens, {preset}: resume {summary}")
    return rows


def _redis_get(rclient: Any, rkeys: Sequence[str]) -> float:
    """One pipelined redis-py GET of the chunks' values, straight from Redis."""
    t0 = time.perf_counter()
    pipe = rclient.pipeline(transaction=False)
    for k in rkeys:
        pipe.get(k)
    values = pipe.execute()
    elapsed = time.perf_counter() - t0
    if not all(values):
        raise RuntimeError("a chunk vanished from Redis during the benchmark")
    return elapsed


def _decode_all(blobs: Sequence[bytes], device: Any, dtype: Any, calibration: Any = None) -> float:
    """The codec decoding the blobs in memory, one after the other (``calibration``: the one the gtc
    presets' blobs were written with)."""
    from gearkv.codec import decode

    t0 = time.perf_counter()
    for b in blobs:
        decode(b, device=device, dtype=dtype, calibration=calibration)
    return time.perf_counter() - t0


def _link_name(gbps: float | None) -> str:
    return "loopback" if gbps is None else f"{gbps:g} Gbps"


def _print(rows: Sequence[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    linked = any(r.link_gbps is not None for r in rows)
    table = Table(title=f"resume vs recompute (time to first token, {NEW_TOKENS} new tokens)")
    columns = ["context", "preset", *(["link"] if linked else [])]
    columns += ["resume", "recompute", "speed-up", "overhead", "GET+decode floor", "overhead/floor"]
    columns += ["ratio", *(["link MB"] if linked else [])]
    for col in columns:
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(
            str(r.context_tokens),
            r.preset,
            *([_link_name(r.link_gbps)] if linked else []),
            f"{r.resume_s:.3f}s",
            f"{r.recompute_s:.2f}s",
            f"{r.speedup:.1f}x",
            f"{r.overhead_s:.3f}s",
            f"{r.redis_get_s:.3f}+{r.decode_s:.3f}s",
            f"{r.overhead_vs_floor:.2f}x",
            f"{r.ratio:.2f}x",
            *([f"{r.link_bytes / 1e6:.1f}" if r.link_gbps is not None else "-"] if linked else []),
        )
    console = Console(width=140)
    console.print(table)
    if linked:
        console.print(_link_table(rows))


def _link_table(rows: Sequence[Row]) -> Any:
    """Resume time per preset at each link speed (and, in brackets, its overhead: what resuming
    costs beyond prefilling the new tokens), beside the bytes each preset holds."""
    from rich.table import Table

    speeds = sorted({r.link_gbps for r in rows if r.link_gbps is not None})
    links: list[float | None] = [*speeds, None]
    table = Table(
        title=f"time to first token resuming by link speed ({NEW_TOKENS} new tokens; overhead in brackets)"
    )
    for col in ("context", "preset", "stored MB", "ratio", *map(_link_name, links), "recompute"):
        table.add_column(col, justify="right", no_wrap=True)
    at = {(r.context_tokens, r.preset, r.link_gbps): r for r in rows}
    for ctx, preset in dict.fromkeys((r.context_tokens, r.preset) for r in rows):
        first = next(r for r in rows if r.context_tokens == ctx and r.preset == preset)
        cells = [
            f"{at[(ctx, preset, g)].resume_s:.3f}s ({at[(ctx, preset, g)].overhead_s:.3f})"
            if (ctx, preset, g) in at
            else "-"
            for g in links
        ]
        table.add_row(
            str(ctx),
            preset,
            f"{first.bytes_stored / 1e6:.1f}",
            f"{first.ratio:.2f}x",
            *cells,
            f"{first.recompute_s:.2f}s",
        )
    return table


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
