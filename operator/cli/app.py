"""The ``prfaas`` command line.

Each sub-command lives in its own module of ``prfaas.operator.cli`` and registers itself here;
heavy imports (vLLM, kopf, the simulator) happen inside the command, never at import time.
"""

from __future__ import annotations

import typer
from prfaas.operator.cli import (
    chart,
    crds,
    plan,
    profile,
    router,
    run_operator,
    simulate,
    trace,
    up,
    validate,
)

__all__ = ["app", "main"]

app = typer.Typer(
    name="prfaas",
    help="Cross-datacenter prefill offload for LLM serving: plan, simulate, operate, run.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """prfaas: Prefill-as-a-Service planner, operator and data plane."""


app.command("crds")(crds.run)
app.command("validate")(validate.run)
app.command("plan")(plan.run)
app.command("router")(router.run)
app.command("up")(up.run)
app.command("operator")(run_operator.run)
app.command("simulate")(simulate.run)
app.add_typer(trace.app, name="trace")
app.command("chart")(chart.run)
app.command("profile")(profile.run)


def main() -> None:
    """Entry point of the ``prfaas`` console script."""
    app()
