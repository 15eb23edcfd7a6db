"""Sessions on a model run with a KVSharer plan: a tiny random-weight Llama and an in-memory store.

Only owner layers are cached, compressed, pushed and pulled; a resumed session is token-exact against
the same plan without offloading (``fp16`` preset on an fp16 model: lossless); KV stored under one
plan is never reused under another (a miss that says ``sharing_mismatch``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers
from gearkv.codec import inspect
from gearkv.worker.app import build_worker
from gearkv.worker.config import SessionOptions, WorkerConfig
from gearkv.worker.engine import Engine, SamplingParams
from gearkv.worker.metrics import REASONS
from gearkv.worker.model import LoadedModel
from gearkv.worker.sessions import Turn, Worker
from gearkv.worker.sharing import SharingPlan, SharingPlanMismatch, save_plan
from support.fake_store import FakeStore
from test_worker_engine import ByteTokenizer, no_eos
from test_worker_turns import outcome
from test_worker_turns import run as run_turn

pytestmark = pytest.mark.filterwarnings("error::FutureWarning")

LAYERS = 4
PARAMS = SamplingParams(max_new_tokens=6)
PROMPT = list(range(65, 65 + 40))  # 5 chunks of 8
PLAN = SharingPlan("tiny:0", LAYERS, ((2, 0), (3, 1)))
OTHER = SharingPlan("tiny:0", LAYERS, ((3, 0),))


def engine(plan: SharingPlan | None, dtype: torch.dtype = torch.float16) -> Engine:
    """A fresh tiny model (same weights every time: the plan changes the model it runs on)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=260,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=256,
    )
    model = transformers.LlamaForCausalLM(config).to(dtype).eval()
    loaded = LoadedModel(model, ByteTokenizer(), "tiny", torch.device("cpu"), dtype)
    return no_eos(Engine(loaded, prefill_block=7, sharing=plan))


@pytest.fixture(scope="module")
def planned() -> Engine:
    return engine(PLAN)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    made: list[Worker] = []
    yield made
    for w in made:
        w.close(timeout=5)


def worker(eng: Engine, store: FakeStore | None, made: list[Worker], hot: int = 0) -> Worker:
    opts = SessionOptions(codec="fp16", chunk_size=8, hot_cache_bytes=hot, background_push=False)
    w = Worker(eng, store, opts, fingerprint="tiny:0")
    made.append(w)
    return w


def run(w: Worker, session: str, ids: list[int]) -> Turn:
    return run_turn(w, session, ids, PARAMS)


def test_a_session_resumed_with_a_plan_is_token_exact_against_no_offloading(
    planned: Engine, workers: list[Worker]
) -> None:
    store = FakeStore()
    first = run(worker(planned, store, workers), "s", PROMPT)
    second_ids = [*PROMPT, *first.token_ids, 70, 71]
    resumed = run(worker(planned, store, workers), "s", second_ids)  # a fresh worker: from the store
    assert outcome(resumed) == ("hit", "")
    assert resumed.stats is not None and resumed.stats.tokens_prefilled == 3
    third_ids = [*second_ids, *resumed.token_ids, 72]
    again = run(worker(planned, store, workers), "s", third_ids)
    assert outcome(again) == ("hit", "")
    # no offloading: one worker, no store, the session continued from its own in-memory cache
    local = worker(planned, None, workers, hot=1 << 24)
    assert run(local, "m", PROMPT).token_ids == first.token_ids
    kept = run(local, "m", second_ids)
    assert kept.stats is not None and kept.stats.source == "hot_cache"
    assert kept.token_ids == resumed.token_ids
    assert run(local, "m", third_ids).token_ids == again.token_ids


def test_only_owner_layers_are_stored_and_the_manifest_names_the_plan(
    planned: Engine, workers: list[Worker]
) -> None:
    store = FakeStore()
    w = worker(planned, store, workers)
    assert planned.kv_layers == 2 and w.geometry.layers == 2
    assert w.namespace.fingerprint == f"tiny:0:share-{PLAN.digest}"
    turn = run(w, "s", PROMPT)
    assert {inspect(blob).num_layers for blob in store.chunks.values()} == {2}
    manifest = store.sessions["s"]
    assert manifest.attributes["sharing_plan"] == PLAN.digest
    assert manifest.namespace.fingerprint == w.namespace.fingerprint
    plain = worker(engine(None), FakeStore(), workers)
    unshared = run(plain, "s", PROMPT)
    assert turn.push is not None and unshared.push is not None
    # half the layers: half the KV bytes (fp16 stores 16 bits per value either way)
    assert turn.push.result().bytes_raw * 2 == unshared.push.result().bytes_raw


@pytest.mark.parametrize("later", ["other_plan", "no_plan"])
def test_a_session_resumed_under_another_plan_is_a_reported_miss(
    planned: Engine, workers: list[Worker], later: str
) -> None:
    store = FakeStore()
    first = run(worker(planned, store, workers), "s", PROMPT)
    other = engine(OTHER if later == "other_plan" else None)
    w = worker(other, store, workers)
    turn = run(w, "s", [*PROMPT, *first.token_ids, 70])
    assert outcome(turn) == ("miss", "sharing_mismatch")
    assert "sharing_mismatch" in REASONS
    faults = w.metrics.registry.get_sample_value(
        "gearkv_worker_turns_total", {"outcome": "miss", "reason": "sharing_mismatch"}
    )
    assert faults == 1
    # its push rewrote the session under the new plan: the next turn there is a hit
    manifest = store.sessions["s"]
    assert manifest.attributes.get("sharing_plan", "") == (OTHER.digest if later == "other_plan" else "")
    again = run(worker(other, store, workers), "s", [*PROMPT, *first.token_ids, 70, *turn.token_ids, 71])
    assert outcome(again) == ("hit", "")


def test_a_plan_for_another_model_is_refused(planned: Engine) -> None:
    with pytest.raises(SharingPlanMismatch, match="calibrated for model 'tiny:0'"):
        Worker(planned, None, SessionOptions(codec="fp16"), fingerprint="another:1")


def test_build_worker_loads_the_plan_file_and_checks_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gearkv.worker.app as app

    loaded = engine(None).loaded
    monkeypatch.setattr(app, "model_fingerprint", lambda _loaded: "tiny:0")
    save_plan(PLAN, tmp_path / "plan.json")
    cfg = WorkerConfig(session=SessionOptions(codec="fp16", sharing_plan=str(tmp_path / "plan.json")))
    w = build_worker(cfg, loaded=loaded)
    try:
        assert w.engine.sharing == PLAN and w.namespace.fingerprint.endswith(PLAN.digest)
    finally:
        w.close(timeout=5)
    save_plan(SharingPlan("else:9", LAYERS, ((2, 0),)), tmp_path / "else.json")
    cfg = WorkerConfig(session=SessionOptions(sharing_plan=str(tmp_path / "else.json")))
    with pytest.raises(SharingPlanMismatch, match="run `gearkv calibrate-sharing` for this model"):
        build_worker(cfg, loaded=engine(None).loaded)


def test_the_sharing_plan_flag_and_variable(tmp_path: Path) -> None:
    from gearkv.worker.cli import config_from_args

    cfg = config_from_args(["--sharing-plan", "p.json"], env={})
    assert cfg.session.sharing_plan == "p.json"
    assert config_from_args([], env={"GEARKV_SHARING_PLAN": "q.json"}).session.sharing_plan == "q.json"
    assert config_from_args([], env={}).session.sharing_plan is None
