"""The worker's OpenAI-compatible HTTP API (``gearkv worker --http-port``): see :mod:`.server`."""

from gearkv.worker.openai_api.errors import ApiError
from gearkv.worker.openai_api.server import MAX_BODY_BYTES, PUSH_WAIT_S, HttpApi
from gearkv.worker.openai_api.tenants import LOCAL_TENANT, Tenants

__all__ = ["LOCAL_TENANT", "MAX_BODY_BYTES", "PUSH_WAIT_S", "ApiError", "HttpApi", "Tenants"]
