"""The chart's monitoring objects: Grafana dashboards as sidecar ConfigMaps (the same JSON
``prfaas up --prometheus`` reads) and the PrometheusRule's values checks. Rendering with them on
and off is validated in test_chart.py; the alerts themselves in test_prometheus_rules.py."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from prfaas.engine.router.metrics import _LATENCY_BUCKETS
from prfaas.operator.controller.dashboards import DASHBOARDS, dashboard, panel_queries
from prometheus_client.utils import floatToGoString

CHART = Path(__file__).resolve().parents[2] / "charts" / "prfaas"


def _render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name="prfaas", namespace="prfaas-system")
    return [d for path, text in sorted(out.items()) if path.endswith(".yaml")
            for d in yaml.safe_load_all(text) if d]


def test_chart_ships_the_packaged_dashboards() -> None:
    data = resources.files("prfaas.operator.controller").joinpath("data")
    for name in DASHBOARDS:
        packaged = data.joinpath(f"{name}.dashboard.json").read_text()
        shipped = (CHART / "dashboards" / f"{name}.dashboard.json").read_text()
        assert shipped == packaged, (
            f"cp operator/controller/data/{name}.dashboard.json charts/prfaas/dashboards/"
        )
    assert sorted(p.name for p in (CHART / "dashboards").glob("*.json")) == sorted(
        f"{n}.dashboard.json" for n in DASHBOARDS
    )


def test_dashboards_are_sidecar_configmaps_with_the_slo_lines_filled_in() -> None:
    docs = _render({
        "grafanaDashboards": {"enabled": True, "namespace": "monitoring"},
        "slo": {"ttftSeconds": "5.0", "tpotSeconds": 0.05},
    })
    maps = [d for d in docs if d["kind"] == "ConfigMap"]
    assert len(maps) == len(DASHBOARDS)
    cm = maps[0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "prfaas"}
    board = json.loads(cm["data"]["prfaas-overview.json"])
    exprs = [q.expr for q in panel_queries(board)]
    assert "vector(5.0)" in exprs and "vector(0.05)" in exprs
    assert not any("__" in e for e in exprs)
    # The same dashboard as prfaas up reads it, up to how the SLO numbers are written.
    packaged = dashboard("prfaas-overview", ttft_seconds=5.0, tpot_seconds=0.05)
    assert [q.panel for q in panel_queries(packaged)] == [q.panel for q in panel_queries(board)]


def test_dashboard_has_the_panels_a_platform_team_expects() -> None:
    board = dashboard("prfaas-overview", ttft_seconds=4.0, tpot_seconds=0.2)
    titles = [p["title"] for p in board["panels"]]
    assert titles == [
        "Requests by path and outcome",
        "TTFT percentiles against the SLO",
        "TPOT percentiles against the SLO",
        "Offload threshold t",
        "Link egress against capacity × headroom",
        "KV bytes over the link",
        "KV transfer time",
        "Queue depth and running requests per pool",
        "Instances per role: desired vs available",
        "Predicted vs observed throughput",
    ]
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "namespace", "plan"}
    for panel in board["panels"]:  # every query uses the datasource variable
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


def test_monitoring_objects_are_off_by_default() -> None:
    kinds = {d["kind"] for d in _render({})}
    assert "ConfigMap" not in kinds and "PrometheusRule" not in kinds


def test_rule_ttft_slo_must_be_a_router_bucket_bound() -> None:
    with pytest.raises(Exception, match=r"slo\.ttftSeconds: got \"3\"; allowed: one of"):
        _render({"prometheusRule": {"enabled": True}, "slo": {"ttftSeconds": "3"}})
    # The template's list is the router's TTFT buckets as the `le` label writes them.
    template = (CHART / "templates" / "prometheusrule.yaml").read_text()
    bounds = [floatToGoString(b) for b in _LATENCY_BUCKETS]
    assert "$bounds := list " + " ".join(f'"{b}"' for b in bounds) in template
