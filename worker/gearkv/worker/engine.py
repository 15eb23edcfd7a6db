"""Token generation on a (possibly resumed) KV cache.

The engine is handed a cache that already holds the KV of the first ``reused`` prompt tokens; it
prefills only the rest, then decodes one token at a time (greedy, temperature, top-p, seeded),
stopping on EOS, a stop string or the token budget. :class:`Generation` is an iterator of text deltas
so the caller can stream them as they are produced; its attributes hold the outcome once exhausted.

Only the token ids whose KV the cache holds matter for reuse: after a turn that is the prompt plus
every generated token but the last (the last one was sampled, never fed back).
"""

from __future__ import annotations

import inspect
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from gearkv.worker import hf_cache
from gearkv.worker.model import LoadedModel
from gearkv.worker.textstream import IncrementalDetokenizer, StopMatcher

__all__ = [
    "MAX_NEW_TOKENS",
    "MAX_STOPS",
    "MAX_STOP_LEN",
    "Delta",
    "Engine",
    "Generation",
    "SamplingParams",
    "sample_next",
]

MAX_NEW_TOKENS = 4096
MAX_STOPS = 16
MAX_STOP_LEN = 256
DEFAULT_MAX_NEW_TOKENS = 256


@dataclass(frozen=True)
class SamplingParams:
    """Generation parameters, validated (``ValueError`` names the field and its limit)."""

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
        return self.temperature == 0.0


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick the next token from ``logits`` ``[vocab]``: argmax, or temperature + nucleus sampling."""
    if params.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        cum = torch.cumsum(sorted_p, dim=-1)
        keep = (cum - sorted_p) < params.top_p  # always keeps the most likely token
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        pick = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return int(order[pick])
    return int(torch.multinomial(probs, 1, generator=generator))


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
    """Runs a loaded causal LM on caches built by :mod:`gearkv.worker.hf_cache`."""

    def __init__(self, loaded: LoadedModel, prefill_block: int = 1024) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.prefill_block = prefill_block
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or 1 << 30
        self.vocab_size = int(self.model.config.vocab_size)
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        params = inspect.signature(self.model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in params

    @torch.inference_mode()
    def warmup(self) -> None:
        """One tiny prefill + decode step: the first forward pays one-off setup (seconds on CPU)."""
        cache = self.new_cache()
        logits = self.prefill(cache, [0] * 8)
        self._forward(cache, [int(logits.argmax())], keep=1)

    # -- prompts ---------------------------------------------------------------------------------

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` rendered with the model's chat template, ready for the answer."""
        text = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [int(i) for i in ids]

    def new_cache(self) -> Any:
        return hf_cache.new_cache(self.model.config)

    # -- forward passes --------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, cache: Any, token_ids: Sequence[int]) -> torch.Tensor:
        """Feed ``token_ids`` on top of ``cache`` (in blocks); returns the last position's logits."""
        if not token_ids:
            raise ValueError("prefill needs at least one token")
        logits = None
        for start in range(0, len(token_ids), self.prefill_block):
            block = token_ids[start : start + self.prefill_block]
            logits = self._forward(cache, block, keep=1)
        assert logits is not None
        return logits[-1]

    @torch.inference_mode()
    def score(self, cache: Any, token_ids: Sequence[int]) -> torch.Tensor:
        """Logits ``[len(token_ids), vocab]`` for each position of ``token_ids`` fed on top of ``cache``."""
        return self._forward(cache, token_ids, keep=0).float()

    def _forward(self, cache: Any, token_ids: Sequence[int], keep: int) -> torch.Tensor:
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.device)
        kwargs: dict[str, Any] = {"past_key_values": cache, "use_cache": True}
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
    ) -> Generation:
        """Continue ``prompt_ids`` whose first ``reused`` tokens' KV ``cache`` already holds.

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
        gen._steps = self._run(gen, list(prompt_ids), params, cache, reused)
        return gen

    def _run(
        self, gen: Generation, prompt: list[int], params: SamplingParams, cache: Any, reused: int
    ) -> Iterator[Delta]:
        generator = torch.Generator().manual_seed(params.seed or random.getrandbits(63))
        detok = IncrementalDetokenizer(self.tokenizer)
        stops = StopMatcher(params.stop)
        budget = min(params.max_new_tokens, self.max_context - len(prompt))
        t0 = time.perf_counter()
        logits = self.prefill(cache, prompt[reused:])
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


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return frozenset(ids)
