"""Worker building blocks without network: hot cache, chunk planning, fingerprints, pull/push logic
(with an in-memory stand-in for the SDK), CLI parsing and proto parameter mapping."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch
import transformers
from gearkv.client import ChunkRef, Namespace, errors
from gearkv.client.keys import chain
from gearkv.codec import Codec
from gearkv.worker import hf_cache
from gearkv.worker.chunking import common_prefix, plan_push, session_spans
from gearkv.worker.cli import config_from_args, parse_size
from gearkv.worker.fingerprint import model_fingerprint
from gearkv.worker.hot_cache import HotCache, HotEntry
from gearkv.worker.metrics import WorkerMetrics, bounded_reason
from gearkv.worker.model import LoadedModel
from gearkv.worker.transfer import KVGeometry, pull_prefix, push_turn
from support.fake_store import FakeStore

NS = Namespace("tiny:0123", "raw.v1", 4)
GEOM = KVGeometry(layers=2, kv_heads=2, head_dim=8, device=torch.device("cpu"), dtype=torch.float32)


def kv_of(tokens: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(1, 2, tokens, 8, generator=g), torch.randn(1, 2, tokens, 8, generator=g))
        for _ in range(2)
    ]


# -- hot cache -----------------------------------------------------------------------------------


def test_hot_cache_is_a_byte_bounded_lru() -> None:
    one = HotEntry((1, 2, 3), kv_of(3))
    size = one.nbytes
    cache = HotCache(max_bytes=2 * size)
    assert cache.put("a", one) and cache.put("b", HotEntry((4,), kv_of(3)))
    assert cache.get("a") is one  # "a" is now the most recent
    assert cache.put("c", HotEntry((5,), kv_of(3)))
    assert cache.get("b") is None and cache.get("a") is one and cache.get("c") is not None
    assert cache.nbytes == 2 * size and len(cache) == 2
    assert not cache.put("huge", HotEntry((1,), kv_of(9)))
    assert cache.get("huge") is None
    cache.discard("a")
    assert cache.nbytes == size
    assert not HotCache(0).put("x", one)
    with pytest.raises(ValueError, match="hot_cache_bytes"):
        HotCache(-1)


# -- chunk planning ------------------------------------------------------------------------------


def test_spans_are_aligned_and_only_new_chunks_are_planned() -> None:
    ids = list(range(10))
    spans = session_spans(NS, ids)
    assert [(s.start, s.end) for s in spans] == [(0, 4), (4, 8), (8, 10)]
    stored = [ChunkRef(spans[0].key, 0, 4, 10, 20), ChunkRef("f" * 64, 0, 4, 1, 1)]
    todo, known = plan_push(spans, stored)
    assert [s.start for s in todo] == [4, 8] and list(known) == [spans[0].key]
    # growing past the tail: the full chunk replaces it, earlier chunks keep their keys
    grown = session_spans(NS, [*ids, 10, 11])
    assert grown[:2] == spans[:2] and grown[2].key != spans[2].key and grown[2].end == 12
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2 and common_prefix([], [1]) == 0


# -- fingerprints --------------------------------------------------------------------------------


class _Tok:
    def __init__(self, extra: str = "") -> None:
        self.vocab = {"a": 0, "b": 1, extra or "c": 2}
        self.all_special_tokens = ["<s>"]

    def get_vocab(self) -> dict[str, int]:
        return self.vocab


def _loaded(
    name: str = "tiny", layers: int = 2, dtype: torch.dtype = torch.float32, seed: int = 0, tok: str = ""
) -> LoadedModel:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = transformers.LlamaForCausalLM(cfg).to(dtype)
    return LoadedModel(model, _Tok(tok), name, torch.device("cpu"), dtype)


def test_fingerprint_is_valid_stable_and_sensitive() -> None:
    base = model_fingerprint(_loaded())
    Namespace(base, "gear4.v1", 256)  # valid as a namespace fingerprint
    assert base.startswith("tiny:") and base == model_fingerprint(_loaded())
    others = {
        model_fingerprint(_loaded(layers=3)),
        model_fingerprint(_loaded(dtype=torch.bfloat16)),
        model_fingerprint(_loaded(seed=1)),
        model_fingerprint(_loaded(tok="d")),
        model_fingerprint(_loaded(name="other model/7B")),
    }
    assert base not in others and len(others) == 5
    weird = model_fingerprint(_loaded(name="org/My Model (v2)!"))
    Namespace(weird, "gear4.v1", 256)


# -- pull: pipelined decode with faults ----------------------------------------------------------


def _blobs(
    kv: list[tuple[torch.Tensor, torch.Tensor]], ids: list[int]
) -> tuple[list[ChunkRef], dict[str, bytes]]:
    codec = Codec.from_preset("raw")
    refs, blobs = [], {}
    for span in chain(NS, ids):
        part = [(k[:, :, span.start : span.end], v[:, :, span.start : span.end]) for k, v in kv]
        blob = codec.encode(part, start=span.start)
        refs.append(ChunkRef(span.key, span.start, span.end, len(blob), 0))
        blobs[span.key] = blob
    return refs, blobs


def _fetcher(blobs: dict[str, bytes], fail: dict[str, Exception] | None = None) -> Any:
    def get_chunks(keys: Sequence[str]) -> Iterator[bytes]:
        for key in keys:
            if fail and key in fail:
                raise fail[key]
            yield blobs[key]

    return get_chunks


def test_pull_rebuilds_the_exact_prefix() -> None:
    kv, ids = kv_of(10), list(range(10))
    refs, blobs = _blobs(kv, ids)
    got = pull_prefix(_fetcher(blobs), refs, 9, GEOM)
    assert (got.tokens, got.chunks, got.reason) == (9, 3, "")
    assert got.bytes_pulled == sum(len(b) for b in blobs.values())
    assert got.kv is not None
    for (k, v), (gk, gv) in zip(kv, got.kv, strict=True):
        assert torch.equal(k[:, :, :9], gk) and torch.equal(v[:, :, :9], gv)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (errors.ChunkNotFound("gone"), "chunk_missing"),
        (errors.ChunkCorrupt("bad digest"), "chunk_corrupt"),
        (errors.KVStoreUnavailable("down"), "store_unavailable"),
    ],
)
def test_a_fault_keeps_the_chunks_before_it(fault: Exception, reason: str) -> None:
    kv, ids = kv_of(10), list(range(10))
    refs, blobs = _blobs(kv, ids)
    got = pull_prefix(_fetcher(blobs, {refs[1].key: fault}), refs, 10, GEOM)
    assert (got.tokens, got.reason) == (4, reason)
    assert got.kv is not None and torch.equal(got.kv[0][0], kv[0][0][:, :, :4])


def test_corrupt_blob_and_foreign_geometry_are_rejected() -> None:
    kv, ids = kv_of(10), list(range(10))
    refs, blobs = _blobs(kv, ids)
    damaged = dict(blobs)
    damaged[refs[0].key] = blobs[refs[0].key][:-3] + b"\x00\x00\x00"
    got = pull_prefix(_fetcher(damaged), refs, 10, GEOM)
    assert (got.tokens, got.kv, got.reason) == (0, None, "chunk_corrupt")
    wrong = KVGeometry(layers=3, kv_heads=2, head_dim=8, device=torch.device("cpu"), dtype=torch.float32)
    got = pull_prefix(_fetcher(blobs), refs, 10, wrong)
    assert (got.tokens, got.reason) == (0, "fingerprint_mismatch")


@pytest.mark.parametrize("damage", ["v_head_dim", "later_chunk_heads"])
def test_every_layer_and_chunk_must_have_the_model_shape(damage: str) -> None:
    kv, ids = kv_of(10), list(range(10))
    refs, blobs = _blobs(kv, ids)
    codec = Codec.from_preset("raw")
    if damage == "v_head_dim":  # V narrower than the model's head_dim: K alone looks right
        geom = GEOM
        bad = [(k[:, :, 4:8], v[:, :, 4:8, :4]) for k, v in kv]
    else:  # geometry without head counts: a 1-head chunk must not be broadcast into 2 heads
        geom = KVGeometry(layers=2, kv_heads=None, head_dim=None, device=GEOM.device, dtype=GEOM.dtype)
        bad = [(k[:, :1, 4:8], v[:, :1, 4:8]) for k, v in kv]
    blobs[refs[1].key] = codec.encode(bad, start=4)
    got = pull_prefix(_fetcher(blobs), refs, 10, geom)
    assert (got.tokens, got.reason) == (4, "fingerprint_mismatch")
    assert got.kv is not None and torch.equal(got.kv[1][1], kv[1][1][:, :, :4])


def test_pull_stops_at_a_gap_in_the_chunk_list() -> None:
    kv, ids = kv_of(10), list(range(10))
    refs, blobs = _blobs(kv, ids)
    got = pull_prefix(_fetcher(blobs), [refs[0], refs[2]], 10, GEOM)
    assert got.tokens == 4 and got.reason == ""


# -- push: only new chunks, then the commit ------------------------------------------------------


def test_push_sends_only_new_chunks_and_commits_the_whole_session() -> None:
    kv, ids = kv_of(10), list(range(10))
    client = FakeStore()
    codec = Codec.from_preset("raw")
    first = push_turn(client, codec, NS, kv, ids, (), session_id="s", expected_version=0, turns=1)
    assert [p[1:] for p in client.puts] == [(0, 4), (4, 4), (8, 2)]
    assert first.committed and first.version == 1 and first.bytes_raw == hf_cache.kv_nbytes(kv, 2)
    assert [p[0] for p in client.puts] == [c.key for c in first.chunks] == list(client.chunks)
    client.puts.clear()
    grown = [(torch.cat([k, k[:, :, :3]], 2), torch.cat([v, v[:, :, :3]], 2)) for k, v in kv]
    push_turn(
        client,
        codec,
        NS,
        grown,
        [*ids, 10, 11, 12],
        first.chunks,
        session_id="s",
        expected_version=1,
        turns=2,
    )
    assert [p[1:] for p in client.puts] == [(8, 4), (12, 1)]  # the tail became a full chunk
    manifest = client.sessions["s"]  # committed at expected version 1: now version 2
    assert (
        manifest.version == 2 and [c.start for c in manifest.chunks] == [0, 4, 8, 12] and manifest.turns == 2
    )
    anonymous = push_turn(client, codec, NS, kv, ids, (), session_id=None)
    assert not anonymous.committed and client.calls["commit_turn"] == 2
    with pytest.raises(ValueError, match="positions"):
        push_turn(client, codec, NS, kv, ids[:5], (), session_id=None)


# -- CLI, metrics --------------------------------------------------------------------------------


def test_sizes_and_cli_config() -> None:
    assert parse_size("512MiB") == 512 << 20 and parse_size("1g") == 1 << 30 and parse_size("0") == 0
    cfg = config_from_args(
        ["--store", "127.0.0.1:5", "--chunk-size", "128", "--hot-cache-bytes", "64m"],
        env={"GEARKV_CODEC": "gear3", "GEARKV_TOKEN": "tok", "GEARKV_WORKER_PORT": "7"},
    )
    assert (cfg.store, cfg.token, cfg.port) == ("127.0.0.1:5", "tok", 7)
    assert (cfg.session.codec, cfg.session.chunk_size, cfg.session.hot_cache_bytes) == (
        "gear3",
        128,
        64 << 20,
    )
    assert config_from_args(["--codec", "gear2"], env={"GEARKV_CODEC": "gear3"}).session.codec == "gear2"
    for argv, env in [
        (["--codec", "zip"], {}),
        (["--chunk-size", "0"], {}),
        ([], {"GEARKV_CHUNK_SIZE": "x"}),
        (["--hot-cache-bytes", "lots"], {}),
    ]:
        with pytest.raises(SystemExit) as exc:
            config_from_args(argv, env=env)
        assert exc.value.code == 2


def test_metric_labels_stay_bounded() -> None:
    m = WorkerMetrics()
    m.turn("miss", "chunk_missing")
    m.fault("session abc123 exploded")  # never a free-form label value
    assert bounded_reason("session abc123") == "other"
    assert m.registry.get_sample_value("gearkv_worker_resume_faults_total", {"reason": "other"}) == 1.0


def test_params_from_proto_defaults_and_errors() -> None:
    from gearkv.api.v1 import worker_pb2 as pb
    from gearkv.worker.errors import InvalidRequest
    from gearkv.worker.service import params_from_proto

    p = params_from_proto(pb.GenerationParams())
    assert (p.max_new_tokens, p.temperature, p.top_p, p.stop) == (256, 0.0, 1.0, ())
    with pytest.raises(InvalidRequest, match="temperature"):
        params_from_proto(pb.GenerationParams(temperature=-1))
    with pytest.raises(InvalidRequest, match="top_p"):
        params_from_proto(pb.GenerationParams(top_p=2))
