"""The Grafana dashboards prfaas ships and the PromQL behind their panels.

The JSON is package data so that ``prfaas up --prometheus`` and the tests read the very
dashboards the chart ships (``charts/prfaas/dashboards/`` holds a copy; ``tests/unit/
test_chart.py`` keeps the two equal). SLO lines are placeholders (``__TTFT_SLO_SECONDS__``,
``__TPOT_SLO_SECONDS__``) that the chart fills from its values and ``prfaas up`` from the
ServingPlan's ``spec.slo``. Panels filter by the Grafana variables ``$namespace`` and ``$plan``
(the ``prfaas_io_plan*`` labels); ``panel_queries`` substitutes them, "All" by default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

__all__ = ["DASHBOARDS", "PanelQuery", "dashboard", "fill_slo", "panel_queries"]

DASHBOARDS = ("prfaas-overview",)
"""Names of the shipped dashboards (``data/<name>.dashboard.json``)."""

_TTFT, _TPOT = "__TTFT_SLO_SECONDS__", "__TPOT_SLO_SECONDS__"


@dataclass(frozen=True, slots=True)
class PanelQuery:
    """One target (query) of one panel."""

    panel: str
    ref: str
    expr: str
    legend: str


def fill_slo(text: str, ttft_seconds: float, tpot_seconds: float) -> str:
    """``text`` with the SLO placeholders replaced by the given values (seconds)."""
    return text.replace(_TTFT, f"{ttft_seconds:g}").replace(_TPOT, f"{tpot_seconds:g}")


def dashboard(name: str, *, ttft_seconds: float, tpot_seconds: float) -> dict[str, Any]:
    """The dashboard ``name`` (one of ``DASHBOARDS``) with its SLO lines at the given values."""
    if name not in DASHBOARDS:
        raise ValueError(f"no dashboard {name!r}; have {', '.join(DASHBOARDS)}")
    data = resources.files("prfaas.operator.controller").joinpath(
        f"data/{name}.dashboard.json"
    )
    loaded: dict[str, Any] = json.loads(fill_slo(data.read_text(), ttft_seconds, tpot_seconds))
    return loaded


def panel_queries(
    board: dict[str, Any], *, namespace: str = ".*", plan: str = ".*"
) -> list[PanelQuery]:
    """Every panel target's PromQL, with ``$namespace`` and ``$plan`` set to these regexes."""
    out = []
    for panel in board.get("panels", []):
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$namespace", namespace).replace("$plan", plan)
            out.append(
                PanelQuery(panel["title"], target["refId"], expr, target.get("legendFormat", ""))
            )
    return out
