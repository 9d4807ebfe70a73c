"""``prfaas validate FILE...``: check manifests against the API models before applying them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["run"]

EXIT_PROBLEMS = 2


def run(
    files: Annotated[
        list[Path],
        typer.Argument(help="YAML files with prfaas.io objects (multi-document is fine)."),
    ],
) -> None:
    """Validate prfaas manifests: exit 0 if all is well, 2 with one line per problem otherwise."""
    from prfaas.operator.api.manifests import ManifestProblem, read_manifests
    from rich.console import Console
    from rich.markup import escape

    console = Console(soft_wrap=True, highlight=False)
    manifests = read_manifests(files)

    def show(problem: ManifestProblem, style: str) -> None:
        where = f"{problem.source}:{problem.line}" if problem.line else problem.source
        field = f" [bold]{escape(problem.path)}[/]:" if problem.path else ""
        console.print(
            f"[{style}]{escape(where)}[/] [cyan]{escape(problem.document)}[/]{field} "
            f"got [bold]{escape(problem.given)}[/]; allowed: {escape(problem.allowed)}"
        )

    for warning in manifests.warnings:
        show(warning, "yellow")
    for problem in manifests.problems:
        show(problem, "red")
    if manifests.problems:
        bad = len({p.source for p in manifests.problems})
        console.print(
            f"[red]✗[/] {len(manifests.problems)} problem(s) in {bad} of {len(files)} file(s)"
        )
        raise typer.Exit(EXIT_PROBLEMS)
    kinds = Counter(r.KIND for r in manifests.resources)
    summary = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
    console.print(
        f"[green]✓[/] {len(manifests.resources)} object(s) valid in {len(files)} file(s): {summary}"
    )
