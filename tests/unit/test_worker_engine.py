"""Engine, sampling and text streaming on a tiny random-weight model with a byte-level tokenizer.

A test that checks how a generation ends decides it: :func:`restrict` masks the tokens the random
model may pick (no EOS, or printable bytes only), so the outcome never depends on the weights drawn.
transformers' ``FutureWarning`` s are errors here (a deprecated call on the engine's path fails).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest
import torch
import transformers
from gearkv.worker import hf_cache
from gearkv.worker.engine import GREEDY_BELOW, Engine, SamplingParams, sample_next, scaled_probs
from gearkv.worker.errors import TurnCancelled
from gearkv.worker.model import LoadedModel
from gearkv.worker.textstream import IncrementalDetokenizer, StopMatcher

pytestmark = pytest.mark.filterwarnings("error::FutureWarning")

torch.set_num_threads(1)

EOS = 256
PRINTABLE = range(32, 127)


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


def restrict(engine: Engine, allowed: Sequence[int]) -> Engine:
    """Make the model's logits -inf outside ``allowed`` (so it can only emit those tokens)."""
    mask = torch.full((engine.vocab_size,), float("-inf"))
    mask[list(allowed)] = 0.0

    def hook(_module: Any, _args: Any, logits: torch.Tensor) -> torch.Tensor:
        return logits + mask

    engine.model.lm_head.register_forward_hook(hook)
    return engine


def no_eos(engine: Engine) -> Engine:
    return restrict(engine, [t for t in range(engine.vocab_size) if t != EOS])


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


def test_tiny_temperatures_are_greedy_and_every_temperature_samples_safely() -> None:
    """A temperature like 1e-40 used to divide the logits into inf - inf = NaN (UNKNOWN over gRPC)."""
    engine = tiny_engine()
    cache = engine.new_cache()
    real = engine.prefill(cache, list(b"Real logits from a forward pass"))
    extreme = torch.tensor([-1e30, 3.0e4, 3.0e4 - 1e-3, float("-inf"), -5.0])
    g = torch.Generator().manual_seed(3)
    for logits in (real, extreme):
        for t in (1e-40, 1e-6, GREEDY_BELOW, 1e-3, 1.0, 10.0):
            probs = scaled_probs(logits, t)
            assert torch.isfinite(probs).all() and abs(float(probs.sum()) - 1.0) < 1e-4
            for top_p in (1.0, 0.5):
                p = SamplingParams(temperature=t, top_p=top_p, seed=1)
                token = sample_next(logits, p, g)
                assert 0 <= token < logits.numel()
                if t < GREEDY_BELOW:
                    assert p.greedy and token == int(torch.argmax(logits))
    # the safe scaling itself: even 1e-40 puts all the mass on the maximum, no NaN
    assert scaled_probs(extreme, 1e-40).tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    out, _ = _run(engine, list(b"hi"), SamplingParams(max_new_tokens=4, temperature=1e-40))
    assert out.generated == _run(engine, list(b"hi"), SamplingParams(max_new_tokens=4))[0].generated


# -- engine --------------------------------------------------------------------------------------


def _run(
    engine: Engine, prompt: list[int], params: SamplingParams, cache: Any = None, reused: int = 0
) -> Any:
    gen = engine.generate(prompt, params, cache=cache, reused=reused)
    deltas = list(gen)
    return gen, deltas


def test_generation_streams_and_reports() -> None:
    engine = no_eos(tiny_engine())
    prompt = list(b"The quick brown fox jumps")
    gen, deltas = _run(engine, prompt, SamplingParams(max_new_tokens=12))
    assert gen.finish_reason == "length" and len(gen.generated) == 12
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
    engine = restrict(tiny_engine(), PRINTABLE)  # one printable character per token, never EOS
    prompt = list(b"hello")
    free, _ = _run(engine, prompt, SamplingParams(max_new_tokens=20))
    assert free.finish_reason == "length" and len(free.text) == 20
    at = next(i for i, c in enumerate(free.text) if c != free.text[0])  # a character new at `at`
    stop = free.text[at]
    stopped, deltas = _run(engine, prompt, SamplingParams(max_new_tokens=20, stop=(stop,)))
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[:at]
    assert stopped.generated == free.generated[: at + 1]  # the stop's own token was generated
    eos_only = restrict(tiny_engine(), [EOS])  # EOS is the first token
    eos, deltas = _run(eos_only, prompt, SamplingParams(max_new_tokens=20))
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
    engine = no_eos(tiny_engine())  # context 512
    gen, _ = _run(engine, [65] * 508, SamplingParams(max_new_tokens=50))
    assert len(gen.generated) == 4
    assert gen.finish_reason == "length"


# -- cancellation --------------------------------------------------------------------------------


class CountingEngine:
    """Counts the engine's forward passes and sets ``cancel`` once ``after`` of them have run."""

    def __init__(self, engine: Engine, cancel: threading.Event, after: int) -> None:
        self.calls: list[int] = []
        forward = engine._forward

        def counted(cache: Any, token_ids: Sequence[int], keep: int) -> torch.Tensor:
            self.calls.append(len(token_ids))
            out = forward(cache, token_ids, keep)
            if len(self.calls) == after:
                cancel.set()
            return out

        engine._forward = counted  # type: ignore[method-assign]


def test_cancel_stops_the_prefill_between_slices() -> None:
    engine = tiny_engine()  # 7-token slices
    cancel = threading.Event()
    counter = CountingEngine(engine, cancel, after=2)
    gen = engine.generate(list(range(65, 115)), SamplingParams(max_new_tokens=5), cancel=cancel)
    with pytest.raises(TurnCancelled):
        next(iter(gen))
    assert counter.calls == [7, 7]  # stopped after the slice that saw the cancel: 36 tokens left
    assert gen.generated == []


def test_cancel_inside_a_slice_stops_at_the_next_decoder_layer() -> None:
    """A slice late in a long context takes seconds on a CPU: the cancel is also seen between layers."""
    engine = tiny_engine()
    engine.prefill_block = 1024  # one slice
    cancel = threading.Event()
    layers = engine.model.model.layers
    ran: list[int] = []
    for i, layer in enumerate(layers):
        layer.register_forward_hook(lambda *_, i=i: ran.append(i))
    layers[0].register_forward_hook(lambda *_: cancel.set())
    with pytest.raises(TurnCancelled):
        engine.generate(list(range(65, 115)), SamplingParams(), cancel=cancel).run()
    assert ran == [0]  # layer 1 never ran
    # the same engine, with no cancel: every layer runs (the check is per call, not sticky)
    ran.clear()
    assert engine.generate([65, 66], SamplingParams(max_new_tokens=1)).run().generated
    assert ran[:2] == [0, 1]


def test_cancel_before_the_first_slice_runs_nothing() -> None:
    engine = tiny_engine()
    cancel = threading.Event()
    counter = CountingEngine(engine, cancel, after=-1)
    cancel.set()
    with pytest.raises(TurnCancelled):
        engine.generate([65, 66, 67], SamplingParams(), cancel=cancel).run()
    assert counter.calls == []


def test_cancel_stops_the_decode_between_steps() -> None:
    engine = tiny_engine()
    cancel = threading.Event()
    counter = CountingEngine(engine, cancel, after=4)  # the prefill, then decode steps 1-3
    gen = engine.generate(list(b"abc"), SamplingParams(max_new_tokens=50, stop=("\x00never",)), cancel=cancel)
    with pytest.raises(TurnCancelled):
        gen.run()
    assert len(counter.calls) == 4 and len(gen.generated) == 4  # the 4th token is sampled, no 5th step


def test_prefill_in_slices_equals_one_pass() -> None:
    """Slicing the prefill changes where it may stop, not what it computes."""
    engine = tiny_engine()
    prompt = list(b"A prompt long enough for several slices of the prefill.")
    whole = engine.new_cache()
    engine.prefill_block = 1024
    one = engine.prefill(whole, prompt)
    engine.prefill_block = 5
    sliced = engine.new_cache()
    many = engine.prefill(sliced, prompt)
    torch.testing.assert_close(many, one, rtol=1e-4, atol=1e-4)
    assert hf_cache.cache_length(sliced) == len(prompt)


def test_a_cancelled_turn_frees_its_session_at_once() -> None:
    from gearkv.worker.config import SessionOptions
    from gearkv.worker.sessions import Worker

    worker = Worker(no_eos(tiny_engine()), None, SessionOptions(), fingerprint="tiny:0")
    try:
        params = SamplingParams(max_new_tokens=20)
        turn = worker.generate(list(range(65, 165)), params, session_id="s-1")
        turn.cancel()
        with pytest.raises(TurnCancelled):
            turn.run()
        turn.close()
        again = worker.generate([65, 66, 67], SamplingParams(max_new_tokens=2), session_id="s-1")
        assert again.run().finish_reason == "length"
    finally:
        worker.close()
