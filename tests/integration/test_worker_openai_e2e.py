"""The worker's OpenAI-compatible HTTP API end to end: the official ``openai`` client (streaming and
not) against real uvicorn servers on loopback, the real model, the real store and redis-server.

- a 5-turn stateless conversation (every request re-sends the whole history): each turn from the
  second reuses every full chunk of the previous turn's prompt and answer, and >= 90 % of them;
- two workers on one store, turns alternating between them, still reuse it all;
- two API keys (two store tenants) never reuse each other's chunks;
- malformed bodies, unknown models and keys get OpenAI error objects with the right statuses;
- the store down: the turn still answers, recomputed, and says why.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from gearkv.client import KVStoreClient
from gearkv.store.local import free_port
from gearkv.worker import demo
from gearkv.worker.api_keys import parse_api_keys
from gearkv.worker.config import SessionOptions
from gearkv.worker.demo import build_script, load_passages
from gearkv.worker.engine import Engine
from gearkv.worker.metrics import WorkerMetrics
from gearkv.worker.openai_api import HttpApi
from gearkv.worker.sessions import Worker
from support.store import StoreHandle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "SmolLM2-135M-Instruct"
CHUNK = 32
ANSWER_TOKENS = 40


@dataclass
class Served:
    api: HttpApi
    worker: Worker

    @property
    def base_url(self) -> str:
        return f"http://{self.api.address}/v1"

    def client(self, key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=120)


@pytest.fixture
def serve(engine: Engine, fingerprint: str, store: StoreHandle) -> Iterator[Callable[..., Served]]:
    """``serve(token=..., keys=...)``: a Worker on the store (alice's token by default) behind a
    started HTTP API on a free loopback port."""
    made: list[Served] = []
    clients: list[KVStoreClient] = []

    def connect(token: str, address: str | None = None) -> KVStoreClient:
        client = KVStoreClient(address or store.address, token=token, timeout=10)
        clients.append(client)
        return client

    def make(token: str | None = None, keys: str = "", address: str | None = None) -> Served:
        opts = SessionOptions(codec="gear4", chunk_size=CHUNK, hot_cache_bytes=0)
        client = connect(token or store.tokens["alice"], address)
        worker = Worker(engine, client, opts, WorkerMetrics(), fingerprint=fingerprint)
        api = HttpApi(keys=parse_api_keys(keys) if keys else (), connect=connect)
        api.attach(worker)
        api.start()
        made.append(Served(api, worker))
        return made[-1]

    yield make
    for served in made:
        served.api.stop(1)
        served.worker.close(10)
    for client in clients:
        client.close()


def ask(client: openai.OpenAI, messages: list[dict[str, str]], *, stream: bool) -> tuple[str, dict[str, Any]]:
    """One turn through the openai client: the answer and the turn's ``gearkv`` figures (with usage)."""
    args: dict[str, Any] = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": ANSWER_TOKENS,
        "temperature": 0,
    }
    if not stream:
        raw = client.chat.completions.with_raw_response.create(**args)
        reply = raw.parse()
        figures = dict(reply.model_extra["gearkv"])
        assert raw.headers["x-gearkv-tokens-reused"] == str(figures["tokens_reused"])
        assert raw.headers["x-gearkv-outcome"] == figures["outcome"]
        assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
        assert reply.usage.prompt_tokens_details.cached_tokens == figures["tokens_reused"]
        figures["completion_tokens"] = reply.usage.completion_tokens
        return reply.choices[0].message.content or "", figures
    text, figures, usage = "", None, None
    for chunk in client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.choices and chunk.choices[0].finish_reason:
            figures = dict(chunk.model_extra["gearkv"])
        if chunk.usage is not None:
            usage = chunk.usage
    assert figures is not None and usage is not None
    figures["completion_tokens"] = usage.completion_tokens
    return text, figures


def converse(
    clients: list[openai.OpenAI], user_turns: list[str], *, stream: Callable[[int], bool]
) -> list[dict[str, Any]]:
    """A stateless conversation: every turn re-sends the whole history; turn i goes to clients[i % n]."""
    messages: list[dict[str, str]] = []
    rows = []
    for i, user in enumerate(user_turns):
        messages.append({"role": "user", "content": user})
        answer, figures = ask(clients[i % len(clients)], messages, stream=stream(i))
        messages.append({"role": "assistant", "content": answer})
        rows.append(figures)
    return rows


def check_reuse(rows: list[dict[str, Any]]) -> list[float]:
    """Each turn from the second reuses every full chunk of the previous turn's context (its prompt
    and answer; the last answer token was sampled, never fed, so it has no KV), and >= 90 % of that
    context. Returns the fractions."""
    fractions = []
    for prev, row in itertools.pairwise(rows):
        context = prev["prompt_tokens"] + prev["completion_tokens"] - 1
        assert row["tokens_reused"] >= context // CHUNK * CHUNK, (prev, row)
        assert row["outcome"] == "hit" and row["source"] == "store", row
        fractions.append(row["tokens_reused"] / context)
    assert min(fractions) >= 0.9, fractions
    return fractions


def test_five_stateless_turns_reuse_the_previous_turns_context(serve: Callable[..., Served]) -> None:
    served = serve()
    user_turns = build_script(load_passages(None), 5)
    rows = converse([served.client()], user_turns, stream=lambda i: i % 2 == 1)
    assert rows[0]["outcome"] == "miss" and rows[0]["tokens_reused"] == 0
    assert all(r["stored"] for r in rows), rows  # each answer's chunks were stored before it completed
    fractions = check_reuse(rows)
    print("reuse of the previous turn's context:", [f"{f:.1%}" for f in fractions])
    print("tokens reused / prompt:", [(r["tokens_reused"], r["prompt_tokens"]) for r in rows])


def test_two_workers_sharing_one_store_alternate_turns_and_still_reuse(serve: Callable[..., Served]) -> None:
    a, b = serve(), serve()
    user_turns = build_script(load_passages(None), 4)
    rows = converse([a.client(), b.client()], user_turns, stream=lambda i: i == 2)
    check_reuse(rows)
    pulled = [r["bytes_pulled"] for r in rows[1:]]
    assert all(p > 0 for p in pulled)  # each from the store, written by the other worker


def test_an_api_key_never_reuses_another_tenants_chunks(
    serve: Callable[..., Served], store: StoreHandle
) -> None:
    keys = json.dumps(
        {
            "alice": {"api_key": "sk-alice", "store_token": store.tokens["alice"]},
            "bob": {"api_key": "sk-bob", "store_token": store.tokens["bob"]},
        }
    )
    served = serve(keys=keys)
    messages = [{"role": "user", "content": build_script(load_passages(None), 1)[0]}]
    _, first = ask(served.client("sk-alice"), messages, stream=False)
    _, again = ask(served.client("sk-alice"), messages, stream=True)
    assert (
        first["tokens_reused"] == 0
        and again["tokens_reused"] >= first["prompt_tokens"] // CHUNK * CHUNK - CHUNK
    )
    _, other = ask(served.client("sk-bob"), messages, stream=False)  # the very same prompt
    assert (other["tokens_reused"], other["outcome"]) == (0, "miss")
    with pytest.raises(openai.AuthenticationError) as denied:
        ask(served.client("sk-mallory"), messages, stream=False)
    assert denied.value.status_code == 401 and denied.value.code == "invalid_api_key"


def post_raw(url: str, data: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_malformed_requests_get_openai_errors(serve: Callable[..., Served]) -> None:
    served = serve()
    client = served.client()
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "hi"}])
    assert bad.value.body["param"] == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as many:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=3)
    assert many.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="hi", echo=True)
    status, body = post_raw(f"{served.base_url}/chat/completions", b'{"model": "x", "messages": [')
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    status, body = post_raw(f"{served.base_url}/completions", json.dumps({"model": MODEL}).encode())
    assert status == 400 and body["error"]["param"] == "prompt"
    text = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=4, temperature=0)
    assert text.choices[0].finish_reason == "length" and text.usage is not None


def test_the_store_down_still_answers_with_the_miss_reported(serve: Callable[..., Served]) -> None:
    served = serve(address=f"127.0.0.1:{free_port()}")  # nothing listens there
    answer, figures = ask(served.client(), [{"role": "user", "content": "Name a color."}], stream=False)
    assert answer and (figures["outcome"], figures["reason"]) == ("miss", "store_unavailable")
    assert figures["stored"] is False


def test_gearkv_worker_serves_the_http_api_and_stops_on_sigterm(store: StoreHandle, tmp_path: Any) -> None:
    """``gearkv worker --http-port 0``: /health says loading, then ok; a chat turn; SIGTERM exits 0."""
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"alice": {"api_key": "sk-alice", "store_token": store.tokens["alice"]}}))
    cmd = [sys.executable, "-m", "gearkv.cli", "worker", "--store", store.address, "--port", "0"]
    cmd += ["--http-port", "0", "--api-keys-file", str(keys), "--threads", "1", "--chunk-size", "32"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        url = ""
        for line in proc.stdout:
            if "HTTP API on http://" in line:
                url = line.split("HTTP API on ", 1)[1].strip()
            if "worker listening on" in line:
                break
        assert url.endswith("/v1"), url
        with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=10) as health:
            assert json.loads(health.read()) == {"status": "ok"}
        client = openai.OpenAI(base_url=url, api_key="sk-alice", max_retries=0, timeout=120)
        answer, figures = ask(client, [{"role": "user", "content": "Name a color."}], stream=True)
        assert answer and figures["outcome"] == "miss" and figures["stored"] is True
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def test_the_readme_openai_example_runs(
    serve: Callable[..., Served], capsys: pytest.CaptureFixture[str]
) -> None:
    (code,) = [b for b in _BLOCK.findall(README.read_text()) if "OpenAI(" in b]
    served = serve()
    code = code.replace("http://127.0.0.1:8000/v1", served.base_url)
    exec(compile(code, str(README), "exec"), {"__name__": "readme_openai_example"})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("miss 0 of") and lines[1].startswith("hit ")


def test_gearkv_demo_openai_plays_the_conversation_through_the_http_api(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    args = ["--openai", "--turns", "3", "--max-new-tokens", "8", "--chunk-size", "64", "--no-cold"]
    assert demo.main([*args, "--store-in-process", "--json", str(out)]) == 0
    turns = json.loads(out.read_text())["turns"]
    assert [t["outcome"] for t in turns] == ["miss", "hit", "hit"]
    for prev, turn in itertools.pairwise(turns):
        context = prev["prompt_tokens"] + prev["completion_tokens"] - 1
        assert turn["tokens_reused"] >= context // 64 * 64 > 0
