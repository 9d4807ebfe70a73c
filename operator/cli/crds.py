"""``prfaas crds``: write the CustomResourceDefinitions generated from the API models, into
``crds/`` and the Helm chart's ``charts/prfaas/crds/`` (never copied by hand)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["DEFAULT_OUTPUTS", "run"]

DEFAULT_OUTPUTS = (Path("crds"), Path("charts/prfaas/crds"))
"""Where the CRDs live in the repository: the plain folder and the chart's."""


def run(
    output: Annotated[
        list[Path] | None,
        typer.Option(
            "--output",
            "-o",
            help="Directory to write the CRD YAML files into; repeat for several "
            "(default: crds and charts/prfaas/crds).",
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option("--check", help="Write nothing; exit 1 if a DIR differs from the models."),
    ] = False,
) -> None:
    """Generate apiextensions.k8s.io/v1 CRDs for the four prfaas kinds (default: ./crds and
    ./charts/prfaas/crds)."""
    from prfaas.operator.api.crds import render_crds, write_crds
    from rich.console import Console

    console = Console(soft_wrap=True, highlight=False)
    outputs = list(output or DEFAULT_OUTPUTS)
    if check:
        rendered = render_crds()
        stale = [
            str(directory / name)
            for directory in outputs
            for name, text in rendered.items()
            if not (directory / name).is_file()
            or (directory / name).read_text(encoding="utf-8") != text
        ]
        if stale:
            dirs = " ".join(f"-o {d}" for d in outputs)
            console.print(f"[red]stale:[/] {', '.join(stale)}; run `prfaas crds {dirs}`")
            raise typer.Exit(1)
        console.print(f"{', '.join(map(str, outputs))}: up to date")
        return
    for directory in outputs:
        for path in write_crds(directory):
            console.print(f"wrote {path}")
