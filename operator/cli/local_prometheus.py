"""``prfaas up --prometheus``: a real Prometheus beside the local engines and router.

It scrapes the router and every engine once a second, labelled as the operator's PodMonitor
labels pods in a cluster, so the autoscaler's queries (``autoscaling.decide.queries``) and the
shipped dashboards' PromQL run unchanged against it. ``panel_report`` says which dashboard
panels have data (printed at start and at Ctrl-C).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "PanelStatus",
    "panel_report",
    "plan_identity",
    "start_local_prometheus",
    "write_dashboards",
]


@dataclass(frozen=True, slots=True)
class PanelStatus:
    """Whether one dashboard panel has data: ``series`` over all its queries."""

    dashboard: str
    panel: str
    series: int
    error: str = ""


def plan_identity(file: Path) -> tuple[str, str, float, float]:
    """The ServingPlan's name, namespace, and TTFT/TPOT SLO (seconds) in ``file``."""
    from prfaas.operator.api import models as api
    from prfaas.operator.api.manifests import load_manifests

    sp = load_manifests(file).of_kind(api.ServingPlan)[0]
    slo = sp.spec.slo
    return (
        sp.metadata.name,
        sp.metadata.namespace or "default",
        api.duration_seconds(slo.ttft),
        api.duration_seconds(slo.tpot),
    )


def start_local_prometheus(runtime: Any, plan: str, namespace: str) -> Any:
    """Start Prometheus scraping ``runtime``'s router and engines; ``runtime.stop()`` ends it."""
    from prfaas.engine.local.prometheus import LocalPrometheus, ScrapeTarget
    from prfaas.operator.api.labels import (
        LABEL_CLUSTER,
        LABEL_PLAN,
        LABEL_PLAN_NAMESPACE,
        LABEL_ROLE,
        label_value,
    )
    from prfaas.operator.autoscaling.decide import prom_label

    layout = runtime.layout

    def labels(cluster: str, role: str) -> dict[str, str]:
        return {
            prom_label(LABEL_PLAN): label_value(plan),
            prom_label(LABEL_PLAN_NAMESPACE): label_value(namespace),
            prom_label(LABEL_CLUSTER): label_value(cluster),
            prom_label(LABEL_ROLE): role,
        }

    decode_cluster = next((e.cluster for e in layout.engines if e.role == "decode"), "local")
    targets = [ScrapeTarget("prfaas-router", layout.router_url, labels(decode_cluster, "router"))]
    targets += [
        ScrapeTarget("prfaas-engine", e.url, labels(e.cluster, e.role)) for e in layout.engines
    ]
    prom = LocalPrometheus(targets, runtime.folder)
    runtime.adopt(prom.start())
    prom.wait_scraped()
    return prom


def write_dashboards(folder: Path, ttft_s: float, tpot_s: float) -> list[Path]:
    """The shipped dashboards with their SLO lines filled in, as JSON files Grafana imports."""
    from prfaas.operator.controller.dashboards import DASHBOARDS, dashboard

    out = []
    for name in DASHBOARDS:
        path = folder / f"{name}.json"
        board = dashboard(name, ttft_seconds=ttft_s, tpot_seconds=tpot_s)
        path.write_text(json.dumps(board, indent=2, ensure_ascii=False))
        out.append(path)
    return out


def panel_report(url: str, ttft_s: float, tpot_s: float) -> list[PanelStatus]:
    """Per panel of every shipped dashboard: how many series its queries return now."""
    from prfaas.operator.autoscaling.prometheus import PrometheusClient, PrometheusError
    from prfaas.operator.controller.dashboards import DASHBOARDS, dashboard, panel_queries

    async def run() -> list[PanelStatus]:
        out: list[PanelStatus] = []
        async with PrometheusClient(url) as prom:
            for name in DASHBOARDS:
                board = dashboard(name, ttft_seconds=ttft_s, tpot_seconds=tpot_s)
                counts: dict[str, int] = {}
                errors: dict[str, str] = {}
                for q in panel_queries(board):
                    counts.setdefault(q.panel, 0)
                    if q.expr.startswith("vector("):
                        continue  # a constant SLO line is not data
                    try:
                        counts[q.panel] += len(await prom.query(q.expr))
                    except PrometheusError as exc:
                        errors[q.panel] = str(exc)
                out += [PanelStatus(name, p, n, errors.get(p, "")) for p, n in counts.items()]
        return out

    return asyncio.run(run())
