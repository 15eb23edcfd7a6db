"""Plain records of API data that the SDK hands out and the store keeps (no protobuf, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SessionSummary"]


@dataclass(frozen=True)
class SessionSummary:
    """One row of ListSessions (``list_sessions`` in the SDK).

    The store keeps it next to each manifest, so listing sessions never parses manifests.
    """

    session_id: str
    version: int
    turns: int
    tokens: int
    raw_bytes: int
    stored_bytes: int
    updated_ms: int
