"""`gearkv bench fuzz`: property-based fuzzing of every KVStore and Worker RPC, with a pass/fail gate.

The run starts its own ``redis-server`` (password: a canary secret), the real store in this process
with two tenants (``fuzz``, and ``canary`` whose bearer token is the same canary secret) and the real
Worker gRPC service on a tiny random-weight Llama (byte-level tokenizer, so no model download), whose
store client authenticates with the canary token. Hypothesis then drives every RPC of both services:

- generated messages: empty, oversized, wrong charset, negative (on the wire) and huge numbers,
  namespaces and keys that do not match, shapes that disagree with byte lengths, wrong digests and
  fingerprints, stream parts out of order, duplicated, dropped, truncated or cancelled midway, and
  missing, wrong or malformed bearer tokens;
- bytes on the wire: random bytes and valid encodings that were truncated, flipped, given invalid
  UTF-8 strings, negative varints or fields of the wrong wire type (identity (de)serializers);
- sessions the store holds: odd manifests (any history the store accepts) committed straight to the
  worker's sessions, each followed by a Chat turn (with rewinds) on it.

The gate: no UNKNOWN or INTERNAL status, no crash (both services still answer health and a real
call afterwards; grpc logged no exception from a handler), and no leak: the canary never appears in
a response, its status message or metadata, a log line of the ``gearkv`` or ``grpc`` loggers, or the
store's and worker's Prometheus metrics, and no status message carries Python exception text
(tracebacks, ``SomeError(``, file paths). The report counts inputs tried and status codes per RPC.
Atheris (libFuzzer's mutation engine, in a child process) also sends wire bytes to every RPC when
``import atheris`` works; the report says "atheris: not installed" otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from gearkv.api.digest import payload_digest
from gearkv.api.keys import Namespace, chain
from gearkv.api.limits import MAX_TOKENS
from gearkv.api.v1 import kvstore_pb2 as pb
from gearkv.api.v1 import kvstore_pb2_grpc as pb_grpc
from gearkv.api.v1 import worker_pb2 as wpb
from gearkv.api.v1 import worker_pb2_grpc as wpb_grpc

__all__ = ["FuzzRecorder", "FuzzSettings", "main", "run_fuzz"]

log = logging.getLogger("gearkv.bench.fuzz")

KV_SERVICE = "gearkv.api.v1.KVStore"
WORKER_SERVICE = "gearkv.api.v1.Worker"
STORE_RPCS = tuple(pb.DESCRIPTOR.services_by_name["KVStore"].methods_by_name)
WORKER_RPCS = tuple(wpb.DESCRIPTOR.services_by_name["Worker"].methods_by_name)
CALL_TIMEOUT_S = 10.0
MIB = 1 << 20
Metadata = tuple[tuple[str, str | bytes], ...]

# Python exception text that must never reach a client (the request's own text is excluded).
EXCEPTION_TEXT = re.compile(
    r"Traceback \(most recent call last\)"
    r"|File \"[^\"]*\", line \d+"
    r"|\b[A-Z]\w*(?:Error|Exception|Warning)\b\s*[(:]"
    r"|<class '|object at 0x[0-9a-f]+|site-packages|\w\.py(?::\d+|\", line)"
)
# grpc logs these when a handler raised (the client then sees UNKNOWN): a crash of the handler.
GRPC_HANDLER_CRASH = re.compile(r"Exception (?:calling application|iterating responses|serializing)")


# -- what the run found ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One gate failure: ``kind`` is unknown, internal, crash, leak or harness."""

    kind: str
    where: str
    detail: str


@dataclass
class FuzzRecorder:
    """Counts inputs and status codes per RPC and collects gate failures; pure (no I/O), unit-tested.

    ``record`` takes one call's outcome; ``scan_log`` a log record; ``scan_text`` a block of text
    (metrics); ``crash`` a failed liveness check. ``report`` is the JSON-ready result with the gate.
    """

    canary: str
    tried: Counter[str] = field(default_factory=Counter)
    wire: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[str]] = field(default_factory=dict)
    messages: dict[str, Counter[str]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    def record(
        self,
        rpc: str,
        code: grpc.StatusCode,
        details: str = "",
        *,
        blobs: Iterable[bytes | str] = (),
        request_text: str = "",
        wire: bool = False,
    ) -> None:
        """One input sent to ``rpc``: its status ``code``, status message and what came back.

        ``blobs`` are the response messages (serialized) and metadata values; ``request_text`` is what
        was sent, so that a status message echoing the caller's own text is not called a leak.
        """
        self.tried[rpc] += 1
        if wire:
            self.wire[rpc] += 1
        self.statuses.setdefault(rpc, Counter())[code.name] += 1
        if details:
            self.messages.setdefault(rpc, Counter())[f"{code.name}: {details[:100]}"] += 1
        if code == grpc.StatusCode.UNKNOWN:
            self.findings.append(Finding("unknown", rpc, details[:300]))
        elif code == grpc.StatusCode.INTERNAL:
            self.findings.append(Finding("internal", rpc, details[:300]))
        if self._has_canary(details) or any(self._has_canary(b) for b in blobs):
            self.findings.append(Finding("leak", rpc, "the canary secret in a response"))
        for match in EXCEPTION_TEXT.finditer(details):
            if match.group(0) not in request_text:
                self.findings.append(
                    Finding("leak", rpc, f"exception text in a status message: {details[:300]}")
                )
                break

    def _has_canary(self, blob: bytes | str) -> bool:
        if isinstance(blob, bytes):
            return self.canary.encode() in blob
        return self.canary in blob

    def scan_log(self, logger: str, level: int, text: str, has_traceback: bool = False) -> None:
        """A log line (its formatted message and exception text, if any) of the store or worker."""
        where = f"log {logger}"
        if self._has_canary(text):
            self.findings.append(Finding("leak", where, "the canary secret in a log line"))
        if logger.startswith("grpc") and level >= logging.ERROR and GRPC_HANDLER_CRASH.search(text):
            self.findings.append(Finding("crash", where, text.splitlines()[0][:300] if text else ""))
        elif has_traceback or "Traceback (most recent call last)" in text:
            self.findings.append(Finding("leak", where, f"a traceback in a log line: {text[:200]}"))

    def scan_text(self, where: str, text: str) -> None:
        """Text that must not hold the canary (metrics output)."""
        if self._has_canary(text):
            self.findings.append(Finding("leak", where, "the canary secret"))

    def crash(self, where: str, detail: str) -> None:
        self.findings.append(Finding("crash", where, detail))

    def harness(self, where: str, detail: str) -> None:
        """The harness itself failed on an input (a bug here, or a client-side exception)."""
        self.findings.append(Finding("harness", where, detail))

    def count(self, kind: str) -> int:
        return sum(1 for f in self.findings if f.kind == kind)

    def report(self) -> dict[str, Any]:
        unknown = sum(c.get("UNKNOWN", 0) for c in self.statuses.values())
        internal = sum(c.get("INTERNAL", 0) for c in self.statuses.values())
        crashes, leaks, harness = self.count("crash"), self.count("leak"), self.count("harness")
        passed = unknown == internal == crashes == leaks == harness == 0 and sum(self.tried.values()) > 0
        return {
            "inputs_tried": dict(self.tried),
            "inputs_total": sum(self.tried.values()),
            "wire_inputs": dict(self.wire),
            "statuses": {rpc: dict(sorted(c.items())) for rpc, c in self.statuses.items()},
            "unknown_status": unknown,
            "internal_status": internal,
            "crashes": crashes,
            "leaks": leaks,
            "harness_errors": harness,
            "findings": [f.__dict__ for f in self.findings[:50]],
            "top_messages": {rpc: dict(c.most_common(5)) for rpc, c in self.messages.items()},
            "gate": "pass" if passed else "fail",
        }


_CLIENT_SIDE_LOGGERS = ("grpc._channel", "grpc._common")


class _LogScanner(logging.Handler):
    """Hands every record of the loggers it is attached to to the recorder."""

    def __init__(self, recorder: FuzzRecorder) -> None:
        super().__init__(logging.DEBUG)
        self.recorder = recorder
        self.records = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(_CLIENT_SIDE_LOGGERS):
            return  # this process's own grpc client (the harness), not a server under test
        try:
            text = record.getMessage()
        except Exception:  # a record whose arguments do not format: scan what it has
            text = f"{record.msg!r} {record.args!r}"
        tb = record.exc_info is not None or bool(record.exc_text) or bool(record.stack_info)
        if record.exc_info is not None:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.records += 1
        self.recorder.scan_log(record.name, record.levelno, text, has_traceback=tb)


@contextlib.contextmanager
def _capture_logs(recorder: FuzzRecorder) -> Iterator[_LogScanner]:
    handler = _LogScanner(recorder)
    gearkv, grpc_log = logging.getLogger("gearkv"), logging.getLogger("grpc")
    level = gearkv.level
    gearkv.setLevel(logging.DEBUG)
    gearkv.addHandler(handler)
    grpc_log.addHandler(handler)
    try:
        yield handler
    finally:
        gearkv.removeHandler(handler)
        grpc_log.removeHandler(handler)
        gearkv.setLevel(level)


# -- profiles ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FuzzSettings:
    """Inputs per RPC: generated messages and wire bytes, for the store and the worker."""

    store_messages: int = 1000
    store_wire: int = 300
    worker_messages: int = 300
    worker_wire: int = 100
    atheris_s: float = 60.0

    @classmethod
    def quick(cls) -> FuzzSettings:
        return cls(store_messages=60, store_wire=20, worker_messages=30, worker_wire=12, atheris_s=5.0)

    @classmethod
    def of(cls, quick: bool, examples: int | None = None) -> FuzzSettings:
        """The full or quick profile; ``examples`` sets the store's messages per RPC (others scale)."""
        base = cls.quick() if quick else cls()
        if examples is None:
            return base
        if examples < 1:
            raise ValueError(f"--examples must be >= 1, got {examples}")
        return cls(
            store_messages=examples,
            store_wire=max(3, examples // 3),
            worker_messages=max(3, examples * 2 // 5),
            worker_wire=max(3, examples // 5),
            atheris_s=base.atheris_s,
        )


# -- strategies ------------------------------------------------------------------------------------
# Built lazily (hypothesis is a dev dependency): each returns a strategy over one RPC's inputs.

NS = Namespace("fuzz-model:1", "gear4/v1", 4)
SEED_TOKENS = list(range(100, 114))  # 3 full chunks of 4 and a tail of 2
SEED_SESSION = "fuzz-seed"
CHAT_SESSIONS = ("chat-a", "chat-b", "chat-c")
VOCAB = 260


@dataclass
class _World:
    """What exists before the fuzz starts (so that valid-looking inputs find something)."""

    spans: list[Any]
    big_key: str
    manifest: pb.Manifest
    worker_ns: pb.Namespace


def _ns_proto(ns: Namespace) -> pb.Namespace:
    return pb.Namespace(fingerprint=ns.fingerprint, codec_id=ns.codec_id, chunk_size=ns.chunk_size)


def _put_requests(
    ns: Namespace, span: Any, tokens: Sequence[int], payload: bytes
) -> list[pb.PutChunkRequest]:
    header = pb.PutChunkHeader(
        key=span.key,
        parent_key=span.parent_key,
        namespace=_ns_proto(ns),
        start=span.start,
        end=span.end,
        token_ids=list(tokens[span.start : span.end]),
        total_bytes=len(payload),
        raw_bytes=len(payload) * 4,
        digest=payload_digest(payload),
    )
    parts = [payload[i : i + MIB] for i in range(0, len(payload), MIB)] or [b""]
    return [pb.PutChunkRequest(header=header, data=parts[0])] + [
        pb.PutChunkRequest(data=p) for p in parts[1:]
    ]


def _manifest(session_id: str, ns: Namespace, tokens: Sequence[int], spans: Sequence[Any]) -> pb.Manifest:
    return pb.Manifest(
        session_id=session_id,
        namespace=_ns_proto(ns),
        token_ids=list(tokens),
        chunks=[
            pb.ChunkRef(key=s.key, start=s.start, end=s.end, stored_bytes=100, raw_bytes=400) for s in spans
        ],
        messages=[pb.ChatMessage(role="user", content="hi")],
        turns=1,
    )


class _Strategies:
    """Hypothesis strategies over every RPC's requests (the world's keys and sessions mixed in)."""

    def __init__(self, world: _World) -> None:
        from hypothesis import strategies as st

        self.st = st
        self.world = world
        weird_chars = st.characters(codec="utf-8")
        self.weird = st.text(weird_chars, max_size=24)
        self.u32 = st.one_of(
            st.integers(0, 16), st.sampled_from([2**31 - 1, 2**31, 2**32 - 1]), st.integers(0, 2**32 - 1)
        )
        self.u64 = st.one_of(
            st.integers(0, 16),
            st.sampled_from([2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1]),
            st.integers(0, 2**64 - 1),
        )
        self.i64 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([-1, -(2**63), 2**63 - 1]))
        self.f32 = st.one_of(
            st.just(0.0),
            st.floats(0, 2, width=32),
            st.floats(width=32),
            st.sampled_from([-1.0, 1e-7, 10.0, 10.5, 1e38, float("inf"), float("-inf"), float("nan")]),
        )
        self.tenant = self.mostly(
            st.just("fuzz"),
            st.sampled_from(
                [
                    "canary",
                    "none",
                    "wrong",
                    "bearer-lower",
                    "basic",
                    "empty",
                    "two",
                    "binary",
                    "long",
                    "spaces",
                ]
            ),
        )
        keys = [s.key for s in world.spans] + [world.big_key]
        hexkey = st.text("0123456789abcdef", min_size=64, max_size=64)
        self.key = self.mostly(
            st.one_of(st.sampled_from(keys), hexkey),
            st.sampled_from(keys).map(str.upper),
            st.text("0123456789abcdef", max_size=70),
            st.just(""),
            self.weird,
            st.sampled_from(keys).map(lambda k: k[:-1] + "\u0660"),
            st.just("a" * 100_000),
        )

    def mostly(self, valid: Any, *bad: Any, percent: int = 80) -> Any:
        """``valid`` about ``percent`` % of the time, else one of ``bad`` (so most inputs get deep)."""
        from hypothesis import strategies as st

        return st.integers(0, 99).flatmap(lambda r: valid if r < percent else st.one_of(*bad))

    def text(self, valid: Any, max_len: int) -> Any:
        """Mostly valid values; else empty, one over the limit, far over it, and wrong charsets."""
        from hypothesis import strategies as st

        return self.mostly(
            valid,
            st.just(""),
            st.just("x" * (max_len + 1)),
            st.just("y" * (MIB + 7)),
            st.text(alphabet="é日🎉 \t\n\x00\x7f/\\'\"", min_size=1, max_size=12),
            self.weird,
        )

    def session_id(self) -> Any:
        from hypothesis import strategies as st

        valid = st.one_of(
            st.sampled_from([SEED_SESSION, *CHAT_SESSIONS]),
            st.from_regex(r"\A[A-Za-z0-9._:-]{1,20}\Z"),
        )
        return self.text(valid, 128)

    def ident(self) -> Any:
        from hypothesis import strategies as st

        return self.text(
            st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=16), 64
        )

    def namespace(self) -> Any:
        from hypothesis import strategies as st

        random_ns = st.builds(
            pb.Namespace,
            fingerprint=self.text(st.from_regex(r"\A[0-9A-Za-z._:-]{1,12}\Z"), 128),
            codec_id=self.text(st.just("gear4/v1"), 128),
            chunk_size=self.u32,
        )
        return self.mostly(st.just(_ns_proto(NS)), random_ns, st.none(), percent=70)

    def token_ids(self, vocab: int = 2**32) -> Any:
        from hypothesis import strategies as st

        return self.mostly(
            st.one_of(
                st.lists(st.integers(0, vocab - 1), max_size=24),
                st.just(SEED_TOKENS),
                st.lists(st.integers(0, vocab - 1), max_size=8).map(lambda t: SEED_TOKENS + t),
            ),
            st.lists(self.u32, max_size=24),
            st.lists(self.u32, max_size=24),
            st.lists(self.u32, max_size=24),
            st.just([0] * (MAX_TOKENS + 1)),
            percent=70,
        )

    # -- KVStore --------------------------------------------------------------------------------

    def put_case(self) -> Any:
        """A PutChunk stream: a valid chunk of random tokens and payload, then mutations."""
        from hypothesis import strategies as st

        @st.composite
        def build(draw: Any) -> tuple[list[pb.PutChunkRequest], int | None]:
            ns = NS if draw(st.booleans()) else Namespace("fuzz-model:2", "raw/v1", draw(st.integers(1, 6)))
            tokens = draw(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=16))
            spans = chain(ns, tokens)
            span = spans[draw(st.integers(0, len(spans) - 1))]
            payload = draw(st.binary(min_size=0, max_size=3000))
            reqs = _put_requests(ns, span, tokens, payload or b"\0")
            header = reqs[0].header
            for mutation in draw(st.lists(st.sampled_from(_PUT_MUTATIONS), max_size=3)):
                if mutation == "key":
                    header.key = draw(self.key)
                elif mutation == "parent_key":
                    header.parent_key = draw(self.key)
                elif mutation == "namespace":
                    value = draw(self.namespace())
                    header.ClearField("namespace") if value is None else header.namespace.CopyFrom(value)
                elif mutation in ("start", "end", "ttl_s"):
                    setattr(header, mutation, draw(self.u32))
                elif mutation in ("total_bytes", "raw_bytes"):
                    setattr(header, mutation, draw(self.u64))
                elif mutation == "length":
                    header.total_bytes = max(0, header.total_bytes + draw(st.sampled_from([-1, 1, 1000])))
                elif mutation == "token_ids":
                    del header.token_ids[:]
                    header.token_ids.extend(draw(self.token_ids()))
                elif mutation == "digest":
                    header.digest = draw(st.one_of(st.binary(max_size=20), st.just(bytes(16))))
                elif mutation == "split":
                    data = b"".join(r.data for r in reqs)
                    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
                    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
                    reqs = [pb.PutChunkRequest(header=header, data=pieces[0])]
                    reqs += [pb.PutChunkRequest(data=p) for p in pieces[1:]]
                elif mutation == "shuffle" and len(reqs) > 1:
                    reqs = draw(st.permutations(reqs))
                elif mutation == "duplicate" and reqs:
                    i = draw(st.integers(0, len(reqs) - 1))
                    reqs.insert(i, reqs[i])
                elif mutation == "drop" and reqs:
                    del reqs[draw(st.integers(0, len(reqs) - 1))]
                elif mutation == "header_again":
                    reqs.append(pb.PutChunkRequest(header=header, data=b"x"))
                elif mutation == "no_header" and reqs:
                    reqs[0] = pb.PutChunkRequest(data=reqs[0].data)
                elif mutation == "empty_stream":
                    reqs = []
                elif mutation == "oversized_part":
                    reqs.append(pb.PutChunkRequest(data=b"o" * (MIB + 1)))
                elif mutation == "empty_parts":
                    reqs += [pb.PutChunkRequest()] * draw(st.integers(1, 3))
            cancel_after = draw(st.one_of(st.none(), st.integers(0, max(0, len(reqs) - 1))))
            return reqs, cancel_after if draw(st.integers(0, 9)) == 0 else None

        return build()

    def small_put(self) -> Any:
        from hypothesis import strategies as st

        def merge(case: tuple[list[pb.PutChunkRequest], int | None]) -> pb.PutChunkRequest:
            reqs, _ = case
            first = pb.PutChunkRequest()
            if reqs:
                first.CopyFrom(reqs[0])
                first.data = b"".join(r.data for r in reqs)
            return first

        return st.one_of(self.put_case().map(merge), st.just(pb.PutChunkRequest(data=b"z" * (MIB + 1))))

    def manifest(self) -> Any:
        """The seeded session's manifest under another session id, with mutations."""
        from hypothesis import strategies as st

        chunk_ref = st.builds(
            pb.ChunkRef, key=self.key, start=self.u32, end=self.u32, stored_bytes=self.u64, raw_bytes=self.u64
        )
        messages = st.one_of(
            st.lists(
                st.builds(pb.ChatMessage, role=self.text(st.just("user"), 32), content=self.weird), max_size=4
            ),
            st.just([pb.ChatMessage(role="user", content="m")] * 65537),
            st.just([pb.ChatMessage(role="user", content="c" * (2 * MIB))] * 3),
        )
        attributes = st.one_of(
            st.dictionaries(self.weird, self.weird, max_size=4),
            st.just({f"a{i}": "v" for i in range(65)}),
            st.just({"big": "v" * (300 * 1024)}),
        )

        @st.composite
        def manifest(draw: Any) -> pb.Manifest:
            m = pb.Manifest()
            m.CopyFrom(self.world.manifest)
            m.session_id = draw(self.session_id())
            for mutation in draw(st.lists(st.sampled_from(_MANIFEST_MUTATIONS), max_size=3)):
                if mutation == "namespace":
                    value = draw(self.namespace())
                    m.ClearField("namespace") if value is None else m.namespace.CopyFrom(value)
                elif mutation == "token_ids":
                    del m.token_ids[:]
                    m.token_ids.extend(draw(self.token_ids()))
                elif mutation == "chunks":
                    refs = list(m.chunks)
                    del m.chunks[:]
                    m.chunks.extend(draw(st.one_of(st.permutations(refs), st.lists(chunk_ref, max_size=5))))
                elif mutation == "chunk_duplicate" and m.chunks:
                    m.chunks.append(m.chunks[draw(st.integers(0, len(m.chunks) - 1))])
                elif mutation == "chunk_drop" and m.chunks:
                    del m.chunks[draw(st.integers(0, len(m.chunks) - 1))]
                elif mutation == "messages":
                    del m.messages[:]
                    m.messages.extend(draw(messages))
                elif mutation == "attributes":
                    m.attributes.clear()
                    m.attributes.update(draw(attributes))
                elif mutation in ("turns",):
                    m.turns = draw(self.u32)
                elif mutation in ("version", "raw_bytes", "stored_bytes"):
                    setattr(m, mutation, draw(self.u64))
                elif mutation in ("created_ms", "updated_ms"):
                    setattr(m, mutation, draw(self.i64))
            return m

        return manifest()

    def store_cases(self) -> dict[str, Any]:
        from hypothesis import strategies as st

        manifest = self.manifest
        return {
            "PutChunk": self.put_case(),
            "GetChunk": st.builds(pb.GetChunkRequest, key=self.key),
            "PutSmallChunk": self.small_put(),
            "GetSmallChunk": st.builds(pb.GetChunkRequest, key=self.key),
            "LookupPrefix": st.builds(
                pb.LookupPrefixRequest,
                namespace=self.namespace(),
                token_ids=self.token_ids(),
                session_id=st.one_of(st.just(""), self.session_id()),
            ),
            "BeginTurn": st.builds(
                pb.BeginTurnRequest,
                session_id=self.session_id(),
                holder=self.ident(),
                lease_id=self.ident(),
                lease_ms=st.one_of(self.u32, st.sampled_from([0, 99, 100, 600_000, 600_001])),
                known_version=self.u64,
            ),
            "EndTurn": st.builds(pb.EndTurnRequest, session_id=self.session_id(), lease_id=self.ident()),
            "CommitTurn": st.builds(
                pb.CommitTurnRequest,
                manifest=self.mostly(manifest(), st.none(), percent=90),
                expected_version=st.one_of(st.sampled_from([0, 1, 2]), self.u64),
                commit_id=self.ident(),
                ttl_s=self.u32,
                holder=st.one_of(st.just(""), self.ident()),
                lease_id=st.one_of(st.just(""), self.ident()),
            ),
            "GetSession": st.builds(pb.GetSessionRequest, session_id=self.session_id()),
            "ListSessions": st.builds(
                pb.ListSessionsRequest,
                page_size=st.one_of(st.sampled_from([0, 1, 1000, 1001]), self.u32),
                page_token=st.one_of(
                    st.just(""), self.weird, st.text("ABCDEFabcdef0123456789+/=_-", max_size=80)
                ),
            ),
            "DeleteSession": st.builds(pb.DeleteSessionRequest, session_id=self.session_id()),
            "GetStats": st.just(pb.GetStatsRequest()),
        }

    # -- Worker ---------------------------------------------------------------------------------

    def params(self) -> Any:
        from hypothesis import strategies as st

        return st.one_of(
            st.none(),
            st.builds(
                wpb.GenerationParams,
                max_new_tokens=self.mostly(st.integers(1, 4), st.sampled_from([0, 4096, 4097, 2**32 - 1])),
                temperature=self.mostly(st.one_of(st.just(0.0), st.floats(0.125, 2, width=32)), self.f32),
                top_p=self.mostly(st.one_of(st.just(0.0), st.floats(0.125, 1, width=32)), self.f32),
                stop=self.mostly(
                    st.one_of(st.just([]), st.lists(st.text(min_size=1, max_size=4), max_size=3)),
                    st.lists(self.weird, max_size=3),
                    st.just([""]),
                    st.just(["s"] * 17),
                    st.just(["t" * 257]),
                ),
                seed=self.u64,
            ),
        )

    def worker_cases(self) -> dict[str, Any]:
        from hypothesis import strategies as st

        message = self.mostly(
            st.text(min_size=1, max_size=30), st.just(""), st.just("m" * (MIB + 1)), self.weird
        )
        return {
            "Chat": st.builds(
                wpb.ChatRequest,
                session_id=self.mostly(st.sampled_from(CHAT_SESSIONS), self.session_id()),
                message=message,
                params=self.params(),
                system_prompt=self.mostly(st.just(""), self.weird, st.just("p" * (MIB + 1))),
                rewind_turns=self.mostly(st.just(0), st.integers(0, 3), self.u32),
            ),
            "Generate": st.builds(
                wpb.GenerateRequest,
                session_id=st.one_of(st.just(""), st.just(""), self.session_id()),
                token_ids=st.one_of(
                    st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=24),
                    st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=24),
                    st.lists(self.u32, max_size=8),
                    st.just([]),
                    st.just([1] * 1100),
                ),
                params=self.params(),
            ),
        }

    def poisoned(self) -> Any:
        """A manifest committed straight to a worker's session (any history the store accepts), then
        a Chat turn on it: the worker must cope with whatever the store holds."""
        from hypothesis import strategies as st

        role = self.mostly(
            st.sampled_from(["user", "assistant"]), st.sampled_from(["system", "tool", ""]), self.weird
        )
        history = st.lists(st.builds(pb.ChatMessage, role=role, content=self.weird), max_size=6)

        @st.composite
        def build(draw: Any) -> tuple[pb.Manifest, wpb.ChatRequest]:
            session = draw(st.sampled_from(CHAT_SESSIONS))
            m = draw(self.manifest()) if draw(st.booleans()) else pb.Manifest()
            m.session_id = session
            if draw(st.booleans()):
                m.namespace.CopyFrom(self.world.worker_ns)
                if draw(st.booleans()):
                    del m.token_ids[:], m.chunks[:]
            del m.messages[:]
            m.messages.extend(draw(history))
            m.turns = draw(self.mostly(st.integers(0, 4), self.u32))
            chat = wpb.ChatRequest(
                session_id=session,
                message=draw(st.text(min_size=1, max_size=12)),
                params=wpb.GenerationParams(max_new_tokens=draw(st.integers(1, 3))),
                rewind_turns=draw(self.mostly(st.just(0), st.integers(1, 4), self.u32, percent=60)),
            )
            return m, chat

        return build()

    # -- bytes on the wire ----------------------------------------------------------------------

    def wire(self, valid: bytes) -> Any:
        """Random bytes, and ``valid`` (an encoded request) truncated, flipped or extended badly."""
        from hypothesis import strategies as st

        @st.composite
        def mutate(draw: Any) -> bytes:
            how = draw(
                st.sampled_from(["truncate", "flip", "utf8", "negative", "wiretype", "unknown", "huge_len"])
            )
            if how == "truncate" and valid:
                return valid[: draw(st.integers(0, len(valid) - 1))]
            if how == "flip" and valid:
                i = draw(st.integers(0, len(valid) - 1))
                return valid[:i] + bytes([valid[i] ^ draw(st.integers(1, 255))]) + valid[i + 1 :]
            number = draw(st.integers(1, 12))
            if how == "utf8":  # a string field that is not UTF-8
                return valid + _field(
                    number, 2, draw(st.sampled_from([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80"]))
                )
            if how == "negative":  # a negative int64 where an unsigned field is expected
                value = draw(st.sampled_from([-1, -(2**31), -(2**63)])) & (2**64 - 1)
                return valid + _varint(number << 3) + _varint(value)
            if how == "wiretype":
                return valid + _varint(number << 3 | draw(st.sampled_from([1, 3, 4, 5, 6, 7])))
            if how == "huge_len":
                return valid + _varint(number << 3 | 2) + _varint(2**62)
            return valid + _field(draw(st.integers(13, 2**29 - 1)), 0, b"\x01")

        return st.one_of(st.binary(max_size=64), mutate())


_PUT_MUTATIONS = (
    "key",
    "parent_key",
    "namespace",
    "start",
    "end",
    "ttl_s",
    "total_bytes",
    "raw_bytes",
    "length",
    "token_ids",
    "digest",
    "split",
    "shuffle",
    "duplicate",
    "drop",
    "header_again",
    "no_header",
    "empty_stream",
    "oversized_part",
    "empty_parts",
)
_MANIFEST_MUTATIONS = (
    "namespace",
    "token_ids",
    "chunks",
    "chunk_duplicate",
    "chunk_drop",
    "messages",
    "attributes",
    "turns",
    "version",
    "raw_bytes",
    "stored_bytes",
    "created_ms",
    "updated_ms",
)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    body = _varint(len(payload)) + payload if wire_type == 2 else payload
    return _varint(number << 3 | wire_type) + body


# -- the stack under test ----------------------------------------------------------------------------


class _ByteTokenizer:
    """Token i < 256 is byte i; 256 is EOS. A plain chat template; no special tokens to parse."""

    eos_token_id = 256
    all_special_tokens: list[str] = []  # noqa: RUF012 - read-only
    added_tokens_decoder: dict[int, Any] = {}  # noqa: RUF012 - read-only

    def __call__(self, texts: Sequence[str], **_: Any) -> dict[str, list[list[int]]]:
        return {"input_ids": [list(t.encode()) for t in texts]}

    def encode(self, text: str, **_: Any) -> list[int]:
        return list(text.encode())

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.eos_token_id for _ in tokens]

    def apply_chat_template(self, messages: Sequence[dict[str, str]], **_: Any) -> str:
        return "".join(f"[{m['role']}] {m['content']}\n" for m in messages) + "[assistant] "

    def get_vocab(self) -> dict[str, int]:
        return {f"<{i}>": i for i in range(VOCAB)}


def tiny_engine(seed: int = 0) -> Any:
    """A 2-layer random-weight Llama (context 1024) on the CPU behind the byte tokenizer."""
    import torch
    import transformers
    from gearkv.worker.engine import Engine
    from gearkv.worker.model import LoadedModel

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=256,
        bos_token_id=257,
        pad_token_id=258,
    )
    model: Any = transformers.LlamaForCausalLM(config)
    model.eval()
    loaded = LoadedModel(model, _ByteTokenizer(), "fuzz-tiny", torch.device("cpu"), torch.float32)
    return Engine(loaded, prefill_block=32)


@dataclass
class _Stack:
    store_address: str
    worker_address: str
    tokens: dict[str, str]
    store: Any
    worker: Any
    worker_server: Any
    client: Any


@contextlib.contextmanager
def _stack(canary: str) -> Iterator[_Stack]:
    """redis-server (canary password), the store (tenants fuzz and canary), the worker (canary token)."""
    from gearkv.client import KVStoreClient
    from gearkv.store.auth import hash_token
    from gearkv.store.config import StoreConfig, TenantConfig
    from gearkv.store.local import LOOPBACK, LocalRedis, serve_in_thread
    from gearkv.worker.config import SessionOptions
    from gearkv.worker.metrics import WorkerMetrics
    from gearkv.worker.service import start_worker_server
    from gearkv.worker.sessions import Worker

    tokens = {"fuzz": f"gkv-fuzz-{secrets.token_urlsafe(18)}", "canary": canary}
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(LocalRedis(password=canary))
        cfg = StoreConfig(
            redis_url=redis.url,
            host=LOOPBACK,
            port=0,
            tenants=tuple(TenantConfig(name, hash_token(tok)) for name, tok in tokens.items()),
            grace_s=0.5,
        )
        store = serve_in_thread(cfg)
        stack.callback(store.stop, 0.5)
        client = KVStoreClient(store.address, token=canary, timeout=5)
        stack.callback(client.close)
        options = SessionOptions(codec="gear4", chunk_size=16, max_turns_in_flight=4)
        worker = Worker(tiny_engine(), client, options, WorkerMetrics(), fingerprint="fuzz-tiny:0")
        server = start_worker_server(worker, LOOPBACK, 0)
        stack.callback(server.stop, 1.0)
        yield _Stack(store.address, server.address, tokens, store, worker, server, client)


def _metadata(choice: str, tokens: dict[str, str]) -> Metadata:
    if choice in tokens:
        return (("authorization", f"Bearer {tokens[choice]}"),)
    choices: dict[str, Metadata] = {
        "none": (),
        "wrong": (("authorization", "Bearer gkv-not-a-token"),),
        "bearer-lower": (("authorization", f"bearer {tokens['fuzz']}"),),
        "basic": (("authorization", "Basic Zm9vOmJhcg=="),),
        "empty": (("authorization", ""),),
        "two": (
            ("authorization", f"Bearer {tokens['fuzz']}"),
            ("authorization", f"Bearer {tokens['canary']}"),
        ),
        "binary": (("authorization-bin", b"Bearer \xff\x00"),),
        "long": (("authorization", "Bearer " + "t" * 8000),),
        "spaces": (("authorization", f"Bearer  {tokens['fuzz']} "),),
    }
    return choices[choice]


def _seed_world(channel: grpc.Channel, md: Metadata, worker_ns: Any) -> _World:
    """A session of 4 chunks and one 1.5 MiB chunk (multi-part downloads, GetSmallChunk refused)."""
    stub = pb_grpc.KVStoreStub(channel)
    spans = chain(NS, SEED_TOKENS)
    for span in spans:
        stub.PutChunk(iter(_put_requests(NS, span, SEED_TOKENS, b"s" * 100)), metadata=md, timeout=30)
    big_ns = Namespace("fuzz-model:big", "raw/v1", 2)
    big_span = chain(big_ns, [7, 7])[0]
    payload = secrets.token_bytes(MIB + MIB // 2)
    stub.PutChunk(iter(_put_requests(big_ns, big_span, [7, 7], payload)), metadata=md, timeout=30)
    manifest = _manifest(SEED_SESSION, NS, SEED_TOKENS, spans)
    stub.CommitTurn(pb.CommitTurnRequest(manifest=manifest, commit_id="seed-1"), metadata=md, timeout=30)
    worker = pb.Namespace(
        fingerprint=worker_ns.fingerprint, codec_id=worker_ns.codec_id, chunk_size=worker_ns.chunk_size
    )
    return _World(spans=spans, big_key=big_span.key, manifest=manifest, worker_ns=worker)


# -- driving the RPCs ------------------------------------------------------------------------------


def _meta_blobs(call: Any) -> list[str]:
    blobs: list[str] = []
    for getter in ("initial_metadata", "trailing_metadata"):
        with contextlib.suppress(Exception):
            for item in getattr(call, getter)() or ():
                blobs.append(f"{item[0]}={item[1]!r}")
    return blobs


class _Driver:
    """Sends one input and records its outcome (never raises)."""

    def __init__(self, recorder: FuzzRecorder, stack: _Stack) -> None:
        self.recorder = recorder
        self.tokens = stack.tokens
        self.store_channel = grpc.insecure_channel(
            stack.store_address,
            options=[
                ("grpc.max_receive_message_length", 16 * MIB),
                ("grpc.max_send_message_length", 16 * MIB),
            ],
        )
        self.worker_channel = grpc.insecure_channel(
            stack.worker_address,
            options=[
                ("grpc.max_receive_message_length", 16 * MIB),
                ("grpc.max_send_message_length", 16 * MIB),
            ],
        )
        self.store = pb_grpc.KVStoreStub(self.store_channel)
        self.worker = wpb_grpc.WorkerStub(self.worker_channel)

    def close(self) -> None:
        self.store_channel.close()
        self.worker_channel.close()

    def _run(
        self, rpc: str, send: Callable[[], tuple[list[bytes], Any]], request_text: str, wire: bool
    ) -> None:
        try:
            blobs, call = send()
        except grpc.RpcError as err:
            details = err.details() or "" if hasattr(err, "details") else ""
            code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
            self.recorder.record(
                rpc, code, details, blobs=_meta_blobs(err), request_text=request_text, wire=wire
            )
            return
        except _ClientCancelled:
            self.recorder.record(rpc, grpc.StatusCode.CANCELLED, wire=wire)
            return
        except Exception as exc:
            self.recorder.harness(rpc, f"{type(exc).__name__}: {str(exc)[:200]}")
            return
        self.recorder.record(rpc, grpc.StatusCode.OK, "", blobs=[*blobs, *_meta_blobs(call)], wire=wire)

    def message(
        self, service: str, rpc: str, request: Any, tenant: str, cancel_after: int | None = None
    ) -> None:
        """A generated request (a list of them for a client stream) as ``tenant``."""
        md = _metadata(tenant, self.tokens)
        stub = self.store if service == KV_SERVICE else self.worker
        method = getattr(stub, rpc)
        streaming_out = rpc in ("GetChunk", "Chat", "Generate")
        requests = request if isinstance(request, list) else [request]
        request_text = "\n".join(_text_of(r) for r in requests)

        def send() -> tuple[list[bytes], Any]:
            if rpc == "PutChunk":
                if cancel_after is not None:
                    return _cancelled_midway(method, requests, cancel_after, md)
                reply, call = method.with_call(iter(requests), metadata=md, timeout=CALL_TIMEOUT_S)
                return [reply.SerializeToString()], call
            if streaming_out:
                stream = method(request, metadata=md, timeout=CALL_TIMEOUT_S)
                return [m.SerializeToString() for m in stream], stream
            reply, call = method.with_call(request, metadata=md, timeout=CALL_TIMEOUT_S)
            return [reply.SerializeToString()], call

        self._run(rpc, send, request_text, wire=False)

    def raw(self, service: str, rpc: str, data: bytes | list[bytes]) -> None:
        """Bytes on the wire, as the fuzz tenant."""
        md = _metadata("fuzz", self.tokens)
        channel = self.store_channel if service == KV_SERVICE else self.worker_channel
        path = f"/{service}/{rpc}"

        def send() -> tuple[list[bytes], Any]:
            if isinstance(data, list):
                reply, call = channel.stream_unary(path).with_call(
                    iter(data), metadata=md, timeout=CALL_TIMEOUT_S
                )
                return [reply], call
            if rpc in ("GetChunk", "Chat", "Generate"):
                stream = channel.unary_stream(path)(data, metadata=md, timeout=CALL_TIMEOUT_S)
                return list(stream), stream
            reply, call = channel.unary_unary(path).with_call(data, metadata=md, timeout=CALL_TIMEOUT_S)
            return [reply], call

        self._run(rpc, send, request_text="", wire=True)


def _text_of(message: Any) -> str:
    try:
        return str(message)
    except Exception:
        return ""


def _cancelled_midway(method: Any, requests: Sequence[Any], after: int, md: Any) -> tuple[list[bytes], Any]:
    """Send the stream's first ``after`` messages, then cancel the call (a client giving up midway)."""
    release = threading.Event()

    def parts() -> Iterator[Any]:
        yield from requests[:after]
        release.wait(CALL_TIMEOUT_S)

    future = method.future(parts(), metadata=md, timeout=CALL_TIMEOUT_S)
    try:
        time.sleep(0.05)  # let the parts reach the store
        future.cancel()
    finally:
        release.set()
    try:
        reply = future.result()
    except grpc.FutureCancelledError:
        raise _ClientCancelled from None
    return [reply.SerializeToString()], future


class _ClientCancelled(Exception):
    """The harness cancelled the call itself (no status from the server)."""


def _hypothesis_run(strategy: Any, examples: int, seed: int, body: Callable[[Any], None]) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis.errors import HypothesisWarning

    @hseed(seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(strategy)
    def drive(case: Any) -> None:
        body(case)

    with warnings.catch_warnings():  # huge generated values make hypothesis warn about their repr
        warnings.simplefilter("ignore", HypothesisWarning)
        drive()


_VALID: dict[str, Callable[[_World], Any]] = {
    "PutChunk": lambda w: pb.PutChunkRequest(
        header=pb.PutChunkHeader(key=w.spans[0].key, total_bytes=4), data=b"abcd"
    ),
    "GetChunk": lambda w: pb.GetChunkRequest(key=w.spans[0].key),
    "PutSmallChunk": lambda w: pb.PutChunkRequest(header=pb.PutChunkHeader(key=w.spans[0].key), data=b"x"),
    "GetSmallChunk": lambda w: pb.GetChunkRequest(key=w.spans[1].key),
    "LookupPrefix": lambda w: pb.LookupPrefixRequest(namespace=_ns_proto(NS), token_ids=SEED_TOKENS),
    "BeginTurn": lambda w: pb.BeginTurnRequest(session_id=SEED_SESSION, holder="h", lease_id="l"),
    "EndTurn": lambda w: pb.EndTurnRequest(session_id=SEED_SESSION, lease_id="l"),
    "CommitTurn": lambda w: pb.CommitTurnRequest(manifest=w.manifest, expected_version=1, commit_id="c"),
    "GetSession": lambda w: pb.GetSessionRequest(session_id=SEED_SESSION),
    "ListSessions": lambda w: pb.ListSessionsRequest(page_size=2),
    "DeleteSession": lambda w: pb.DeleteSessionRequest(session_id="nope"),
    "GetStats": lambda w: pb.GetStatsRequest(),
    "Chat": lambda w: wpb.ChatRequest(
        session_id="w", message="hi", params=wpb.GenerationParams(max_new_tokens=1)
    ),
    "Generate": lambda w: wpb.GenerateRequest(
        token_ids=[65, 66], params=wpb.GenerationParams(max_new_tokens=1)
    ),
}


def _fuzz_rpcs(
    driver: _Driver, world: _World, cfg: FuzzSettings, seed: int, tick: Callable[[str], None]
) -> None:
    strategies = _Strategies(world)
    store_cases, worker_cases = strategies.store_cases(), strategies.worker_cases()
    st = strategies.st
    for service, rpcs, cases, n_msg, n_wire in (
        (KV_SERVICE, STORE_RPCS, store_cases, cfg.store_messages, cfg.store_wire),
        (WORKER_SERVICE, WORKER_RPCS, worker_cases, cfg.worker_messages, cfg.worker_wire),
    ):
        for i, rpc in enumerate(rpcs):
            case = st.tuples(cases[rpc], strategies.tenant)

            def message(drawn: tuple[Any, str], service: str = service, rpc: str = rpc) -> None:
                request, tenant = drawn
                if rpc == "PutChunk":
                    reqs, cancel_after = request
                    driver.message(service, rpc, reqs, tenant, cancel_after)
                else:
                    driver.message(service, rpc, request, tenant)

            _hypothesis_run(case, n_msg, seed + 101 * i, message)
            valid = _VALID[rpc](world).SerializeToString()
            wire = (
                st.lists(strategies.wire(valid), max_size=4) if rpc == "PutChunk" else strategies.wire(valid)
            )

            def raw(data: Any, service: str = service, rpc: str = rpc) -> None:
                driver.raw(service, rpc, data)

            _hypothesis_run(wire, n_wire, seed + 101 * i + 1, raw)
            tick(f"{rpc}: {driver.recorder.tried[rpc]} inputs")

    def poison(case: tuple[pb.Manifest, wpb.ChatRequest]) -> None:
        manifest, chat = case
        version = 0
        with contextlib.suppress(grpc.RpcError):
            reply = driver.store.GetSession(
                pb.GetSessionRequest(session_id=manifest.session_id),
                metadata=_metadata("canary", driver.tokens),
                timeout=CALL_TIMEOUT_S,
            )
            version = reply.manifest.version
        commit = pb.CommitTurnRequest(
            manifest=manifest, expected_version=version, commit_id=f"poison-{secrets.token_hex(6)}"
        )
        driver.message(KV_SERVICE, "CommitTurn", commit, "canary")
        driver.message(WORKER_SERVICE, "Chat", chat, "fuzz")

    _hypothesis_run(strategies.poisoned(), cfg.worker_messages, seed + 7919, poison)
    tick(f"sessions the store holds, then Chat: {cfg.worker_messages} inputs")


def _check_alive(recorder: FuzzRecorder, stack: _Stack) -> None:
    """Both services still answer health and a real call (else: a crash)."""
    from gearkv.store.local import health_serving

    if not stack.store.thread.is_alive():
        recorder.crash("store", "the store's thread is gone")
    for name, address in (("store", stack.store_address), ("worker", stack.worker_address)):
        if not health_serving(address, timeout=5):
            recorder.crash(name, "does not answer health after the fuzz")
    md = _metadata("fuzz", stack.tokens)
    with grpc.insecure_channel(stack.store_address) as ch:
        try:
            pb_grpc.KVStoreStub(ch).GetStats(pb.GetStatsRequest(), metadata=md, timeout=10)
        except grpc.RpcError as err:
            recorder.crash("store", f"GetStats after the fuzz: {err.code().name}")
    with grpc.insecure_channel(stack.worker_address) as ch:
        request = wpb.GenerateRequest(token_ids=[72, 105], params=wpb.GenerationParams(max_new_tokens=2))
        try:
            replies = list(wpb_grpc.WorkerStub(ch).Generate(request, timeout=60))
            if not replies or not replies[-1].HasField("stats"):
                recorder.crash("worker", "Generate after the fuzz ended without its stats")
        except grpc.RpcError as err:
            recorder.crash("worker", f"Generate after the fuzz: {err.code().name}")


def _scan_metrics(recorder: FuzzRecorder, stack: _Stack) -> None:
    from prometheus_client import generate_latest

    recorder.scan_text("store metrics", generate_latest(stack.store.server.metrics.registry).decode())
    recorder.scan_text("worker metrics", generate_latest(stack.worker.metrics.registry).decode())


# -- atheris (when it installs) --------------------------------------------------------------------

_ATHERIS_SCRIPT = textwrap.dedent(
    """
    import os, sys, atheris, grpc
    STORE, WORKER, TOKEN, CANARY = (os.environ[k] for k in ("FZ_STORE", "FZ_WORKER", "FZ_TOKEN", "FZ_CANARY"))
    RPCS = os.environ["FZ_RPCS"].split(",")
    store, worker = grpc.insecure_channel(STORE), grpc.insecure_channel(WORKER)
    md = (("authorization", "Bearer " + TOKEN),)
    BAD = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)

    def one(data):
        fdp = atheris.FuzzedDataProvider(data)
        service, rpc = RPCS[fdp.ConsumeIntInRange(0, len(RPCS) - 1)].split("/")
        body = fdp.ConsumeBytes(fdp.remaining_bytes())
        ch = store if service.endswith("KVStore") else worker
        path = "/" + service + "/" + rpc
        try:
            if rpc == "PutChunk":
                parts = [body[: len(body) // 2], body[len(body) // 2 :]]
                ch.stream_unary(path)(iter(parts), metadata=md, timeout=10)
            elif rpc in ("GetChunk", "Chat", "Generate"):
                list(ch.unary_stream(path)(body, metadata=md, timeout=10))
            else:
                ch.unary_unary(path)(body, metadata=md, timeout=10)
        except grpc.RpcError as err:
            if err.code() in BAD or CANARY in (err.details() or ""):
                raise RuntimeError(path + " answered " + err.code().name)

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
    """
)


def _run_atheris(stack: _Stack, seconds: float) -> str:
    """libFuzzer-driven wire bytes in a child process (it exits when done); '' when atheris is missing."""
    try:
        import atheris  # noqa: F401
    except ImportError:
        return ""
    rpcs = [f"{KV_SERVICE}/{r}" for r in STORE_RPCS] + [f"{WORKER_SERVICE}/{r}" for r in WORKER_RPCS]
    env = dict(
        os.environ,
        FZ_STORE=stack.store_address,
        FZ_WORKER=stack.worker_address,
        FZ_TOKEN=stack.tokens["fuzz"],
        FZ_CANARY=stack.tokens["canary"],
        FZ_RPCS=",".join(rpcs),
    )
    with tempfile.TemporaryDirectory(prefix="gearkv-atheris-") as tmp:
        script = Path(tmp) / "fuzz_wire.py"
        script.write_text(_ATHERIS_SCRIPT)
        cmd = [sys.executable, str(script), f"-max_total_time={max(1, int(seconds))}", "-max_len=512"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 60, cwd=tmp)
    runs = re.findall(r"Done (\d+) runs", done.stderr)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        return f"failed (exit {done.returncode}): {' | '.join(tail)[:300]}"
    return f"ran {runs[-1] if runs else '?'} inputs in {seconds:g} s, no failure"


# -- the run -----------------------------------------------------------------------------------------


def run_fuzz(
    *,
    quick: bool,
    seed: int = 0,
    progress_tick: Callable[[str], None] | None = None,
    examples: int | None = None,
) -> dict[str, Any]:
    """Fuzz every KVStore and Worker RPC on a private stack; returns the report (``gate``: pass/fail).

    Raises:
        ValueError: ``examples`` below 1.
    """
    cfg = FuzzSettings.of(quick, examples)
    tick = progress_tick or (lambda _what: None)
    canary = "canary-" + secrets.token_hex(16)
    recorder = FuzzRecorder(canary)
    started = time.perf_counter()
    atheris = "not installed"
    with _capture_logs(recorder) as logs:
        with _stack(canary) as stack:
            driver = _Driver(recorder, stack)
            try:
                md = _metadata("fuzz", stack.tokens)
                world = _seed_world(driver.store_channel, md, stack.worker.namespace)
                tick("stack started")
                _fuzz_rpcs(driver, world, cfg, seed, tick)
                ran = _run_atheris(stack, cfg.atheris_s)
                if ran:
                    atheris = ran
                    if ran.startswith("failed"):
                        recorder.crash("atheris", ran)
                stack.worker.wait_for_pushes(30)
                _check_alive(recorder, stack)
                _scan_metrics(recorder, stack)
            finally:
                driver.close()
        log_records = logs.records
    report = recorder.report()
    report.update(
        atheris=atheris,
        seconds=round(time.perf_counter() - started, 1),
        seed=seed,
        profile="quick" if quick else "full",
        log_records_scanned=log_records,
    )
    order = [
        "inputs_tried",
        "inputs_total",
        "statuses",
        "unknown_status",
        "internal_status",
        "crashes",
        "leaks",
    ]
    return {k: report[k] for k in order} | report


def render(result: dict[str, Any], out: Any = None) -> None:
    """The per-RPC table (rich), then the gate line."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out) if out is not None else Console()
    table = Table(
        title=f"fuzz ({result.get('profile', '?')}, {result['seconds']} s, seed {result.get('seed')})"
    )
    table.add_column("RPC")
    table.add_column("inputs", justify="right")
    table.add_column("wire", justify="right")
    table.add_column("statuses")
    for rpc, n in result["inputs_tried"].items():
        codes = ", ".join(f"{c} {k}" for c, k in sorted(result["statuses"][rpc].items(), key=lambda x: -x[1]))
        table.add_row(rpc, str(n), str(result["wire_inputs"].get(rpc, 0)), codes)
    console.print(table)
    console.print(
        f"inputs {result['inputs_total']}; UNKNOWN {result['unknown_status']}, INTERNAL "
        f"{result['internal_status']}, crashes {result['crashes']}, leaks {result['leaks']}, harness errors "
        f"{result['harness_errors']}; atheris: {result['atheris']}; gate: {result['gate'].upper()}"
    )
    for finding in result["findings"][:20]:
        console.print(f"  {finding['kind']}: {finding['where']}: {finding['detail']}", markup=False)


def main(argv: Sequence[str], prog: str = "gearkv bench fuzz") -> int:
    from gearkv.cli import HelpFormatter

    from .progress import progress

    full, quick = FuzzSettings(), FuzzSettings.quick()
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"the CI profile: {quick.store_messages} messages per store RPC (full: {full.store_messages})",
    )
    parser.add_argument("--json", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (same seed, same inputs)")
    parser.add_argument(
        "--examples",
        type=int,
        help="generated messages per store RPC (the worker's RPCs and wire bytes get fewer, in proportion)",
    )
    args = parser.parse_args(list(argv))
    if args.examples is not None and args.examples < 1:
        parser.error(f"--examples must be >= 1, got {args.examples}")
    steps = len(STORE_RPCS) + len(WORKER_RPCS) + 2
    with progress(steps) as tick:
        result = run_fuzz(quick=args.quick, seed=args.seed, progress_tick=tick, examples=args.examples)
    render(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["gate"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
