"""GearKV store: a grpc.aio KVStore service over Redis or Redis Cluster (never imports torch).

Entry points: ``gearkv store`` (``gearkv.store.cli.main``), ``gearkv.store.server.serve(cfg)`` and,
for tests, ``gearkv.store.server.start_store(cfg) -> (address, StoreServer)``.
"""

from gearkv.store.config import StoreConfig, TenantConfig

__all__ = ["StoreConfig", "TenantConfig"]
