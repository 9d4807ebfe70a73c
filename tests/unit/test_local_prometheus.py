"""The local Prometheus of ``prfaas up --prometheus``: its config, and the real binary scraping a
router's metrics so that every shipped dashboard query parses and the router panels fill."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from prfaas.engine.local.processes import LocalRuntimeError, free_port
from prfaas.engine.local.prometheus import LocalPrometheus, ScrapeTarget, find_prometheus
from prfaas.engine.router.metrics import RouterMetrics
from prfaas.operator.cli.local_prometheus import panel_report
from prometheus_client import start_http_server

HAVE_PROMETHEUS = shutil.which("prometheus") is not None
NEEDS_BINARY = pytest.mark.skipif(
    not HAVE_PROMETHEUS,
    reason="the prometheus binary is not installed (apt-get install prometheus; "
    "`make test` installs it as root)",
)
LABELS = {"prfaas_io_plan": "local", "prfaas_io_plan_namespace": "default"}


def test_config_scrapes_every_target_each_second_with_pod_monitor_labels(tmp_path: Path) -> None:
    prom = LocalPrometheus(
        [
            ScrapeTarget("prfaas-router", "http://127.0.0.1:8000", {**LABELS, "x": "r"}),
            ScrapeTarget("prfaas-engine", "http://10.0.0.1:8100", {**LABELS, "x": "p"}),
            ScrapeTarget("prfaas-engine", "http://10.0.1.1:8200", {**LABELS, "x": "d"}),
        ],
        tmp_path,
    )
    config = prom.config()
    assert config["global"] == {  # type: ignore[comparison-overlap]
        "scrape_interval": "1000ms",
        "scrape_timeout": "1000ms",
        "evaluation_interval": "1000ms",
    }
    jobs = {j["job_name"]: j["static_configs"] for j in config["scrape_configs"]}  # type: ignore[attr-defined]
    assert [s["targets"] for s in jobs["prfaas-engine"]] == [["10.0.0.1:8100"], ["10.0.1.1:8200"]]
    assert jobs["prfaas-router"][0]["labels"] == {**LABELS, "x": "r"}


def test_a_target_that_is_not_http_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LocalRuntimeError, match="'ftp://h:1' of job 'j' is not http"):
        LocalPrometheus([ScrapeTarget("j", "ftp://h:1")], tmp_path).config()


def test_a_missing_binary_says_how_to_install_it() -> None:
    with pytest.raises(LocalRuntimeError, match="apt-get install prometheus"):
        find_prometheus("prometheus-that-is-not-installed")


@pytest.fixture()
def router_metrics() -> Iterator[tuple[RouterMetrics, str]]:
    """A router's metric families served on a free port, with traffic on both paths."""
    m = RouterMetrics()
    for path, n in (("local", 3), ("remote", 2)):
        for _ in range(n):
            m.request_done(path, "ok")
            m.ttft.observe(0.3)
            m.tpot.observe(0.02)
            m.uncached.observe(1000)
    m.transfer_started("dc-a-to-dc-b", 0.0)
    m.transfer_ended("dc-a-to-dc-b", 0.5, 1e6)
    for gauge, value in ((m.threshold, 256), (m.planned_threshold, 256), (m.egress, 1e6),
                         (m.capacity, 1e9), (m.headroom, 0.8), (m.kv_in_flight, 0)):
        gauge.labels("dc-a-to-dc-b").set(value)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=m.registry)
    try:
        yield m, f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join()


@NEEDS_BINARY
def test_real_prometheus_scrapes_and_every_dashboard_query_parses(
    tmp_path: Path, router_metrics: tuple[RouterMetrics, str]
) -> None:
    _, url = router_metrics
    prom = LocalPrometheus([ScrapeTarget("prfaas-router", url, LABELS)], tmp_path)
    try:
        prom.start()
        prom.wait_scraped()
        report = panel_report(prom.url, ttft_s=4.0, tpot_s=0.2)
    finally:
        prom.stop()
    assert prom.process is not None and not prom.process.alive()
    assert [p.error for p in report if p.error] == []  # every query parses and runs
    with_data = {p.panel for p in report if p.series}
    # Instant gauges fill at the first scrape; rates need two scrapes of a changing counter.
    assert {"Offload threshold t", "Link egress against capacity × headroom",
            "KV bytes over the link"} <= with_data
    assert "Queue depth and running requests per pool" not in with_data  # no engine scraped
    assert (tmp_path / "prometheus" / "prometheus.yml").exists()


def test_prfaas_up_writes_dashboards_grafana_imports_with_the_plan_slo(tmp_path: Path) -> None:
    from prfaas.operator.cli.local_prometheus import plan_identity, write_dashboards
    from prfaas.operator.controller.dashboards import panel_queries

    sample = Path(__file__).resolve().parents[2] / "crds" / "samples" / "local.yaml"
    name, namespace, ttft, tpot = plan_identity(sample)
    assert (ttft, tpot) == (4.0, 0.2)  # the sample's spec.slo
    [path] = write_dashboards(tmp_path, ttft, tpot)
    board = json.loads(path.read_text())
    exprs = [q.expr for q in panel_queries(board)]
    assert "vector(4)" in exprs and "vector(0.2)" in exprs
    assert not any("__" in e for e in exprs)
    assert name and namespace


def test_panel_lines_say_once_when_prometheus_does_not_answer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from prfaas.operator.cli.up import _print_panels

    sample = Path(__file__).resolve().parents[2] / "crds" / "samples" / "local.yaml"
    dead = f"http://127.0.0.1:{free_port()}"
    _print_panels(dead, sample)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and f"prometheus at {dead} does not answer" in lines[0]
