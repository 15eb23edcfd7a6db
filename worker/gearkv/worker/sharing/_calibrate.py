"""KVSharer calibration: choose which layers may reuse another layer's KV, guarded on held-out text.

The method (Yang et al., arXiv 2410.18517; ../shared/docs/kvsharer.md):

1. Run the model on calibration passages; each layer's representation is its KV (keys after RoPE,
   and values), aligned by position and averaged over the passages.
2. Rank every pair of layers by the Euclidean distance between their representations, most
   dissimilar first.
3. Walk the pairs greedily: for (i, j) with i later than j, tentatively let layer i use layer j's KV
   (chains resolved to the final owner), and accept when the final hidden states on the calibration
   passages keep a cosine similarity of at least ``cos_threshold`` with the unshared model's.

On a small model that cosine is a weak guard (SmolLM2-135M: 25% of layers shared multiplies the
perplexity by 5-7), so a share is accepted only if it also keeps what users feel on held-out text:
the perplexity ratio against no sharing within ``max_ppl_ratio`` and, optionally, the share of
positions whose most likely next token is unchanged at or above ``min_top1_agreement``. The search
evaluates at most ``max_candidates`` maps within ``time_budget_s`` and may accept nothing: an empty
plan says that nothing is safe to share.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from gearkv.worker import hf_cache
from gearkv.worker.sharing._plan import (
    SharingPlan,
    SharingPlanError,
    SharingQuality,
    SharingThresholds,
    resolve_owner,
)

__all__ = [
    "CalibrationEvent",
    "SharingEvaluator",
    "calibrate_sharing",
    "layer_distances",
    "random_owners",
    "ranked_pairs",
    "tentative",
    "with_share",
]

DEFAULT_PASSAGES = 20
DEFAULT_PASSAGE_TOKENS = 64
DEFAULT_HELD_OUT_TOKENS = 1024
HELD_OUT_WINDOW = 256


@dataclass(frozen=True)
class CalibrationEvent:
    """One step of the calibration, for a progress display.

    ``stage`` is ``"baseline"`` (representations and the unshared scores measured), ``"candidate"``
    (a map evaluated: ``layer`` would share ``owner``; ``accepted`` and the scores say how it went;
    ``ppl_ratio`` is None when the cosine check already rejected it) or ``"done"``.
    """

    stage: str
    evaluated: int
    shared: int
    elapsed_s: float
    layer: int = -1
    owner: int = -1
    accepted: bool = False
    cosine: float = 1.0
    ppl_ratio: float | None = None
    top1_agreement: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class _Scores:
    nll: float  # mean next-token negative log-likelihood on the held-out text
    top1: torch.Tensor  # [positions] most likely next token at each held-out position

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)


class SharingEvaluator:
    """Runs one model on fixed calibration passages and held-out windows, under any sharing map.

    Args:
        model: a transformers causal LM with the standard attention layout (no sharing applied).
        passages: ``[passages, tokens]`` token ids (equal-length calibration passages).
        held_out: ``[windows, tokens]`` token ids of held-out text (perplexity, top-1 agreement).
    """

    def __init__(self, model: Any, passages: torch.Tensor, held_out: torch.Tensor) -> None:
        if hf_cache.kv_sharing(model) is not None:
            raise SharingPlanError("calibrate a model without KV sharing applied")
        self.model = model
        self.device = next(model.parameters()).device
        self.passages = passages.to(self.device)
        self.held_out = held_out.to(self.device)
        self.num_layers = len(hf_cache.decoder_layers(model))
        self._decoder = model.get_decoder()
        self._base_hidden: torch.Tensor | None = None
        self._base_scores: _Scores | None = None

    @torch.inference_mode()
    def representations(self) -> torch.Tensor:
        """``[layers, features]``: each layer's K and V on the passages, averaged over passages."""
        cache = hf_cache.new_cache()
        self._decoder(input_ids=self.passages, **hf_cache.forward_kwargs(self._decoder, cache))
        reps = []
        for keys, values in hf_cache.export_kv(cache):  # each [passages, kv_heads, tokens, head_dim]
            reps.append(torch.cat([keys.float().mean(0).reshape(-1), values.float().mean(0).reshape(-1)]))
        return torch.stack(reps)

    @torch.inference_mode()
    def hidden(self, owners: Mapping[int, int]) -> torch.Tensor:
        """``[passages, tokens, hidden]`` final hidden states (after the final norm) under ``owners``."""
        with with_share(self.model, owners):
            cache = hf_cache.new_cache()
            out = self._decoder(input_ids=self.passages, **hf_cache.forward_kwargs(self._decoder, cache))
        hidden: torch.Tensor = out.last_hidden_state
        return hidden.float()

    @torch.inference_mode()
    def _scores(self, owners: Mapping[int, int]) -> _Scores:
        total, count, tops = 0.0, 0, []
        with with_share(self.model, owners):
            for window in self.held_out:
                ids = window.unsqueeze(0)
                cache = hf_cache.new_cache()
                logits = self.model(input_ids=ids, **hf_cache.forward_kwargs(self.model, cache)).logits
                logits = logits[0, :-1].float()  # [tokens - 1, vocab]: position t predicts t + 1
                target = window[1:]
                total += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
                count += int(target.numel())
                tops.append(logits.argmax(-1))
        return _Scores(total / max(count, 1), torch.cat(tops))

    @property
    def held_out_tokens(self) -> int:
        return int(self.held_out.shape[0] * max(self.held_out.shape[1] - 1, 0))

    def baseline(self) -> _Scores:
        """The unshared model's held-out scores (measured once)."""
        if self._base_scores is None:
            self._base_scores = self._scores({})
        return self._base_scores

    def cosine(self, owners: Mapping[int, int]) -> float:
        """Mean cosine similarity of the final hidden states under ``owners`` vs without sharing."""
        if self._base_hidden is None:
            self._base_hidden = self.hidden({})
        if not owners:
            return 1.0
        cos = torch.nn.functional.cosine_similarity(self.hidden(owners), self._base_hidden, dim=-1)
        return float(cos.mean())

    def quality(self, owners: Mapping[int, int]) -> tuple[float, float, float]:
        """``(perplexity, perplexity ratio vs no sharing, top-1 agreement)`` on the held-out text."""
        base = self.baseline()
        scores = base if not owners else self._scores(owners)
        agree = float((scores.top1 == base.top1).float().mean()) if scores.top1.numel() else 1.0
        return scores.ppl, math.exp(scores.nll - base.nll), agree


class with_share:
    """Context manager: ``model`` runs with ``owners`` applied (nothing for an empty map)."""

    def __init__(self, model: Any, owners: Mapping[int, int]) -> None:
        self.model, self.owners = model, dict(owners)

    def __enter__(self) -> None:
        if self.owners:
            hf_cache.share_kv(self.model, self.owners)

    def __exit__(self, *exc: object) -> None:
        if self.owners:
            hf_cache.unshare_kv(self.model)


def layer_distances(reps: torch.Tensor) -> torch.Tensor:
    """``[layers, layers]`` Euclidean distances between layer representations ``[layers, features]``."""
    return torch.cdist(reps.double().unsqueeze(0), reps.double().unsqueeze(0))[0]


def ranked_pairs(distances: torch.Tensor) -> list[tuple[int, int, float]]:
    """Every ``(later, earlier, distance)`` layer pair, most dissimilar first (ties: earlier layers first)."""
    n = distances.shape[0]
    pairs = [(i, j, float(distances[i, j])) for i in range(n) for j in range(i)]
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))


def tentative(owners: Mapping[int, int], layer: int, owner: int) -> dict[int, int] | None:
    """``owners`` plus ``layer`` sharing ``owner``'s KV, chains resolved; None if ``layer`` is shared."""
    if layer in owners:
        return None
    final = resolve_owner(owners, owner)
    new = {k: (final if v == layer else v) for k, v in owners.items()}
    new[layer] = final
    return new


def random_owners(num_layers: int, count: int, seed: int = 0) -> dict[int, int]:
    """``count`` random shares (random pairs, chains resolved), for comparison with the calibration."""
    rng = random.Random(seed)
    pairs = [(i, j) for i in range(1, num_layers) for j in range(i)]
    rng.shuffle(pairs)
    owners: dict[int, int] = {}
    for i, j in pairs:
        if len(owners) >= count:
            break
        new = tentative(owners, i, j)
        if new is not None:
            owners = new
    return owners


def calibrate_sharing(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    fingerprint: str,
    max_shared: int = 4,
    cos_threshold: float = 0.95,
    max_ppl_ratio: float | None = 1.1,
    min_top1_agreement: float | None = None,
    held_out_texts: Sequence[str] | None = None,
    max_candidates: int = 40,
    time_budget_s: float = 600.0,
    passages: int = DEFAULT_PASSAGES,
    passage_tokens: int = DEFAULT_PASSAGE_TOKENS,
    held_out_tokens: int = DEFAULT_HELD_OUT_TOKENS,
    model_name: str = "",
    progress: Callable[[CalibrationEvent], None] | None = None,
) -> SharingPlan:
    """Choose shared layers for ``model`` with the KVSharer search and a guard on held-out text.

    Args:
        texts: calibration texts: each is cut into consecutive passages of ``passage_tokens`` tokens,
            ``passages`` in all (pass excerpts to spread them over a long text).
        fingerprint: the model's fingerprint (:func:`gearkv.worker.fingerprint.model_fingerprint`),
            recorded in the plan: a worker only runs the plan on that model.
        max_shared: the most layers to share (the search stops there).
        cos_threshold: the least mean cosine similarity of final hidden states vs no sharing.
        max_ppl_ratio: the most held-out perplexity may grow (1.1 = 10%); None: no perplexity guard.
        min_top1_agreement: the least share of held-out positions whose top next token is unchanged.
        held_out_texts: guard text (its first ``held_out_tokens`` tokens); default: the calibration
            text after the passages, which must then be long enough.
        max_candidates: the most maps evaluated (each is a forward over passages and held-out text).
        time_budget_s: no candidate starts once the last one would end past this.
        progress: called after the baseline and after each candidate.

    Returns:
        The plan (possibly with no shared layer), its thresholds and the quality measured for it.

    Raises:
        SharingPlanError: too little text, or the model already shares KV.
        UnsupportedSharingError: the model lacks the standard attention layout.
    """
    thresholds = SharingThresholds(
        max_shared=max_shared,
        cos_threshold=cos_threshold,
        max_ppl_ratio=max_ppl_ratio,
        min_top1_agreement=min_top1_agreement,
        max_candidates=max_candidates,
        time_budget_s=time_budget_s,
    )
    if passages < 1 or passage_tokens < 2 or held_out_tokens < 2:
        raise ValueError("passages >= 1, passage_tokens >= 2 and held_out_tokens >= 2 are required")
    t0 = time.perf_counter()
    windows, leftover = _passages(tokenizer, texts, passages, passage_tokens)
    n_pass = len(windows)
    if n_pass < 1:
        raise SharingPlanError(f"calibration text is shorter than one passage of {passage_tokens} tokens")
    calib = torch.tensor(windows)
    rest = (
        [t for text in held_out_texts for t in _encode(tokenizer, text)]
        if held_out_texts is not None
        else leftover
    )[:held_out_tokens]
    if len(rest) < 2:
        raise SharingPlanError(
            "no held-out text: pass held_out_texts, or calibration text longer than the passages"
        )
    window = min(HELD_OUT_WINDOW, len(rest))
    rest = rest[: len(rest) // window * window]
    held = torch.tensor(rest).view(-1, window)
    ev = SharingEvaluator(model, calib, held)
    hf_cache.share_kv(model, {})  # checks the attention layout before any work

    def emit(event: CalibrationEvent) -> None:
        if progress is not None:
            progress(event)

    distances = layer_distances(ev.representations())
    base = ev.baseline()
    ev.cosine({})
    emit(CalibrationEvent("baseline", 0, 0, time.perf_counter() - t0))

    owners: dict[int, int] = {}
    best = (base.ppl, 1.0, 1.0, 1.0)  # ppl, ratio, top1, cosine of the accepted map
    evaluated, stopped, last_s = 0, "pairs_exhausted", 0.0
    tried: set[frozenset[tuple[int, int]]] = set()
    for layer, owner, _dist in ranked_pairs(distances):
        if len(owners) >= max_shared:
            stopped = "target"
            break
        if evaluated >= max_candidates:
            stopped = "max_candidates"
            break
        if time.perf_counter() - t0 + last_s > time_budget_s:
            stopped = "time_budget"
            break
        new = tentative(owners, layer, owner)
        if new is None:
            continue
        key = frozenset(new.items())
        if key in tried:  # another pair that resolves to a map already evaluated
            continue
        tried.add(key)
        tc = time.perf_counter()
        evaluated += 1
        cos = ev.cosine(new)
        ratio: float | None = None
        agree: float | None = None
        accepted, reason = False, "cosine"
        if cos >= cos_threshold:
            ppl, ratio, agree = ev.quality(new)
            if max_ppl_ratio is not None and ratio > max_ppl_ratio:
                reason = "ppl_ratio"
            elif min_top1_agreement is not None and agree < min_top1_agreement:
                reason = "top1_agreement"
            else:
                accepted, reason = True, ""
                owners, best = new, (ppl, ratio, agree, cos)
        last_s = time.perf_counter() - tc
        emit(
            CalibrationEvent(
                "candidate",
                evaluated,
                len(owners),
                time.perf_counter() - t0,
                layer=layer,
                owner=resolve_owner(owners, owner) if not accepted else new[layer],
                accepted=accepted,
                cosine=cos,
                ppl_ratio=ratio,
                top1_agreement=agree,
                reason=reason,
            )
        )
    else:
        stopped = "target" if len(owners) >= max_shared else "pairs_exhausted"
    elapsed = time.perf_counter() - t0
    emit(CalibrationEvent("done", evaluated, len(owners), elapsed, reason=stopped))
    quality = SharingQuality(
        ppl_base=base.ppl,
        ppl=best[0],
        ppl_ratio=best[1],
        top1_agreement=best[2],
        cosine=best[3],
        held_out_tokens=ev.held_out_tokens,
        calibration_passages=n_pass,
        passage_tokens=passage_tokens,
        candidates_evaluated=evaluated,
        elapsed_s=elapsed,
        stopped=stopped,
    )
    return SharingPlan(
        fingerprint=fingerprint,
        num_layers=ev.num_layers,
        shared=tuple(owners.items()),
        model=model_name,
        thresholds=thresholds,
        quality=quality,
    )


def _passages(
    tokenizer: Any, texts: Sequence[str], count: int, tokens: int
) -> tuple[list[list[int]], list[int]]:
    """Up to ``count`` passages of ``tokens`` tokens (consecutive windows of each text in turn), and
    the tokens no passage took (in order), which serve as held-out text when none is given."""
    windows: list[list[int]] = []
    leftover: list[int] = []
    for text in texts:
        ids = _encode(tokenizer, text)
        take = min(count - len(windows), len(ids) // tokens)
        windows += [ids[i * tokens : (i + 1) * tokens] for i in range(take)]
        leftover += ids[take * tokens :]
    return windows, leftover


def _encode(tokenizer: Any, text: str) -> list[int]:
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:  # a minimal tokenizer: encode(text) only
        ids = tokenizer.encode(text)
    return [int(i) for i in ids]
