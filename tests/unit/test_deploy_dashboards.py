"""The Grafana dashboards: generated from code and fresh, every panel described, with a unit, a legend
and the $job/$instance variables, and every metric they (and the alert rules) read is exported."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from gearkv.store.metrics import StoreMetrics
from gearkv.worker.metrics import WorkerMetrics
from prometheus_client import CollectorRegistry, generate_latest

ROOT = Path(__file__).resolve().parents[2]
BOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
SELECTOR = 'job=~"$job", instance=~"$instance"'


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out += [panel, *panel.get("panels", [])]
    return [p for p in out if p.get("type") != "row"]


def test_the_committed_dashboards_are_what_the_generator_writes() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/gen_dashboards.py"), "--check"], capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    assert [b.name for b in BOARDS] == ["gearkv-operations.json", "gearkv-overview.json"]


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.name)
def test_every_panel_has_a_description_unit_legend_and_the_variables(path: Path) -> None:
    board = json.loads(path.read_text())
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["job", "instance"]
    assert board["uid"] and len({p["id"] for p in panels(board)}) == len(panels(board))
    for panel in panels(board):
        title = panel["title"]
        assert panel["description"].strip(), title
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults.get("unit"), title
        assert defaults.get("noValue"), title  # "no data" says what it means
        assert panel["options"]["legend"].get("showLegend", True) is not False, title
        assert panel["targets"], title
        for target in panel["targets"]:
            expr = target["expr"]
            assert target["legendFormat"], (title, expr)
            assert expr.count("{") == expr.count(SELECTOR) > 0, (title, expr)  # every selector filtered
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, title


def _metric_names(text: str) -> set[str]:
    return set(re.findall(r"\b((?:gearkv|process|python)_[a-z0-9_]+)", text))


def test_every_metric_the_dashboards_and_alerts_read_is_exported() -> None:
    exported = generate_latest(StoreMetrics(CollectorRegistry(), ["t"]).registry).decode()
    exported += generate_latest(WorkerMetrics(CollectorRegistry()).registry).decode()
    names = {line.split("{")[0].split(" ")[0] for line in exported.splitlines() if not line.startswith("#")}
    used = set()
    for path in BOARDS:
        board = json.loads(path.read_text())
        used |= _metric_names(" ".join(t["expr"] for p in panels(board) for t in p["targets"]))
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    used |= _metric_names(" ".join(r["expr"] for g in rules["groups"] for r in g["rules"]))
    assert used and used <= names, sorted(used - names)


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    spec = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/gearkv.yml").read_text())
    assert spec["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["uid"] == "prometheus"
