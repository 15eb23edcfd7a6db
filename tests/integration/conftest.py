"""The real default model, loaded once per test run for every integration test that runs it."""

from __future__ import annotations

import pytest
import torch
from gearkv.worker.engine import Engine
from gearkv.worker.fingerprint import model_fingerprint
from gearkv.worker.model import load_model


@pytest.fixture(scope="session")
def engine() -> Engine:
    """SmolLM2-135M-Instruct on CPU, warmed up (read-only: tests must not change its settings)."""
    torch.set_num_threads(2)
    eng = Engine(load_model())
    eng.warmup()
    return eng


@pytest.fixture(scope="session")
def fingerprint(engine: Engine) -> str:
    return model_fingerprint(engine.loaded)
