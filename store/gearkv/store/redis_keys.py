"""The Redis key layout of the store (used by ``redis_backend`` only, and by tests that inspect Redis).

Tenant names and session ids are validated, so they never contain braces::

    gkv:c:<tenant>:<chunk key>           one chunk value (no hash tag: chunks spread over all slots)
    gkv:s:{<tenant>:<session>}:h         the session: manifest, version,    } one hash tag: a commit is
                                         last commit ids, summary, mark     } a single-slot transaction
    gkv:s:{<tenant>:<session>}:l         the turn lease: holder, id, until, lost }
    gkv:t:{<tenant>}:sessions            sorted set of session ids (a superset; pruned lazily)
    gkv:t:{<tenant>}:ledger|sizes|usage  chunk byte accounting for quotas and stats

The session hash's fields: ``m`` (the manifest), ``v`` (version), ``c<version>`` (the commit id
and request digest that produced each of the last ``COMMIT_IDS_KEPT`` versions), ``ttl``, the
summary (``turns tokens raw stored updated``) and ``mk``, the ``ManifestMark`` of the current
manifest (chunk count, its last two chunk keys, created and verified times): what lets a commit
verify only the chunks it adds without reading the manifest.
The manifest and its version live in one key so that an eviction (``allkeys-lru``) takes both or
neither: with two keys, a session whose version was evicted while its manifest stayed was refused
every commit, and a commit at version 0 handed out version 1 a second time. A hash without ``m``
(written by a store before this layout) is no session.
"""

from __future__ import annotations


def chunk_redis_key(tenant: str, key: str) -> str:
    return f"gkv:c:{tenant}:{key}"


def session_redis_key(tenant: str, session_id: str) -> str:
    return f"gkv:s:{{{tenant}:{session_id}}}:h"


def lease_redis_key(tenant: str, session_id: str) -> str:
    return f"gkv:s:{{{tenant}:{session_id}}}:l"


def tenant_redis_key(tenant: str, what: str) -> str:
    return f"gkv:t:{{{tenant}}}:{what}"


def session_redis_keys(tenant: str, session_id: str) -> list[str]:
    """The keys of one session, in the order the session scripts take them: session hash, lease."""
    return [session_redis_key(tenant, session_id), lease_redis_key(tenant, session_id)]
