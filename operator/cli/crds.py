"""``prfaas crds``: write the CustomResourceDefinitions generated from the API models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["run"]


def run(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory to write the CRD YAML files into.")
    ] = Path("crds"),
    check: Annotated[
        bool,
        typer.Option("--check", help="Write nothing; exit 1 if DIR differs from the models."),
    ] = False,
) -> None:
    """Generate apiextensions.k8s.io/v1 CRDs for the four prfaas kinds (default: ./crds)."""
    from prfaas.operator.api.crds import render_crds, write_crds
    from rich.console import Console

    console = Console()
    if check:
        stale = [
            name
            for name, text in render_crds().items()
            if not (output / name).is_file()
            or (output / name).read_text(encoding="utf-8") != text
        ]
        if stale:
            console.print(
                f"[red]stale:[/] {', '.join(stale)} in {output}; run `prfaas crds -o {output}`"
            )
            raise typer.Exit(1)
        console.print(f"{output}: up to date")
        return
    for path in write_crds(output):
        console.print(f"wrote {path}")
