"""``prfaas up crds/samples/local.yaml --prometheus``: the README's main job as a user runs it,
with a real Prometheus beside it.

One ``prfaas up`` serves the whole module (engines are expensive) and the tests run in file
order: a completion; open-loop load on both paths, then every query the autoscaler sends and
every dashboard panel's PromQL through the operator's own client; Prometheus stopped under a
running autoscaler; and last, Ctrl-C leaving nothing behind.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prfaas.engine.local.netns import have_net_admin
from prfaas.engine.local.processes import free_port
from prfaas.engine.local.prometheus import find_prometheus
from prfaas.operator.api import models as api
from prfaas.operator.api.manifests import load_manifests
from prfaas.operator.api.translate import problems_from_manifests
from prfaas.operator.autoscaling.decide import observe, queries
from prfaas.operator.autoscaling.loop import Autoscaler
from prfaas.operator.autoscaling.prometheus import PrometheusClient, PrometheusError, Sample
from prfaas.operator.autoscaling.settings import AutoscaleSettings
from prfaas.operator.controller.dashboards import DASHBOARDS, dashboard, panel_queries
from prfaas.planner.solver import plan as planner_plan

from .conftest import MAX_TOKENS, MODEL, SAMPLE, completion_body, use_netns, words

pytestmark = pytest.mark.e2e

OFFERED_RPS = 2.0
LOAD_SECONDS = 40.0


@dataclass
class Up:
    """The running ``prfaas up`` and what it printed."""

    proc: subprocess.Popen[bytes]
    out_path: Path
    endpoint: str
    prometheus: str
    netns: bool
    namespaces_before: set[str]
    sent: dict[str, Any] = field(default_factory=dict)

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")


def _session_members(sid: int) -> list[int]:
    """Pids whose session is ``sid`` (everything ``prfaas up`` started stays in its session
    or in process groups it created; both are checked by the caller)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # field 6 of stat: session id
            out.append(int(stat.parent.name))
    return out


def _children_of(pid: int) -> set[int]:
    kids: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # field 4: parent pid
            kids.add(int(stat.parent.name))
    return kids


def _exe(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return ""


def _namespaces() -> set[str]:
    if not have_net_admin():
        return set()
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    find_prometheus()  # a clear failure (how to install it) instead of a timeout
    tmp = tmp_path_factory.mktemp("up")
    netns = use_netns()
    port = 8000 if netns else free_port()
    namespaces_before = _namespaces()
    argv = [sys.executable, "-P", "-m", "prfaas", "up", str(SAMPLE), "--port", str(port),
            "--workdir", str(tmp / "run"), "--prometheus"] + (["--netns"] if netns else [])
    out_path = tmp / "up.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        found: dict[str, str] = {}
        for _ in range(1200):
            text = out_path.read_text(errors="replace")
            for key, pattern in (("endpoint", r"endpoint: (http://[0-9.:]+)"),
                                 ("prometheus", r"prometheus: (http://[0-9.:]+)")):
                match = re.search(pattern, text)
                if match:
                    found[key] = match.group(1)
            if len(found) == 2 and "dashboard panels have data" in text:
                break
            assert proc.poll() is None, f"prfaas up exited early:\n{text}"
            time.sleep(0.5)
        assert len(found) == 2, out_path.read_text()
        yield Up(proc, out_path, found["endpoint"], found["prometheus"], netns, namespaces_before)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_prfaas_up_serves_a_completion_and_prints_prometheus(up: Up) -> None:
    if up.netns:
        assert _namespaces() - up.namespaces_before, "no namespaces were created"
    r = httpx.post(up.endpoint + "/v1/completions",
                   json=completion_body("hello from the readme"), timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == MAX_TOKENS
    # Output to a file is not a terminal: plain timestamped lines, not the live table.
    for _ in range(60):
        if re.search(r"requests: \S*/ok 1", up.output()):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"no plain status line:\n{up.output()}")
    text = up.output()
    # At start the gauges are scraped: t, the link budget, queues, engines available.
    for panel in ("Offload threshold t", "Queue depth and running requests per pool",
                  "Instances per role: desired vs available"):
        assert f"panel {panel!r}: data" in text, text
    assert "Grafana dashboard to import" in text


def _one_request(url: str, i: int) -> str:
    long = i % 2 == 1
    prompt = words(f"u{i}x", 150) if long else words(f"s{i}x", 3)  # no shared prefix blocks
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 8, "temperature": 0,
            "ignore_eos": True, "stream": i % 4 >= 2}
    if body["stream"]:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=180) as r:
            r.read()
            return f"{r.status_code}"
    return f"{httpx.post(url + '/v1/completions', json=body, timeout=180).status_code}"


def test_load_on_both_paths(up: Up) -> None:
    """Open loop: arrivals at OFFERED_RPS whatever the answers' latency, long prompts (remote
    prefill in dc-a) and short ones (local) alternating, half of them streamed (TPOT)."""
    n = round(OFFERED_RPS * LOAD_SECONDS)
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = []
        for i in range(n):
            time.sleep(max(0.0, start + i / OFFERED_RPS - time.monotonic()))
            futures.append(pool.submit(_one_request, up.endpoint, i))
        statuses = [f.result() for f in futures]
    up.sent.update(n=n, start=start, end=time.monotonic())
    assert statuses == ["200"] * n


def _query_all(url: str, exprs: dict[str, str]) -> dict[str, list[Sample] | PrometheusError]:
    async def run() -> dict[str, list[Sample] | PrometheusError]:
        out: dict[str, list[Sample] | PrometheusError] = {}
        async with PrometheusClient(url) as prom:
            for key, expr in exprs.items():
                try:
                    out[key] = await prom.query(expr)
                except PrometheusError as exc:
                    out[key] = exc
        return out

    return asyncio.run(run())


def test_every_autoscaler_query_answers_what_its_decisions_need(up: Up) -> None:
    assert up.sent, "needs test_load_on_both_paths"
    time.sleep(2.5)  # two scrapes after the last answer
    window = time.monotonic() - up.sent["start"]
    plan = load_manifests(SAMPLE).of_kind(api.ServingPlan)[0]
    wanted = queries(plan.metadata.name, plan.metadata.namespace or "default", window)
    results = _query_all(up.prometheus, wanted)
    errors = {k: v for k, v in results.items() if isinstance(v, PrometheusError)}
    assert errors == {}
    answers = {k: v for k, v in results.items() if not isinstance(v, PrometheusError)}
    assert all(answers.values()), {k: v for k, v in answers.items() if not v}
    obs = observe(answers, window, dt.datetime.now(dt.UTC), min_transfer_seconds=0.0)
    offered = up.sent["n"] / window
    assert obs.rate_rps is not None
    assert abs(obs.rate_rps - offered) <= 0.2 * offered, (obs.rate_rps, offered)
    assert obs.mean_uncached_tokens is not None and 24 < obs.mean_uncached_tokens < 1400
    # The link's throughput while transfers were under way (the operator's measuredGbps; it
    # waits for 5 s of busy time by default, more than this short run's KV transfers add up to).
    link = load_manifests(SAMPLE).of_kind(api.InterDCLink)[0]
    gbps = obs.link_gbps.get(link.metadata.name)
    assert gbps is not None and gbps > 0, obs
    if up.netns:  # tc-shaped at the InterDCLink's bandwidth: the KV cannot exceed it by much
        assert gbps <= 1.5 * link.spec.bandwidth_gbps, gbps


def test_every_dashboard_query_parses_and_those_the_e2e_feeds_return_data(up: Up) -> None:
    assert up.sent, "needs test_load_on_both_paths"
    exprs: dict[str, str] = {}
    for name in DASHBOARDS:
        for q in panel_queries(dashboard(name, ttft_seconds=4.0, tpot_seconds=0.2)):
            exprs[f"{name} / {q.panel} / {q.ref}"] = q.expr
    results = _query_all(up.prometheus, exprs)
    errors = {k: str(v) for k, v in results.items() if isinstance(v, PrometheusError)}
    assert errors == {}
    # Series of the operator (planned instances, predicted throughput) need the operator;
    # everything else comes from the router and the engines this run scrapes.
    empty = sorted(k for k, v in results.items()
                   if not v and "prfaas_operator_" not in exprs[k])
    assert empty == []


def _planned(resources: list[Any], sp: api.ServingPlan) -> Any:
    swapped = [sp if isinstance(r, api.ServingPlan) else r for r in resources]
    return planner_plan(problems_from_manifests(swapped)[0])


def test_prometheus_stopped_mid_run_is_reported_and_scales_nothing_down(up: Up) -> None:
    manifests = load_manifests(SAMPLE)
    original = manifests.of_kind(api.ServingPlan)[0]
    spec = original.spec.model_copy(update={
        "autoscaling": api.Autoscaling(enabled=True, prometheus_url=up.prometheus,
                                       interval="1s"),
        "workload": original.spec.workload.model_copy(update={"observe": True}),
    })
    sp = original.model_copy(update={"spec": spec})
    name, namespace = sp.metadata.name, sp.metadata.namespace or "default"
    key = f"{namespace}/{name}"
    scaler = Autoscaler(AutoscaleSettings(query_window_seconds=60.0, min_transfer_seconds=0.0))

    async def poll() -> Any:
        return await scaler.poll(key, namespace, name, spec.autoscaling)

    assert asyncio.run(poll()) is not None
    assert scaler.status(key, spec.autoscaling)["autoscaling"]["metricsAvailable"] is True
    observed_sp, notes = scaler.planning_plan(key, sp)
    assert any("observed" in n for n in notes), notes
    before = _planned(manifests.resources, observed_sp)
    scaler.apply(key, spec, before, None)
    running = before.to_dict()

    prometheus = [p for p in _children_of(up.proc.pid) if _exe(p).endswith("prometheus")]
    assert len(prometheus) == 1, [(p, _exe(p)) for p in _children_of(up.proc.pid)]
    os.killpg(prometheus[0], signal.SIGTERM)
    deadline = time.monotonic() + 60
    while _session_members(prometheus[0]) and time.monotonic() < deadline:
        time.sleep(0.2)

    assert asyncio.run(poll()) is None
    status = scaler.status(key, spec.autoscaling)["autoscaling"]
    assert status["metricsAvailable"] is False
    assert "nothing is scaled down" in status["message"], status
    available = scaler.metrics.registry.get_sample_value(
        "prfaas_operator_autoscale_metrics_available", {"plan": key})
    assert available == 0.0
    # The observation in force is kept: the re-plan is the one before the outage, and no role
    # runs fewer instances than it did.
    after_sp, _ = scaler.planning_plan(key, sp)
    assert after_sp.spec.workload == observed_sp.spec.workload
    after = _planned(manifests.resources, after_sp)
    scaler.apply(key, spec, after, running)
    for cb, ca in zip(before.clusters, after.clusters, strict=True):
        assert (ca.name, ca.role) == (cb.name, cb.role) and ca.instances >= cb.instances
    downs = [s for m in scaler.metrics.autoscale_decisions.collect() for s in m.samples
             if s.labels.get("direction") == "down"]
    assert downs == []
    assert up.proc.poll() is None, "prfaas up must outlive its Prometheus"


def test_ctrl_c_leaves_nothing_behind(up: Up) -> None:
    # Every engine, the router and Prometheus (if still running) in their own process groups.
    started = _children_of(up.proc.pid)
    assert 3 <= len(started) <= 4
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=120) == 0
    assert "stopped" in up.output()
    assert f"logs kept in {up.out_path.parent / 'run'}" in up.output()  # --workdir keeps them
    assert _session_members(up.proc.pid) == []
    for pid in started:
        assert _session_members(pid) == [], f"process group of {pid} left running"
    assert _namespaces() == up.namespaces_before
