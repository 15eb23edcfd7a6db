"""`gearkv bench sharing`: KVSharer on the default model, alone and stacked with GEAR.

For 0, 1, 2, 4 and 8 shared layers, chosen by the KVSharer calibration (dissimilar pairs first, the
final-hidden-state cosine check at ``--cos-threshold``, no perplexity guard: the paper's method) and
by random pairs (``--seed``), each map runs on text windows from two domains (Shakespeare, Python
source): the prefix is prefilled on a cache holding only the owner layers, whose KV is measured raw
(16-bit) and encoded with GEAR (``--codec``, default gear4), and the continuation is teacher-forced to
score its perplexity against the unshared model. Prefill and decode (one token per step on the cache)
are timed. ``--plan FILE`` adds a row for a plan from ``gearkv calibrate-sharing`` (with its guard).

The JSON's ``rows`` have ``shared_layers``, ``selection`` (none, calibrated, random, plan), ``owners``,
``bytes_per_token``, ``bytes_per_token_gear``, ``ppl_ratio`` (± standard error over windows),
``top1_agreement``, ``prefill_s`` and ``decode_ms_per_token``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ._kv_eval import load_windows, shakespeare_path
from .progress import progress

COUNTS = (1, 2, 4, 8)
DECODE_STEPS = 16


@dataclass
class Row:
    shared_layers: int
    selection: str
    owners: dict[str, int]
    bytes_per_token: float
    bytes_per_token_gear: float
    ppl: float
    ppl_ratio: float
    ppl_ratio_se: float
    top1_agreement: float
    prefill_s: float
    decode_ms_per_token: float


@dataclass
class _Window:
    nll: torch.Tensor  # [cont] next-token NLL of the continuation
    top1: torch.Tensor  # [cont] the most likely next tokens


class Bench:
    """The model, the windows and the unshared reference scores."""

    def __init__(self, model: Any, windows: Sequence[torch.Tensor], prefix: int, codec: Any) -> None:
        self.model, self.windows, self.prefix, self.codec = model, windows, prefix, codec
        self.base: list[_Window] = []

    def measure(self, owners: Mapping[int, int], selection: str) -> Row:
        from gearkv.worker import hf_cache
        from gearkv.worker.sharing import with_share

        scored: list[_Window] = []
        raw = gear = tokens = 0
        prefill_s = 0.0
        decode: list[float] = []
        with with_share(self.model, owners), torch.inference_mode():
            for ids in self.windows:
                cache = hf_cache.new_cache()
                t0 = time.perf_counter()
                self.model(input_ids=ids[None, : self.prefix], **hf_cache.forward_kwargs(self.model, cache))
                prefill_s += time.perf_counter() - t0
                kv = hf_cache.export_kv(cache)  # the owner layers only
                raw += hf_cache.kv_nbytes(kv, bytes_per_element=2)
                gear += len(self.codec.encode([(k.half(), v.half()) for k, v in kv]))
                tokens += self.prefix
                cont = ids[None, self.prefix : -1]
                logits = self.model(input_ids=cont, **hf_cache.forward_kwargs(self.model, cache)).logits
                logp = torch.log_softmax(logits[0].float(), -1)
                nll = -logp.gather(-1, ids[self.prefix + 1 :, None]).squeeze(-1)
                scored.append(_Window(nll, logp.argmax(-1)))
                hf_cache.crop_cache(cache, self.prefix)
                for t in range(DECODE_STEPS):
                    step = ids[None, self.prefix + t : self.prefix + t + 1]
                    ts = time.perf_counter()
                    self.model(input_ids=step, **hf_cache.forward_kwargs(self.model, cache))
                    decode.append(time.perf_counter() - ts)
        if not self.base:
            self.base = scored
        log_ratios = [float(s.nll.mean() - b.nll.mean()) for s, b in zip(scored, self.base, strict=True)]
        mean_lr = statistics.fmean(log_ratios)
        se = statistics.stdev(log_ratios) / math.sqrt(len(log_ratios)) if len(log_ratios) > 1 else math.nan
        agree = [float((s.top1 == b.top1).float().mean()) for s, b in zip(scored, self.base, strict=True)]
        ppl = math.exp(statistics.fmean(float(s.nll.mean()) for s in scored))
        ratio = math.exp(mean_lr)
        return Row(
            shared_layers=len(owners),
            selection=selection,
            owners={str(k): v for k, v in sorted(owners.items())},
            bytes_per_token=raw / tokens,
            bytes_per_token_gear=gear / tokens,
            ppl=round(ppl, 3),
            ppl_ratio=round(ratio, 4),
            ppl_ratio_se=round(ratio * se, 4),
            top1_agreement=round(statistics.fmean(agree), 4),
            prefill_s=round(prefill_s / len(self.windows), 4),
            decode_ms_per_token=round(1000 * statistics.median(decode), 2),
        )


def calibrated_maps(
    model: Any, tokenizer: Any, fingerprint: str, *, cos_threshold: float, candidates: int, budget_s: float
) -> tuple[list[dict[int, int]], dict[str, Any]]:
    """The KVSharer greedy maps after 1, 2, ... accepted shares (up to 8), and the search's summary."""
    from gearkv.worker.sharing import calibrate_sharing, tentative

    text = shakespeare_path().read_text(encoding="utf-8")
    half = len(text) // 2  # the windows come from the second half: calibration stays off them
    size = 64 * 12
    starts = [i * (half - 40_000 - size) // 19 for i in range(20)]
    excerpts = [text[s : s + size] for s in starts]
    maps: list[dict[int, int]] = []
    owners: dict[int, int] = {}

    def seen(event: Any) -> None:
        nonlocal owners
        if event.stage == "candidate" and event.accepted:
            new = tentative(owners, event.layer, event.owner)
            assert new is not None
            owners = new
            maps.append(dict(owners))

    plan = calibrate_sharing(
        model,
        tokenizer,
        excerpts,
        held_out_texts=[text[half - 40_000 : half - 20_000]],
        fingerprint=fingerprint,
        max_shared=max(COUNTS),
        cos_threshold=cos_threshold,
        max_ppl_ratio=None,
        held_out_tokens=256,
        max_candidates=candidates,
        time_budget_s=budget_s,
        progress=seen,
    )
    if maps:
        assert maps[-1] == plan.owners
    summary = {
        "cos_threshold": cos_threshold,
        "candidates_evaluated": plan.quality.candidates_evaluated,
        "stopped": plan.quality.stopped,
        "elapsed_s": round(plan.quality.elapsed_s, 1),
        "shared": len(plan.shared),
    }
    return maps, summary


def main(argv: Sequence[str], prog: str = "gearkv bench sharing") -> int:
    from gearkv.cli import HelpFormatter

    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 shorter windows, a shorter search (minutes)")
    parser.add_argument("--codec", default="gear4", help="GEAR preset stacked on the owner layers")
    parser.add_argument("--cos-threshold", type=float, default=0.9, help="the calibration's cosine check")
    parser.add_argument(
        "--max-candidates",
        type=int,
        default=None,
        help="maps the calibration tries (default 160, quick 80)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random pairs")
    parser.add_argument("--plan", type=Path, default=None, help="also measure this sharing plan file")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    args = parser.parse_args(list(argv))
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)

    from gearkv.codec import PRESETS, Codec
    from gearkv.worker.fingerprint import model_fingerprint
    from gearkv.worker.model import load_model
    from gearkv.worker.sharing import load_plan, random_owners

    if args.codec not in PRESETS:
        parser.error(f"--codec must be one of {sorted(PRESETS)}")
    plan = load_plan(args.plan) if args.plan else None
    prefix, cont, per_domain = (512, 128, 1) if args.quick else (768, 256, 2)
    candidates = args.max_candidates or (80 if args.quick else 160)
    started = time.perf_counter()
    rows: list[Row] = []
    steps = 3 + 2 * len(COUNTS) + (plan is not None)
    with progress(steps, first="loading the model") as tick:
        lm = load_model(device="cpu")
        fingerprint = model_fingerprint(lm)
        if plan is not None:
            plan.check_model(fingerprint)
        wins = [w.ids for w in load_windows(lm.tokenizer, per_domain, prefix, cont)]
        bench = Bench(lm.model, wins, prefix, Codec.from_preset(args.codec))
        tick(f"{lm.name}, {len(wins)} windows")
        rows.append(bench.measure({}, "none"))
        tick("no sharing")
        maps, search = calibrated_maps(
            lm.model,
            lm.tokenizer,
            fingerprint,
            cos_threshold=args.cos_threshold,
            candidates=candidates,
            budget_s=300 if args.quick else 1200,
        )
        tick(
            f"calibration: {search['shared']} shares accepted in {search['candidates_evaluated']} candidates"
        )
        for n in COUNTS:
            if n <= len(maps):
                rows.append(bench.measure(maps[n - 1], "calibrated"))
            tick(f"calibrated, {n} shared")
            rows.append(bench.measure(random_owners(len(lm.model.model.layers), n, args.seed), "random"))
            tick(f"random, {n} shared")
        if plan is not None:
            rows.append(bench.measure(plan.owners, "plan"))
            tick("the plan")
    result: dict[str, Any] = {
        "command": ("gearkv bench sharing " + " ".join(argv)).strip(),
        "model": lm.name,
        "codec": args.codec,
        "windows": len(wins),
        "prefix_tokens": prefix,
        "continuation_tokens": cont,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "calibration": search,
        "plan": plan.to_json() if plan is not None else None,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the machine slows the timings
        "rows": [asdict(r) for r in rows],
        # counts the calibration did not reach (its cosine check refused more shares within its caps)
        "calibrated_missing": [n for n in COUNTS if n > len(maps)],
    }
    _print(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _print(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"KVSharer on {result['model']}: {result['windows']} windows, "
        f"{result['prefix_tokens']}+{result['continuation_tokens']} tokens, {result['codec']} on top"
    )
    for col in (
        "selection",
        "shared",
        "B/token",
        f"+{result['codec']}",
        "ppl ratio",
        "top-1",
        "prefill",
        "decode",
    ):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        table.add_row(
            r["selection"],
            str(r["shared_layers"]),
            f"{r['bytes_per_token']:.0f}",
            f"{r['bytes_per_token_gear']:.0f}",
            f"{r['ppl_ratio']:.3f} ± {r['ppl_ratio_se']:.3f}",
            f"{r['top1_agreement']:.3f}",
            f"{r['prefill_s']:.2f}s",
            f"{r['decode_ms_per_token']:.1f}ms",
        )
    import sys

    Console(width=None if sys.stdout.isatty() else 110).print(table)
    c = result["calibration"]
    print(
        f"calibration (cosine >= {c['cos_threshold']}, no perplexity guard): {c['shared']} shares accepted, "
        f"{c['candidates_evaluated']} candidates, {c['stopped']}, {c['elapsed_s']} s; whole run "
        f"{result['elapsed_s']} s (load average {result['load_avg_1m']})"
    )
    if result["calibrated_missing"]:
        print(f"the calibration reached no map with {result['calibrated_missing']} shared layers")
