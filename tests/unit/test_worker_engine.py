"""Engine, sampling and text streaming on a tiny random-weight model with a byte-level tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
import transformers
from gearkv.worker import hf_cache
from gearkv.worker.engine import Engine, SamplingParams, sample_next
from gearkv.worker.model import LoadedModel
from gearkv.worker.textstream import IncrementalDetokenizer, StopMatcher

torch.set_num_threads(1)

EOS = 256


class ByteTokenizer:
    """Token i < 256 is byte i; 256 is EOS (a special token, skipped when decoding)."""

    eos_token_id = EOS

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def encode(self, text: str) -> list[int]:
        return list(text.encode())


def tiny_engine(seed: int = 0) -> Engine:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=260,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=EOS,
        bos_token_id=257,
        pad_token_id=258,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    loaded = LoadedModel(model, ByteTokenizer(), "tiny", torch.device("cpu"), torch.float32)
    return Engine(loaded, prefill_block=7)


# -- text streaming ------------------------------------------------------------------------------


def test_detokenizer_never_splits_a_multibyte_character() -> None:
    tok = ByteTokenizer()
    text = "naïve 日本語 ok 🎉!"
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.push(i) for i in tok.encode(text)]
    pieces.append(detok.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert pieces[tok.encode(text).index(0xE6)] == ""  # first byte of 日 is held back


def test_detokenizer_flushes_an_incomplete_character() -> None:
    detok = IncrementalDetokenizer(ByteTokenizer())
    assert detok.push(ord("a")) == "a"
    assert detok.push(0xE6) == ""
    assert detok.flush() == "\ufffd"


@pytest.mark.parametrize(
    ("chunks", "stops", "want", "stopped"),
    [
        (["Hello wor", "ld. END more"], ["END"], "Hello world. ", True),
        (["abc", "E", "N", "D"], ["END"], "abc", True),
        (["abc E", "NX"], ["END"], "abc ENX", False),
        (["x", "yz"], [], "xyz", False),
        (["one\n\nUser:", " hi"], ["User:", "\n\n"], "one", True),
    ],
)
def test_stop_matcher(chunks: list[str], stops: list[str], want: str, stopped: bool) -> None:
    m = StopMatcher(stops)
    out, done = "", False
    for c in chunks:
        text, done = m.feed(c)
        out += text
        if done:
            break
    if not done:
        out += m.flush()
    assert (out, done) == (want, stopped)


# -- sampling ------------------------------------------------------------------------------------


def test_params_validation_names_the_field() -> None:
    for kwargs, field in [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 5000}, "max_new_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"stop": ("",)}, "stop"),
        ({"stop": tuple("abcdefghijklmnopq")}, "stop"),
    ]:
        with pytest.raises(ValueError, match=field):
            SamplingParams(**kwargs)


def test_sampling_greedy_seeded_and_nucleus() -> None:
    logits = torch.tensor([0.0, 3.0, 2.9, -5.0])
    assert sample_next(logits, SamplingParams(), None) == 1
    p = SamplingParams(temperature=1.0, seed=7)
    a = [sample_next(logits, p, torch.Generator().manual_seed(7)) for _ in range(5)]
    b = [sample_next(logits, p, torch.Generator().manual_seed(7)) for _ in range(5)]
    assert a == b
    # top_p small enough keeps only the most likely token
    nucleus = SamplingParams(temperature=1.0, top_p=0.3)
    g = torch.Generator().manual_seed(1)
    assert {sample_next(logits, nucleus, g) for _ in range(50)} == {1}
    # high temperature over the whole vocabulary reaches other tokens
    hot = SamplingParams(temperature=10.0)
    g = torch.Generator().manual_seed(1)
    assert len({sample_next(logits, hot, g) for _ in range(200)}) >= 3


# -- engine --------------------------------------------------------------------------------------


def _run(
    engine: Engine, prompt: list[int], params: SamplingParams, cache: Any = None, reused: int = 0
) -> Any:
    gen = engine.generate(prompt, params, cache=cache, reused=reused)
    deltas = list(gen)
    return gen, deltas


def test_generation_streams_and_reports() -> None:
    engine = tiny_engine()
    prompt = list(b"The quick brown fox jumps")
    gen, deltas = _run(engine, prompt, SamplingParams(max_new_tokens=12))
    assert gen.finish_reason in {"length", "eos"}
    assert [t for d in deltas for t in d.token_ids] == gen.generated
    assert "".join(d.text for d in deltas) == gen.text
    assert gen.first_token_at > 0 and gen.prefill_s > 0
    assert hf_cache.cache_length(gen.cache) == len(engine.cached_ids(prompt, gen))


def test_resumed_generation_equals_uninterrupted_generation() -> None:
    """Prefilling only the uncovered tokens on a resumed cache gives the same greedy tokens."""
    engine = tiny_engine()
    prompt = list(b"Once upon a time, in a land far away, there lived")
    params = SamplingParams(max_new_tokens=10)
    full, _ = _run(engine, prompt, params)

    first = engine.new_cache()
    engine.prefill(first, prompt[:20])
    kv = [(k.clone(), v.clone()) for k, v in hf_cache.export_kv(first)]
    resumed, _ = _run(engine, prompt, params, cache=hf_cache.import_kv(kv), reused=20)
    assert resumed.generated == full.generated
    assert resumed.reused_tokens == 20


def test_seeded_sampling_is_reproducible() -> None:
    engine = tiny_engine()
    prompt = list(b"abc")
    p = SamplingParams(max_new_tokens=8, temperature=1.5, top_p=0.9, seed=1234)
    a, _ = _run(engine, prompt, p)
    b, _ = _run(engine, prompt, p)
    assert a.generated == b.generated


def test_eos_and_stop_strings_end_the_generation() -> None:
    engine = tiny_engine()
    prompt = list(b"hello")
    free, _ = _run(engine, prompt, SamplingParams(max_new_tokens=20))
    first_byte = next((t for t in free.generated if 32 <= t < 127), None)
    if first_byte is None:
        pytest.skip("random model produced no printable byte")
    stop = chr(first_byte)
    stopped, deltas = _run(engine, prompt, SamplingParams(max_new_tokens=20, stop=(stop,)))
    assert stopped.finish_reason == "stop"
    assert stop not in stopped.text
    # EOS: make it the argmax by biasing the head
    with torch.no_grad():
        engine.model.lm_head.weight[EOS] += 100.0
    eos, deltas = _run(engine, prompt, SamplingParams(max_new_tokens=20))
    assert eos.finish_reason == "eos"
    assert eos.generated == [EOS] and eos.text == ""
    assert [t for d in deltas for t in d.token_ids] == [EOS]


def test_generate_rejects_bad_calls() -> None:
    engine = tiny_engine()
    with pytest.raises(ValueError, match="at least one token"):
        engine.generate([], SamplingParams())
    cache = engine.new_cache()
    engine.prefill(cache, [1, 2, 3])
    with pytest.raises(ValueError, match="below the prompt length"):
        engine.generate([1, 2, 3], SamplingParams(), cache=cache, reused=3)
    with pytest.raises(ValueError, match="cache holds"):
        engine.generate([1, 2, 3, 4], SamplingParams(), cache=cache, reused=2)
    with pytest.raises(ValueError, match="context"):
        engine.generate(list(range(200)) * 3, SamplingParams())


def test_length_is_capped_by_the_context() -> None:
    engine = tiny_engine()
    gen, _ = _run(engine, [65] * 508, SamplingParams(max_new_tokens=50))
    assert len(gen.generated) <= 4
    assert gen.finish_reason in {"length", "eos"}
