"""The fuzz gate (gearkv.bench.fuzz.FuzzRecorder) flags what it must: no stack, no network."""

from __future__ import annotations

import logging

import grpc
from gearkv.bench.fuzz import FuzzRecorder

CANARY = "canary-0123456789abcdef"


def clean() -> FuzzRecorder:
    rec = FuzzRecorder(CANARY)
    rec.record("GetSession", grpc.StatusCode.OK, blobs=[b"\x0a\x02ok"])
    rec.record("GetSession", grpc.StatusCode.INVALID_ARGUMENT, "session_id must be 1-128 chars")
    rec.scan_log("gearkv.store", logging.INFO, "gearkv store listening on 127.0.0.1:1")
    rec.scan_text("store metrics", 'gearkv_store_requests_total{method="GetSession",code="OK"} 1.0')
    return rec


def test_a_clean_run_passes_and_counts_inputs_and_statuses() -> None:
    report = clean().report()
    assert report["gate"] == "pass"
    assert report["inputs_tried"] == {"GetSession": 2}
    assert report["statuses"] == {"GetSession": {"INVALID_ARGUMENT": 1, "OK": 1}}
    assert report["unknown_status"] == report["internal_status"] == report["crashes"] == report["leaks"] == 0


def test_a_planted_unknown_or_internal_status_fails_the_gate() -> None:
    for code, field in (
        (grpc.StatusCode.UNKNOWN, "unknown_status"),
        (grpc.StatusCode.INTERNAL, "internal_status"),
    ):
        rec = clean()
        rec.record("PutChunk", code, "boom")
        report = rec.report()
        assert report[field] == 1 and report["gate"] == "fail"


def test_the_canary_in_a_log_line_a_response_or_metrics_is_a_leak() -> None:
    plants = [
        lambda r: r.scan_log("gearkv.worker", logging.DEBUG, f"connecting with token {CANARY}"),
        lambda r: r.record("GetStats", grpc.StatusCode.OK, blobs=[f"x{CANARY}y".encode()]),
        lambda r: r.record("GetStats", grpc.StatusCode.UNAUTHENTICATED, f"unknown token {CANARY}"),
        lambda r: r.record("GetStats", grpc.StatusCode.OK, blobs=[f"trailer=({CANARY!r})"]),
        lambda r: r.scan_text("store metrics", f'gearkv_x{{tenant="{CANARY}"}} 1'),
    ]
    for plant in plants:
        rec = clean()
        plant(rec)
        report = rec.report()
        assert report["leaks"] == 1 and report["gate"] == "fail", report["findings"]


def test_exception_text_in_a_status_message_is_a_leak_unless_the_caller_sent_it() -> None:
    for details in (
        "Traceback (most recent call last):\n  boom",
        "internal: KeyError('tenant')",
        'File "/srv/gearkv/store/servicer.py", line 12, in get',
        "bad value <object object at 0x7f3a2b>",
    ):
        rec = clean()
        rec.record("CommitTurn", grpc.StatusCode.INVALID_ARGUMENT, details)
        assert rec.report()["leaks"] == 1, details
    rec = clean()
    echoed = "role 'ValueError(' is not allowed"
    rec.record("CommitTurn", grpc.StatusCode.INVALID_ARGUMENT, echoed, request_text="role: 'ValueError('")
    assert rec.report()["leaks"] == 0


def test_a_handler_crash_logged_by_grpc_or_a_traceback_in_a_log_line_fails_the_gate() -> None:
    rec = clean()
    rec.scan_log("grpc._server", logging.ERROR, "Exception calling application: boom\nTraceback ...")
    assert rec.report()["crashes"] == 1
    rec = clean()
    rec.scan_log("gearkv.store", logging.ERROR, "push failed", has_traceback=True)
    assert rec.report()["leaks"] == 1
    rec = clean()
    rec.crash("worker", "does not answer health after the fuzz")
    assert rec.report()["gate"] == "fail"


def test_no_inputs_is_not_a_pass() -> None:
    assert FuzzRecorder(CANARY).report()["gate"] == "fail"
