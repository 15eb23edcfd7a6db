"""Moving KV between the worker and the store: pipelined pull + decode, encode + push + commit.

``pull_prefix`` downloads the chunks of a matched prefix in a background thread while the calling
thread decodes the previous one (so transfer and decompression overlap), and writes each decoded chunk
straight into per-layer buffers. ``push_turn`` compresses only the chunks the store does not hold yet,
uploads them, then commits the manifest (the commit point). Faults never escape as exceptions from
the pull: they end the pull early and come back as a bounded ``reason`` string.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from gearkv.client import ChatMessage, ChunkRef, Manifest, Namespace, errors
from gearkv.client.keys import ChunkSpan
from gearkv.codec import Codec, CodecError, UnsupportedFormatVersion, decode
from gearkv.worker import hf_cache
from gearkv.worker.chunking import plan_push, session_spans

__all__ = [
    "KVGeometry",
    "PullResult",
    "PushResult",
    "fault_reason",
    "pull_prefix",
    "push_turn",
]

_DONE = object()


@dataclass(frozen=True)
class KVGeometry:
    """What every layer's K/V must look like for this model: ``[batch, kv_heads, tokens, head_dim]``."""

    layers: int
    kv_heads: int | None
    head_dim: int | None
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def of(cls, config: Any, device: torch.device, dtype: torch.dtype) -> KVGeometry:
        cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        heads = getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_attention_heads", None)
        head_dim = getattr(cfg, "head_dim", None)
        if (
            head_dim is None
            and getattr(cfg, "hidden_size", None)
            and getattr(cfg, "num_attention_heads", None)
        ):
            head_dim = cfg.hidden_size // cfg.num_attention_heads
        return cls(int(cfg.num_hidden_layers), heads, head_dim, device, dtype)

    def matches(self, kv: Sequence[tuple[torch.Tensor, torch.Tensor]], tokens: int) -> bool:
        """Whether every layer's K and V hold ``tokens`` positions of this model's shape."""
        if len(kv) != self.layers:
            return False
        for k, v in kv:
            if k.dim() != 4 or v.dim() != 4 or k.shape[0] != 1 or v.shape[:3] != k.shape[:3]:
                return False
            if k.shape[2] != tokens or (self.kv_heads is not None and k.shape[1] != self.kv_heads):
                return False
            if self.head_dim is not None and not k.shape[3] == v.shape[3] == self.head_dim:
                return False
        return True


def fault_reason(exc: BaseException) -> str:
    """The bounded reason label of a store or codec fault."""
    if isinstance(exc, errors.ChunkNotFound):
        return "chunk_missing"
    if isinstance(exc, errors.ChunkCorrupt):
        return "chunk_corrupt"
    if isinstance(exc, UnsupportedFormatVersion):
        return "codec_mismatch"
    if isinstance(exc, CodecError):
        return "chunk_corrupt"
    if isinstance(exc, (errors.KVStoreUnavailable, errors.KVStoreTimeout)):
        return "store_unavailable"
    return "store_error"


@dataclass
class PullResult:
    """KV of the first ``tokens`` positions (``kv`` is None when nothing usable came back)."""

    kv: list[tuple[torch.Tensor, torch.Tensor]] | None
    tokens: int
    bytes_pulled: int = 0
    chunks: int = 0
    pull_s: float = 0.0
    decompress_s: float = 0.0
    reason: str = ""


def _download(fetch: Iterator[bytes], out: queue.Queue[Any], stop: threading.Event) -> None:
    try:
        for blob in fetch:
            if stop.is_set():
                break
            out.put(blob)
    except Exception as exc:  # handed to the decoding thread, which maps it to a reason
        out.put(exc)
    finally:
        out.put(_DONE)
        close = getattr(fetch, "close", None)
        if close is not None:
            close()


def pull_prefix(
    get_chunks: Callable[[Sequence[str]], Iterator[bytes]],
    chunks: Sequence[ChunkRef],
    tokens: int,
    geometry: KVGeometry,
) -> PullResult:
    """Pull and decode the chunks covering the first ``tokens`` positions.

    Args:
        get_chunks: the SDK's pipelined ``get_chunks`` (bytes in order of the keys given).
        chunks: refs in token order, contiguous from 0 (a lookup's answer).
        tokens: how many leading positions to keep (may end inside the last chunk).

    Returns:
        The longest usable prefix; on a fault, the chunks before it and the fault's ``reason``.
    """
    t0 = time.perf_counter()
    needed: list[ChunkRef] = []
    expect = 0
    for ref in chunks:
        if ref.start != expect or ref.end <= ref.start or expect >= tokens:
            break
        needed.append(ref)
        expect = ref.end
    tokens = min(tokens, expect)
    if tokens <= 0:
        return PullResult(None, 0, reason="chunk_missing" if chunks else "")
    buffers: list[tuple[torch.Tensor, torch.Tensor]] = []  # sized by the first chunk's layers
    result = PullResult(None, 0)
    inbox: queue.Queue[Any] = queue.Queue(maxsize=2)
    stop = threading.Event()
    try:
        fetch = get_chunks([ref.key for ref in needed])
    except Exception as exc:  # a bad key list or a closed client: nothing usable
        return PullResult(None, 0, reason=fault_reason(exc), pull_s=time.perf_counter() - t0)
    thread = threading.Thread(target=_download, args=(fetch, inbox, stop), name="gearkv-pull", daemon=True)
    thread.start()
    done = 0
    try:
        for ref in needed:
            item = inbox.get()
            if item is _DONE:
                result.reason = "chunk_missing"
                break
            if isinstance(item, BaseException):
                result.reason = fault_reason(item)
                break
            result.bytes_pulled += len(item)
            td = time.perf_counter()
            try:
                kv = decode(item, device=geometry.device, dtype=geometry.dtype)
            except CodecError as exc:
                result.reason = fault_reason(exc)
                break
            finally:
                result.decompress_s += time.perf_counter() - td
            if not geometry.matches(kv, ref.end - ref.start) or not _fits(buffers, kv):
                result.reason = "fingerprint_mismatch"
                break
            if not buffers:
                buffers = [
                    (
                        k.new_empty(1, k.shape[1], tokens, k.shape[3]),
                        v.new_empty(1, v.shape[1], tokens, v.shape[3]),
                    )
                    for k, v in kv
                ]
            take = min(ref.end, tokens) - ref.start
            for (bk, bv), (k, v) in zip(buffers, kv, strict=True):
                bk[:, :, ref.start : ref.start + take].copy_(k[:, :, :take])
                bv[:, :, ref.start : ref.start + take].copy_(v[:, :, :take])
            done = ref.start + take
            result.chunks += 1
    finally:
        stop.set()
        while thread.is_alive():  # unblock a downloader waiting on a full queue
            with contextlib.suppress(queue.Empty):
                inbox.get(timeout=0.05)
        thread.join()
    result.tokens = done
    result.kv = hf_cache.crop_kv(buffers, done) if done else None
    result.pull_s = time.perf_counter() - t0
    return result


def _fits(
    buffers: Sequence[tuple[torch.Tensor, torch.Tensor]], kv: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> bool:
    """Whether ``kv`` has the per-layer heads/head_dim of the chunks already in ``buffers``.

    Checked before copying, since ``copy_`` would silently broadcast a 1-head chunk into many heads.
    """
    return not buffers or all(
        (k.shape[1], k.shape[3], v.shape[1], v.shape[3])
        == (bk.shape[1], bk.shape[3], bv.shape[1], bv.shape[3])
        for (bk, bv), (k, v) in zip(buffers, kv, strict=True)
    )


@dataclass
class PushResult:
    """What a turn's push did; ``error`` names the fault when it did not commit."""

    version: int = 0
    chunks: tuple[ChunkRef, ...] = ()
    chunks_pushed: int = 0
    chunks_deduplicated: int = 0
    bytes_pushed: int = 0
    raw_pushed: int = 0
    bytes_raw: int = 0
    bytes_stored: int = 0
    compress_s: float = 0.0
    push_s: float = 0.0
    committed: bool = False
    error: str = ""
    detail: str = field(default="", repr=False)


def push_turn(
    client: Any,
    codec: Codec,
    ns: Namespace,
    kv: Sequence[tuple[torch.Tensor, torch.Tensor]],
    token_ids: Sequence[int],
    stored: Sequence[ChunkRef],
    *,
    session_id: str | None,
    messages: Sequence[ChatMessage] = (),
    turns: int = 0,
    expected_version: int = 0,
    attributes: dict[str, str] | None = None,
    chunk_ttl_s: int = 0,
    session_ttl_s: int = 0,
) -> PushResult:
    """Compress and upload the chunks of ``token_ids`` not in ``stored``, then commit the manifest.

    ``kv`` holds exactly ``token_ids`` positions. Without ``session_id`` the chunks are only uploaded
    (shared, content-addressed prefixes), nothing is committed.

    Raises:
        KVStoreError: from the SDK (VersionConflict when someone else committed first).
    """
    t0 = time.perf_counter()
    out = PushResult()
    if hf_cache.kv_tokens(kv) != len(token_ids):
        raise ValueError(f"kv holds {hf_cache.kv_tokens(kv)} positions for {len(token_ids)} token ids")
    spans: list[ChunkSpan] = session_spans(ns, token_ids)
    todo, known = plan_push(spans, stored)
    new_refs: dict[str, ChunkRef] = {}
    for span in todo:
        part = [(k[:, :, span.start : span.end], v[:, :, span.start : span.end]) for k, v in kv]
        raw = hf_cache.kv_nbytes(part, bytes_per_element=2)
        tc = time.perf_counter()
        blob = codec.encode(part, start=span.start)
        out.compress_s += time.perf_counter() - tc
        put = client.put_chunk(
            ns, span.parent_key, span.start, token_ids[span.start : span.end], blob, raw, ttl_s=chunk_ttl_s
        )
        new_refs[span.key] = ChunkRef(span.key, span.start, span.end, put.stored_bytes or len(blob), raw)
        out.chunks_pushed += 1
        out.chunks_deduplicated += int(put.deduplicated)
        out.bytes_pushed += len(blob)
        out.raw_pushed += raw
    refs = tuple(known.get(s.key) or new_refs[s.key] for s in spans)
    out.chunks = refs
    out.bytes_raw = sum(r.raw_bytes for r in refs)
    out.bytes_stored = sum(r.stored_bytes for r in refs)
    if session_id is not None:
        manifest = Manifest(
            session_id=session_id,
            namespace=ns,
            token_ids=tuple(token_ids),
            chunks=refs,
            messages=tuple(messages),
            turns=turns,
            attributes=dict(attributes or {}),
        )
        out.version = client.commit_turn(manifest, expected_version, ttl_s=session_ttl_s)
        out.committed = True
    out.push_s = time.perf_counter() - t0
    return out
