"""Token generation on a (possibly resumed) KV cache.

The engine is handed a cache that already holds the KV of the first ``reused`` prompt tokens; it
prefills only the rest, then decodes one token at a time (greedy, temperature, top-p, seeded),
stopping on EOS, a stop string or the token budget. :class:`Generation` is an iterator of text deltas
so the caller can stream them as they are produced; its attributes hold the outcome once exhausted.

The prefill runs in slices of ``prefill_block`` tokens. A caller's ``cancel`` event is checked
before each slice, before each decoder layer of a slice and before each decode step, so a cancelled
turn stops within one layer's share of a slice (:class:`~gearkv.worker.errors.TurnCancelled`): on 2
CPU cores a 1,024-token slice late in an 8k context takes ~7 s, one of its 30 layers ~0.25 s.
Smaller slices would bound the wait as well but make a long prefill slower (8k tokens: 36 s in
1,024-token slices, 39 s in 512, 45 s in 256, 84 s in 64; see docs/worker.md).

Only the token ids whose KV the cache holds matter for reuse: after a turn that is the prompt plus
every generated token but the last (the last one was sampled, never fed back).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import random
import re
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from gearkv.worker import hf_cache
from gearkv.worker.errors import TurnCancelled
from gearkv.worker.model import LoadedModel
from gearkv.worker.sharing import SharingPlan, apply_plan
from gearkv.worker.textstream import IncrementalDetokenizer, StopMatcher

__all__ = [
    "GREEDY_BELOW",
    "MAX_NEW_TOKENS",
    "MAX_STOPS",
    "MAX_STOP_LEN",
    "PREFILL_BLOCK",
    "Delta",
    "Engine",
    "Generation",
    "SamplingParams",
    "sample_next",
    "scaled_probs",
]

MAX_NEW_TOKENS = 4096
MAX_STOPS = 16
MAX_STOP_LEN = 256
DEFAULT_MAX_NEW_TOKENS = 256
# Prefill slice, tokens: the fastest measured for an 8k prompt on 2 CPU cores (smaller ones are slower;
# cancellation does not depend on it, the cancel event is also checked between decoder layers).
PREFILL_BLOCK = 1024
# A positive temperature below this decodes greedily: sampling at it differs from argmax only between
# logits closer than ~1e-4, and scaling by its inverse would overflow float32 for smaller ones.
GREEDY_BELOW = 1e-5

log = logging.getLogger("gearkv.worker")


@dataclass(frozen=True)
class SamplingParams:
    """Generation parameters, validated (``ValueError`` names the field and its limit).

    ``temperature`` 0 is greedy decoding, and so is any temperature below :data:`GREEDY_BELOW`
    (1e-5); up to 10 it scales the logits before nucleus (``top_p``) sampling.
    """

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"params.max_new_tokens must be in 1..{MAX_NEW_TOKENS}")
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 10.0):
            raise ValueError("params.temperature must be 0 (greedy) or in (0, 10]")
        if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise ValueError("params.top_p must be in (0, 1]")
        if len(self.stop) > MAX_STOPS:
            raise ValueError(f"params.stop allows at most {MAX_STOPS} strings")
        if any(not 1 <= len(s) <= MAX_STOP_LEN for s in self.stop):
            raise ValueError(f"params.stop strings must be 1-{MAX_STOP_LEN} chars")
        if not 0 <= self.seed < 2**64:
            raise ValueError("params.seed must be in 0..2^64-1")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick the next token from ``logits`` ``[vocab]``: argmax, or temperature + nucleus sampling."""
    if params.greedy:
        return int(torch.argmax(logits))
    probs = scaled_probs(logits, params.temperature)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        cum = torch.cumsum(sorted_p, dim=-1)
        keep = (cum - sorted_p) < params.top_p  # always keeps the most likely token
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        pick = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return int(order[pick])
    return int(torch.multinomial(probs, 1, generator=generator))


def scaled_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(logits / temperature)`` ``[vocab]`` in float32, finite for any temperature > 0.

    The logits are shifted so that their maximum is 0 before scaling: the scaled values are <= 0, a
    tiny temperature sends the others to -inf (probability 0) instead of inf - inf = NaN.
    """
    x = logits.float()
    return torch.softmax((x - x.max()) / temperature, dim=-1)


@dataclass
class Delta:
    """A piece of the answer: text released since the last delta and the token ids behind it."""

    text: str
    token_ids: list[int]


@dataclass
class Generation:
    """One generation run; iterate for :class:`Delta` s, then read the outcome fields.

    ``first_token_at`` is a ``time.perf_counter()`` timestamp so the caller can measure TTFT from
    whenever its request started (lookup and pull included).
    """

    _steps: Iterator[Delta] = field(repr=False)
    prompt_tokens: int = 0
    reused_tokens: int = 0
    generated: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""
    first_token_at: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    cache: Any = None

    def __iter__(self) -> Iterator[Delta]:
        return self._steps

    def run(self) -> Generation:
        """Drain the stream (for callers that don't stream)."""
        for _ in self._steps:
            pass
        return self


class Engine:
    """Runs a loaded causal LM on caches built by :mod:`gearkv.worker.hf_cache`.

    With a ``sharing`` plan (KVSharer) the model runs with the plan's shared layers attending with
    their owners' KV, from now on (the model is changed in place: engines on one model must agree on
    the plan), and its caches hold only the owner layers (:attr:`kv_layers`). The caller checks that
    the plan belongs to the model (:meth:`SharingPlan.check_model`).

    Raises:
        SharingPlanError: the plan is for another layer count.
        UnsupportedSharingError: the model lacks the standard attention layout, or already runs
            another plan.
    """

    def __init__(
        self, loaded: LoadedModel, prefill_block: int = PREFILL_BLOCK, *, sharing: SharingPlan | None = None
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.sharing = sharing
        config = self.model.config
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        layers = int(text.num_hidden_layers)
        if sharing is not None:
            apply_plan(self.model, sharing)
            layers = sharing.kv_layers
        self.kv_layers = layers
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.prefill_block = prefill_block
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or 1 << 30
        self.vocab_size = int(self.model.config.vocab_size)
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        params = inspect.signature(self.model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in params
        self._warned_template = False
        # The cancel event of the prefill running on each thread (turns share the model), checked
        # before every decoder layer: a slice late in a long context takes seconds on a CPU, one
        # layer of it a thirtieth of that.
        self._running = threading.local()
        for layer in _decoder_layers(self.model):
            layer.register_forward_pre_hook(self._check_cancel)

    @torch.inference_mode()
    def warmup(self) -> None:
        """One tiny prefill + decode step: the first forward pays one-off setup (seconds on CPU)."""
        cache = self.new_cache()
        logits = self.prefill(cache, [0] * 8)
        self._forward(cache, [int(logits.argmax())], keep=1)

    # -- prompts ---------------------------------------------------------------------------------

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` rendered with the model's chat template, ready for the answer.

        Message content is text: ``"<|im_end|>"`` typed in a message becomes the ordinary tokens of
        those characters, never the control token. The template is rendered with a unique placeholder
        in place of each content; special tokens are recognised only in the template's own text, and
        each run of text between two of them (template text and content together) is encoded without
        parsing special tokens. Those are the runs the tokenizer itself splits a whole rendering into,
        so a conversation without control-token text gets the ids it got from encoding the whole
        rendering, and the same conversation always gets the same ids (prefix reuse relies on it).
        """
        tok = self.tokenizer
        messages = [dict(m) for m in messages]
        nonce = secrets.token_hex(8)
        while any(nonce in m.get("content", "") for m in messages):  # pragma: no cover - 2^-64
            nonce = secrets.token_hex(8)
        holders = {f"\x1e{nonce}:{i}\x1e": m.get("content", "") for i, m in enumerate(messages)}
        templated = [m | {"content": h} for m, h in zip(messages, holders, strict=True)]
        rendered = tok.apply_chat_template(templated, add_generation_prompt=True, tokenize=False)
        pieces = re.split(f"({'|'.join(map(re.escape, holders))})", rendered)  # template, holder, ...
        text = "".join(holders.get(p, p) for p in pieces)
        if text != tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False):
            self._warn_template_rewrites_content()
        runs: list[str] = [""]  # text runs, each followed by a special token (the last one: none)
        specials: list[str] = []
        for i, piece in enumerate(pieces):
            if i % 2:  # a message's content
                runs[-1] += holders[piece]
                continue
            for j, part in enumerate(self._special_re.split(piece)):
                if j % 2:
                    specials.append(part)
                    runs.append("")
                else:
                    runs[-1] += part
        encoded = tok(runs, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        special_ids = tok.convert_tokens_to_ids(specials)
        ids: list[int] = []
        for k, run_ids in enumerate(encoded):
            ids.extend(int(i) for i in run_ids)
            if k < len(special_ids):
                ids.append(int(special_ids[k]))
        return ids

    @functools.cached_property
    def _special_re(self) -> re.Pattern[str]:
        """Matches the tokenizer's special tokens, longest first, in a capturing group."""
        added = getattr(self.tokenizer, "added_tokens_decoder", {}) or {}
        names = {str(t.content) for t in added.values() if getattr(t, "special", False)}
        names |= set(getattr(self.tokenizer, "all_special_tokens", ()) or ())
        names.discard("")
        if not names:
            return re.compile("(?!)")
        return re.compile("(" + "|".join(map(re.escape, sorted(names, key=len, reverse=True))) + ")")

    def _warn_template_rewrites_content(self) -> None:
        if not self._warned_template:
            self._warned_template = True
            log.warning(
                "the chat template of %s changes message content (e.g. trims it); messages are "
                "inserted as given, so prompts differ slightly from the template's own rendering",
                self.loaded.name,
            )

    def new_cache(self) -> Any:
        return hf_cache.new_cache(self.model.config)

    # -- forward passes --------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(
        self, cache: Any, token_ids: Sequence[int], cancel: threading.Event | None = None
    ) -> torch.Tensor:
        """Feed ``token_ids`` on top of ``cache`` in slices; returns the last position's logits.

        Raises:
            TurnCancelled: ``cancel`` was set (checked before each slice and each decoder layer); the
                cache is then unusable (its layers may hold different lengths) and must be dropped.
        """
        if not token_ids:
            raise ValueError("prefill needs at least one token")
        logits = None
        self._running.cancel = cancel
        try:
            for start in range(0, len(token_ids), self.prefill_block):
                _check(cancel)
                block = token_ids[start : start + self.prefill_block]
                logits = self._forward(cache, block, keep=1)
        finally:
            self._running.cancel = None
        assert logits is not None
        return logits[-1]

    def _check_cancel(self, _layer: Any, _args: Any) -> None:
        _check(getattr(self._running, "cancel", None))

    @torch.inference_mode()
    def score(self, cache: Any, token_ids: Sequence[int]) -> torch.Tensor:
        """Logits ``[len(token_ids), vocab]`` for each position of ``token_ids`` fed on top of ``cache``."""
        return self._forward(cache, token_ids, keep=0).float()

    def _forward(self, cache: Any, token_ids: Sequence[int], keep: int) -> torch.Tensor:
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.device)
        kwargs = hf_cache.forward_kwargs(self.model, cache)
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = keep
        out = self.model(input_ids=ids, **kwargs)
        logits: torch.Tensor = out.logits[0]
        return logits[-keep:] if keep else logits

    # -- generation ------------------------------------------------------------------------------

    def generate(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        cache: Any = None,
        reused: int = 0,
        cancel: threading.Event | None = None,
    ) -> Generation:
        """Continue ``prompt_ids`` whose first ``reused`` tokens' KV ``cache`` already holds.

        ``cancel`` is checked before each prefill slice, each decoder layer of the prefill and each
        decode step: once it is set, iterating raises :class:`~gearkv.worker.errors.TurnCancelled`
        within one layer of a slice (or one step); the cache is then left half-updated.

        Raises:
            ValueError: empty prompt, ``reused`` not below the prompt length, or a prompt that leaves
                no room in the model's context.
        """
        if not prompt_ids:
            raise ValueError("prompt must have at least one token")
        if cache is None:
            cache, reused = self.new_cache(), 0
        if not 0 <= reused < len(prompt_ids):
            raise ValueError(f"reused tokens {reused} must be below the prompt length {len(prompt_ids)}")
        if hf_cache.cache_length(cache) != reused:
            raise ValueError(f"cache holds {hf_cache.cache_length(cache)} tokens, expected {reused}")
        if len(prompt_ids) >= self.max_context:
            raise ValueError(
                f"prompt of {len(prompt_ids)} tokens exceeds the model's context {self.max_context}"
            )
        gen = Generation(_steps=iter(()), prompt_tokens=len(prompt_ids), reused_tokens=reused, cache=cache)
        gen._steps = self._run(gen, list(prompt_ids), params, cache, reused, cancel)
        return gen

    def _run(
        self,
        gen: Generation,
        prompt: list[int],
        params: SamplingParams,
        cache: Any,
        reused: int,
        cancel: threading.Event | None,
    ) -> Iterator[Delta]:
        generator = torch.Generator().manual_seed(params.seed or random.getrandbits(63))
        detok = IncrementalDetokenizer(self.tokenizer)
        stops = StopMatcher(params.stop)
        budget = min(params.max_new_tokens, self.max_context - len(prompt))
        t0 = time.perf_counter()
        logits = self.prefill(cache, prompt[reused:], cancel)
        gen.prefill_s = time.perf_counter() - t0
        t_decode = time.perf_counter()
        pending_ids: list[int] = []
        while True:
            token = sample_next(logits.float(), params, generator)
            if not gen.generated:
                gen.first_token_at = time.perf_counter()
            gen.generated.append(token)
            pending_ids.append(token)
            if token in self.eos_ids:
                gen.finish_reason = "eos"
                break
            text, stopped = stops.feed(detok.push(token))
            if stopped:
                gen.text += text
                gen.finish_reason = "stop"
                yield Delta(text, pending_ids)
                pending_ids = []
                break
            if text:
                gen.text += text
                yield Delta(text, pending_ids)
                pending_ids = []
            if len(gen.generated) >= budget:
                gen.finish_reason = "length"
                break
            _check(cancel)
            with torch.inference_mode():
                logits = self._forward(cache, [token], keep=1)[-1]
        if gen.finish_reason != "stop":
            tail, stopped = stops.feed(detok.flush())
            tail += stops.flush()
            if stopped:
                gen.finish_reason = "stop"
            if tail or pending_ids:
                gen.text += tail
                yield Delta(tail, pending_ids)
        gen.decode_s = time.perf_counter() - t_decode

    def cached_ids(self, prompt_ids: Sequence[int], gen: Generation) -> list[int]:
        """Token ids whose KV the cache holds after ``gen``: the prompt and all but the last new token."""
        return list(prompt_ids) + gen.generated[:-1]


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise TurnCancelled("the turn was cancelled")


def _decoder_layers(model: Any) -> list[Any]:
    """The model's decoder layers (``model.model.layers`` in transformers' causal LMs), or []."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    return list(layers) if isinstance(layers, torch.nn.ModuleList) else []


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return frozenset(ids)
