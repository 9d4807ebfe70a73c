"""What ``prfaas plan`` and ``prfaas simulate`` share: reading a manifest file into planner
problems, with the same messages and exit status when it does not validate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from prfaas.operator.api.manifests import Manifests
    from prfaas.planner.problem import Problem
    from prfaas.planner.sim.arrivals import RequestStream
    from rich.console import Console

__all__ = ["EXIT_INVALID", "load_problems", "load_trace_or_exit", "plan_from_trace"]

EXIT_INVALID = 2
"""Exit status when the manifests do not validate or hold no ServingPlan."""


def load_problems(file: Path, err: Console, purpose: str) -> tuple[Manifests, list[Problem]]:
    """The manifests of ``file`` and one planner problem per ServingPlan in it.

    Prints every problem to ``err`` and exits with ``EXIT_INVALID`` when the file does not
    validate, does not translate, or holds no ServingPlan (``purpose``: "plan", "simulate").
    """
    from prfaas.operator.api.manifests import read_manifests
    from prfaas.operator.api.translate import TranslateError, problems_from_manifests

    manifests = read_manifests([file])
    for issue in manifests.problems:
        err.print(f"[red]{issue}[/]")
    if manifests.problems:
        raise typer.Exit(EXIT_INVALID)
    try:
        problems = problems_from_manifests(manifests.resources)
    except TranslateError as exc:
        err.print(f"[red]✗[/] {exc}")
        raise typer.Exit(EXIT_INVALID) from exc
    if not problems:
        err.print(f"[red]✗[/] {file} holds no ServingPlan to {purpose}")
        raise typer.Exit(EXIT_INVALID)
    return manifests, problems


def load_trace_or_exit(trace: Path, err: Console) -> RequestStream:
    """The trace's requests; a bad trace prints its file:line:field message and exits 2."""
    from prfaas.planner.sim.traces import TraceError, load_trace

    try:
        return load_trace(trace)
    except TraceError as exc:
        err.print(f"[red]✗[/] {exc}")
        raise typer.Exit(EXIT_INVALID) from exc


def plan_from_trace(problems: list[Problem], trace: Path, stream: RequestStream) -> list[Problem]:
    """Each problem with its workload (lengths, rate, uncached lengths) taken from the trace;
    the uncached lengths assume an unbounded shared cache (the trace's upper bound)."""
    from dataclasses import replace

    from prfaas.planner.trace_workload import (
        SHARED_CACHE_NOTE,
        shared_cache_uncached,
        trace_workload,
    )

    uncached = shared_cache_uncached(stream)
    note = (
        f"workload from trace {trace}: {len(stream)} requests; input, output and uncached "
        f"lengths are its empirical distributions; {SHARED_CACHE_NOTE}"
    )
    return [
        replace(p, workload=trace_workload(stream, uncached, p.workload), notes=(*p.notes, note))
        for p in problems
    ]
