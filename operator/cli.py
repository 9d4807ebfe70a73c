"""The ``prfaas`` command line.

Each sub-command lives in its own module under ``prfaas.operator`` and registers itself here;
heavy imports (vLLM, kopf, the simulator) happen inside the command, never at import time.
"""

from __future__ import annotations

import typer
from prfaas.operator import (
    cmd_crds,
    cmd_operator,
    cmd_plan,
    cmd_router,
    cmd_simulate,
    cmd_up,
    cmd_validate,
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


app.command("crds")(cmd_crds.run)
app.command("validate")(cmd_validate.run)
app.command("plan")(cmd_plan.run)
app.command("router")(cmd_router.run)
app.command("up")(cmd_up.run)
app.command("operator")(cmd_operator.run)
app.command("simulate")(cmd_simulate.run)


def main() -> None:
    """Entry point of the ``prfaas`` console script."""
    app()
