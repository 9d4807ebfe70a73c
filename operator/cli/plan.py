"""``prfaas plan FILE.yaml``: preview the plan of every ServingPlan in the file, offline.

Exit status: 0 when every plan is feasible, 1 when one is not (the reason is printed), 2 when
the manifests do not validate.
"""

from __future__ import annotations

import json
import math
import shutil
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from prfaas.operator.cli.common import load_problems, load_trace_or_exit, plan_from_trace

if TYPE_CHECKING:
    from prfaas.planner.plan import Plan
    from rich.console import Console

__all__ = ["OutputFormat", "render_table", "run"]

EXIT_INFEASIBLE = 1


class OutputFormat(StrEnum):
    table = "table"
    yaml = "yaml"
    json = "json"


def _num(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "∞"
    return f"{x:.{digits}g}"


def _tokens(x: float | None) -> str:
    if x is None:
        return "∞ (no offload)"
    return f"{x / 1000:.1f}K" if x >= 1000 else f"{x:.0f}"


def render_table(console: Console, name: str, plan: Plan, rate_basis: str = "") -> None:
    """Print one plan as rich tables (clusters, summary, links, baselines, notes).

    ``rate_basis``: where the simulated rate came from (``scenarios.rate_basis``), printed
    with the simulated numbers.
    """
    from rich.markup import escape
    from rich.table import Table

    if not plan.feasible:
        console.print(f"[red]✗ {escape(name)}[/]: infeasible — {escape(plan.reason)}")
        return
    clusters = Table(title=f"ServingPlan {name} — model {plan.model}", title_justify="left")
    for col in ("cluster", "datacenter", "role", "GPU", "instances", "TP×PP", "GPUs", "latency"):
        clusters.add_column(col, justify="right" if col in {"instances", "GPUs"} else "left")
    for c in plan.clusters:
        clusters.add_row(
            c.name,
            c.datacenter,
            c.role,
            c.accelerator,
            str(c.instances),
            f"{c.tensor_parallel}×{c.pipeline_parallel}",
            str(c.gpus),
            c.latency_source,
        )
    console.print(clusters)
    st = plan.stages
    summary = Table(
        show_header=False, title="Throughput model (PrfaaS Eqs. 3-6)", title_justify="left"
    )
    summary.add_column("quantity")
    summary.add_column("value", justify="right")
    summary.add_row("threshold t (uncached tokens)", _tokens(plan.threshold_tokens))
    summary.add_row("offload fraction p", f"{plan.offload_fraction:.3f}")
    summary.add_row("l_short / l_long (tokens)", f"{plan.l_short:,.0f} / {plan.l_long:,.0f}")
    if "prfaas" in st:
        summary.add_row(
            "Θ_prfaas (req/s)",
            f"{_num(st['prfaas'])} (compute "
            f"{_num(st.get('prfaasCompute'))}, link {_num(st.get('link'))})",
        )
    summary.add_row(
        "Θ_pd-p / Θ_pd-d (req/s)", f"{_num(st.get('pdPrefill'))} / {_num(st.get('pdDecode'))}"
    )
    summary.add_row("[bold]Λ_max (req/s)[/]", f"[bold]{plan.throughput_rps:.3f}[/]")
    summary.add_row("bottleneck", plan.bottleneck)
    console.print(summary)
    if plan.links:
        links = Table(title="Inter-DC links", title_justify="left")
        simulated_egress = any(lk.predicted_egress_gbps is not None for lk in plan.links)
        for col in ("link", "from → to", "capacity Gbps", "headroom", "egress Gbps", "used"):
            links.add_column(col)
        if simulated_egress:
            links.add_column("simulated Gbps")
        for lk in plan.links:
            used = lk.egress_gbps / lk.capacity_gbps if lk.capacity_gbps else 0.0
            sim = lk.predicted_egress_gbps
            links.add_row(
                lk.name,
                f"{lk.from_} → {lk.to}",
                f"{lk.capacity_gbps:g}",
                f"{lk.headroom:g}",
                f"{lk.egress_gbps:.2f}",
                f"{used:.1%}",
                *([] if not simulated_egress else ["—" if sim is None else f"{sim:.2f}"]),
            )
        console.print(links)
    if plan.baselines:
        base = Table(title="Baselines", title_justify="left")
        for col in ("baseline", "Λ_max (req/s)", "plan / baseline", "GPUs", "what"):
            base.add_column(col)
        for b in plan.baselines:
            base.add_row(b.name, f"{b.throughput_rps:.3f}", f"{b.ratio:.2f}×", str(b.gpus), b.note)
        console.print(base)
    if plan.shapes:
        shapes = Table(
            title="Shapes per decode cluster (✓ deployed; † advisory: not deployed with several "
            "decode clusters; ranked per USD/h at catalog prices, else per GPU)",
            title_justify="left",
        )
        for col in (
            "decode cluster",
            "shape",
            "instances",
            "GPUs",
            "token budget",
            "t",
            "goodput (req/s)",
            "per GPU",
            "per USD/h",
            "limit",
        ):
            shapes.add_column(col)
        for o in plan.shapes:
            mark = " ✓" if o.chosen else ("" if o.deployable else " †")
            shapes.add_row(
                o.decode_cluster,
                o.shape + mark,
                str(o.instances),
                str(o.gpus),
                "-" if o.token_budget is None else str(o.token_budget),
                _tokens(o.threshold_tokens),
                f"{o.goodput_rps:.3f}",
                f"{o.goodput_per_gpu:.4f}",
                f"{o.goodput_per_cost:.5f}" if o.cost_per_hour > 0 else "-",
                o.limit or "-",
            )
        console.print(shapes)
    simulated = [("plan", plan.predicted)] + [(b.name, b.predicted) for b in plan.baselines]
    rates = {pr.rate_rps for _, pr in simulated if pr is not None and pr.rate_rps is not None}
    if len(rates) == 1 and rate_basis:
        console.print(f"simulated at {_num(rates.pop())} req/s = {escape(rate_basis)}")
    for who, pr in simulated:
        if pr is not None and pr.ttft_p90_s is not None and pr.tpot_p90_s is not None:
            console.print(
                f"simulated {who} at {_num(pr.rate_rps)} req/s: P90 TTFT {pr.ttft_p90_s:.2f}s, "
                f"P90 TPOT {pr.tpot_p90_s * 1e3:.1f}ms, SLO attainment {pr.attainment or 0:.1%}"
            )
    per_cluster = [r for r in plan.routers if r.predicted is not None]
    if per_cluster:
        table = Table(title="Simulated per decode cluster", title_justify="left")
        for col in ("decode cluster", "planned Λ_d", "rate", "offloaded", "t", "TTFT P90"):
            table.add_column(col, justify="left" if col == "decode cluster" else "right")
        table.add_column("TPOT P90", justify="right")
        table.add_column("attainment", justify="right")
        for r in per_cluster:
            pr = r.predicted
            assert pr is not None
            table.add_row(
                r.decode_cluster,
                _num(r.rate_rps),
                _num(pr.rate_rps),
                "-" if pr.offload_fraction is None else f"{pr.offload_fraction:.1%}",
                _tokens(r.threshold_tokens),
                "-" if pr.ttft_p90_s is None else f"{pr.ttft_p90_s:.2f}s",
                "-" if pr.tpot_p90_s is None else f"{pr.tpot_p90_s * 1e3:.1f}ms",
                "-" if pr.attainment is None else f"{pr.attainment:.1%}",
            )
        console.print(table)
    for note in plan.notes:
        console.print(f"[dim]• {escape(note)}[/]")


def run(
    file: Annotated[Path, typer.Argument(help="YAML with clusters, links and ServingPlan(s).")],
    output: Annotated[
        OutputFormat, typer.Option("--output", "-o", help="table, yaml or json.")
    ] = OutputFormat.table,
    simulate: Annotated[
        int,
        typer.Option(
            "--simulate",
            min=0,
            help="Also simulate this many requests per configuration at workload.requestsPerSecond "
            "(else 0.8 × the smallest planned Λ_max; the output says which) and fill `predicted` "
            "(P90 TTFT/TPOT, attainment) for the plan and each baseline; 0: off.",
        ),
    ] = 0,
    simulated_goodput: Annotated[
        bool,
        typer.Option(
            "--simulated-goodput",
            help="Rank TP×PP candidates by simulated goodput (DistServe's bisection over the "
            "simulator) instead of the M/D/1 closed forms; slower.",
        ),
    ] = False,
    trace: Annotated[
        Path | None,
        typer.Option(
            "--trace",
            help="Plan from this trace's lengths, rate and prefix sharing (Mooncake JSONL, or "
            "CSV/JSONL with time, input_tokens, output_tokens, prefix_id; .gz/.xz read).",
        ),
    ] = None,
) -> None:
    """Plan every ServingPlan in FILE: instances, TP/PP, threshold t, Λ_max, egress, baselines."""
    from prfaas.planner.solver import plan as make_plan
    from rich.console import Console

    err = Console(stderr=True, soft_wrap=True, highlight=False)
    _, problems = load_problems(file, err, "plan")
    if trace is not None:
        problems = plan_from_trace(problems, trace, load_trace_or_exit(trace, err))
    if simulated_goodput:
        from dataclasses import replace

        from prfaas.planner.sim.scenarios import simulated_goodput as goodput_fn

        problems = [
            replace(p, settings=replace(p.settings, goodput=goodput_fn())) for p in problems
        ]
    plans = [(p.name, make_plan(p)) for p in problems]
    bases: dict[str, str] = {}
    if simulate:
        from prfaas.planner.errors import PlannerError
        from prfaas.planner.sim.scenarios import predict, rate_basis

        for problem, (name, pl) in zip(problems, plans, strict=True):
            if pl.feasible:
                try:
                    runs = predict(problem, pl, requests=simulate)
                except PlannerError as exc:
                    pl.notes.append(f"not simulated: {exc}")
                else:
                    bases[name] = rate_basis(problem, [r.scenario for r in runs])
    if output is OutputFormat.table:
        width = max(shutil.get_terminal_size((140, 40)).columns, 120)
        console = Console(soft_wrap=True, highlight=False, width=width)
        for name, pl in plans:
            render_table(console, name, pl, bases.get(name, ""))
    else:
        data: Any = [pl.to_dict() for _, pl in plans]
        data = data[0] if len(data) == 1 else data
        if output is OutputFormat.json:
            typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            import yaml

            typer.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)
    bad = [(name, pl.reason) for name, pl in plans if not pl.feasible]
    if output is not OutputFormat.table:  # the table already said it, once
        for name, reason in bad:
            err.print(f"[red]✗ {name}: infeasible — {reason}[/]")
    if bad:
        raise typer.Exit(EXIT_INFEASIBLE)
