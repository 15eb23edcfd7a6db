"""The OpenAI-compatible HTTP API in seconds: a tiny random-weight Llama, an in-memory store, and the
ASGI app called in-process (no sockets).

Bodies (choices, deltas, finish_reason, usage, the ``gearkv`` figures and headers), OpenAI error
objects with their statuses, stateless reuse of the previous turn's chunks, tenants per API key, load
shedding, and a client disconnect cancelling its turn. The real model, store, uvicorn server and the
``openai`` client are in tests/integration/test_worker_openai.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from gearkv.client import ChunkRef, Namespace, PrefixMatch
from gearkv.worker.api_keys import hash_api_key, load_api_keys, parse_api_keys
from gearkv.worker.chunking import session_spans
from gearkv.worker.cli import config_from_args
from gearkv.worker.config import SessionOptions
from gearkv.worker.engine import Engine
from gearkv.worker.openai_api import HttpApi
from gearkv.worker.sessions import Worker
from jinja2 import TemplateError
from support.fake_store import FakeStore
from test_worker_engine import ByteTokenizer, restrict, tiny_engine

pytestmark = pytest.mark.filterwarnings("error::FutureWarning")

LETTERS = range(97, 123)  # the model may only answer in lowercase letters: their text re-encodes exactly


class ChatByteTokenizer(ByteTokenizer):
    """The byte tokenizer with a plain-text chat template and the call interface encode_chat uses."""

    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True, tokenize: bool = False
    ) -> str:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return text + ("assistant: " if add_generation_prompt else "")

    def __call__(self, text: str | list[str], **_: Any) -> dict[str, Any]:
        if isinstance(text, str):
            return {"input_ids": self.encode(text)}
        return {"input_ids": [self.encode(t) for t in text]}

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return []


class ChainStore(FakeStore):
    """FakeStore whose session-less lookups walk the content-addressed chain of full chunks, as the
    real store's do (the same keys, so a prompt finds what any earlier push stored)."""

    def lookup_prefix(
        self, ns: Namespace, token_ids: Sequence[int], session_id: str | None = None, **kw: Any
    ) -> PrefixMatch:
        if session_id:
            return super().lookup_prefix(ns, token_ids, session_id, **kw)
        self._call("lookup_prefix")
        refs = []
        for span in session_spans(ns, token_ids):
            if span.end - span.start < ns.chunk_size or span.key not in self.chunks:
                break
            refs.append(ChunkRef(span.key, span.start, span.end, len(self.chunks[span.key]), 0))
        return PrefixMatch(tuple(refs), refs[-1].end if refs else 0, 0)


@pytest.fixture(scope="module")
def engine() -> Engine:
    eng = restrict(tiny_engine(), LETTERS)
    eng.tokenizer = ChatByteTokenizer()
    return eng


def make_worker(engine: Engine, store: FakeStore | None, **kw: Any) -> Worker:
    opts = SessionOptions(codec="raw", chunk_size=8, hot_cache_bytes=0, **kw)
    return Worker(engine, store, opts, fingerprint="tiny:0")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    chunks: list[bytes] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[Any]:
        """The SSE ``data:`` payloads, decoded (``[DONE]`` kept as a string)."""
        out: list[Any] = []
        for line in self.body.decode().split("\n"):
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                out.append(data if data == "[DONE]" else json.loads(data))
        return out


async def call(
    app: Any,
    method: str,
    path: str,
    body: Any = None,
    *,
    key: str | None = None,
    raw: bytes | None = None,
    on_chunk: Callable[[bytes, asyncio.Event], None] | None = None,
) -> Reply:
    """One HTTP request through the ASGI app; ``on_chunk`` may set the event to disconnect."""
    payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    headers = [(b"content-type", b"application/json")]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    gone = asyncio.Event()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    reply = Reply(0, {}, b"")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            reply.status = message["status"]
            reply.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body" and message.get("body"):
            reply.chunks.append(message["body"])
            reply.body += message["body"]
            if on_chunk is not None:
                on_chunk(message["body"], gone)

    await asyncio.wait_for(app(scope, receive, send), 60)
    return reply


@pytest.fixture
def api(engine: Engine) -> Iterator[tuple[HttpApi, Worker, ChainStore]]:
    store = ChainStore()
    worker = make_worker(engine, store)
    http = HttpApi(push_wait_s=10)
    http.attach(worker)
    yield http, worker, store
    http.stop(1)
    worker.close(5)


def chat_body(messages: list[dict[str, str]], **kw: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": messages, "temperature": 0, "max_tokens": 12, **kw}


# -- bodies and figures ----------------------------------------------------------------------------


async def test_chat_completion_body_usage_figures_and_headers(api: Any) -> None:
    http, _, _ = api
    reply = await call(
        http.app, "POST", "/v1/chat/completions", chat_body([{"role": "user", "content": "hi"}])
    )
    assert reply.status == 200, reply.body
    body = reply.json()
    assert (
        body["object"] == "chat.completion" and body["model"] == "tiny" and body["id"].startswith("chatcmpl-")
    )
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and len(choice["message"]["content"]) == 12
    assert choice["finish_reason"] == "length"
    usage, g = body["usage"], body["gearkv"]
    prompt = len("system: ") * 0 + len("user: hi\nassistant: ")
    assert usage["prompt_tokens"] == prompt and usage["completion_tokens"] == 12
    assert usage["total_tokens"] == prompt + 12 and usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert (g["outcome"], g["reason"], g["tokens_reused"], g["tokens_prefilled"]) == (
        "miss",
        "new_session",
        0,
        prompt,
    )
    assert g["stored"] is True and g["chunks_pushed"] >= 1 and g["request_ttft_s"] > 0
    assert reply.headers["x-gearkv-tokens-reused"] == "0"
    assert reply.headers["x-gearkv-tokens-prefilled"] == str(prompt)
    assert reply.headers["x-gearkv-outcome"] == "miss"


async def test_a_resent_conversation_reuses_every_full_chunk_of_the_previous_turn(api: Any) -> None:
    http, _, _ = api
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    contexts: list[int] = []
    for turn in range(4):
        reply = await call(http.app, "POST", "/v1/chat/completions", chat_body(messages))
        body = reply.json()
        g, answer = body["gearkv"], body["choices"][0]["message"]["content"]
        if turn:
            # everything the previous turn held, down to its last full chunk of 8 tokens
            assert g["tokens_reused"] == contexts[-1] // 8 * 8, (turn, g)
            assert g["outcome"] == "hit" and g["source"] == "store"
            assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == g["tokens_reused"]
        contexts.append(body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] - 1)
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": f"more {turn}"}]


async def test_streamed_chat_sends_role_deltas_a_final_chunk_with_figures_usage_and_done(api: Any) -> None:
    http, _, _ = api
    body = chat_body([{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True})
    reply = await call(http.app, "POST", "/v1/chat/completions", body)
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/event-stream")
    events = reply.events()
    assert events[-1] == "[DONE]"
    first, *deltas, last, usage_chunk, _ = events
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == first["id"] for e in events[:-1])
    text = "".join(e["choices"][0]["delta"]["content"] for e in deltas)
    assert len(text) == 12 and all(e["choices"][0]["finish_reason"] is None for e in deltas)
    assert last["choices"][0]["finish_reason"] == "length" and last["gearkv"]["outcome"] == "miss"
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 12


async def test_completions_plain_and_streamed(api: Any) -> None:
    http, _, _ = api
    body = {"model": "tiny", "prompt": "once upon a time", "temperature": 0}
    reply = await call(http.app, "POST", "/v1/completions", body)
    data = reply.json()
    assert reply.status == 200 and data["object"] == "text_completion"
    assert len(data["choices"][0]["text"]) == 16  # OpenAI's default max_tokens for completions
    assert data["usage"]["prompt_tokens"] == len("once upon a time")
    streamed = await call(http.app, "POST", "/v1/completions", body | {"stream": True})
    events = streamed.events()
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == data["choices"][0]["text"]
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    # the first call stored both full chunks; the last prompt token is always fed (for the logits)
    assert events[-2]["gearkv"]["tokens_reused"] == 15
    ids = await call(http.app, "POST", "/v1/completions", body | {"prompt": [111, 110, 99, 101]})
    assert ids.status == 200 and ids.json()["usage"]["prompt_tokens"] == 4


async def test_models_and_health(engine: Engine) -> None:
    http = HttpApi()
    assert (await call(http.app, "GET", "/health")).status == 503
    loading = await call(
        http.app, "POST", "/v1/chat/completions", chat_body([{"role": "user", "content": "x"}])
    )
    assert loading.status == 503 and loading.json()["error"]["code"] == "model_not_loaded"
    worker = make_worker(engine, None)
    http.attach(worker)
    try:
        health = await call(http.app, "GET", "/health")
        assert health.status == 200 and health.json() == {"status": "ok"}
        models = (await call(http.app, "GET", "/v1/models")).json()
        assert [m["id"] for m in models["data"]] == ["tiny"] and models["object"] == "list"
        assert (await call(http.app, "GET", "/v1/models/tiny")).json()["id"] == "tiny"
        assert (await call(http.app, "GET", "/v1/models/other")).status == 404
    finally:
        http.stop(1)
        worker.close(5)


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[]", 400, None),
        ({"model": "tiny"}, 400, "messages"),
        ({"model": "tiny", "messages": []}, 400, "messages"),
        ({"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
        ({"model": "tiny", "messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 5},
            400,
            "temperature",
        ),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n"),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            400,
            "max_tokens",
        ),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": [{}]}, 400, "tools"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stop": [""]}, 400, "stop"),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            400,
            "messages[0].content[0].type",
        ),
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x" * 600}]}, 400, None),  # > context
    ],
)
async def test_bad_requests_get_openai_error_objects(
    api: Any, body: Any, status: int, param: str | None
) -> None:
    http, _, _ = api
    raw = body if isinstance(body, bytes) else None
    reply = await call(http.app, "POST", "/v1/chat/completions", None if raw else body, raw=raw)
    assert reply.status == status, reply.body
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    if status == 404:
        assert error["code"] == "model_not_found"


async def test_unknown_routes_and_methods_get_openai_errors(api: Any) -> None:
    http, _, _ = api
    missing = await call(http.app, "GET", "/v1/nothing")
    assert missing.status == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    wrong = await call(http.app, "GET", "/v1/chat/completions")
    assert wrong.status == 405 and "error" in wrong.json()


async def test_load_shedding_is_429_and_the_slot_comes_back(api: Any) -> None:
    http, worker, _ = api
    held = [worker.admission.enter(f"busy-{i}") for i in range(worker.options.max_turns_in_flight)]
    body = chat_body([{"role": "user", "content": "x"}])
    shed = await call(http.app, "POST", "/v1/chat/completions", body)
    assert shed.status == 429 and shed.headers["retry-after"] == "1"
    assert shed.json()["error"]["type"] == "rate_limit_error"
    for release in held:
        release()
    assert (await call(http.app, "POST", "/v1/chat/completions", body)).status == 200


async def test_store_down_still_answers_with_the_miss_reported(api: Any) -> None:
    http, _, store = api
    store.down = True
    reply = await call(
        http.app, "POST", "/v1/chat/completions", chat_body([{"role": "user", "content": "x"}])
    )
    assert reply.status == 200
    g = reply.json()["gearkv"]
    assert (g["outcome"], g["reason"], g["stored"]) == ("miss", "store_unavailable", False)


async def test_a_client_that_disconnects_cancels_its_turn(api: Any) -> None:
    http, worker, _ = api
    body = chat_body([{"role": "user", "content": "x"}], stream=True, max_tokens=400)

    def leave_after_first_delta(chunk: bytes, gone: asyncio.Event) -> None:
        if b'"content":"' in chunk and b'"content":""' not in chunk:
            gone.set()

    begun: list[Any] = []
    begin = http.begin
    http.begin = lambda turn: begun.append(turn) or begin(turn)
    reply = await call(http.app, "POST", "/v1/chat/completions", body, on_chunk=leave_after_first_delta)
    assert b"[DONE]" not in reply.body  # the stream ended early
    assert http.wait_idle(5)
    (turn,) = begun
    assert turn.cancelled.is_set() and turn.finish_reason == "" and len(turn.token_ids) < 400
    # the turn's slot was given back: the worker takes max_turns_in_flight turns again
    held = [worker.admission.enter(f"after-{i}") for i in range(worker.options.max_turns_in_flight)]
    for release in held:
        release()


# -- tenants ---------------------------------------------------------------------------------------


async def test_each_api_key_is_a_tenant_with_its_own_store_client(engine: Engine) -> None:
    stores = {"tok-a": ChainStore(), "tok-b": ChainStore()}
    keys = parse_api_keys(
        json.dumps(
            {
                "alice": {"api_key": "sk-a", "store_token": "tok-a"},
                "bob": {"api_key_sha256": hash_api_key("sk-b"), "store_token": "tok-b"},
            }
        )
    )
    http = HttpApi(keys=keys, connect=lambda token: stores[token], push_wait_s=10)
    base = make_worker(engine, None)
    http.attach(base)
    try:
        body = chat_body([{"role": "user", "content": "the same words"}])
        for key in (None, "sk-nope"):
            denied = await call(http.app, "POST", "/v1/chat/completions", body, key=key)
            assert denied.status == 401 and denied.json()["error"]["code"] == "invalid_api_key"
        first = (await call(http.app, "POST", "/v1/chat/completions", body, key="sk-a")).json()
        assert stores["tok-a"].chunks and not stores["tok-b"].chunks
        # bob sends the very same prompt: nothing of alice's is visible to him
        other = (await call(http.app, "POST", "/v1/chat/completions", body, key="sk-b")).json()
        assert other["gearkv"]["tokens_reused"] == 0
        again = (await call(http.app, "POST", "/v1/chat/completions", body, key="sk-a")).json()
        assert again["gearkv"]["tokens_reused"] > 0 and first["gearkv"]["tokens_reused"] == 0
        assert (await call(http.app, "GET", "/health")).status == 200  # no key needed
    finally:
        http.stop(1)
        base.close(5)


def test_api_keys_spec_parsing_and_the_cli(tmp_path: Path) -> None:
    keys = parse_api_keys('{"a": {"api_key": "k1", "store_token": "t1"}}')
    assert keys[0].name == "a" and keys[0].key_sha256 == hash_api_key("k1") and "t1" not in repr(keys[0])
    for bad, says in [
        ("nope", "not valid JSON"),
        ("{}", "non-empty"),
        ('{"a": {"store_token": "t"}}', "api_key"),
        ('{"a": {"api_key": "k"}}', "store_token"),
        (
            '{"a": {"api_key": "k", "store_token": "t"}, "b": {"api_key": "k", "store_token": "u"}}',
            "same API key",
        ),
        ('{"a": {"api_key_sha256": "xyz", "store_token": "t"}}', "64 lowercase hex"),
    ]:
        with pytest.raises(ValueError, match=says):
            parse_api_keys(bad)
    spec = tmp_path / "keys.json"
    spec.write_text('{"a": {"api_key": "k1", "store_token": "t1"}}')
    cfg = config_from_args(["--http-port", "0", "--api-keys-file", str(spec)], env={})
    assert cfg.http_port == 0 and [k.name for k in cfg.api_keys] == ["a"]
    env = {
        "GEARKV_WORKER_HTTP_PORT": "8080",
        "GEARKV_API_KEYS": '{"b": {"api_key": "k", "store_token": "t"}}',
    }
    cfg = config_from_args([], env=env)
    assert cfg.http_port == 8080 and [k.name for k in cfg.api_keys] == ["b"]
    assert config_from_args([], env={}).api_keys == () and load_api_keys(None, {}) == ()
    with pytest.raises(SystemExit) as exc:
        config_from_args(["--api-keys-file", str(tmp_path / "missing.json")], env={})
    assert exc.value.code == 2


async def test_a_chat_template_that_refuses_the_messages_is_a_400(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    http, worker, _ = api

    def refuse(messages: Any) -> list[int]:
        raise TemplateError("Conversation roles must alternate user/assistant/user/assistant/...")

    monkeypatch.setattr(worker.engine, "encode_chat", refuse)
    reply = await call(
        http.app, "POST", "/v1/chat/completions", chat_body([{"role": "user", "content": "x"}])
    )
    assert reply.status == 400 and reply.json()["error"]["param"] == "messages"
    assert "must alternate" in reply.json()["error"]["message"]
