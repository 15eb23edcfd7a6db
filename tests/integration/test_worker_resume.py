"""The worker resuming sessions from the real store (redis-server + gearkv store) on the real model.

- lossless: greedy decoding of a 5-turn conversation through store round trips (a fresh worker per
  turn) gives exactly the tokens of the same conversation continued from in-memory caches;
- gear4 / gear3: teacher-forced next-token top-1 agreement and mean KL against exact KV;
- faults (store down, chunk deleted, chunk corrupted, wrong fingerprint): the turn still answers and
  reports the miss; edits reuse the common prefix only; shared prefixes are stored once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from gearkv.client import KVStoreClient
from gearkv.codec import Codec
from gearkv.store.local import free_port
from gearkv.worker import hf_cache
from gearkv.worker.chunking import common_prefix
from gearkv.worker.config import SessionOptions
from gearkv.worker.demo import build_script, load_passages
from gearkv.worker.engine import Engine, SamplingParams
from gearkv.worker.metrics import WorkerMetrics
from gearkv.worker.sessions import Turn, Worker
from gearkv.worker.transfer import KVGeometry, pull_prefix, push_turn

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USER_TURNS = (
    "Hello! Can you name three colors?",
    "Which of those colors is the color of the sky?",
    "Write one short sentence about the sea.",
    "Now count from one to five.",
    "Thanks. What was my first question?",
)
GREEDY = SamplingParams(max_new_tokens=20)


@pytest.fixture
def client(store: Any) -> Iterator[KVStoreClient]:
    with KVStoreClient(store.address, token=store.tokens["alice"], timeout=20) as c:
        yield c


def make_worker(
    engine: Engine,
    client: Any,
    fingerprint: str,
    *,
    codec: str = "raw",
    hot: int = 0,
    chunk: int = 32,
    **kw: Any,
) -> Worker:
    opts = SessionOptions(codec=codec, chunk_size=chunk, hot_cache_bytes=hot, **kw)
    return Worker(engine, client, opts, WorkerMetrics(), fingerprint=fingerprint)


def run_turn(worker: Worker, session: str, message: str, params: SamplingParams = GREEDY, **kw: Any) -> Turn:
    turn = worker.chat(session, message, params, **kw).run()
    if turn.push is not None:
        turn.push.result(timeout=120)
    return turn


def test_lossless_resume_through_the_store_equals_in_memory_continuation(
    engine: Engine, fingerprint: str, client: KVStoreClient
) -> None:
    in_memory = make_worker(engine, None, fingerprint, hot=1 << 30)
    reference = [run_turn(in_memory, "ref", m) for m in USER_TURNS]
    assert [t.stats.source for t in reference[1:] if t.stats] == ["hot_cache"] * 4

    for i, message in enumerate(USER_TURNS):
        fresh = make_worker(engine, client, fingerprint)  # empty hot cache: only the store can help
        turn = run_turn(fresh, "lossless", message)
        assert turn.stats is not None
        assert turn.token_ids == reference[i].token_ids, f"turn {i + 1} diverged"
        assert turn.prompt_ids == reference[i].prompt_ids
        assert turn.push is not None and turn.push.result().committed
        if i == 0:
            assert (turn.stats.outcome, turn.stats.reason) == ("miss", "new_session")
        else:
            assert (turn.stats.outcome, turn.stats.source) == ("hit", "store"), turn.stats
            assert turn.stats.tokens_reused == reference[i].stats.tokens_reused  # type: ignore[union-attr]
            assert turn.stats.bytes_pulled > 0 and turn.stats.tokens_prefilled < turn.stats.prompt_tokens
    manifest = client.get_session("lossless")
    assert manifest.turns == 5 and len(manifest.messages) == 10
    assert [m.content for m in manifest.messages if m.role == "user"] == list(USER_TURNS)


QUALITY = {"gear4": (0.95, 0.05), "gear3": (0.92, 0.10)}  # min top-1 agreement, max mean KL (nats)


def test_gear_resume_quality_teacher_forced(engine: Engine, fingerprint: str, client: KVStoreClient) -> None:
    """Answers of an exact 5-turn run, re-scored on KV that went through gear4/gear3 and the store.

    Free-running outputs diverge after the first differing token, so each turn's exact answer is fed
    teacher-forced on top of (a) the exact stored prefix and (b) the same prefix pulled back from the
    store; the next-token distributions at the answer positions are compared.
    """
    geometry = KVGeometry.of(engine.model.config, engine.device, engine.loaded.dtype)
    codecs = {p: Codec.from_preset(p) for p in QUALITY}
    spaces = {p: make_worker(engine, client, fingerprint, codec=p, chunk=256).namespace for p in QUALITY}
    versions = dict.fromkeys(QUALITY, 0)
    agree = dict.fromkeys(QUALITY, 0)
    kls: dict[str, list[float]] = {p: [] for p in QUALITY}
    total = 0
    messages: list[dict[str, str]] = []
    prev_ids: list[int] = []
    prev_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
    for message in build_script(load_passages(None), 5):
        messages.append({"role": "user", "content": message})
        prompt = engine.encode_chat(messages)
        n = min(common_prefix(prev_ids, prompt), len(prompt) - 1)
        cache = hf_cache.import_kv(hf_cache.crop_kv(prev_kv, n)) if n else None
        gen = engine.generate(prompt, SamplingParams(max_new_tokens=48), cache=cache, reused=n).run()
        if n:
            teacher = prompt[n:] + gen.generated[:-1]
            rows = slice(len(prompt) - n - 1, None)  # the positions that predict the answer tokens
            exact = engine.score(hf_cache.import_kv(hf_cache.crop_kv(prev_kv, n)), teacher)[rows]
            total += exact.shape[0]
            for preset, codec in codecs.items():
                ns = spaces[preset]
                pushed = push_turn(
                    client,
                    codec,
                    ns,
                    prev_kv,
                    prev_ids,
                    (),
                    session_id=f"quality-{preset}",
                    expected_version=versions[preset],
                )
                versions[preset] = pushed.version
                match = client.lookup_prefix(ns, prompt, session_id=f"quality-{preset}")
                pulled = pull_prefix(client.get_chunks, match.chunks, n, geometry)
                assert pulled.tokens == n and pulled.kv is not None and not pulled.reason
                lossy = engine.score(hf_cache.import_kv(pulled.kv), teacher)[rows]
                agree[preset] += int((exact.argmax(-1) == lossy.argmax(-1)).sum())
                kl = torch.nn.functional.kl_div(
                    lossy.log_softmax(-1), exact.log_softmax(-1), log_target=True, reduction="none"
                ).sum(-1)
                kls[preset].extend(float(x) for x in kl)
        messages.append({"role": "assistant", "content": gen.text})
        prev_ids = engine.cached_ids(prompt, gen)
        prev_kv = [(k.clone(), v.clone()) for k, v in hf_cache.export_kv(gen.cache)]
    assert len(prev_ids) > 1500 and total >= 150  # the conversation really grew
    for preset, (min_agree, max_kl) in QUALITY.items():
        rate, mean_kl = agree[preset] / total, sum(kls[preset]) / len(kls[preset])
        print(f"{preset}: top-1 agreement {rate:.3f} over {total} tokens, mean KL {mean_kl:.4f}")
        assert rate >= min_agree, preset
        assert mean_kl <= max_kl, preset


def _setup_session(engine: Engine, client: Any, fingerprint: str, session: str) -> list[Any]:
    """Two committed turns (several 32-token chunks); returns the manifest's chunk refs."""
    w = make_worker(engine, client, fingerprint)
    for m in USER_TURNS[:2]:
        run_turn(w, session, m, SamplingParams(max_new_tokens=6))
    chunks = list(client.get_session(session).chunks)
    assert len(chunks) >= 3
    return chunks


def _assert_answers(turn: Turn) -> None:
    assert turn.stats is not None and turn.token_ids and turn.finish_reason in {"length", "eos", "stop"}


def test_deleted_chunk_turns_the_rest_into_a_miss(
    engine: Engine, fingerprint: str, client: KVStoreClient, redis_server: Any
) -> None:
    chunks = _setup_session(engine, client, fingerprint, "del")
    with redis_server.client() as r:
        assert r.delete(f"gkv:c:alice:{chunks[1].key}") == 1
    w = make_worker(engine, client, fingerprint)
    turn = run_turn(w, "del", USER_TURNS[2], SamplingParams(max_new_tokens=4))
    _assert_answers(turn)
    assert turn.stats is not None
    assert (turn.stats.outcome, turn.stats.reason) == ("partial", "chunk_missing")
    assert turn.stats.tokens_reused == chunks[1].start  # only the chunk before the hole
    assert (
        w.metrics.registry.get_sample_value("gearkv_worker_resume_faults_total", {"reason": "chunk_missing"})
        == 1.0
    )
    # its push re-sends the hole and what follows, not the chunk before it, and commits at once
    assert turn.push is not None
    pushed = turn.push.result()
    assert pushed.committed and 0 < pushed.chunks_pushed < len(pushed.chunks)
    # the next turn's push re-stored the chunk: the session is whole again
    again = run_turn(
        make_worker(engine, client, fingerprint), "del", USER_TURNS[3], SamplingParams(max_new_tokens=4)
    )
    assert again.stats is not None and again.stats.outcome == "hit"


def test_corrupted_chunk_is_detected_and_recomputed(
    engine: Engine, fingerprint: str, client: KVStoreClient, redis_server: Any
) -> None:
    chunks = _setup_session(engine, client, fingerprint, "corrupt")
    rkey = f"gkv:c:alice:{chunks[0].key}"
    with redis_server.client() as r:
        value = bytearray(r.get(rkey))
        value[-10] ^= 0xFF
        r.set(rkey, bytes(value), keepttl=True)
    w = make_worker(engine, client, fingerprint)
    turn = run_turn(w, "corrupt", USER_TURNS[2], SamplingParams(max_new_tokens=4))
    _assert_answers(turn)
    assert turn.stats is not None
    assert (turn.stats.outcome, turn.stats.reason, turn.stats.tokens_reused) == ("miss", "chunk_corrupt", 0)
    faults = w.metrics.registry.get_sample_value(
        "gearkv_worker_resume_faults_total", {"reason": "chunk_corrupt"}
    )
    assert faults == 1.0
    # the store dropped the corrupt value and the turn's push stored it again: whole once more
    again = run_turn(
        make_worker(engine, client, fingerprint), "corrupt", USER_TURNS[3], SamplingParams(max_new_tokens=4)
    )
    assert again.stats is not None and (again.stats.outcome, again.stats.source) == ("hit", "store")


def test_a_turn_closed_before_it_ran_frees_its_session(engine: Engine, fingerprint: str) -> None:
    w = make_worker(engine, None, fingerprint, max_turns_in_flight=1)
    w.chat("closed", USER_TURNS[0], SamplingParams(max_new_tokens=2)).close()
    turn = w.chat("closed", USER_TURNS[0], SamplingParams(max_new_tokens=2)).run()  # neither busy nor full
    _assert_answers(turn)
    assert w.metrics.registry.get_sample_value("gearkv_worker_turns_in_flight") == 0.0


def test_wrong_fingerprint_never_reuses_kv(engine: Engine, fingerprint: str, client: KVStoreClient) -> None:
    _setup_session(engine, client, fingerprint, "fp")
    other = make_worker(engine, client, "another-model:0123456789abcdef")
    turn = run_turn(other, "fp", USER_TURNS[2], SamplingParams(max_new_tokens=4))
    _assert_answers(turn)
    assert turn.stats is not None
    assert (turn.stats.outcome, turn.stats.reason, turn.stats.tokens_reused) == (
        "miss",
        "fingerprint_mismatch",
        0,
    )
    # the conversation itself carried over: the prompt holds both earlier turns
    assert turn.stats.prompt_tokens > 60


def test_codec_change_is_a_reported_miss(engine: Engine, fingerprint: str, client: KVStoreClient) -> None:
    _setup_session(engine, client, fingerprint, "codec")
    turn = run_turn(
        make_worker(engine, client, fingerprint, codec="gear4"),
        "codec",
        USER_TURNS[2],
        SamplingParams(max_new_tokens=4),
    )
    _assert_answers(turn)
    assert turn.stats is not None and (turn.stats.outcome, turn.stats.reason) == ("miss", "codec_mismatch")


def test_store_down_still_answers(
    engine: Engine, fingerprint: str, client: KVStoreClient, redis_server: Any
) -> None:
    _setup_session(engine, client, fingerprint, "down")
    redis_server.stop()
    w = make_worker(engine, client, fingerprint)
    turn = run_turn(w, "down", USER_TURNS[2], SamplingParams(max_new_tokens=4))
    _assert_answers(turn)
    assert turn.stats is not None
    assert (turn.stats.outcome, turn.stats.reason) == ("miss", "store_unavailable")
    assert turn.push is not None and turn.push.result().error == "store_unavailable"


def test_unreachable_store_still_answers(engine: Engine, fingerprint: str) -> None:
    with KVStoreClient(f"127.0.0.1:{free_port()}", token="t0k3n", timeout=2) as dead:
        w = make_worker(engine, dead, fingerprint, hot=1 << 28)
        first = run_turn(w, "nostore", USER_TURNS[0], SamplingParams(max_new_tokens=4))
        _assert_answers(first)
        assert first.stats is not None and (first.stats.outcome, first.stats.reason) == (
            "miss",
            "store_unavailable",
        )
        # the same worker keeps the conversation and its KV locally while the store is away; all of
        # it is reused, but the store could not confirm it is the whole history: not a hit
        second = run_turn(w, "nostore", USER_TURNS[1], SamplingParams(max_new_tokens=4))
        assert second.stats is not None
        assert (second.stats.outcome, second.stats.reason, second.stats.source) == (
            "partial",
            "store_unavailable",
            "hot_cache",
        )
        assert second.stats.tokens_prefilled < second.stats.prompt_tokens - first.stats.prompt_tokens
        assert second.stats.prompt_tokens > first.stats.prompt_tokens + first.stats.tokens_generated
        assert w.unsynced_sessions() == ["nostore"]  # kept until a commit includes it


def test_rewind_reuses_the_common_prefix_only(
    engine: Engine, fingerprint: str, client: KVStoreClient
) -> None:
    w = make_worker(engine, client, fingerprint)
    for m in USER_TURNS[:3]:
        run_turn(w, "edit", m, SamplingParams(max_new_tokens=6))
    fresh = make_worker(engine, client, fingerprint)
    turn = run_turn(
        fresh,
        "edit",
        "Actually, name three animals instead.",
        SamplingParams(max_new_tokens=6),
        rewind_turns=2,
    )
    assert turn.stats is not None
    assert (turn.stats.outcome, turn.stats.reason, turn.stats.source) == (
        "partial",
        "prefix_diverged",
        "store",
    )
    assert 0 < turn.stats.tokens_reused < turn.stats.prompt_tokens
    manifest = client.get_session("edit")
    assert [m.content for m in manifest.messages if m.role == "user"] == [
        USER_TURNS[0],
        "Actually, name three animals instead.",
    ]


def test_hot_cache_continues_without_a_pull(engine: Engine, fingerprint: str, client: KVStoreClient) -> None:
    w = make_worker(engine, client, fingerprint, hot=1 << 28)
    run_turn(w, "hot", USER_TURNS[0], SamplingParams(max_new_tokens=6))
    turn = run_turn(w, "hot", USER_TURNS[1], SamplingParams(max_new_tokens=6))
    assert turn.stats is not None
    assert (turn.stats.outcome, turn.stats.source, turn.stats.bytes_pulled) == ("hit", "hot_cache", 0)


def test_shared_prefix_is_reused_across_sessions_and_stored_once(
    engine: Engine, fingerprint: str, client: KVStoreClient
) -> None:
    first = run_turn(make_worker(engine, client, fingerprint), "share-a", USER_TURNS[0])
    other = make_worker(engine, client, fingerprint)
    second = run_turn(other, "share-b", USER_TURNS[0])
    assert second.stats is not None and second.stats.source == "store" and second.stats.tokens_reused >= 32
    assert second.token_ids == first.token_ids
    push = second.push.result() if second.push else None
    assert push is not None and push.chunks_pushed <= 1  # only the tail differs in key... or is new
