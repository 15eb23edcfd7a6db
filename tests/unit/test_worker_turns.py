"""The worker's turn logic in seconds: a tiny random-weight Llama and an in-memory store.

Reuse and outcomes (hit / partial / miss and why) under pull faults, diverged prefixes, version races
and a store that is down; the store calls a resumed turn makes. The same behaviours against the real
model, store and Redis are in tests/integration/test_worker_resume.py and test_worker_history.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from gearkv.worker.config import SessionOptions
from gearkv.worker.engine import Engine, SamplingParams
from gearkv.worker.errors import SessionBusy
from gearkv.worker.sessions import Turn, Worker
from support.fake_store import FakeStore
from test_worker_engine import no_eos, tiny_engine

pytestmark = pytest.mark.filterwarnings("error::FutureWarning")

PARAMS = SamplingParams(max_new_tokens=5)
PROMPT = list(range(65, 65 + 40))  # 40 tokens: 4 full chunks of 8 and a tail


@pytest.fixture(scope="module")
def engine() -> Engine:
    return no_eos(tiny_engine())


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def workers(engine: Engine, store: FakeStore) -> Iterator[list[Worker]]:
    made: list[Worker] = []
    yield made
    for w in made:
        w.close(timeout=5)


def worker(engine: Engine, store: FakeStore | None, made: list[Worker], **kw: object) -> Worker:
    opts = SessionOptions(
        codec="raw", chunk_size=8, hot_cache_bytes=kw.pop("hot", 0), background_push=False, **kw
    )  # type: ignore[arg-type]
    w = Worker(engine, store, opts, fingerprint="tiny:0")
    made.append(w)
    return w


def run(w: Worker, session: str, ids: list[int], params: SamplingParams = PARAMS) -> Turn:
    turn = w.generate(ids, params, session_id=session).run()
    assert turn.stats is not None
    return turn


def outcome(turn: Turn) -> tuple[str, str]:
    assert turn.stats is not None
    return turn.stats.outcome, turn.stats.reason


def test_a_fresh_worker_resumes_with_one_session_read_and_answers_as_if_uninterrupted(
    engine: Engine, store: FakeStore, workers: list[Worker]
) -> None:
    first = run(worker(engine, store, workers), "s", PROMPT)
    assert outcome(first) == ("miss", "new_session")
    follow = [*PROMPT, *first.token_ids, 70, 71]
    store.calls.clear()
    resumed = run(worker(engine, store, workers), "s", follow)
    assert outcome(resumed) == ("hit", "")
    # the two new tokens and the last answer token (sampled, never fed back, so it has no KV)
    assert resumed.stats is not None and resumed.stats.tokens_prefilled == 3
    # one begin (which brought the manifest), one lookup, one pull, the new chunk(s), one commit
    assert store.calls["begin_turn"] == 1 and store.calls["lookup_prefix"] == 1
    assert store.calls["get_chunks"] == 1 and store.calls["commit_turn"] == 1
    cold = run(worker(engine, None, workers), "c", follow)
    assert resumed.token_ids == cold.token_ids  # raw codec: the resumed cache is the original KV


@pytest.mark.parametrize(("fault", "reason"), [("missing", "chunk_missing"), ("corrupt", "chunk_corrupt")])
def test_a_pull_fault_reuses_what_came_before_it_and_pushes_the_rest_again(
    engine: Engine, store: FakeStore, workers: list[Worker], fault: str, reason: str
) -> None:
    first = run(worker(engine, store, workers), "p", PROMPT)
    bad = store.sessions["p"].chunks[2]
    if fault == "missing":
        del store.chunks[bad.key]
    else:
        store.corrupt.add(bad.key)
    follow = [*PROMPT, *first.token_ids, 70]
    turn = run(worker(engine, store, workers), "p", follow)
    assert outcome(turn) == ("partial", reason)
    assert turn.stats is not None and turn.stats.tokens_reused == bad.start
    assert bad.key in store.chunks and bad.key not in store.corrupt  # the turn's push restored it
    again = run(worker(engine, store, workers), "p", [*follow, *turn.token_ids, 71])
    assert outcome(again) == ("hit", "")


def test_an_edited_prompt_reuses_the_common_prefix(
    engine: Engine, store: FakeStore, workers: list[Worker]
) -> None:
    run(worker(engine, store, workers), "d", PROMPT)
    edited = [*PROMPT[:20], 99, 98, 97]
    turn = run(worker(engine, store, workers), "d", edited)
    assert outcome(turn) == ("partial", "prefix_diverged")
    assert turn.stats is not None and turn.stats.tokens_reused == 20


def test_store_down_answers_then_keeps_the_turn_and_never_calls_it_a_hit(
    engine: Engine, store: FakeStore, workers: list[Worker]
) -> None:
    w = worker(engine, store, workers, hot=1 << 24, recommit_window_s=0)
    first = run(w, "down", PROMPT)
    store.down = True
    second = run(w, "down", [*PROMPT, *first.token_ids, 70])
    assert outcome(second) == ("partial", "store_unavailable")  # all reused from the hot cache
    assert second.push is not None and second.push.result().error == "store_unavailable"
    assert w.unsynced_sessions() == ["down"]
    store.down = False
    third = run(w, "down", [*second.prompt_ids, *second.token_ids, 71])
    assert outcome(third) == ("hit", "")  # the store confirmed the version this worker holds
    assert store.sessions["down"].token_ids[: len(second.prompt_ids)] == tuple(second.prompt_ids)
    assert w.unsynced_sessions() == []


def test_a_turn_overtaken_by_another_worker_is_reported_lost(
    engine: Engine, store: FakeStore, workers: list[Worker]
) -> None:
    a = worker(engine, store, workers, hot=1 << 24, recommit_window_s=0)
    b = worker(engine, store, workers)
    first = run(a, "race", PROMPT)
    store.down = True
    run(a, "race", [*PROMPT, *first.token_ids, 70])  # answered on a, never committed
    store.down = False
    run(b, "race", [*PROMPT, *first.token_ids, 80])  # b commits on top of the stored history
    lost = run(a, "race", [*PROMPT, *first.token_ids, 70, 71])
    assert outcome(lost)[1] == "history_lost"


def test_one_turn_per_session_across_workers(engine: Engine, store: FakeStore, workers: list[Worker]) -> None:
    a, b = worker(engine, store, workers), worker(engine, store, workers)
    turn = a.generate(PROMPT, PARAMS, session_id="busy")
    steps = iter(turn)
    next(steps)  # a's turn began: it holds the lease
    with pytest.raises(SessionBusy, match="another worker"):
        b.generate(PROMPT, PARAMS, session_id="busy").run()
    for _ in steps:
        pass
    assert outcome(run(b, "busy", [*PROMPT, *turn.token_ids, 70])) == ("hit", "")


def test_the_budget_bounds_a_slow_store_read(engine: Engine, store: FakeStore, workers: list[Worker]) -> None:
    torch.manual_seed(0)
    w = worker(engine, store, workers, hot=1 << 24, store_read_budget_s=0.05)
    first = run(w, "slow", PROMPT)
    seen: list[float | None] = []
    real = store.begin_turn

    def timed(*args: object, **kw: object) -> object:
        seen.append(kw.get("timeout"))  # type: ignore[arg-type]
        return real(*args, **kw)  # type: ignore[arg-type]

    store.begin_turn = timed  # type: ignore[method-assign]
    run(w, "slow", [*PROMPT, *first.token_ids, 70])
    assert seen == [0.05]  # the turn's read carries the budget as its whole-call timeout


def test_a_stateless_turn_reuses_the_previous_turns_partial_last_chunk(
    engine: Engine, store: FakeStore, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a session only full chunks are found by a lookup; the partial chunk where the previous
    turn's context ended (at its end-of-turn token) is probed for, so re-sent history is not
    recomputed up to a chunk at a time."""
    eos = 3
    first = run(worker(engine, store, workers), "", PROMPT)  # stores PROMPT + answer[:-1]: 44 tokens
    context = len(PROMPT) + len(first.token_ids) - 1
    follow = [*PROMPT, *first.token_ids[:-1], eos, 70, 71]
    monkeypatch.setattr(engine, "eos_ids", frozenset({eos}))
    again = run(worker(engine, store, workers), "", follow)
    assert again.stats is not None and again.stats.tokens_reused == context  # 40 full + a 4-token tail
    monkeypatch.setattr(engine, "eos_ids", frozenset())
    full_only = run(worker(engine, store, workers), "", [*follow[:-1], 72])
    assert full_only.stats is not None and full_only.stats.tokens_reused == 40  # no end-of-turn: no probe
    cold = run(worker(engine, None, workers), "", follow)
    assert again.token_ids == cold.token_ids
