"""``prfaas simulate FILE.yaml``: the plan and its baselines through the discrete-event simulator.

Plans every ServingPlan in FILE (as ``prfaas plan`` does), then simulates the PrfaaS-PD
configuration, homogeneous PD and naive heterogeneous over the same requests at one rate, and
prints latency percentiles, joint SLO attainment, goodput (bisection) and link use side by
side, with the change of PrfaaS-PD against each baseline. ``--plot OUT.png`` draws the TTFT CDF
per configuration (the SLO marked) and the link's egress, capacity and threshold ``t`` over time
(``t`` on its own axis, scaled so that it never sits on the capacity line; left out where it is
0 throughout, as in naive heterogeneous).

Exit status: 0 on success, 1 when a plan is infeasible or cannot be simulated, 2 when the
manifests do not validate.
"""

from __future__ import annotations

import json
import math
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from prfaas.operator.cli.common import (
    EXIT_INVALID,
    load_problems,
    load_trace_or_exit,
    plan_from_trace,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from matplotlib.figure import Figure
    from prfaas.planner.plan import Plan
    from prfaas.planner.problem import Problem
    from prfaas.planner.sim.scenarios import ScenarioRun
    from rich.console import Console

__all__ = ["SimOutput", "online_report", "plot_figure", "plot_runs", "run", "summary_rows"]

EXIT_FAILED = 1
PROGRESS_FROM = 50_000
"""Show a progress bar when at least this many requests are simulated in all."""


class SimOutput(StrEnum):
    table = "table"
    json = "json"


def _fmt(x: float | None, unit: str = "s") -> str:
    if x is None or not math.isfinite(x):
        return "—" if x is None else "∞"
    if unit == "s":
        return f"{x * 1e3:.1f} ms" if abs(x) < 1 else f"{x:.2f} s"
    if unit == "%":
        return f"{x:.1%}"
    return f"{x:.3g}"


def _change(ours: float | None, theirs: float | None, lower_is_better: bool) -> str:
    if ours is None or theirs is None or not (math.isfinite(ours) and math.isfinite(theirs)):
        return "—"
    if theirs == 0:
        return "∞" if ours > 0 else "="
    rel = ours / theirs - 1.0
    good = rel < 0 if lower_is_better else rel > 0
    colour = "green" if good else ("red" if rel else "white")
    return f"[{colour}]{rel:+.0%}[/]"


def summary_rows(runs: list[ScenarioRun], problem: Problem) -> list[dict[str, Any]]:
    """One dict per configuration: what the table and ``--output json`` show."""
    import numpy as np

    rows = []
    for r in runs:
        res = r.result
        s = res.summary(problem.slo.ttft_s, problem.slo.tpot_s)
        rows.append(
            {
                "name": r.scenario.name,
                "plannedRps": r.scenario.planned_rps,
                "rateRps": r.rate,
                "requests": len(res),
                "ttftMeanS": s["ttft"].mean,
                "ttftP50S": s["ttft"].p50,
                "ttftP90S": s["ttft"].p90,
                "ttftP99S": s["ttft"].p99,
                "ttftPrefillEndP50S": s["ttftPrefillEnd"].p50,
                "ttftPrefillEndP90S": s["ttftPrefillEnd"].p90,
                "tpotP90S": s["tpot"].p90,
                "e2eP90S": s["e2e"].p90,
                "attainment": s["attainment"],
                "throughputRps": s["throughputRps"],
                "goodputRps": r.goodput_rps,
                "goodputWindowS": r.goodput_window_s,
                "offloadFraction": s["offloadFraction"],
                "prefixHitRatio": 1.0
                - float(res.uncached_tokens.sum()) / max(float(res.input_tokens.sum()), 1.0),
                "egressGbps": s["egressGbps"],
                "thresholdP50": {
                    k: float(np.median(v.v)) for k, v in res.thresholds.items() if len(v.v)
                },
                "events": res.events,
                "preemptions": res.preemptions,
                "clusters": _cluster_rows(r, problem),
            }
        )
    return rows


def _cluster_rows(run: ScenarioRun, problem: Problem) -> list[dict[str, Any]]:
    """Several decode clusters: one row each, with its planned ``t`` and share of the rate."""
    planned = {c.name: c for c in run.scenario.config.clusters}
    total = sum(c.share for c in planned.values()) or 1.0
    rows = run.result.cluster_summaries(problem.slo.ttft_s, problem.slo.tpot_s)
    for row in rows:
        c = planned[row["name"]]
        t = c.routing.threshold_tokens
        row["plannedT"] = math.inf if t is None else t
        row["plannedRateRps"] = run.rate * c.share / total
        row["links"] = [link for _, link in c.remotes]
    return rows


def _cluster_table(console: Console, run: ScenarioRun, row: dict[str, Any]) -> None:
    """Per decode cluster of one configuration, then per used link, then the totals."""
    from rich.table import Table

    table = Table(
        title=f"{row['name']}: per decode cluster (t: planned / median while running)",
        title_justify="left",
    )
    for col in ("decode cluster", "rate (req/s)", "offloaded", "t", "TTFT P90", "TPOT P90"):
        table.add_column(col, justify="left" if col == "decode cluster" else "right")
    table.add_column("attainment", justify="right")
    for c in row["clusters"]:
        t = f"{_tokens(c['plannedT'])} / {_tokens(c['thresholdP50'])}"
        table.add_row(
            c["name"],
            _fmt(c["rateRps"], "n"),
            _fmt(c["offloadFraction"], "%"),
            t,
            _fmt(c["ttftP90S"]),
            _fmt(c["tpotP90S"]),
            _fmt(c["attainment"], "%"),
        )
    table.add_row(
        "[bold]all[/]",
        _fmt(row["requests"] / max(_span(run), 1e-12), "n"),
        _fmt(row["offloadFraction"], "%"),
        "",
        _fmt(row["ttftP90S"]),
        _fmt(row["tpotP90S"]),
        _fmt(row["attainment"], "%"),
    )
    console.print(table)
    res = run.result
    used = [name for name, (t, _) in res.offered.items() if len(t)]
    if not used:
        return
    links = Table(title=f"{row['name']}: link egress", title_justify="left")
    for col in ("link", "capacity Gbps", "egress Gbps", "used"):
        links.add_column(col, justify="left" if col == "link" else "right")
    total_cap = total_egress = 0.0
    for name in used:
        cap = float(res.link_capacity[name].v[0]) / 1e9
        egress = res.mean_egress_bps(name) / 1e9
        total_cap += cap
        total_egress += egress
        links.add_row(name, f"{cap:g}", f"{egress:.2f}", _fmt(egress / cap if cap else 0.0, "%"))
    links.add_row(
        f"[bold]{len(used)} links[/]",
        f"{total_cap:g}",
        f"{total_egress:.2f}",
        _fmt(total_egress / total_cap if total_cap else 0.0, "%"),
    )
    console.print(links)


def _span(run: ScenarioRun) -> float:
    a = run.result.arrival_s
    return float(a[-1] - a[0]) if len(a) > 1 else 0.0


def _tokens(x: float) -> str:
    if not math.isfinite(x):
        return "∞"
    return f"{x / 1000:.1f}K" if x >= 1000 else f"{x:.0f}"


_METRICS: tuple[tuple[str, str, str, bool], ...] = (
    # key, label, unit, lower is better
    ("plannedRps", "planned Λ_max (req/s)", "n", False),
    ("ttftMeanS", "TTFT mean", "s", True),
    ("ttftP50S", "TTFT P50", "s", True),
    ("ttftP90S", "TTFT P90", "s", True),
    ("ttftP99S", "TTFT P99", "s", True),
    ("ttftPrefillEndP50S", "TTFT at prefill end P50", "s", True),
    ("ttftPrefillEndP90S", "TTFT at prefill end P90", "s", True),
    ("tpotP90S", "TPOT P90", "s", True),
    ("e2eP90S", "E2E P90", "s", True),
    ("attainment", "SLO attainment (TTFT & TPOT)", "%", False),
    ("goodputRps", "goodput (req/s, bisection)", "n", False),
    ("offloadFraction", "offloaded", "%", False),
    ("prefixHitRatio", "prefix-hit ratio (tokens)", "%", False),
)


def _egress(gbps: dict[str, float]) -> str:
    """Mean egress per link; with more than a few links, the sum and how many carried KV."""
    if len(gbps) <= 4:
        return ", ".join(f"{v:.2f}" for v in gbps.values()) or "—"
    busy = sum(v > 0 for v in gbps.values())
    return f"{sum(gbps.values()):.2f} over {busy} links"


def _table(
    console: Console,
    name: str,
    problem: Problem,
    rows: list[dict[str, Any]],
    runs: list[ScenarioRun],
) -> None:
    from rich.table import Table

    rate = rows[0]["rateRps"]
    title = (
        f"ServingPlan {name}: {rows[0]['requests']:,} requests at {rate:.3g} req/s, SLO "
        f"TTFT {problem.slo.ttft_s:g}s & TPOT {problem.slo.tpot_s * 1e3:g}ms for "
        f"{problem.slo.attainment:.0%}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("metric", no_wrap=True)
    for row in rows:
        table.add_column(row["name"], justify="right")
    ours = rows[0]
    for row in rows[1:]:
        table.add_column(f"vs {row['name']}", justify="right")
    for key, label, unit, lower in _METRICS:
        if key == "goodputRps" and all(r[key] is None for r in rows):
            continue
        cells = [_fmt(r[key], unit) for r in rows]
        changes = [_change(ours[key], r[key], lower) for r in rows[1:]]
        if key in {"plannedRps", "offloadFraction"}:
            changes = ["" for _ in rows[1:]]
        table.add_row(label, *cells, *changes)
    egress = [_egress(r["egressGbps"]) for r in rows]
    table.add_row("link egress mean (Gbps)", *egress, *["" for _ in rows[1:]])
    console.print(table)
    for run, row in zip(runs, rows, strict=True):
        if row["clusters"]:
            _cluster_table(console, run, row)
    windowed = [r["name"] for r in rows if r["goodputRps"] is not None and r["goodputWindowS"]]
    if windowed:
        console.print(
            f"goodput of {', '.join(windowed)}: every bisection probe spans at least "
            f"{max(r['goodputWindowS'] for r in rows):,.0f} s, the window above, so the "
            "bandwidth schedule is inside it"
        )


T_HEIGHT = 0.4
"""The largest threshold t sits at this fraction of its panel's height, capacity at
``1 / CAPACITY_HEADROOM`` (≈ 0.87): the two lines never overlap."""
CAPACITY_HEADROOM = 1.15


def plot_figure(runs: list[ScenarioRun], title: str, ttft_slo_s: float | None = None) -> Figure:
    """TTFT CDF per configuration (with the SLO marked); per linked configuration, egress and
    capacity over time and, where it varies or is positive, the threshold ``t`` on its own
    axis; queue depth per pool of the first configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from prfaas.planner.sim.metrics import binned_mean

    linked = [r for r in runs if r.result.links]
    fig, axes = plt.subplots(2 + len(linked), 1, figsize=(9, 7.2 + 3.2 * len(linked)))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    for r in runs:
        ttft = np.sort(r.result.ttft)
        ax.plot(ttft, np.arange(1, len(ttft) + 1) / len(ttft), label=r.scenario.name)
    ax.axhline(0.9, color="grey", lw=0.6, ls=":")
    if ttft_slo_s is not None:
        ax.axvline(ttft_slo_s, color="red", lw=1.0, ls="--", label=f"TTFT SLO {ttft_slo_s:g} s")
    ax.set_xlabel("TTFT (s)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"{title}: TTFT CDF at {runs[0].rate:.3g} req/s")
    ax.legend()
    ax.grid(alpha=0.3)
    for ax, r in zip(axes[1:-1], linked, strict=True):
        res = r.result
        end = res.end_s
        bin_s = max(end / 200.0, 1.0)
        top = 0.0
        for name, series in res.links.items():
            if len(res.links) > 4 and not len(res.offered[name][0]):
                continue  # several decode clusters: only the links that carried KV
            starts, means = binned_mean(series, end, bin_s)
            ax.plot(starts, means / 1e9, label=f"{name} egress")
            cap = res.link_capacity[name]
            ax.step(
                np.append(cap.t, end),
                np.append(cap.v, cap.v[-1]) / 1e9,
                where="post",
                ls="--",
                label=f"{name} capacity",
            )
            top = max(top, float(np.max(cap.v)) / 1e9, float(np.max(means, initial=0)) / 1e9)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("Gbit/s")
        ax.set_ylim(0, top * CAPACITY_HEADROOM or 1.0)
        ax.grid(alpha=0.3)
        lines = ax.get_legend_handles_labels()
        finite = [thr.v[np.isfinite(thr.v)] for thr in res.thresholds.values() if len(thr.v)]
        t_max = max((float(v.max()) for v in finite if len(v)), default=0.0)
        if t_max > 0:
            twin = ax.twinx()
            for name, thr in res.thresholds.items():
                v = np.where(np.isfinite(thr.v), thr.v, np.nan)
                twin.step(
                    np.append(thr.t, end),
                    np.append(v, v[-1]) / 1e3,
                    where="post",
                    color="black",
                    lw=0.9,
                    label=f"t ({name})",
                )
            twin.set_ylabel("threshold t (K tokens)")
            twin.set_ylim(0, t_max / 1e3 / T_HEIGHT)
            more = twin.get_legend_handles_labels()
            lines = (lines[0] + more[0], lines[1] + more[1])
            ax.set_title(f"{r.scenario.name}: link egress and offload threshold t")
        else:
            ax.set_title(f"{r.scenario.name}: link egress (t = 0: every prompt prefilled remotely)")
        ax.legend(lines[0], lines[1], loc="upper right", fontsize=8)
    ax = axes[-1]
    ours = runs[0].result
    q_bin = max(ours.end_s / 200.0, 1.0)
    for name, series in ours.queues.items():
        starts, means = binned_mean(series, ours.end_s, q_bin)
        ax.plot(starts, means, label=name)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("requests waiting")
    ax.set_title(f"{runs[0].scenario.name}: queue depth per pool")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_runs(
    runs: list[ScenarioRun], out: Path, title: str, ttft_slo_s: float | None = None
) -> None:
    """``plot_figure`` written to ``out`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = plot_figure(runs, title, ttft_slo_s)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _simulate_one(
    problem: Problem,
    plan: Plan,
    *,
    requests: int,
    rate: float | None,
    rate_scale: float | None,
    seed: int,
    schedule: str | None,
    trace: Path | None,
    goodput_requests: int,
    arrival: tuple[str, float],
    err: Console,
    replan_interval_s: float = 0.0,
    switch_delay_s: float = 0.0,
) -> list[ScenarioRun]:
    from prfaas.planner.sim.links import parse_schedule
    from prfaas.planner.sim.scenarios import common_rate, run_scenarios, scenarios
    from prfaas.planner.sim.traces import load_trace
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    found = scenarios(problem, plan, schedule=parse_schedule(schedule) if schedule else ())
    if replan_interval_s > 0:
        pools = {p.decode_cluster for p in plan.convertible()}
        rolled = [c.name for c in plan.clusters if c.role == "decode" and c.name not in pools]
        if rolled and switch_delay_s == 0:
            err.print(
                f"[yellow]! {problem.name}: the PD-P and PD-D instances of {', '.join(rolled)} "
                "are not one kv_both pool (accelerator, TP, PP or flags differ); a role change "
                "there is a Deployment roll: give --switch-delay its model-load time[/]"
            )
    naive = "naive-heterogeneous"
    if any(b.name == naive for b in plan.baselines) and all(s.name != naive for s in found):
        err.print(
            f"[yellow]! {problem.name}: {naive} is not simulated: a decode cluster has no "
            "direct link from a prefill cluster, and that layout prefills every prompt remotely[/]"
        )
    stream = None
    if trace is not None:
        stream = load_trace(trace)
        if rate is not None and stream.rate > 0:
            stream = stream.scaled(rate / stream.rate)  # replay the trace at this mean rate
        if rate_scale is not None:
            stream = stream.scaled(rate_scale)
        at = stream.rate
    else:
        at = rate if rate is not None else common_rate(problem, found)
        if rate_scale is not None:
            at *= rate_scale
    n = len(stream) if stream is not None else requests
    if schedule and at > 0:
        last_change = max(when for when, _ in parse_schedule(schedule))
        span = float(stream.arrival_s[-1]) if stream is not None else n / at
        if last_change >= span:
            err.print(
                f"[yellow]! {problem.name}: the bandwidth schedule changes at {last_change:g} s, "
                f"after the requests end (about {span:,.0f} s): raise --requests to "
                f"{math.ceil(1.25 * last_change * at):,} or more to see it[/]"
            )
    total = n * len(found)
    kind: Literal["poisson", "gamma"] = "gamma" if arrival[0] == "gamma" else "poisson"

    def simulate(progress: Callable[[str, int], None] | None = None) -> list[ScenarioRun]:
        return run_scenarios(
            problem,
            found,
            requests=n,
            rate=at,
            seed=seed,
            stream=stream,
            goodput_requests=goodput_requests,
            progress=progress,
            arrival=kind,
            cv=arrival[1],
            replan_interval_s=replan_interval_s,
            switch_delay_s=switch_delay_s,
        )

    if total < PROGRESS_FROM:
        return simulate()
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("simulating", total=total)
        offsets = {sc.name: i * n for i, sc in enumerate(found)}

        def progress(name: str, done: int) -> None:
            bar.update(task, completed=offsets[name] + done, description=f"simulating {name}")

        return simulate(progress)


def run(
    file: Annotated[Path, typer.Argument(help="YAML with clusters, links and ServingPlan(s).")],
    requests: Annotated[
        int, typer.Option("--requests", "-n", min=1, help="Requests per configuration.")
    ] = 20_000,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate",
            min=0.0,
            help="Arrival rate, req/s (default: workload.requestsPerSecond, "
            "else 0.8 × the smallest planned Λ_max, so every configuration is stable).",
        ),
    ] = None,
    rate_scale: Annotated[
        float | None,
        typer.Option("--rate-scale", min=0.0, help="Multiply the (default or trace) rate."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of requests and tie-breaks.")] = 0,
    bandwidth_schedule: Annotated[
        str | None,
        typer.Option(
            "--bandwidth-schedule",
            help='Link capacity over time as SECONDS:GBPS pairs, e.g. "0:100,60:20,120:100".',
        ),
    ] = None,
    trace: Annotated[
        Path | None,
        typer.Option(
            "--trace",
            help="Plan and simulate from this trace (Mooncake JSONL, or CSV/JSONL with time, "
            "input_tokens, output_tokens, prefix_id; .gz/.xz read) instead of sampled requests.",
        ),
    ] = None,
    goodput: Annotated[
        bool, typer.Option("--goodput/--no-goodput", help="Bisect each configuration's goodput.")
    ] = True,
    goodput_requests: Annotated[
        int, typer.Option("--goodput-requests", min=100, help="Requests per bisection probe.")
    ] = 2000,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a PNG: TTFT CDFs, egress and t.")
    ] = None,
    replan_interval: Annotated[
        str | None,
        typer.Option(
            "--replan-interval",
            help='Re-plan PrfaaS-PD online every DURATION (e.g. "60s", the autoscaler\'s '
            "period) from each link's measured bandwidth, changing PD-P/PD-D roles with drain.",
        ),
    ] = None,
    switch_delay: Annotated[
        str,
        typer.Option(
            "--switch-delay",
            help="With --replan-interval: a drained instance joins its new role after DURATION "
            '("0s" for kv_both engines; a Deployment roll would be the model-load time).',
        ),
    ] = "0s",
    output: Annotated[SimOutput, typer.Option("--output", "-o")] = SimOutput.table,
) -> None:
    """Simulate the plan of every ServingPlan in FILE against homogeneous PD and naive
    heterogeneous: TTFT/TPOT percentiles, SLO attainment, goodput, link egress."""
    from prfaas.operator.api import models as api
    from prfaas.planner.errors import PlannerError
    from prfaas.planner.sim.scenarios import fill_predicted
    from prfaas.planner.solver import plan as make_plan
    from rich.console import Console

    if rate is not None and rate_scale is not None:
        raise typer.BadParameter("give --rate or --rate-scale, not both")
    replan_s, delay_s = _online_options(replan_interval, switch_delay)
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    if plot is not None and not _have_matplotlib():
        # Before minutes of simulation, not after.
        err.print(
            "[red]--plot needs matplotlib, which is not installed:[/] pip install 'prfaas\\[plot]' "
            "(or pip install matplotlib), or leave out --plot"
        )
        raise typer.Exit(EXIT_INVALID)
    manifests, problems = load_problems(file, err, "simulate")
    if trace is not None:
        problems = plan_from_trace(problems, trace, load_trace_or_exit(trace, err))
    console = Console(soft_wrap=True, highlight=False, width=max(Console().width, 150))
    failed = False
    results: list[dict[str, Any]] = []
    arrivals = {
        sp.metadata.name: (sp.spec.workload.arrival.kind, sp.spec.workload.arrival.cv)
        for sp in manifests.of_kind(api.ServingPlan)
    }
    for problem in problems:
        plan = make_plan(problem)
        if problem.workload.prefix_cache_hit_rate > 0 and trace is None:
            err.print(
                f"[yellow]! {problem.name}: prefixCacheHitRate is not simulated for sampled "
                "requests (they share no prefixes); give a --trace with prefix ids or block "
                "chains to model cache hits[/]"
            )
        if not plan.feasible:
            err.print(f"[red]✗ {problem.name}: infeasible — {plan.reason}[/]")
            failed = True
            continue
        try:
            runs = _simulate_one(
                problem,
                plan,
                requests=requests,
                rate=rate,
                rate_scale=rate_scale,
                seed=seed,
                schedule=bandwidth_schedule,
                trace=trace,
                goodput_requests=goodput_requests if goodput else 0,
                arrival=arrivals.get(problem.name, ("poisson", 1.0)),
                err=err,
                replan_interval_s=replan_s,
                switch_delay_s=delay_s,
            )
        except PlannerError as exc:
            err.print(f"[red]✗ {problem.name}: {exc}[/]")
            failed = True
            continue
        rows = summary_rows(runs, problem)
        fill_predicted(plan, runs, problem)
        entry = {"servingPlan": problem.name, "configurations": rows, "plan": plan.to_dict()}
        report = online_report(runs, problem, bandwidth_schedule)
        if report is not None:
            entry["online"] = report
        results.append(entry)
        if output is SimOutput.table:
            _table(console, problem.name, problem, rows, runs)
            if report is not None:
                _online_table(console, report)
        if plot is not None:
            out = plot if len(problems) == 1 else plot.with_stem(f"{plot.stem}-{problem.name}")
            plot_runs(runs, out, problem.name, problem.slo.ttft_s)
            err.print(f"[dim]wrote {out}[/]")
    if output is SimOutput.json:
        data: Any = results[0] if len(results) == 1 else results
        typer.echo(json.dumps(_clean(data), indent=2))
    if failed:
        raise typer.Exit(EXIT_FAILED)


def _online_options(interval: str | None, delay: str) -> tuple[float, float]:
    """``--replan-interval`` and ``--switch-delay`` in seconds (0: no online re-plan)."""
    from prfaas.operator.api.models import duration_seconds

    if interval is None:
        return 0.0, 0.0
    try:
        every = duration_seconds(interval)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--replan-interval") from exc
    if delay.strip() in {"0", "0s", "0ms"}:
        return every, 0.0
    try:
        return every, duration_seconds(delay)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--switch-delay") from exc


def online_report(
    runs: list[ScenarioRun], problem: Problem, schedule: str | None
) -> dict[str, Any] | None:
    """The online re-plan's role changes and, where a link's schedule drops and comes back,
    P90 TTFT before/during/after the drop and the recovery per configuration (None: no run
    re-planned online)."""
    from prfaas.planner.sim.links import parse_schedule
    from prfaas.planner.sim.online import outage_window, phase_p90, recovery_s, settled_s

    online = next((r.online for r in runs if r.online is not None), None)
    if online is None:
        return None
    out: dict[str, Any] = {
        "replans": len(online.replans),
        "roleChanges": [
            {
                "cluster": c.cluster,
                "instance": c.instance,
                "to": c.to,
                "askedS": c.asked_s,
                "drainedS": c.drained_s,
                "joinedS": c.joined_s,
                "cancelledS": c.cancelled_s,
            }
            for c in online.changes
        ],
    }
    nominal = problem.links[0].bandwidth_gbps if problem.links else 0.0
    window = outage_window(parse_schedule(schedule), nominal) if schedule else None
    if window is not None:
        drop, up = window
        slo = problem.slo.ttft_s
        out["outage"] = {"dropS": drop, "returnS": up, "ttftSloS": slo}
        out["outage"]["rolesSettledS"] = settled_s(online, drop, up)
        out["outage"]["configurations"] = [
            {
                "name": r.scenario.name + (" (online re-plan)" if r.online is not None else ""),
                "p90TtftS": {
                    k: (v if math.isfinite(v) else None)  # None: no request arrived then
                    for k, v in zip(
                        ("before", "during", "after"), phase_p90(r.result, drop, up), strict=True
                    )
                },
                "recoveryS": recovery_s(r.result, slo, drop, up),
            }
            for r in runs
        ]
    return out


def _online_table(console: Console, report: dict[str, Any]) -> None:
    from rich.table import Table

    changes = report["roleChanges"]
    console.print(
        f"online re-plan: {report['replans']} re-plans, {len(changes)} role change(s)"
        + (":" if changes else "")
    )
    for c in changes:
        frm = "decode" if c["to"] == "prefill" else "prefill"
        how = (
            f"cancelled at {c['cancelledS']:,.1f} s"
            if math.isfinite(c["cancelledS"])
            else f"drained at {c['drainedS']:,.1f} s, serving as {c['to']} from "
            f"{c['joinedS']:,.1f} s"
        )
        console.print(
            f"  {c['askedS']:>9,.1f} s  {c['cluster']} instance {c['instance']}: {frm} → "
            f"{c['to']}, {how}"
        )
    outage = report.get("outage")
    if outage is None:
        return
    up = outage["returnS"]
    table = Table(
        title=f"link drop at {outage['dropS']:g} s, back at {up:g} s: P90 TTFT (SLO "
        f"{outage['ttftSloS']:g} s); roles follow the re-plan "
        f"{outage['rolesSettledS']:.0f} s after the drop",
        title_justify="left",
    )
    for col in ("configuration", "before", "during", "after", "recovery"):
        table.add_column(col, justify="left" if col == "configuration" else "right")
    for row in outage["configurations"]:
        p = row["p90TtftS"]
        rec = row["recoveryS"]
        table.add_row(
            row["name"],
            *(_fmt(p[k]) for k in ("before", "during", "after")),
            "never" if math.isinf(rec) else f"{rec:.0f} s",
        )
    console.print(table)
    console.print(
        "recovery: seconds after the drop (in 60 s steps, at least 600 s before the link "
        "returns) from which the requests arriving until it returns meet the TTFT SLO at P90 "
        "(0: they never stopped; never: not found)"
    )


def _have_matplotlib() -> bool:
    """matplotlib is the ``plot`` extra, not a base dependency."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _clean(x: Any) -> Any:
    """JSON has no infinity or NaN: write ``null``."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
