"""Which :class:`~gearkv.worker.sessions.Worker` serves a request: the tenant of its API key.

Without API keys every request is one local tenant: the worker process's own ``Worker`` (its
``--token`` in the store, the hot cache and push queue the gRPC service uses too). With keys
(:mod:`gearkv.worker.api_keys`), ``Authorization: Bearer <key>`` picks a tenant, and each tenant gets
its own ``Worker`` on the shared model, made on first use: its own store client authenticated with
the tenant's store token (so its chunks live in that tenant's keyspace and two tenants never hit each
other's), its own hot cache and push queue. All of them share the process's turn admission, so
``--max-turns`` bounds the turns of every tenant together.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable

from gearkv.worker.api_keys import ApiKey, hash_api_key
from gearkv.worker.openai_api.errors import ApiError
from gearkv.worker.sessions import Worker
from gearkv.worker.sharing import base_fingerprint
from gearkv.worker.store_client import StoreClient

__all__ = ["LOCAL_TENANT", "Tenants", "tenant_worker"]

log = logging.getLogger("gearkv.worker")

LOCAL_TENANT = "local"


def tenant_worker(base: Worker, client: StoreClient | None) -> Worker:
    """A ``Worker`` like ``base`` (model, options, metrics, turn admission) on another store client."""
    worker = Worker(
        base.engine,
        client,
        base.options,
        base.metrics,
        fingerprint=base_fingerprint(base.fingerprint),
    )
    worker.admission = base.admission  # one cap on turns in flight for the whole process
    return worker


class Tenants:
    """Resolves a request's ``Authorization`` header to ``(tenant name, Worker)``.

    Args:
        keys: the API keys (() = no authentication, one local tenant).
        connect: makes the store client of a tenant from its store token (None when the worker runs
            without a store); called once per tenant, on its first request.
    """

    def __init__(self, keys: tuple[ApiKey, ...], connect: Callable[[str], StoreClient | None]) -> None:
        self._by_digest = {k.key_sha256: k for k in keys}
        self._connect = connect
        self._base: Worker | None = None
        self._workers: dict[str, Worker] = {}
        self._lock = threading.Lock()

    @property
    def auth(self) -> bool:
        return bool(self._by_digest)

    def attach(self, base: Worker) -> None:
        """The process's Worker (the model is loaded): requests are served from now on."""
        self._base = base

    @property
    def ready(self) -> bool:
        return self._base is not None

    def resolve(self, authorization: str | None) -> tuple[str, Worker]:
        """The tenant of a request.

        Raises:
            ApiError: 401 without a valid key (when keys are configured); 503 before the model loads.
        """
        key = self._authenticate(authorization) if self.auth else None
        base = self._base
        if base is None:
            raise ApiError.unavailable("the model is still loading; retry shortly", "model_not_loaded")
        if key is None:
            return LOCAL_TENANT, base
        with self._lock:
            worker = self._workers.get(key.name)
            if worker is None:
                worker = self._workers[key.name] = tenant_worker(base, self._connect(key.store_token))
                log.info("HTTP API: serving tenant %r", key.name)
        return key.name, worker

    def _authenticate(self, authorization: str | None) -> ApiKey:
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise ApiError.unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        digest = hash_api_key(presented.strip())
        key = self._by_digest.get(digest)
        if key is None or not hmac.compare_digest(key.key_sha256, digest):
            raise ApiError.unauthorized("invalid API key")
        return key

    def close(self, timeout: float) -> None:
        """Finish the tenants' pending pushes and close their store clients (not the base Worker's)."""
        with self._lock:
            workers = list(self._workers.values())
            self._workers.clear()
        for worker in workers:
            worker.close(timeout)
            close = getattr(worker.client, "close", None)
            if close is not None:
                close()
