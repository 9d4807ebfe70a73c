"""``prfaas up FILE.yaml``: run the plan on this machine (engines, router, optional netns link).

Checks the router's port first, then prints the endpoint and the plan, then a live table of
what the router did (requests by path, TTFT, the current threshold) — plain timestamped lines
when stdout is not a terminal — until Ctrl-C or SIGTERM, which stop every process it started,
remove the namespaces it created and the temporary folder of logs (``--workdir`` keeps them; a
failed start-up keeps them and says where).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

__all__ = ["describe_link", "live_table", "plain_line", "router_snapshot", "run"]


def run(
    file: Annotated[Path, typer.Argument(help="Manifests: clusters, link, ServingPlan.")],
    netns: Annotated[
        bool,
        typer.Option(
            "--netns",
            help="One network namespace per datacenter, joined by a veth "
            "pair shaped with tc tbf at the InterDCLink's bandwidth (needs root).",
        ),
    ] = False,
    port: Annotated[int, typer.Option(help="Router port.")] = 8000,
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Keep logs and the router file in this folder (default: a temporary folder, "
            "removed at exit unless start-up failed)."
        ),
    ] = None,
    refresh: Annotated[float, typer.Option(help="Seconds between table refreshes.")] = 1.0,
    prometheus: Annotated[
        bool,
        typer.Option(
            "--prometheus",
            help="Also run a real Prometheus (the `prometheus` binary) scraping the router and "
            "the engines every second; prints its URL and the dashboard panels with data.",
        ),
    ] = False,
) -> None:
    """Bring the plan up locally: tiny model, vLLM CPU engines per datacenter, the router."""
    from prfaas.engine.local.netns import NetnsError
    from prfaas.engine.local.runtime import LocalRuntime, LocalRuntimeError

    def _terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python keeps that.
    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGINT)}
    runtime: LocalRuntime | None = None
    prom_url = ""
    try:
        runtime = _prepare(file, netns=netns, port=port, workdir=workdir)
        typer.echo(
            f"starting {len(runtime.layout.engines)} engines and the router "
            f"(logs in {runtime.folder}) ..."
        )
        runtime.start()
        _print_summary(runtime)
        if prometheus:
            prom_url = _start_prometheus(runtime, file)
        _live(runtime.layout.router_url, refresh)
    except KeyboardInterrupt:
        if prom_url:  # what filled while it ran; a second Ctrl-C skips it
            with contextlib.suppress(Exception, KeyboardInterrupt):
                _print_panels(prom_url, file)
        typer.echo("stopping ...")
    except (LocalRuntimeError, NetnsError) as exc:
        typer.echo(f"prfaas up: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        for sig in previous:  # a second Ctrl-C must not interrupt the clean-up
            signal.signal(sig, signal.SIG_IGN)
        if runtime is not None:
            removes = runtime.removes_folder
            runtime.stop()
            logs = (
                "logs removed (--workdir DIR keeps them)" if removes
                else f"logs kept in {runtime.folder}"
            )
            typer.echo(f"stopped: every process and namespace it started is gone; {logs}")
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _prepare(file: Path, *, netns: bool, port: int, workdir: Path | None) -> Any:
    from prfaas.engine.local.netns import TwoDatacenterNet, have_net_admin
    from prfaas.engine.local.runtime import LocalRuntime, LocalRuntimeError, build_layout
    from prfaas.engine.vllm.tinymodel import TinyModelSpec, ensure_tiny_model
    from prfaas.operator.api import models as api
    from prfaas.operator.api.manifests import ManifestError, load_manifests
    from prfaas.operator.cli.local_plan import local_plan

    try:
        manifests = load_manifests(file)
    except ManifestError as exc:
        raise LocalRuntimeError(f"{file} is not valid:\n{exc}") from exc
    plan = local_plan(manifests)
    sp = manifests.of_kind(api.ServingPlan)[0].spec
    arch = sp.model.architecture
    assert arch is not None  # local_plan checked it
    model_dir = ensure_tiny_model(
        TinyModelSpec(
            layers=arch.layers,
            hidden=arch.hidden,
            heads=arch.heads,
            kv_heads=arch.kv_heads,
            head_dim=arch.head_dim,
            ffn=arch.ffn,
            vocab=arch.vocab,
            max_positions=max(4096, arch.max_context),
        )
    )
    net = None
    if netns:
        if not have_net_admin():
            raise LocalRuntimeError("--netns needs root (CAP_NET_ADMIN) and iproute2")
        pools = {p.decode_cluster for p in plan.convertible()}  # kv_both: in the decode DC
        prefill_dcs = {
            c.datacenter for c in plan.clusters if c.role == "prefill" and c.name not in pools
        }
        decode_dcs = {c.datacenter for c in plan.clusters if c.role == "decode"}
        if len(prefill_dcs) != 1 or len(decode_dcs) != 1 or prefill_dcs == decode_dcs:
            raise LocalRuntimeError("--netns runs one prefill and one decode datacenter")
        link = plan.links[0] if plan.links else None
        gbps = link.capacity_gbps if link else 1.0
        net = TwoDatacenterNet(next(iter(prefill_dcs)), next(iter(decode_dcs)), gbps * 1e9)
        net.open()
    try:
        layout = build_layout(
            plan,
            model_dir=model_dir,
            net=net,
            router_port=port,
            max_model_len=arch.max_context,
            block_size=sp.engine.block_size,
        )
    except BaseException:
        if net is not None:
            net.close()
        raise
    kw: dict[str, Any] = {"layout": layout, "net": net}
    if workdir is not None:
        kw["workdir"] = workdir
    return LocalRuntime(**kw)


def _print_summary(runtime: Any, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 160)
    info = runtime.describe()
    table = Table(title=f"prfaas up: {info['model']}", show_lines=False)
    for col in ("engine", "role", "datacenter", "url", "core", "namespace", "started"):
        table.add_column(col)
    for e in info["engines"]:
        started = runtime.start_seconds.get(e["name"])
        table.add_row(
            e["name"],
            f"{e['role']} (kv_both)" if e.get("kvBoth")
            else f"{e['role']} (chunked prefill, budget {e['tokenBudget']})"
            if e.get("tokenBudget") else e["role"],
            e["datacenter"],
            e["url"],
            str(e["core"]),
            e["namespace"] or "-",
            f"{started:.1f}s" if started else "-",
        )
    console.print(table)
    if any(e.get("kvBoth") for e in info["engines"]):
        console.print(
            f"roles: kv_both engines take the role their URL has under `convertible` in "
            f"{runtime.router_config_path}; edit it to move one (the router reloads it; a "
            "role change drains the old role first)"
        )
    plan = runtime.layout.plan
    threshold = "∞ (no offload)" if plan.threshold_tokens is None else (
        f"{plan.threshold_tokens:,.0f} tokens"
    )
    console.print(
        f"plan: threshold t = {threshold} (offload fraction {plan.offload_fraction:.2f}), "
        f"{plan.kv_bytes_per_token:,.0f} KV bytes/token, predicted "
        f"{plan.throughput_rps:.1f} req/s (bottleneck {plan.bottleneck or '-'})"
    )
    console.print(describe_link(info["link"]))
    for note in plan.notes:
        console.print(f"  note: {note}")
    console.print(
        f"[bold]endpoint: {info['endpoint']}[/bold]  (OpenAI API: /v1/completions, "
        "/v1/chat/completions, /metrics)"
    )
    console.print(
        f"try: curl {info['endpoint']}/v1/completions -H 'Content-Type: application/json' "
        f'-d \'{{"model": "{info["model"]}", "prompt": "hello", "max_tokens": 16}}\''
    )
    console.print("Ctrl-C stops everything.")
    sys.stdout.flush()


def _start_prometheus(runtime: Any, file: Path) -> str:
    from prfaas.operator.cli.local_prometheus import (
        plan_identity,
        start_local_prometheus,
        write_dashboards,
    )

    name, namespace, ttft, tpot = plan_identity(file)
    prom = start_local_prometheus(runtime, name, namespace)
    typer.echo(f"prometheus: {prom.url}  (scrapes the router and engines every second)")
    for path in write_dashboards(prom.folder, ttft, tpot):
        typer.echo(f"  Grafana dashboard to import (SLO lines from the plan): {path}")
    _print_panels(prom.url, file)
    return str(prom.url)


def _print_panels(url: str, file: Path) -> None:
    """A line per dashboard panel that has data (Grafana: see the README)."""
    from prfaas.operator.cli.local_prometheus import panel_report, plan_identity

    _, _, ttft, tpot = plan_identity(file)
    report = panel_report(url, ttft, tpot)
    if report and all(p.error for p in report):
        typer.echo(f"  prometheus at {url} does not answer: {report[0].error}")
        return
    for p in report:
        if p.error:
            typer.echo(f"  panel {p.panel!r}: query failed: {p.error}")
        elif p.series:
            typer.echo(f"  panel {p.panel!r}: data ({p.series} series)")
    with_data = sum(1 for p in report if p.series)
    typer.echo(f"  {with_data} of {len(report)} dashboard panels have data")
    sys.stdout.flush()


def describe_link(link: dict[str, Any] | None) -> str:
    """The summary's link line, e.g. ``link local-dc-a-to-dc-b: 1 Gbit/s, tc-shaped ...``."""
    if link is None:
        return "link: none (prefill and decode share a datacenter)"
    if link["shaped"]:
        return (
            f"link {link['name']}: {link['gbps']:g} Gbit/s, shaped with tc tbf between the "
            "datacenters' network namespaces"
        )
    return f"link {link['name']}: loopback, not shaped (--netns, as root, shapes it)"


def router_snapshot(metrics_text: str) -> dict[str, Any]:
    """The numbers the live table shows, from the router's ``/metrics`` text."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {
        "requests": {},
        "ttft_sum": 0.0,
        "ttft_count": 0.0,
        "threshold": {},
        "kv_in_flight": {},
    }
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == "prfaas_router_requests_total":
                key = (s.labels.get("path", "?"), s.labels.get("outcome", "?"))
                out["requests"][key] = s.value
            elif s.name == "prfaas_router_ttft_seconds_sum":
                out["ttft_sum"] = s.value
            elif s.name == "prfaas_router_ttft_seconds_count":
                out["ttft_count"] = s.value
            elif s.name == "prfaas_router_threshold_tokens":
                out["threshold"][s.labels.get("link", "")] = s.value
            elif s.name == "prfaas_router_kv_bytes_in_flight":
                out["kv_in_flight"][s.labels.get("link", "")] = s.value
    return out


def live_table(snapshot: dict[str, Any]) -> Any:
    """A rich table of one snapshot, with TTFT, t and KV in flight below it."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title="router")
    for col in ("path", "outcome", "requests"):
        table.add_column(col)
    for (path, outcome), n in sorted(snapshot["requests"].items()):
        table.add_row(path, outcome, f"{n:.0f}")
    count = snapshot["ttft_count"]
    mean = snapshot["ttft_sum"] / count if count else 0.0
    thresholds = ", ".join(f"{k}: {v:.0f}" for k, v in snapshot["threshold"].items()) or "-"
    kv = ", ".join(f"{k}: {v / 1e6:.2f} MB" for k, v in snapshot["kv_in_flight"].items()) or "-"
    summary = Text(
        f"TTFT mean {mean * 1000:.0f} ms over {count:.0f} requests\n"
        f"threshold t (tokens): {thresholds}\nKV in flight: {kv}"
    )
    return Group(table, summary)


def plain_line(snapshot: dict[str, Any]) -> str:
    """One line of a snapshot, for output that is not a terminal (``make run | tee log``)."""
    requests = ", ".join(
        f"{path}/{outcome} {n:.0f}" for (path, outcome), n in sorted(snapshot["requests"].items())
    ) or "none"
    count = snapshot["ttft_count"]
    mean = snapshot["ttft_sum"] / count if count else 0.0
    thresholds = ", ".join(f"{k} {v:.0f}" for k, v in snapshot["threshold"].items()) or "-"
    kv = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in snapshot["kv_in_flight"].items()) or "-"
    return (
        f"requests: {requests} | TTFT mean {mean * 1000:.0f} ms over {count:.0f} | "
        f"t: {thresholds} | KV in flight: {kv}"
    )


PLAIN_EVERY_S = 60.0
"""Without a terminal, a line is printed when the numbers change, and at least this often."""


def _live(
    url: str, refresh: float, *, out: TextIO | None = None, rounds: int | None = None
) -> None:
    """The live table on a terminal; otherwise plain timestamped lines (``plain_line``).

    ``rounds``: stop after that many refreshes (tests); ``None``: until interrupted.
    """
    import httpx

    out = out or sys.stdout

    def metrics() -> dict[str, Any] | str:
        try:
            return router_snapshot(httpx.get(url + "/metrics", timeout=2).text)
        except httpx.HTTPError as exc:
            return f"router /metrics unreachable: {exc}"

    def ticks() -> Iterator[int]:
        return itertools.count() if rounds is None else iter(range(rounds))

    if not out.isatty():
        last, last_at = "", -math.inf
        for i in ticks():
            if i:
                time.sleep(refresh)
            snap = metrics()
            line = snap if isinstance(snap, str) else plain_line(snap)
            if line != last or time.monotonic() - last_at >= PLAIN_EVERY_S:
                print(f"{time.strftime('%H:%M:%S')} {line}", file=out, flush=True)
                last, last_at = line, time.monotonic()
        return

    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    def view() -> Any:
        snap = metrics()
        return Text(snap) if isinstance(snap, str) else live_table(snap)

    with Live(view(), console=Console(file=out), refresh_per_second=max(1.0, 1 / refresh)) as live:
        for i in ticks():
            if i:
                time.sleep(refresh)
                live.update(view())
