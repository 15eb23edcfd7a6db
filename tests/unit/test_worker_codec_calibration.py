"""The worker with a calibrated codec (gtc2/gtc3): a tiny random-weight Llama and an in-memory store.

A gtc session resumes on a fresh worker holding the same calibration; under another calibration its
KV is never reused (a reported ``calibration_mismatch`` miss, not an error); a gtc preset without a
calibration, an unreadable one, one of another model or of another layer count (the full model under a
KV sharing plan) is a start-up error naming ``--codec-calibration``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gearkv.client import ChunkRef, Manifest, Namespace
from gearkv.codec import Calibration, CalibrationError, CalibrationMismatch, inspect
from gearkv.worker.config import SessionOptions, WorkerConfig
from gearkv.worker.engine import Engine, SamplingParams
from gearkv.worker.metrics import REASONS
from gearkv.worker.session_records import view_of_manifest
from gearkv.worker.sessions import Turn, Worker
from gearkv.worker.transfer import pull_prefix
from support.fake_store import FakeStore
from test_worker_engine import no_eos, tiny_engine
from test_worker_turns import outcome

pytestmark = pytest.mark.filterwarnings("error::FutureWarning")

PARAMS = SamplingParams(max_new_tokens=5)
PROMPT = list(range(65, 65 + 40))  # 40 tokens: 4 full chunks of 8 and a tail
FP = "tiny:0"
CAL = Calibration(FP, 2, (1.0, 0.5), (0.75, 1.5), model="tiny")  # the tiny engine has 2 KV layers
OTHER = Calibration.uniform(2, fingerprint=FP)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return no_eos(tiny_engine())


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    made: list[Worker] = []
    yield made
    for w in made:
        w.close(timeout=5)


def worker(
    engine: Engine,
    store: FakeStore | None,
    made: list[Worker],
    calibration: Calibration | None,
    codec: str = "gtc2",
) -> Worker:
    opts = SessionOptions(codec=codec, chunk_size=8, hot_cache_bytes=0, background_push=False)
    w = Worker(engine, store, opts, fingerprint=FP, calibration=calibration)
    made.append(w)
    return w


def run(w: Worker, session: str, ids: list[int]) -> Turn:
    turn = w.generate(ids, PARAMS, session_id=session).run()
    assert turn.stats is not None
    return turn


# -- resuming --------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["gtc2", "gtc3"])
def test_a_gtc_session_resumes_on_a_fresh_worker_with_the_same_calibration(
    engine: Engine, workers: list[Worker], preset: str
) -> None:
    store = FakeStore()
    first_worker = worker(engine, store, workers, CAL, preset)
    assert first_worker.codec.codec_id == f"{preset}.v2.{CAL.digest}"
    assert first_worker.namespace.codec_id == first_worker.codec.codec_id
    first = run(first_worker, "s", PROMPT)
    assert outcome(first) == ("miss", "new_session")
    assert store.chunks and {inspect(b).calibration for b in store.chunks.values()} == {CAL.digest}
    assert store.sessions["s"].namespace.codec_id == f"{preset}.v2.{CAL.digest}"
    follow = [*PROMPT, *first.token_ids, 70, 71]
    # a fresh worker with the same calibration loaded from its own file
    resumed = run(worker(engine, store, workers, Calibration.from_json(CAL.to_json()), preset), "s", follow)
    # lossy codec: the answer may differ from the first worker's, but all the stored KV was reused
    assert outcome(resumed) == ("hit", "")
    assert resumed.stats is not None and resumed.stats.source == "store"
    assert resumed.stats.tokens_prefilled == 3 and resumed.stats.bytes_pulled > 0
    assert resumed.stats.codec == f"{preset}.v2.{CAL.digest}"


def test_the_pulled_kv_is_the_codecs_round_trip_of_the_session_kv(
    engine: Engine, workers: list[Worker]
) -> None:
    """What the resume decodes is the stored session's KV through the codec under that calibration."""
    from gearkv.codec import decode
    from gearkv.worker import hf_cache

    store = FakeStore()
    w = worker(engine, store, workers, CAL)
    run(w, "s", PROMPT)
    refs = store.sessions["s"].chunks
    n = len(PROMPT)  # the session also holds the answer's KV; the prompt's alone is compared
    pulled = pull_prefix(store.get_chunks, refs, n, w.geometry, calibration=CAL)
    assert pulled.tokens == n and pulled.kv is not None and not pulled.reason
    gen = engine.generate(PROMPT, SamplingParams(max_new_tokens=1)).run()
    exact = hf_cache.export_kv(gen.cache)
    for ref in refs:
        if ref.end > n:
            break
        part = [(k[:, :, ref.start : ref.end], v[:, :, ref.start : ref.end]) for k, v in exact]
        trip = decode(w.codec.encode(part, start=ref.start), calibration=CAL)
        for (k, v), (tk, tv), (ek, ev) in zip(pulled.kv, trip, part, strict=True):
            for got, want, original in ((k, tk, ek), (v, tv, ev)):
                got = got[:, :, ref.start : ref.end]
                assert (got - want).norm() <= 0.02 * original.norm()  # float noise may move a rare bin
                assert (got - original).norm() < original.norm()  # lossy (random-weight KV), not garbage


def test_another_calibration_is_a_reported_miss_never_a_hit_or_an_error(
    engine: Engine, workers: list[Worker]
) -> None:
    store = FakeStore()
    first = run(worker(engine, store, workers, CAL), "s", PROMPT)
    other = worker(engine, store, workers, OTHER)
    assert other.namespace.codec_id == f"gtc2.v2.{OTHER.digest}" != f"gtc2.v2.{CAL.digest}"
    follow = [*PROMPT, *first.token_ids, 70]
    turn = run(other, "s", follow)
    assert outcome(turn) == ("miss", "calibration_mismatch")
    assert turn.stats is not None and turn.stats.tokens_reused == 0 and turn.token_ids  # answered
    assert "calibration_mismatch" in REASONS
    reg = other.metrics.registry
    assert (
        reg.get_sample_value(
            "gearkv_worker_turns_total", {"outcome": "miss", "reason": "calibration_mismatch"}
        )
        == 1
    )
    assert reg.get_sample_value("gearkv_worker_resume_faults_total", {"reason": "calibration_mismatch"}) == 1
    # its push rewrote the session under its own calibration: the next turn there is a hit
    assert store.sessions["s"].namespace.codec_id == other.namespace.codec_id
    again = run(worker(engine, store, workers, OTHER), "s", [*follow, *turn.token_ids, 71])
    assert outcome(again) == ("hit", "")
    # and another preset altogether is still a codec change
    changed = run(worker(engine, store, workers, None, "gear4"), "s", [*follow, *turn.token_ids, 72])
    assert outcome(changed) == ("miss", "codec_mismatch")


def test_a_pull_under_another_calibration_or_none_stops_with_the_reason(
    engine: Engine, workers: list[Worker]
) -> None:
    store = FakeStore()
    w = worker(engine, store, workers, CAL)
    run(w, "s", PROMPT)
    refs = store.sessions["s"].chunks
    for calibration in (OTHER, None):
        pulled = pull_prefix(store.get_chunks, refs, refs[-1].end, w.geometry, calibration=calibration)
        assert (pulled.tokens, pulled.kv, pulled.reason) == (0, None, "calibration_mismatch")


def test_codec_ids_that_differ_only_by_the_calibration_digest() -> None:
    ref = ChunkRef(key="k" * 64, start=0, end=4, stored_bytes=10, raw_bytes=40)
    a, b = "0123456789abcdef", "fedcba9876543210"

    def fault(stored: str, ours: str) -> str:
        manifest = Manifest(
            session_id="s",
            namespace=Namespace(FP, stored, 4),
            version=1,
            token_ids=(1, 2, 3, 4),
            chunks=(ref,),
        )
        view = view_of_manifest(manifest, Namespace(FP, ours, 4))
        if view.fault:
            assert (view.token_ids, view.chunks) == ((), ())
        return view.fault

    assert fault(f"gtc2.v2.{a}", f"gtc2.v2.{a}") == ""
    assert fault(f"gtc2.v2.{a}", f"gtc2.v2.{b}") == "calibration_mismatch"
    assert fault(f"custom.v2.0123456789ab.{a}", f"custom.v2.0123456789ab.{b}") == "calibration_mismatch"
    assert fault(f"gtc2.v2.{a}", f"gtc3.v2.{a}") == "codec_mismatch"
    assert fault("gear4.v1", f"gtc2.v2.{a}") == "codec_mismatch"
    assert fault("custom.v1.0123456789ab", "custom.v1.ba9876543210") == "codec_mismatch"
    assert fault("gear4.v1", "gear3.v1") == "codec_mismatch"


# -- start-up errors -------------------------------------------------------------------------------


def test_a_gtc_preset_needs_a_calibration_of_this_model_and_its_layers(engine: Engine) -> None:
    with pytest.raises(CalibrationMismatch, match="--codec gtc2 needs --codec-calibration"):
        Worker(engine, None, SessionOptions(codec="gtc2"), fingerprint=FP)
    elsewhere = Calibration.uniform(2, fingerprint="another:1")
    with pytest.raises(CalibrationMismatch, match=r"--codec-calibration: .*made for model another:1"):
        Worker(engine, None, SessionOptions(codec="gtc2"), fingerprint=FP, calibration=elsewhere)
    with pytest.raises(CalibrationMismatch, match=r"--codec-calibration: .* covers 3 KV layers"):
        Worker(engine, None, SessionOptions(codec="gtc3"), fingerprint=FP, calibration=Calibration.uniform(3))
    # a calibration bound to no model (uniform steps) is accepted; presets without one ignore it
    w = Worker(engine, None, SessionOptions(codec="gtc2"), fingerprint=FP, calibration=Calibration.uniform(2))
    w.close()
    plain = Worker(engine, None, SessionOptions(codec="gear4"), fingerprint=FP, calibration=CAL)
    assert plain.codec.codec_id == "gear4.v1" and plain.calibration is None
    plain.close()


def test_the_options_file_is_loaded_and_a_damaged_one_names_the_flag(engine: Engine, tmp_path: Path) -> None:
    path = CAL.save(tmp_path / "cal.json")
    w = Worker(engine, None, SessionOptions(codec="gtc2", codec_calibration=str(path)), fingerprint=FP)
    assert w.calibration == CAL and w.namespace.codec_id == f"gtc2.v2.{CAL.digest}"
    w.close()
    path.write_text(path.read_text().replace("0.75", "0.8"))  # edited: the checksum no longer matches
    with pytest.raises(CalibrationError, match=r"^--codec-calibration: .*checksum mismatch"):
        Worker(engine, None, SessionOptions(codec="gtc2", codec_calibration=str(path)), fingerprint=FP)
    with pytest.raises(CalibrationError, match=r"^--codec-calibration: cannot read"):
        Worker(
            engine,
            None,
            SessionOptions(codec="gtc2", codec_calibration=str(tmp_path / "no.json")),
            fingerprint=FP,
        )


def test_with_a_sharing_plan_the_calibration_must_cover_the_stored_layers_only() -> None:
    from gearkv.worker.sharing import SharingPlan
    from test_worker_sharing_turns import LAYERS
    from test_worker_sharing_turns import engine as sharing_engine

    plan = SharingPlan(FP, LAYERS, ((2, 0), (3, 1)))
    planned = sharing_engine(plan)
    assert planned.kv_layers == 2
    full = Calibration.uniform(LAYERS, fingerprint=FP)
    with pytest.raises(CalibrationMismatch, match=r"with --sharing-plan only the 2 owner layers are stored"):
        Worker(planned, None, SessionOptions(codec="gtc2"), fingerprint=FP, calibration=full)
    owners = Calibration.uniform(2, fingerprint=FP)
    w = Worker(planned, FakeStore(), SessionOptions(codec="gtc2", chunk_size=8, background_push=False),
               fingerprint=FP, calibration=owners)  # fmt: skip
    try:
        turn = w.generate(PROMPT, PARAMS, session_id="s").run()
        assert turn.push is not None and turn.push.result().committed
    finally:
        w.close(timeout=5)


def test_build_worker_reads_the_file_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: Engine
) -> None:
    import gearkv.worker.app as app

    def no_model(*args: Any, **kw: Any) -> Any:
        raise AssertionError("the model must not load before the calibration is read")

    monkeypatch.setattr(app, "load_model", no_model)
    with pytest.raises(CalibrationMismatch, match="needs --codec-calibration"):
        app.build_worker(WorkerConfig(session=SessionOptions(codec="gtc2")))
    with pytest.raises(CalibrationError, match="--codec-calibration: cannot read"):
        cfg = WorkerConfig(session=SessionOptions(codec="gtc2", codec_calibration=str(tmp_path / "no.json")))
        app.build_worker(cfg)
    monkeypatch.setattr(app, "model_fingerprint", lambda _loaded: FP)
    path = CAL.save(tmp_path / "cal.json")
    cfg = WorkerConfig(session=SessionOptions(codec="gtc2", codec_calibration=str(path)))
    w = app.build_worker(cfg, loaded=engine.loaded)
    try:
        assert w.calibration == CAL and w.codec.codec_id == f"gtc2.v2.{CAL.digest}"
    finally:
        w.close(timeout=5)
    monkeypatch.setattr(app, "model_fingerprint", lambda _loaded: "another:1")
    with pytest.raises(CalibrationMismatch, match=r"--codec-calibration: .*made for model tiny:0"):
        app.build_worker(cfg, loaded=engine.loaded)


def test_serve_reports_a_bad_calibration_and_exits_2(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from gearkv.worker.app import serve

    bad = tmp_path / "cal.json"
    bad.write_text("{not json")
    cfg = WorkerConfig(port=0, session=SessionOptions(codec="gtc2", codec_calibration=str(bad)))
    with caplog.at_level(logging.ERROR, logger="gearkv.worker"):
        assert serve(cfg) == 2
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage().startswith("--codec-calibration: ") and str(bad) in record.getMessage()
    assert record.exc_info is None  # a message, no traceback


def test_the_flag_and_variable(capsys: pytest.CaptureFixture[str]) -> None:
    from gearkv.worker.cli import config_from_args

    cfg = config_from_args(["--codec", "gtc2", "--codec-calibration", "c.json"], env={})
    assert (cfg.session.codec, cfg.session.codec_calibration) == ("gtc2", "c.json")
    env = {"GEARKV_CODEC": "gtc3", "GEARKV_CODEC_CALIBRATION": "d.json"}
    assert config_from_args([], env=env).session.codec_calibration == "d.json"
    assert config_from_args([], env={}).session.codec_calibration is None
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        config_from_args(["--codec", "gtc2"], env={})
    assert exc.value.code == 2
    assert "--codec gtc2 needs --codec-calibration FILE" in capsys.readouterr().err


# -- demo and bench --------------------------------------------------------------------------------


class _Status:
    def __init__(self) -> None:
        self.shown: list[str] = []

    def update(self, text: str) -> None:
        self.shown.append(text)


class _Console:
    def __init__(self) -> None:
        self.printed: list[str] = []

    def print(self, text: str) -> None:
        self.printed.append(text)


def test_the_demo_calibrates_on_first_use_and_then_reuses_the_cached_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: Engine
) -> None:
    import gearkv.worker.codec_calibration as cc
    from gearkv.worker.demo import demo_calibration

    made: list[str] = []

    def ensure(loaded: Any, fingerprint: str, path: Path | None = None, *, progress: Any = None) -> Any:
        assert loaded is engine.loaded and path == tmp_path / f"{fingerprint}.json"
        if path.is_file():
            return Calibration.load(path)
        made.append(fingerprint)
        for i in range(4):
            progress(i + 1, 4, f"layer {i}")
        return CAL.save(path) and CAL

    monkeypatch.setattr(cc, "ensure_calibration", ensure)
    monkeypatch.setattr(cc, "default_calibration_path", lambda fp: tmp_path / f"{fp}.json")
    args = argparse.Namespace(codec="gtc2", codec_calibration=None)
    status, console = _Status(), _Console()
    assert demo_calibration(args, engine.loaded, FP, status, console) == CAL
    assert made == [FP] and any("4/4" in s for s in status.shown)
    assert any("made on first use" in p for p in console.printed)
    status, console = _Status(), _Console()
    assert demo_calibration(args, engine.loaded, FP, status, console) == CAL
    assert made == [FP] and not any("4/4" in s for s in status.shown)  # cached: not calibrated again
    # an explicit file; and none for a preset without calibration
    other = OTHER.save(tmp_path / "other.json")
    args = argparse.Namespace(codec="gtc3", codec_calibration=other)
    assert demo_calibration(args, engine.loaded, FP, _Status(), _Console()) == OTHER
    args = argparse.Namespace(codec="gear4", codec_calibration=None)
    assert demo_calibration(args, engine.loaded, FP, _Status(), _Console()) is None


def test_the_demo_refuses_a_first_use_calibration_under_a_sharing_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gearkv.worker import demo

    assert demo.main(["--codec", "gtc2", "--sharing-plan", str(tmp_path / "plan.json")]) == 2
    assert "--codec-calibration" in capsys.readouterr().err


def test_bench_resume_takes_the_gtc_presets_and_a_calibration_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gearkv.bench import resume

    assert resume._check_presets(["gear4", "gtc2", "gtc3"]) == []
    bad = tmp_path / "cal.json"
    bad.write_text("[]")
    with pytest.raises(SystemExit) as exc:
        resume.main(["--presets", "gtc2", "--codec-calibration", str(bad)])
    assert exc.value.code == 2
    assert "--codec-calibration: " in capsys.readouterr().err
