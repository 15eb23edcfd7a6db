"""`gearkv chat` input handling, with a stand-in for the worker's stub (no network)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from gearkv.api.v1 import worker_pb2 as pb
from gearkv.api.v1 import worker_pb2_grpc
from gearkv.worker import chat


class FakeStub:
    """Records each ChatRequest and answers with one text piece and the stats."""

    requests: list[pb.ChatRequest]

    def __init__(self, channel: Any) -> None:
        pass

    def Chat(self, request: pb.ChatRequest, timeout: float | None = None) -> Iterator[pb.GenerateResponse]:
        FakeStub.requests.append(request)
        yield pb.GenerateResponse(text="ok")
        yield pb.GenerateResponse(stats=pb.TurnStats(), finish_reason="length")


def run_chat(monkeypatch: pytest.MonkeyPatch, lines: list[str], *argv: str) -> list[pb.ChatRequest]:
    FakeStub.requests = []
    monkeypatch.setattr(worker_pb2_grpc, "WorkerStub", FakeStub)
    feed = iter(lines)
    monkeypatch.setattr("builtins.input", lambda _prompt="": next(feed))
    assert chat.main(["--worker", "127.0.0.1:1", "--no-stats", *argv]) == 0
    return FakeStub.requests


@pytest.mark.parametrize("bad", ["x", "0", "-1", "1.5", "2 3", "٣"])
def test_rewind_rejects_what_is_not_a_positive_whole_number(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    sent = run_chat(monkeypatch, [f"/rewind {bad}", "/quit"])
    assert sent == []  # nothing was sent for the bad command
    assert "error: /rewind" in capsys.readouterr().err
    sent = run_chat(monkeypatch, [f"/rewind {bad}", "hello", "/quit"])
    assert [(r.message, r.rewind_turns) for r in sent] == [("hello", 0)]  # and no rewind pending


def test_rewind_takes_effect_on_the_next_message_only(monkeypatch: pytest.MonkeyPatch) -> None:
    sent = run_chat(monkeypatch, ["first", "/rewind 2", "again", "then", "/rewind", "once more", "/quit"])
    assert [(r.message, r.rewind_turns) for r in sent] == [
        ("first", 0),
        ("again", 2),
        ("then", 0),
        ("once more", 1),
    ]


@pytest.mark.parametrize("value", ["-5", "0", "ten"])
def test_max_new_tokens_must_be_positive(capsys: pytest.CaptureFixture[str], value: str) -> None:
    with pytest.raises(SystemExit) as exc:
        chat.main(["--max-new-tokens", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--max-new-tokens" in err and "Traceback" not in err


def test_max_new_tokens_error_from_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gearkv.cli", "chat", "--max-new-tokens", "-5"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done.stderr
    assert "argument --max-new-tokens: must be at least 1, got -5" in done.stderr
    assert "Traceback" not in done.stderr
