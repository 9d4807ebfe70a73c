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
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Count warnings (references to objects not in FILES) as problems: exit 2, as "
            "`prfaas plan` does on them.",
        ),
    ] = False,
) -> None:
    """Validate prfaas manifests: exit 0 if all is well, 2 with one line per problem otherwise.

    A reference to a cluster or link not in FILES is a warning (exit 0): on a cluster the
    operator waits for it to be applied. ``prfaas plan`` works on the files alone and exits 2
    on a missing cluster; ``--strict`` makes validate fail on every warning.
    """
    from prfaas.operator.api.manifests import ManifestProblem, read_manifests
    from rich.console import Console
    from rich.markup import escape

    console = Console(soft_wrap=True, highlight=False)
    manifests = read_manifests(files)

    def show(problem: ManifestProblem, style: str, label: str = "") -> None:
        where = f"{problem.source}:{problem.line}" if problem.line else problem.source
        field = f" [bold]{escape(problem.path)}[/]:" if problem.path else ""
        console.print(
            f"[{style}]{label}{escape(where)}[/] [cyan]{escape(problem.document)}[/]{field} "
            f"got [bold]{escape(problem.given)}[/]; allowed: {escape(problem.allowed)}"
        )

    problems = manifests.problems + (manifests.warnings if strict else [])
    for warning in [] if strict else manifests.warnings:
        show(warning, "yellow", "warning: ")
    for problem in problems:
        show(problem, "red")
    if problems:
        names = {str(f) for f in files}
        bad = len({p.source for p in problems} & names)
        across = " and across them" if any(p.source not in names for p in problems) else ""
        console.print(
            f"[red]✗[/] {len(problems)} problem(s) in {bad} of {len(files)} file(s){across}"
        )
        raise typer.Exit(EXIT_PROBLEMS)
    kinds = Counter(r.KIND for r in manifests.resources)
    summary = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
    console.print(
        f"[green]✓[/] {len(manifests.resources)} object(s) valid in {len(files)} file(s): {summary}"
    )
    if manifests.warnings:
        console.print(
            f"[yellow]![/] {len(manifests.warnings)} warning(s): these files refer to objects "
            "they do not hold. The operator waits for them on the cluster; `prfaas plan` reads "
            "only the files and exits 2 on a missing cluster (`--strict`: fail here too)."
        )
