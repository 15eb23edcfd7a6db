"""proto <-> dataclass conversion round trips (pure)."""

from __future__ import annotations

from gearkv.api.v1 import kvstore_pb2 as pb
from gearkv.client import ChatMessage, ChunkRef, Manifest, Namespace
from gearkv.client import _convert as cv
from hypothesis import given
from hypothesis import strategies as st

NS = Namespace(fingerprint="smollm2-135m:3f9a", codec_id="gear4/v1", chunk_size=256)

u32 = st.integers(min_value=0, max_value=2**32 - 1)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
keys = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
refs = st.builds(ChunkRef, key=keys, start=u32, end=u32, stored_bytes=u64, raw_bytes=u64)
messages = st.builds(ChatMessage, role=st.sampled_from(["system", "user", "assistant"]), content=st.text())
manifests = st.builds(
    Manifest,
    session_id=st.from_regex(r"[A-Za-z0-9._:\-]{1,128}", fullmatch=True),
    namespace=st.just(NS),
    token_ids=st.lists(u32, max_size=50).map(tuple),
    chunks=st.lists(refs, max_size=5).map(tuple),
    messages=st.lists(messages, max_size=5).map(tuple),
    turns=u32,
    version=u64,
    created_ms=i64,
    updated_ms=i64,
    raw_bytes=u64,
    stored_bytes=u64,
    attributes=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=5),
)


@given(manifests)
def test_manifest_round_trip(m: Manifest) -> None:
    wire = cv.manifest_to_pb(m).SerializeToString()
    assert cv.manifest_from_pb(pb.Manifest.FromString(wire)) == m


def test_manifest_accepts_lists_and_freezes_them() -> None:
    m = Manifest("s1", NS, token_ids=[1, 2, 3], chunks=[], messages=[ChatMessage("user", "hi")])
    assert m.token_ids == (1, 2, 3) and isinstance(m.messages, tuple)
    assert m == Manifest("s1", NS, token_ids=(1, 2, 3), messages=(ChatMessage("user", "hi"),))


def test_namespace_round_trip() -> None:
    assert cv.namespace_from_pb(cv.namespace_to_pb(NS)) == NS


def test_response_parsers() -> None:
    ref = pb.ChunkRef(key="a" * 64, start=0, end=256, stored_bytes=10, raw_bytes=40)
    match = cv.prefix_match_from_pb(
        pb.LookupPrefixResponse(chunks=[ref], matched_tokens=200, session_version=3, reason="missing chunk")
    )
    assert match.chunks == (ChunkRef("a" * 64, 0, 256, 10, 40),)
    assert (match.matched_tokens, match.session_version, match.reason) == (200, 3, "missing chunk")
    assert match.chunks[0].tokens == 256

    put = cv.put_result_from_pb(pb.PutChunkResponse(key="b" * 64, deduplicated=True, stored_bytes=9))
    assert (put.key, put.deduplicated, put.stored_bytes) == ("b" * 64, True, 9)

    row = cv.session_summary_from_pb(
        pb.SessionSummary(session_id="s", version=2, turns=2, tokens=300, raw_bytes=8, stored_bytes=2)
    )
    assert (row.session_id, row.version, row.tokens) == ("s", 2, 300)

    stats = cv.stats_from_pb(pb.GetStatsResponse(tenant="alice", raw_bytes=400, stored_bytes=100))
    assert stats.tenant == "alice" and stats.compression_ratio == 4.0
    assert cv.stats_from_pb(pb.GetStatsResponse()).compression_ratio == 0.0
