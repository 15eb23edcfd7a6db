"""`gearkv calibrate-codec`: calibrate the gtc codecs for a model and write the calibration file.

Loads the model like ``gearkv worker`` (the file is bound to the model's fingerprint, dtype included),
measures the next-token KL each layer's quantized keys and values cost on the calibration text
(:func:`gearkv.worker.codec_calibration.calibrate_codec`, progress on stderr, time capped), prints the
per-layer step scales and writes the file for ``gearkv worker --codec gtc2 --codec-calibration FILE``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gearkv.cli import HelpFormatter
from gearkv.worker.calibrate import add_model_options

__all__ = ["main"]


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Calibrate the gtc codecs (gtc2, gtc3) for a model: per layer, how much finer or coarser its\n"
            "keys and values are quantized, chosen from the next-token KL their error costs on calibration\n"
            "text. Writes a small checksummed file for `gearkv worker --codec gtc2 --codec-calibration FILE`."
        ),
        formatter_class=HelpFormatter,
    )
    add_model_options(p)
    p.add_argument(
        "--text",
        type=Path,
        default=None,
        help="calibration text file (default: Python standard-library sources that no benchmark evaluates)",
    )
    p.add_argument("--windows", type=int, default=4, help="calibration windows")
    p.add_argument(
        "--prefix-tokens", type=int, default=512, help="tokens of each window whose KV is quantized"
    )
    p.add_argument("--continuation-tokens", type=int, default=64, help="tokens scored after each prefix")
    p.add_argument(
        "--max-seconds", type=float, default=600.0, help="time cap; unmeasured layers keep scale 1"
    )
    p.add_argument("--out", type=Path, required=True, help="write the calibration (JSON) here")
    return p


def main(argv: Sequence[str], prog: str = "gearkv calibrate-codec") -> int:
    parser = _parser(prog)
    args = parser.parse_args(list(argv))
    if args.windows < 1 or args.prefix_tokens < 2 or args.continuation_tokens < 1 or args.max_seconds <= 0:
        parser.error(
            "--windows and --continuation-tokens must be >= 1, --prefix-tokens >= 2, --max-seconds > 0"
        )
    text = name = None
    if args.text is not None:
        try:
            text = args.text.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            parser.error(f"cannot read --text {str(args.text)!r}: {exc}")
        name = args.text.name

    import torch
    from gearkv.worker.codec_calibration import calibrate_codec
    from gearkv.worker.fingerprint import model_fingerprint
    from gearkv.worker.model import load_model
    from rich.console import Console
    from rich.table import Table

    if args.threads:
        torch.set_num_threads(args.threads)
    err = Console(stderr=True)
    err.print(f"loading {args.model or 'the default model'} ...")
    loaded = load_model(args.model, args.gguf_file, args.device, args.dtype)
    fingerprint = model_fingerprint(loaded)

    def progress(done: int, total: int, what: str) -> None:
        print(f"[{done}/{total}] {what}", file=sys.stderr, flush=True)

    try:
        cal = calibrate_codec(
            loaded,
            fingerprint=fingerprint,
            text=text,
            text_name=name or "",
            windows=args.windows,
            prefix=args.prefix_tokens,
            cont=args.continuation_tokens,
            max_seconds=args.max_seconds,
            progress=progress,
        )
    except ValueError as exc:
        err.print(f"[red]{prog}: {exc}[/red]")
        return 1
    cal.save(args.out)
    table = Table(title=f"codec calibration {cal.digest} for {cal.model or cal.fingerprint}")
    for column in ("layer", "keys: KL", "keys: step x", "values: KL", "values: step x"):
        table.add_column(column, justify="right")
    k_kl, v_kl = cal.stats["k_kl"], cal.stats["v_kl"]
    for i in range(cal.layers):
        table.add_row(
            str(i),
            "-" if k_kl[i] is None else f"{k_kl[i]:.2e}",
            f"{cal.k_scale[i]:.2f}",
            "-" if v_kl[i] is None else f"{v_kl[i]:.2e}",
            f"{cal.v_scale[i]:.2f}",
        )
    console = Console()
    console.print(table)
    stats = cal.stats
    console.print(
        f"measured {stats['measured']} of {stats['of']} layer parts on {stats['windows']} windows of "
        f"{cal.text or 'the default text'} in {stats['seconds']} s; wrote {args.out}"
    )
    return 0
