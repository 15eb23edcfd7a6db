"""`gearkv calibrate-sharing`: choose a KVSharer sharing plan for a model and write it to a file.

Loads the model like ``gearkv worker`` (``--model``/``--gguf-file``/``--dtype``: calibrate with the
settings the worker will use, the plan is tied to the model's fingerprint, dtype included), runs
:func:`gearkv.worker.sharing.calibrate_sharing` with a progress bar on stderr, prints what it measured
and writes the plan (``--out``). A plan with no shared layer is a valid answer: nothing was safe to
share under the limits given.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gearkv.cli import HelpFormatter

__all__ = ["add_model_options", "default_text_path", "main", "select_texts"]

CHARS_PER_TOKEN = 12  # generous: English text is ~4 characters per token, excerpts are cut from chars


def default_text_path() -> Path | None:
    """tinyshakespeare from ../shared/data (``GEARKV_DEMO_TEXT`` overrides), as the demo finds it."""
    from gearkv.worker.demo import default_text_path as demo_text

    return demo_text()


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The model flags of the calibration commands, as ``gearkv worker`` names them: calibrate with
    the settings the worker will use (the result is bound to the model's fingerprint, dtype included)."""
    p.add_argument("--model", default=None, help="model folder or hub name (unset: bundled SmolLM2)")
    p.add_argument("--gguf-file", default=None, help="GGUF file inside --model")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (unset: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32, float16, bfloat16 (use the worker's)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Calibrate KVSharer layer-wise KV sharing for a model and write a sharing plan for\n"
            "`gearkv worker --sharing-plan FILE`. Layer pairs are ranked by how dissimilar their KV is\n"
            "and tried greedily; a share is kept only if the final hidden states keep their cosine\n"
            "similarity (--cos-threshold) and held-out perplexity stays within --max-ppl-ratio."
        ),
        formatter_class=HelpFormatter,
    )
    add_model_options(p)
    p.add_argument(
        "--calibration-file",
        type=Path,
        default=None,
        help="calibration text (default: tinyshakespeare from ../shared/data)",
    )
    p.add_argument(
        "--held-out-file",
        type=Path,
        default=None,
        help="held-out text for the perplexity guard (default: the last fifth of the calibration text)",
    )
    p.add_argument("--max-shared", type=int, default=4, help="the most layers to share")
    p.add_argument(
        "--cos-threshold", type=float, default=0.95, help="least cosine similarity of final hidden states"
    )
    p.add_argument(
        "--max-ppl-ratio",
        type=float,
        default=1.1,
        help="most held-out perplexity may grow vs no sharing (1.1 = 10%%; 0 disables the guard)",
    )
    p.add_argument(
        "--min-top1-agreement",
        type=float,
        default=None,
        help="least share of held-out positions whose top next token is unchanged (unset: no check)",
    )
    p.add_argument("--max-candidates", type=int, default=40, help="the most sharing maps evaluated")
    p.add_argument("--time-budget", type=float, default=600.0, help="seconds the search may run")
    p.add_argument("--passages", type=int, default=20, help="calibration passages")
    p.add_argument("--passage-tokens", type=int, default=64, help="tokens per calibration passage")
    p.add_argument("--held-out-tokens", type=int, default=1024, help="held-out tokens scored")
    p.add_argument("--out", type=Path, required=True, help="write the plan (JSON) here")
    return p


def select_texts(
    calibration: str, held_out: str | None, passages: int, passage_tokens: int, held_out_tokens: int
) -> tuple[list[str], list[str]]:
    """Calibration excerpts spread over the text, and the held-out text.

    Without a held-out text, the calibration text's last fifth is held out and the excerpts come from
    the rest, so the guard never scores text the search calibrated on.
    """
    if held_out is None:
        cut = len(calibration) * 4 // 5
        calibration, held_out = calibration[:cut], calibration[cut:]
    held = held_out[: held_out_tokens * CHARS_PER_TOKEN]
    size = passage_tokens * CHARS_PER_TOKEN
    if len(calibration) <= size * passages:
        return [calibration], [held]
    step = (len(calibration) - size) // max(passages - 1, 1)
    return [calibration[i * step : i * step + size] for i in range(passages)], [held]


def _read(path: Path, parser: argparse.ArgumentParser, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        parser.error(f"cannot read {what} {str(path)!r}: {exc}")
    raise AssertionError("unreachable")


def main(argv: Sequence[str], prog: str = "gearkv calibrate-sharing") -> int:
    parser = _parser(prog)
    args = parser.parse_args(list(argv))
    if args.max_shared < 0 or args.max_candidates < 0 or args.time_budget <= 0:
        parser.error("--max-shared and --max-candidates must be >= 0, --time-budget > 0")
    path = args.calibration_file or default_text_path()
    if path is None:
        parser.error("no calibration text: pass --calibration-file (tinyshakespeare was not found)")
    calibration = _read(path, parser, "--calibration-file")
    held_out = _read(args.held_out_file, parser, "--held-out-file") if args.held_out_file else None
    texts, held = select_texts(
        calibration, held_out, args.passages, args.passage_tokens, args.held_out_tokens
    )

    import torch
    from gearkv.worker.fingerprint import model_fingerprint
    from gearkv.worker.hf_cache import UnsupportedSharingError
    from gearkv.worker.model import load_model
    from gearkv.worker.sharing import SharingPlanError, calibrate_sharing, save_plan
    from rich.console import Console

    if args.threads:
        torch.set_num_threads(args.threads)
    err = Console(stderr=True)
    err.print(f"loading {args.model or 'the default model'} ...")
    loaded = load_model(args.model, args.gguf_file, args.device, args.dtype)
    fingerprint = model_fingerprint(loaded)
    try:
        with _progress(args.max_candidates + 1) as tick:
            plan = calibrate_sharing(
                loaded.model,
                loaded.tokenizer,
                texts,
                held_out_texts=held,
                fingerprint=fingerprint,
                model_name=loaded.name,
                max_shared=args.max_shared,
                cos_threshold=args.cos_threshold,
                max_ppl_ratio=args.max_ppl_ratio or None,
                min_top1_agreement=args.min_top1_agreement,
                max_candidates=args.max_candidates,
                time_budget_s=args.time_budget,
                passages=args.passages,
                passage_tokens=args.passage_tokens,
                held_out_tokens=args.held_out_tokens,
                progress=tick,
            )
    except (SharingPlanError, UnsupportedSharingError, ValueError) as exc:
        err.print(f"[red]{prog}: {exc}[/red]")
        return 1
    save_plan(plan, args.out)
    _report(plan, args.out)
    return 0


def _describe(event: Any) -> str:
    if event.stage == "baseline":
        return "baseline measured"
    if event.stage == "done":
        return f"done: {event.reason}"
    verdict = "kept" if event.accepted else f"rejected ({event.reason})"
    ratio = f", ppl x{event.ppl_ratio:.3f}" if event.ppl_ratio is not None else ""
    return (
        f"layer {event.layer} -> {event.owner}: cos {event.cosine:.4f}{ratio} {verdict}; "
        f"{event.shared} shared"
    )


class _progress:
    """A rich progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._bar: Any = None

    def __enter__(self) -> Callable[[Any], None]:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        if not console.is_terminal or console.is_dumb_terminal:
            return lambda event: print(
                f"[{event.evaluated}/{self.total - 1}] {_describe(event)} ({event.elapsed_s:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        self._bar = Progress(*columns, console=console, transient=True)
        self._bar.__enter__()
        task = self._bar.add_task("measuring the baseline", total=self.total)

        def tick(event: Any) -> None:
            if event.stage == "candidate":
                style = "green" if event.accepted else None
                console.print(f"  {_describe(event)}", style=style, highlight=False, markup=False)
            completed = self.total if event.stage == "done" else event.evaluated + 1
            self._bar.update(task, completed=completed, description=_describe(event))

        return tick

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _report(plan: Any, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    q = plan.quality
    console = Console()
    table = Table(title=f"KVSharer plan for {plan.model or plan.fingerprint}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    shared = ", ".join(f"{a}->{b}" for a, b in plan.shared) or "none"
    table.add_row("layers shared", f"{plan.shared_layers} of {plan.num_layers} ({shared})")
    table.add_row("KV computed and stored", f"{plan.kv_layers / plan.num_layers:.1%} of the layers")
    table.add_row("held-out perplexity", f"{q.ppl_base:.2f} -> {q.ppl:.2f} (x{q.ppl_ratio:.3f})")
    table.add_row("top-1 next-token agreement", f"{q.top1_agreement:.1%}")
    table.add_row("final hidden-state cosine", f"{q.cosine:.4f}")
    table.add_row(
        "held-out tokens / passages", f"{q.held_out_tokens} / {q.calibration_passages}x{q.passage_tokens}"
    )
    table.add_row("candidates evaluated", f"{q.candidates_evaluated} ({q.stopped}, {q.elapsed_s:.0f} s)")
    console.print(table)
    if not plan.shared:
        console.print("Nothing is safe to share under these limits: the plan shares no layer.")
    console.print(f"wrote {out}")
