"""Chat sessions resumed from the store: the worker's turn logic.

One turn:

1. begin the turn in the store (``BeginTurn``: take the session's turn lease, so no other worker runs
   a turn of it meanwhile, and learn its version; the manifest comes back only when this worker's
   local record is not that version), within a short budget; a local record that holds answered
   turns the store does not have yet stays the session's history until a commit includes them;
2. render the conversation plus the new message with the chat template -> prompt token ids;
3. reuse KV for the longest prefix available: the hot cache (same worker, no transfer) or the store
   (``LookupPrefix`` -> pipelined pull + decode -> cache rebuilt), never more than ``prompt - 1``
   tokens (the last prompt token is fed to get the first logits);
4. prefill only the rest and stream the answer;
5. after the answer, in a background thread: compress the chunks the store does not hold yet, push
   them and commit the turn (compare-and-set on the manifest version).

Every store or codec fault degrades step 3 to recomputing and is reported as the turn's ``reason``
(counted in Prometheus); a turn never fails because of the store. A turn is a ``hit`` only on a history
the store confirmed current: when the store could not be asked (down, or slower than the budget) or
an earlier turn may be missing from it (``history_lost``), the outcome says so.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from gearkv.client import ChatMessage, ChunkRef, TurnStart, errors
from gearkv.client.keys import Namespace, chunk_key, is_valid_session_id
from gearkv.codec import Calibration, CodecError
from gearkv.worker import hf_cache
from gearkv.worker.admission import Admission
from gearkv.worker.chunking import common_prefix
from gearkv.worker.codec_setup import load_calibration, needs_calibration, worker_codec
from gearkv.worker.config import SessionOptions
from gearkv.worker.engine import Delta, Engine, Generation, SamplingParams
from gearkv.worker.errors import InvalidRequest, SessionBusy
from gearkv.worker.fingerprint import model_fingerprint
from gearkv.worker.history import Continue, LocalState, classify, settle
from gearkv.worker.hot_cache import HotCache, HotEntry
from gearkv.worker.leases import LeaseKeeper
from gearkv.worker.metrics import WorkerMetrics
from gearkv.worker.push_queue import PushQueue
from gearkv.worker.session_records import (
    LocalRecord,
    SessionTable,
    TurnView,
    merge_refs,
    view_of_manifest,
    view_of_record,
)
from gearkv.worker.sharing import SHARING_ATTRIBUTE, sharing_fingerprint
from gearkv.worker.store_client import StoreClient
from gearkv.worker.transfer import KVGeometry, PushResult, fault_reason, pull_prefix, push_turn

__all__ = ["Turn", "TurnStats", "Worker"]

log = logging.getLogger("gearkv.worker")

MAX_MESSAGE_CHARS = 1 << 20
MAX_SYSTEM_PROMPT_CHARS = 1 << 16
PUSH_DRAIN_S = 30.0  # how long closing a worker waits for its pending pushes
# Reasons a turn reused less that are not store faults (not counted as such).
_NOT_FAULTS = frozenset({"below_min_reuse", "no_store"})
# Push faults worth retrying in the background: the store may come back.
_RETRYABLE_PUSH = frozenset({"store_unavailable", "store_timeout"})
# Partial-chunk lengths a stateless turn tries where the previous turn's context may have ended.
TAIL_PROBES = 4


@dataclass
class TurnStats:
    """Per-turn figures; mirrors ``gearkv.api.v1.TurnStats`` (outcome as "hit"/"partial"/"miss").

    ``bytes_raw``/``bytes_stored`` describe the session as last committed and ``compress_s``/
    ``bytes_pushed`` the last finished push, since this turn's push runs after the answer
    (``push_pending``); ``Turn.push`` resolves to this turn's own figures.
    """

    outcome: str = "miss"
    reason: str = ""
    source: str = ""
    prompt_tokens: int = 0
    tokens_reused: int = 0
    tokens_prefilled: int = 0
    tokens_generated: int = 0
    bytes_pulled: int = 0
    bytes_pushed: int = 0
    bytes_raw: int = 0
    bytes_stored: int = 0
    ttft_s: float = 0.0
    pull_s: float = 0.0
    decompress_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    compress_s: float = 0.0
    push_pending: bool = False
    codec: str = ""


class Turn:
    """A turn in progress: iterate for :class:`Delta` s; ``stats`` and ``finish_reason`` once done.

    ``push`` is the background push's future (None without a store): ``push.result()`` waits for it.
    Iterate it to the end or ``close()`` it: either frees the session for its next turn.
    ``cancel()`` (safe from any thread, e.g. a gRPC callback) sets ``cancelled``: the engine then
    stops before its next prefill slice, decoder layer or decode step and iterating raises
    ``TurnCancelled``.
    """

    def __init__(self, steps: Iterator[Delta], release: Callable[[], None] | None = None) -> None:
        self._steps = steps
        self._release = release
        self.stats: TurnStats | None = None
        self.finish_reason = ""
        self.text = ""
        self.token_ids: list[int] = []
        self.prompt_ids: list[int] = []
        self.push: Future[PushResult] | None = None
        self.cancelled = threading.Event()

    def __iter__(self) -> Iterator[Delta]:
        return self._steps

    def cancel(self) -> None:
        """Ask the running turn to stop (idempotent): it does before its next layer or decode step."""
        self.cancelled.set()

    def close(self) -> None:
        close = getattr(self._steps, "close", None)
        if close is not None:
            close()
        if self._release is not None:  # a generator closed before its first step skips its finally
            self._release()

    def run(self) -> Turn:
        """Drain the stream; returns self."""
        for _ in self._steps:
            pass
        return self


class Worker:
    """Serves chat turns for many sessions on one model, reusing KV from a hot cache and the store.

    Args:
        engine: the model runner.
        client: the store (a ``gearkv.client.KVStoreClient``; None: no store, hot cache only).
        options: codec, chunk size, hot cache size, ...
        metrics: Prometheus metrics (a private registry when None).
        fingerprint: the model's fingerprint (computed from the engine's model when None).
        calibration: the codec calibration a gtc preset needs (None: ``options.codec_calibration``'s
            file is loaded, if set).

    Raises:
        CalibrationError: a gtc preset without a calibration, or with an unreadable one, or one of
            another model or layer count (the message names ``--codec-calibration``).
        SharingPlanMismatch: the engine's sharing plan was made for another model.
    """

    def __init__(
        self,
        engine: Engine,
        client: StoreClient | None = None,
        options: SessionOptions | None = None,
        metrics: WorkerMetrics | None = None,
        *,
        fingerprint: str | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        self.engine = engine
        self.client = client
        self.options = options or SessionOptions()
        self.metrics = metrics or WorkerMetrics()
        # KV is stored under the model's fingerprint, plus the sharing plan's digest when the engine
        # runs one (KVSharer): KV of one plan is never read under another.
        model_fp = fingerprint or model_fingerprint(engine.loaded)
        plan = engine.sharing
        if plan is not None:
            plan.check_model(model_fp)
        # A gtc preset is bound to its calibration (its digest ends the codec id, so the namespace).
        if calibration is None and self.options.codec_calibration and needs_calibration(self.options.codec):
            calibration = load_calibration(self.options.codec_calibration)
        self.codec = worker_codec(
            self.options.codec,
            calibration,
            fingerprint=model_fp,
            kv_layers=engine.kv_layers,
            sharing=plan is not None,
        )
        # What every decode of this worker's chunks needs (None for the presets without calibration).
        self.calibration: Calibration | None = self.codec.calibration
        self.sharing = plan.digest if plan is not None else ""
        self.fingerprint = sharing_fingerprint(model_fp, plan)
        self.namespace = Namespace(self.fingerprint, self.codec.codec_id, self.options.chunk_size)
        self.geometry = KVGeometry.of(
            engine.model.config, engine.device, engine.loaded.dtype, layers=engine.kv_layers
        )
        self.hot = HotCache(self.options.hot_cache_bytes)
        self._local = SessionTable()  # guarded by self._lock
        self._lock = threading.Lock()
        self.admission = Admission(self.options.max_turns_in_flight, self.metrics.turns_in_flight)
        turns = self.options.max_turns_in_flight
        self.pushes = PushQueue(
            max_queued=2 * turns, max_retrying=4 * turns, background=self.options.background_push
        )
        # This worker instance in the store's turn leases (a restarted worker is another holder).
        self.holder = f"w-{uuid.uuid4().hex[:20]}"
        self.leases = LeaseKeeper(client, self.holder, self.options.lease_ms)

    # -- public API ------------------------------------------------------------------------------

    def chat(
        self,
        session_id: str,
        message: str,
        params: SamplingParams | None = None,
        *,
        system_prompt: str = "",
        rewind_turns: int = 0,
    ) -> Turn:
        """Start one chat turn: the user's ``message`` is added to the session's conversation.

        Raises:
            InvalidRequest: bad session id, empty/oversized message, rewind beyond the conversation.
            SessionBusy: a turn of this session is already running here.
            WorkerOverloaded: ``max_turns_in_flight`` turns are running.
        """
        _check_session_id(session_id, required=True)
        if not 1 <= len(message) <= MAX_MESSAGE_CHARS:
            raise InvalidRequest(f"message must be 1-{MAX_MESSAGE_CHARS} chars")
        if len(system_prompt) > MAX_SYSTEM_PROMPT_CHARS:
            raise InvalidRequest(f"system_prompt must be at most {MAX_SYSTEM_PROMPT_CHARS} chars")
        if rewind_turns < 0:
            raise InvalidRequest("rewind_turns must be >= 0")
        params = params or SamplingParams()
        release = self.admission.enter(session_id)
        turn = Turn(iter(()), release)
        turn._steps = self._guarded(
            release, self._chat_steps(turn, session_id, message, params, system_prompt, rewind_turns)
        )
        return turn

    def generate(
        self, token_ids: Sequence[int], params: SamplingParams | None = None, *, session_id: str = ""
    ) -> Turn:
        """Continue raw ``token_ids``; with ``session_id`` the KV is resumed and stored under it.

        Raises:
            InvalidRequest: empty prompt, ids outside the vocabulary, a prompt beyond the context.
            SessionBusy, WorkerOverloaded: as for :meth:`chat`.
        """
        _check_session_id(session_id, required=False)
        ids = [int(t) for t in token_ids]
        if not ids:
            raise InvalidRequest("token_ids must not be empty")
        bad = next((t for t in ids if not 0 <= t < self.engine.vocab_size), None)
        if bad is not None:
            raise InvalidRequest(
                f"token_ids contains {bad}, outside the vocabulary 0..{self.engine.vocab_size - 1}"
            )
        if len(ids) >= self.engine.max_context:
            raise InvalidRequest(
                f"token_ids has {len(ids)} tokens; the model's context is {self.engine.max_context}"
            )
        params = params or SamplingParams()
        release = self.admission.enter(session_id or f"\0anon-{id(ids)}")
        turn = Turn(iter(()), release)
        turn._steps = self._guarded(release, self._generate_steps(turn, session_id, ids, params))
        return turn

    def wait_for_pushes(self, timeout: float | None = None) -> None:
        """Block until every push submitted so far has finished."""
        self.pushes.drain(timeout)

    def close(self, timeout: float = PUSH_DRAIN_S) -> None:
        """Finish pending pushes (up to ``timeout`` seconds) and stop the push thread.

        Turns whose push is still failing (the store is away) are lost with the process; their
        leases expire uncommitted, so the session's next turn elsewhere reports ``history_lost``.
        """
        self.pushes.close(timeout)
        self.leases.close()

    def unsynced_sessions(self) -> list[str]:
        """Sessions holding answered turns that no commit includes yet (their push is retrying)."""
        with self._lock:
            return self._local.unsynced()

    def session_messages(self, session_id: str) -> tuple[ChatMessage, ...]:
        """The conversation as this worker last saw it (the store's copy is authoritative)."""
        with self._lock:
            local = self._local.get(session_id)
            return local.messages if local else ()

    # -- turn flow -------------------------------------------------------------------------------

    @staticmethod
    def _guarded(release: Callable[[], None], steps: Iterator[Delta]) -> Iterator[Delta]:
        try:
            yield from steps
        finally:
            release()

    def _chat_steps(
        self,
        turn: Turn,
        session_id: str,
        message: str,
        params: SamplingParams,
        system_prompt: str,
        rewind_turns: int,
    ) -> Iterator[Delta]:
        t0 = time.perf_counter()
        view = self._begin(session_id)
        try:
            messages = list(view.messages)
            if rewind_turns:
                messages = _rewind(messages, rewind_turns)
            if not messages and system_prompt:
                messages.append(ChatMessage("system", system_prompt))
            messages.append(ChatMessage("user", message))
            prompt = self.engine.encode_chat([{"role": m.role, "content": m.content} for m in messages])
            if len(prompt) >= self.engine.max_context:
                n, context = len(prompt), self.engine.max_context
                raise InvalidRequest(f"the conversation is {n} tokens; the model's context is {context}")
            yield from self._turn(turn, t0, session_id, view, prompt, params, messages, chat=True)
        finally:
            if not view.handed:
                self._end_lease(session_id, view)

    def _generate_steps(
        self, turn: Turn, session_id: str, ids: list[int], params: SamplingParams
    ) -> Iterator[Delta]:
        t0 = time.perf_counter()
        view = self._begin(session_id) if session_id else TurnView(store_ok=self.client is not None)
        try:
            yield from self._turn(turn, t0, session_id, view, ids, params, list(view.messages), chat=False)
        finally:
            if not view.handed:
                self._end_lease(session_id, view)

    def _turn(
        self,
        turn: Turn,
        t0: float,
        session_id: str,
        view: TurnView,
        prompt: list[int],
        params: SamplingParams,
        messages: list[ChatMessage],
        *,
        chat: bool,
    ) -> Iterator[Delta]:
        stats = TurnStats(prompt_tokens=len(prompt), codec=self.codec.codec_id)
        turn.prompt_ids = prompt
        kv, reused, stored = self._reuse(session_id, view, prompt, stats)
        cache = hf_cache.import_kv(kv, layers=self.engine.kv_layers) if kv is not None else None
        gen: Generation = self.engine.generate(
            prompt, params, cache=cache, reused=reused if kv else 0, cancel=turn.cancelled
        )
        for delta in gen:
            turn.token_ids.extend(delta.token_ids)
            yield delta
        turn.text, turn.finish_reason = gen.text, gen.finish_reason
        stats.ttft_s = gen.first_token_at - t0
        stats.prefill_s, stats.decode_s = gen.prefill_s, gen.decode_s
        stats.tokens_generated = len(gen.generated)
        self._record(stats)
        if chat:
            messages = [*messages, ChatMessage("assistant", gen.text)]
        # The answer is out: from here the turn's push settles its lease, and the history it answered
        # on is this worker's record of the session until a commit includes it.
        view.handed = True
        cached = self.engine.cached_ids(prompt, gen)
        if session_id:
            self._remember(session_id, view, cached, messages)
        try:
            turn.push = self._keep(session_id, view, cached, gen, stored, messages)
        except Exception as exc:  # the answer is out: keeping its KV is best effort, never a failed turn
            log.warning(
                "session %r: keeping the turn's KV failed (%s: %s); its next turn recomputes",
                session_id,
                type(exc).__name__,
                exc,
            )
            self.metrics.pushes.labels(result="keep_failed").inc()
        last = self.last_push(session_id)
        if last is not None:
            stats.compress_s, stats.bytes_pushed = last.compress_s, last.bytes_pushed
            stats.bytes_raw, stats.bytes_stored = last.bytes_raw, last.bytes_stored
        else:
            stats.bytes_raw = sum(c.raw_bytes for c in view.chunks)
            stats.bytes_stored = sum(c.stored_bytes for c in view.chunks)
        stats.push_pending = turn.push is not None and not turn.push.done()
        turn.stats = stats

    def _remember(
        self, session_id: str, view: TurnView, cached: list[int], messages: list[ChatMessage]
    ) -> None:
        """Record the answered history before anything can fail: it is kept until a commit has it."""
        with self._lock:
            self._local.answered(session_id, view, messages, cached)

    def _keep(
        self,
        session_id: str,
        view: TurnView,
        cached: list[int],
        gen: Generation,
        stored: tuple[ChunkRef, ...],
        messages: list[ChatMessage],
    ) -> Future[PushResult] | None:
        """After the answer: the turn's KV into the hot cache, and its push submitted."""
        kv_all = hf_cache.export_kv(gen.cache)
        if session_id:
            self.hot.put(session_id, HotEntry(tuple(cached), kv_all))
            self.metrics.hot_cache_bytes.set(self.hot.nbytes)
        return self._submit_push(session_id, view, cached, kv_all, stored, messages)

    # -- reading the session and reusing KV ------------------------------------------------------

    def _begin(self, session_id: str) -> TurnView:
        """Begin a turn: take the session's lease and settle which history the turn continues.

        Raises:
            SessionBusy: another worker runs a turn of this session (its lease is live).
        """
        with self._lock:
            local = self._local.get(session_id, touch=True)
        if self.client is None:
            return view_of_record(local) if local is not None else TurnView(fault="no_store", store_ok=False)
        lease_id = uuid.uuid4().hex
        known = local.version if local is not None else 0
        try:
            start: TurnStart = self.client.begin_turn(
                session_id,
                holder=self.holder,
                lease_id=lease_id,
                lease_ms=self.options.lease_ms,
                known_version=known,
                timeout=self.options.store_read_budget_s,
            )
        except errors.TurnInProgress as exc:
            raise SessionBusy(f"session {session_id!r} has a turn running on another worker: {exc}") from exc
        except errors.KVStoreError as exc:
            # The store cannot confirm the history: go on from this worker's record (or recompute).
            # The request may still take the lease once the store catches up (a stalled Redis), so
            # the turn keeps its id: the commit (or EndTurn) gives it back if it was taken.
            view = view_of_record(local) if local is not None else TurnView()
            view.fault, view.store_ok, view.confirmed = fault_reason(exc), False, False
            view.lease_id = lease_id
            return view
        self.leases.hold(session_id, lease_id, start.version)
        view = self._settle(session_id, local, start)
        view.lease_id = lease_id
        return view

    def _settle(self, session_id: str, local: LocalRecord | None, start: TurnStart) -> TurnView:
        """Which history a turn continues, given this worker's record and what BeginTurn found."""
        with self._lock:
            state = None
            if local is not None:
                pending = local.pending is not None and not local.pending.done()
                state = LocalState(local.version, local.unsynced, pending)
            choice = settle(state, start.version)
            if local is not None and choice is Continue.LOCAL_RECOMMIT:
                # The store lost commits of this session (expiry, eviction, a failover): the record
                # is still what the user saw, so it is committed again, chunks and all.
                local.version, local.chunks = start.version, ()
            if local is not None and choice in (Continue.LOCAL, Continue.LOCAL_RECOMMIT):
                view = view_of_record(local)
            else:
                if local is not None:
                    self._local.drop(session_id)  # superseded (kept again after this turn's answer)
                view = self._store_view(start)
        if choice is Continue.STORE_LOST:
            # Another worker committed on top of a turn answered here that never reached the store.
            log.warning("session %r: a turn answered here was overtaken in the store", session_id)
            view.fault = "history_lost"
        elif start.abandoned_turn and not (local is not None and start.abandoned_holder == self.holder):
            view.fault = "history_lost"  # an earlier turn's lease expired uncommitted
        return view

    def _store_view(self, start: TurnStart) -> TurnView:
        if start.manifest is None:
            return TurnView(version=start.version)
        return view_of_manifest(start.manifest, self.namespace, sharing=self.sharing)

    def _end_lease(self, session_id: str, view: TurnView) -> None:
        """Give back the lease of a turn that commits nothing (cancelled, or failed before answering)."""
        self.leases.release(session_id, view.lease_id)
        if not view.lease_id or self.client is None:
            return
        with self._lock:
            local = self._local.get(session_id)
            if local is not None and local.unsynced:
                return  # let it expire: until a commit, others must learn a turn may be missing
        client, lease_id = self.client, view.lease_id

        def end() -> None:
            with contextlib.suppress(errors.KVStoreError):
                client.end_turn(session_id, lease_id, timeout=self.options.store_read_budget_s * 4)

        self.pushes.submit_nowait(end)  # once shut down, the lease expires by itself

    def _reuse(
        self, session_id: str, view: TurnView, prompt: list[int], stats: TurnStats
    ) -> tuple[list[tuple[Any, Any]] | None, int, tuple[ChunkRef, ...]]:
        """Find KV for the longest prefix of ``prompt``; fills the outcome fields of ``stats``."""
        limit = len(prompt) - 1
        had = min(len(view.token_ids), limit)  # what the session holds, as far as this prompt can use it
        could = min(common_prefix(view.token_ids, prompt), limit)
        reasons = [view.fault]  # in the order met; the first one is the turn's reason
        kv: list[tuple[Any, Any]] | None = None
        reused = 0
        stored: tuple[ChunkRef, ...] = view.chunks
        hot = self.hot.get(session_id) if session_id else None
        if hot is not None:
            n = min(common_prefix(hot.token_ids, prompt), limit)
            if n > 0:
                kv, reused, stats.source = hf_cache.crop_kv(hot.kv, n), n, "hot_cache"
        if reused < max(could, 1) and self.client is not None and view.store_ok:
            try:
                match = self.client.lookup_prefix(self.namespace, prompt, session_id=session_id or None)
            except errors.KVStoreError as exc:
                reasons.append(fault_reason(exc))
            else:
                stored = tuple(match.chunks)  # what exists now (a manifest may name evicted chunks)
                n = min(match.matched_tokens, limit)
                get_chunks: Callable[[Sequence[str]], Iterator[bytes]] = self.client.get_chunks
                if not session_id:  # stateless: the previous turn's partial last chunk, if stored
                    tail = self._probe_tail(prompt, stored, n, limit)
                    if tail is not None:
                        ref, blob = tail
                        stored, n = (*stored, ref), ref.end
                        get_chunks = _with_prefetched(self.client.get_chunks, ref.key, blob)
                if n < could and not view.from_local:  # the manifest names chunks the store lost
                    reasons.append("chunk_missing")  # (a local view may just be ahead of its push)
                if n > reused and n >= self.options.min_reuse_tokens:
                    pulled = pull_prefix(get_chunks, stored, n, self.geometry, calibration=self.calibration)
                    stats.bytes_pulled, stats.pull_s = pulled.bytes_pulled, pulled.pull_s
                    stats.decompress_s = pulled.decompress_s
                    self.metrics.bytes_pulled.inc(pulled.bytes_pulled)
                    self.metrics.pull.observe(pulled.pull_s)
                    self.metrics.decompress.observe(pulled.decompress_s)
                    if pulled.reason:
                        reasons.append(pulled.reason)
                        stored = tuple(r for r in stored if r.end <= pulled.tokens)  # re-push the rest
                    if pulled.kv is not None and pulled.tokens > reused:
                        kv, reused, stats.source = pulled.kv, pulled.tokens, "store"
                elif 0 < n < self.options.min_reuse_tokens and n > reused:
                    reasons.append("below_min_reuse")
        elif self.client is None and view.new:
            reasons.append("no_store")
        reasons = [r for r in dict.fromkeys(reasons) if r]
        for r in reasons:
            if r not in _NOT_FAULTS:
                self.metrics.fault(r)
        stats.tokens_reused, stats.tokens_prefilled = reused, len(prompt) - reused
        stats.outcome, stats.reason = classify(
            reused=reused,
            could=could,
            had=had,
            fault=reasons[0] if reasons else "",
            new=view.new,
            history_fault=view.fault,
            confirmed=view.confirmed,
        )
        return kv, reused, stored

    def _probe_tail(
        self, prompt: list[int], refs: Sequence[ChunkRef], matched: int, limit: int
    ) -> tuple[ChunkRef, bytes] | None:
        """The stored partial chunk that continues ``refs`` where an earlier turn's context ended.

        A lookup follows full chunks only (a partial chunk's key depends on its length), so a stateless
        client re-sending its history would recompute up to a chunk of it every turn. Such a context
        ends next to an end-of-turn token of the re-sent prompt: before it when the answer ended with it
        (its KV is never computed), one earlier when the answer was cut at max_tokens (the template
        closes the message with it): those lengths in the next chunk are tried, longest first.
        """
        size = self.namespace.chunk_size
        end = refs[-1].end if refs else 0
        if self.client is None or matched != end or end % size or end >= limit:
            return None
        stops = [p for p in range(end, min(limit, end + size)) if prompt[p] in self.engine.eos_ids]
        ends = sorted({h for p in stops for h in (p - 1, p, p + 1) if end < h <= limit and h - end < size})
        parent = refs[-1].key if refs else ""
        for h in reversed(ends[-TAIL_PROBES:]):
            key = chunk_key(self.namespace, parent, end, prompt[end:h])
            try:
                blob = next(iter(self.client.get_chunks([key], timeout=self.options.store_read_budget_s)))
            except errors.ChunkNotFound:
                continue
            except (errors.KVStoreError, StopIteration):
                return None  # a fault is the full chunks' business, not a probe's
            return ChunkRef(key=key, start=end, end=h, stored_bytes=len(blob), raw_bytes=0), blob
        return None

    def _record(self, stats: TurnStats) -> None:
        m = self.metrics
        m.turn(stats.outcome, stats.reason)
        m.tokens_reused.labels(source=stats.source or "none").inc(stats.tokens_reused)
        m.tokens_prefilled.inc(stats.tokens_prefilled)
        m.tokens_generated.inc(stats.tokens_generated)
        m.ttft.labels(path="resumed" if stats.tokens_reused else "cold").observe(stats.ttft_s)

    # -- pushing ---------------------------------------------------------------------------------

    def last_push(self, session_id: str) -> PushResult | None:
        with self._lock:
            local = self._local.get(session_id)
            return local.last_push if local is not None else None

    def _submit_push(
        self,
        session_id: str,
        view: TurnView,
        token_ids: list[int],
        kv: list[tuple[Any, Any]],
        stored: tuple[ChunkRef, ...],
        messages: list[ChatMessage],
    ) -> Future[PushResult] | None:
        with self._lock:
            local = self._local.get(session_id) if session_id else None
            seq = local.seq if local is not None else 0
        if self.client is None or not token_ids:
            if local is not None:
                with self._lock:
                    local.unsynced = False  # nothing to commit (no store): nothing to keep waiting for
            return None
        job = _PushJob(
            self,
            session_id,
            tuple(token_ids),
            kv,
            stored,
            view.version,
            tuple(messages),
            view.turns + 1,
            self._attributes(view),
            lease_id=view.lease_id,
            seq=seq,
        )
        future = self.pushes.submit(job.run)
        if local is not None:
            with self._lock:
                local.pending = future
        return future

    def _attributes(self, view: TurnView) -> dict[str, str]:
        """The manifest's attributes: the session's, and the sharing plan the KV was made with."""
        attributes = dict(view.attributes)
        attributes.pop(SHARING_ATTRIBUTE, None)
        if self.sharing:
            attributes[SHARING_ATTRIBUTE] = self.sharing
        return attributes

    def _schedule_retry(self, job: _PushJob, delay: float) -> None:
        """Push ``job`` again in ``delay`` seconds, unless a newer turn of its session took over."""

        def again() -> None:  # on the push thread
            with self._lock:
                local = self._local.get(job.session_id)
                if local is None or local.seq != job.seq or not local.unsynced:
                    return
                running: Future[PushResult] = Future()
                local.pending = running  # a turn beginning meanwhile sees its push in flight
            running.set_result(job.run())

        # Each waiting retry holds its session's KV: beyond the queue's cap the history is still
        # kept (and the session's next turn commits it), only the background retry is skipped.
        self.pushes.retry_later(delay, again)


@dataclass
class _PushJob:
    worker: Worker
    session_id: str
    token_ids: tuple[int, ...]
    kv: list[tuple[Any, Any]]
    stored: tuple[ChunkRef, ...]
    base_version: int  # the manifest version the turn started from
    messages: tuple[ChatMessage, ...]
    turns: int
    attributes: dict[str, str]
    lease_id: str = ""
    seq: int = 0  # the session's turn on this worker that this push commits
    # One commit id for every attempt: a commit that landed before its answer was lost replays.
    commit_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    attempts: int = 0
    first_at: float = field(default_factory=time.monotonic)

    def run(self) -> PushResult:
        w = self.worker
        self.attempts += 1
        w.leases.release(self.session_id, self.lease_id)  # the commit gives it back from here
        with w._lock:
            local = w._local.get(self.session_id) if self.session_id else None
            version = local.version if local is not None else self.base_version
            stored = self.stored
            if local is not None and local.version != self.base_version:
                # This worker committed since the turn started (its previous push): those chunks are
                # stored too. Otherwise ``stored`` stays as the turn found it, without the chunks a
                # pull found missing or corrupt, so that they are pushed again.
                stored = merge_refs(stored, local.chunks)
        try:
            try:
                result = self._push(stored, version)
            except errors.PreconditionFailed:  # a chunk believed stored was evicted: push them all
                result = self._push((), version)
        except errors.VersionConflict as exc:
            result = PushResult(error="version_conflict", detail=str(exc))
        except errors.KVStoreError as exc:
            result = PushResult(error=fault_reason(exc), detail=str(exc))
        except (CodecError, ValueError) as exc:
            result = PushResult(error="encode_failed", detail=str(exc))
        m = w.metrics
        m.pushes.labels(result="ok" if not result.error else result.error).inc()
        if not result.error:
            m.compress.observe(result.compress_s)
            m.bytes_pushed.inc(result.bytes_pushed)
            m.raw_pushed.inc(result.raw_pushed)
            m.chunks_pushed.labels(deduplicated="false").inc(
                result.chunks_pushed - result.chunks_deduplicated
            )
            m.chunks_pushed.labels(deduplicated="true").inc(result.chunks_deduplicated)
        if local is not None:
            with w._lock:
                if result.committed:
                    local.version, local.chunks = result.version, result.chunks
                    local.unsynced = local.seq != self.seq  # a newer turn's push is still to come
                local.last_push = result
            self._after(result)
        return result

    def _after(self, result: PushResult) -> None:
        """A failed push: retry it while the store may come back, or say the turn is at risk."""
        w = self.worker
        if result.committed:
            return
        waited = time.monotonic() - self.first_at
        if result.error in _RETRYABLE_PUSH and waited < w.options.recommit_window_s:
            delay = min(10.0, 0.25 * 2 ** min(self.attempts, 8))
            log.info(
                "session %r: push failed (%s); retrying in %.1fs (the answered turn is kept here)",
                self.session_id,
                result.error,
                delay,
            )
            w._schedule_retry(self, delay)
        elif result.error in _RETRYABLE_PUSH or result.error == "version_conflict":
            log.warning(
                "session %r: an answered turn could not be committed (%s after %d attempt(s)); the "
                "session's next turn reports history_lost",
                self.session_id,
                result.error,
                self.attempts,
            )

    def _push(self, stored: Sequence[ChunkRef], version: int) -> PushResult:
        w = self.worker
        assert w.client is not None  # push jobs are made only with a store
        return push_turn(
            w.client,
            w.codec,
            w.namespace,
            self.kv,
            self.token_ids,
            stored,
            session_id=self.session_id or None,
            messages=self.messages,
            turns=self.turns,
            expected_version=version,
            attributes=self.attributes,
            chunk_ttl_s=w.options.chunk_ttl_s,
            session_ttl_s=w.options.session_ttl_s,
            commit_id=self.commit_id if self.session_id else None,
            holder=w.holder if self.session_id else "",
            lease_id=self.lease_id,
        )


def _with_prefetched(
    get_chunks: Callable[..., Iterator[bytes]], key: str, blob: bytes
) -> Callable[[Sequence[str]], Iterator[bytes]]:
    """``get_chunks`` that serves ``key`` from ``blob`` (a chunk already downloaded by a probe)."""

    def get(keys: Sequence[str]) -> Iterator[bytes]:
        rest = [k for k in keys if k != key]
        fetched = get_chunks(rest) if rest else iter(())
        for k in keys:
            yield blob if k == key else next(fetched)

    return get


def _rewind(messages: list[ChatMessage], turns: int) -> list[ChatMessage]:
    """Drop the last ``turns`` user turns (each user message and everything after it)."""
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    if turns > len(users):
        raise InvalidRequest(f"rewind_turns {turns} exceeds the {len(users)} turns of the session")
    return messages[: users[-turns]]


def _check_session_id(session_id: str, *, required: bool) -> None:
    if not session_id and not required:
        return
    if not is_valid_session_id(session_id):
        raise InvalidRequest("session_id must be 1-128 chars of [A-Za-z0-9._:-]")
