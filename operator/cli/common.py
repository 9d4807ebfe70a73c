"""What ``prfaas plan`` and ``prfaas simulate`` share: reading a manifest file into planner
problems, with the same messages and exit status when it does not validate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from prfaas.operator.api.manifests import Manifests
    from prfaas.planner.problem import Problem
    from rich.console import Console

__all__ = ["EXIT_INVALID", "load_problems"]

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
