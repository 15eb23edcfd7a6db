"""Real KV for codec benchmarks: text windows, the model's prefix KV, and continuation quality scores.

A window is ``prefix + cont + 1`` tokens. The prefix's KV (the model's own cache) is compressed, and the
continuation is teacher-forced on top of the decoded cache; its next-token distributions are compared with
the same continuation run on the prefix KV rounded to fp16 (the lossless baseline).
"""

from __future__ import annotations

import math
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from gearkv.worker import hf_cache
from gearkv.worker.codec_calibration import continuation_logprobs, next_token_kl

SHAKESPEARE = Path("/work/shared/data/tinyshakespeare.txt")
# Python's own source: documented code and prose, a second domain found on every machine with Python.
STDLIB_MODULES = ("argparse.py", "dataclasses.py", "functools.py", "inspect.py", "pathlib.py",
                  "subprocess.py", "textwrap.py", "typing.py")  # fmt: skip

KV = list[tuple[torch.Tensor, torch.Tensor]]


def shakespeare_path() -> Path:
    """The tinyshakespeare text: /work/shared/data, or data/ at the repository root."""
    for candidate in (SHAKESPEARE, Path(__file__).resolve().parents[3] / "data" / SHAKESPEARE.name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{SHAKESPEARE.name} not found in {SHAKESPEARE.parent} or data/")


def domain_texts() -> dict[str, str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = "\n\n".join((stdlib / m).read_text(encoding="utf-8") for m in STDLIB_MODULES)
    return {"shakespeare": shakespeare_path().read_text(encoding="utf-8"), "python-stdlib": code}


@dataclass(frozen=True)
class Window:
    domain: str
    ids: torch.Tensor  # [prefix + cont + 1] int64


def load_windows(tokenizer: Any, per_domain: int, prefix: int, cont: int) -> list[Window]:
    """``per_domain`` windows from each domain, evenly spaced through its second half (late text)."""
    need = prefix + cont + 1
    out: list[Window] = []
    for domain, text in domain_texts().items():
        ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
        lo = len(ids) // 2
        span = len(ids) - need - lo
        if span < 0:
            raise ValueError(f"{domain} text has only {len(ids)} tokens, fewer than a window needs")
        for i in range(per_domain):
            start = lo + (span * i) // max(per_domain - 1, 1)
            out.append(Window(domain, ids[start : start + need]))
    return out


@dataclass(frozen=True)
class Quality:
    """Continuation quality against the fp16-KV run; each mean over windows with its standard error."""

    kl: float
    kl_se: float
    top1: float
    top1_se: float
    ppl_ratio: float
    ppl_se: float


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


class KVEvaluator:
    """Holds the model, the windows' prefix KV (fp16) and the baseline continuation distributions."""

    def __init__(self, model: Any, windows: Sequence[Window], prefix: int, batch: int = 4) -> None:
        self.model = model
        self.prefix = prefix
        self.batches: list[tuple[torch.Tensor, KV, torch.Tensor, torch.Tensor]] = []
        for i in range(0, len(windows), batch):
            ids = torch.stack([w.ids for w in windows[i : i + batch]])
            cache = hf_cache.new_cache(model.config)
            with torch.inference_mode():
                model(input_ids=ids[:, :prefix], **hf_cache.forward_kwargs(model, cache))
            kv16 = [(k.to(torch.float16), v.to(torch.float16)) for k, v in hf_cache.export_kv(cache)]
            logp = self._continue(ids, kv16)
            nll = -logp.gather(-1, ids[:, prefix + 1 :, None]).squeeze(-1)
            self.batches.append((ids, kv16, logp, nll))

    @property
    def kv(self) -> list[KV]:
        """The fp16 prefix KV of each batch of windows, as the codec sees it."""
        return [b[1] for b in self.batches]

    def _continue(self, ids: torch.Tensor, layers: KV) -> torch.Tensor:
        return continuation_logprobs(self.model, ids, self.prefix, layers)

    def quality(self, roundtrip: Callable[[KV], KV]) -> Quality:
        """Score ``roundtrip`` (encode + decode of one batch's KV) on every window."""
        kls: list[float] = []
        top1s: list[float] = []
        log_ratios: list[float] = []
        for ids, kv16, base_logp, base_nll in self.batches:
            logp = self._continue(ids, roundtrip(kv16))
            kl = next_token_kl(base_logp, logp).mean(-1)
            top1 = (base_logp.argmax(-1) == logp.argmax(-1)).float().mean(-1)
            nll = -logp.gather(-1, ids[:, self.prefix + 1 :, None]).squeeze(-1)
            kls += kl.tolist()
            top1s += top1.tolist()
            log_ratios += (nll.mean(-1) - base_nll.mean(-1)).tolist()
        kl_m, kl_se = _mean_se(kls)
        t_m, t_se = _mean_se(top1s)
        lr_m, lr_se = _mean_se(log_ratios)
        ratio = math.exp(lr_m)
        return Quality(kl_m, kl_se, t_m, t_se, ratio, ratio * lr_se)


def relative_errors(original: KV, decoded: KV) -> tuple[float, float]:
    """Relative Frobenius error of keys and values, each the mean over layers."""
    ke = [
        float((d.float() - o.float()).norm() / o.float().norm())
        for (o, _), (d, _) in zip(original, decoded, strict=True)
    ]
    ve = [
        float((d.float() - o.float()).norm() / o.float().norm())
        for (_, o), (_, d) in zip(original, decoded, strict=True)
    ]
    return sum(ke) / len(ke), sum(ve) / len(ve)
