"""``prfaas trace stats FILE``: what a request trace says about the workload — arrivals, input and
uncached lengths, the prefix-hit ratio, and the share of requests and of uncached prefill tokens
above each offload threshold."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from prfaas.operator.cli.common import load_trace_or_exit

__all__ = ["app", "stats"]

app = typer.Typer(
    help="Inspect request traces (Mooncake JSONL; prfaas CSV/JSONL).", no_args_is_help=True
)


class StatsOutput(enum.StrEnum):
    table = "table"
    json = "json"


@app.command("stats")
def stats(
    file: Annotated[Path, typer.Argument(help="Trace file (.gz/.xz read).")],
    threshold: Annotated[
        list[int] | None,
        typer.Option(
            "--threshold",
            min=0,
            help="Offload threshold t, tokens (repeat for several; default 1k, 4k, 8k, 16k, 32k).",
        ),
    ] = None,
    cache_blocks: Annotated[
        int | None,
        typer.Option(
            "--cache-blocks",
            min=1,
            help="Replay through LRU caches of this many trace blocks each (with --instances) "
            "instead of one unbounded shared cache.",
        ),
    ] = None,
    instances: Annotated[
        int | None,
        typer.Option("--instances", min=1, help="How many caches --cache-blocks replays through."),
    ] = None,
    output: Annotated[StatsOutput, typer.Option("--output", "-o")] = StatsOutput.table,
    emit_workload: Annotated[
        bool,
        typer.Option(
            "--emit-workload",
            help="Print a ServingPlan spec.workload block instead (rate, and input, output and "
            "uncached lengths as empirical histograms), ready to paste.",
        ),
    ] = False,
) -> None:
    """Requests, duration, arrivals per minute, input/uncached length percentiles, prefix-hit
    ratio, and per threshold the share of requests and uncached tokens above it."""
    from prfaas.planner.trace_workload import (
        DEFAULT_THRESHOLDS,
        SHARED_CACHE_NOTE,
        quantile_buckets,
        replayed_uncached,
        shared_cache_uncached,
        trace_stats,
    )
    from rich.console import Console

    err = Console(stderr=True, soft_wrap=True, highlight=False)
    if (cache_blocks is None) != (instances is None):
        raise typer.BadParameter("give --cache-blocks and --instances together")
    stream = load_trace_or_exit(file, err)
    if cache_blocks is not None and instances is not None:
        uncached = replayed_uncached(stream, cache_blocks=cache_blocks, instances=instances)
        model = (
            f"uncached lengths from a replay through {instances} LRU cache(s) of "
            f"{cache_blocks} blocks ({stream.block_chains.block_tokens} tokens each) under "
            "the router's placement rule"
        )
    else:
        uncached = shared_cache_uncached(stream)
        model = SHARED_CACHE_NOTE
    if emit_workload:
        import yaml

        def hist(values: Any) -> dict[str, Any]:
            buckets = [{"upTo": up, "weight": round(w, 6)} for up, w in quantile_buckets(values)]
            return {"type": "empirical", "buckets": buckets}

        span = float(stream.arrival_s[-1] - stream.arrival_s[0])
        block: dict[str, Any] = {}
        if span > 0 and len(stream) > 1:
            block["requestsPerSecond"] = round((len(stream) - 1) / span, 4)
        block["inputLength"] = hist(stream.input_tokens)
        block["outputLength"] = hist(stream.output_tokens)
        block["uncachedLength"] = hist(uncached)
        typer.echo(f"# from {file}: {len(stream)} requests; uncachedLength: {model}")
        typer.echo(yaml.safe_dump({"workload": block}, sort_keys=False), nl=False)
        return
    st = trace_stats(stream, uncached, threshold or DEFAULT_THRESHOLDS, cache_model=model)
    if output is StatsOutput.json:
        typer.echo(json.dumps(st.to_json(), indent=2))
        return
    console = Console(soft_wrap=True, highlight=False)
    console.print(
        f"[bold]{file}[/]: {st.requests} requests over {st.duration_s:,.1f} s; arrivals per "
        f"minute mean {st.rate_mean_per_min:,.1f}, peak {st.rate_peak_per_min}"
    )
    console.print(f"{'tokens':<10} {'mean':>10} {'P50':>10} {'P90':>10} {'P99':>10}")
    for name, row in (("input", st.input_tokens), ("uncached", st.uncached_tokens)):
        console.print(
            f"{name:<10} {row['mean']:>10,.0f} {row['p50']:>10,.0f} {row['p90']:>10,.0f} "
            f"{row['p99']:>10,.0f}"
        )
    console.print(f"token prefix-hit ratio {st.prefix_hit_ratio:.3f}")
    console.print(f"{'threshold':>10} {'requests >':>11} {'uncached tokens >':>18}")
    for tokens, req_share, tok_share in st.thresholds:
        console.print(f"{tokens:>10,} {req_share:>10.1%} {tok_share:>18.1%}")
    console.print(f"[dim]{st.cache_model}[/]")
