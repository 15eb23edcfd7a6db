"""The worker's session records: bounded, never dropping an answered turn no commit has yet."""

from __future__ import annotations

from gearkv.client import ChatMessage, ChunkRef, Manifest
from gearkv.client.keys import Namespace
from gearkv.worker.session_records import SessionTable, TurnView, merge_refs, view_of_manifest, view_of_record

NS = Namespace("model-a:0123456789abcdef", "gear4/v1", 4)
HI = (ChatMessage("user", "hi"),)


def test_the_table_drops_synced_records_first_and_never_unsynced_ones() -> None:
    table = SessionTable(capacity=2)
    for sid in ("a", "b", "c"):
        table.answered(sid, TurnView(), HI, [1, 2])  # all unsynced: none may go
    assert list(table) == ["a", "b", "c"] and table.unsynced() == ["a", "b", "c"]
    for sid in ("a", "b"):
        record = table.get(sid)
        assert record is not None
        record.unsynced = False
    table.get("a", touch=True)  # a is now the most recently used
    table.answered("d", TurnView(), HI, [3])
    assert list(table) == ["c", "d"]  # back to capacity: the synced ones went, c (unsynced) stayed
    record = table.get("d")
    assert record is not None and (record.seq, record.turns, record.token_ids) == (1, 1, (3,))
    table.answered("d", TurnView(turns=1), HI, [3, 4])
    assert record.seq == 2 and record.turns == 2 and record.unsynced
    table.drop("d")
    assert table.get("d") is None and len(table) == 1


def test_views_of_a_record_and_of_a_manifest() -> None:
    assert view_of_record(None).new and not view_of_record(None).from_local
    table = SessionTable()
    record = table.answered("s", TurnView(version=3), HI, [1, 2, 3])
    view = view_of_record(record)
    assert (view.version, view.token_ids, view.from_local, view.new) == (3, (1, 2, 3), True, False)
    ref = ChunkRef(key="k" * 64, start=0, end=4, stored_bytes=10, raw_bytes=40)
    manifest = Manifest(
        session_id="s", namespace=NS, version=2, token_ids=(1, 2, 3, 4), chunks=(ref,), messages=HI, turns=1
    )
    assert view_of_manifest(manifest, NS).chunks == (ref,)
    for other, fault in (
        (Namespace("model-b:0123456789abcdef", "gear4/v1", 4), "fingerprint_mismatch"),
        (Namespace(NS.fingerprint, "gear2/v1", 4), "codec_mismatch"),
        (Namespace(NS.fingerprint, "gear4/v1", 8), "namespace_mismatch"),
    ):
        seen = view_of_manifest(manifest, other)
        assert (seen.fault, seen.token_ids, seen.chunks, seen.messages) == (fault, (), (), HI)


def test_merge_refs_keeps_the_first_of_each_key() -> None:
    a = ChunkRef(key="a" * 64, start=0, end=4, stored_bytes=1, raw_bytes=4)
    a2 = ChunkRef(key="a" * 64, start=0, end=4, stored_bytes=2, raw_bytes=4)
    b = ChunkRef(key="b" * 64, start=4, end=8, stored_bytes=1, raw_bytes=4)
    assert merge_refs([a], [a2, b]) == (a, b)
