"""``python -m prfaas.operator``: the same as ``prfaas operator`` (the container's entry point)."""

from __future__ import annotations

import typer
from prfaas.operator.cli.run_operator import run

__all__: list[str] = []

if __name__ == "__main__":
    typer.run(run)
