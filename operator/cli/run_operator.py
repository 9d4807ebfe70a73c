"""``prfaas operator``: run the kopf operator against the current cluster (or ``--server``)."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["run"]


def run(
    server: Annotated[
        str | None,
        typer.Option(
            help="API server URL without auth (kubectl proxy, an emulator); default: "
            "in-cluster service account, else ~/.kube/config."
        ),
    ] = None,
    apply_mode: Annotated[
        str | None,
        typer.Option(
            "--apply",
            help="server-side (default) or merge (API servers without server-side apply).",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Port of /metrics (0: off). Default 8080.")
    ] = None,
    liveness_port: Annotated[int, typer.Option(help="Port of kopf's /healthz (0: off).")] = 8081,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Reconcile ServingPlans into vLLM engines and routers across clusters (runs until SIGTERM).

    Settings come from PRFAAS_* environment variables (see prfaas.operator.controller.settings); the
    options here override them.
    """
    import asyncio
    import logging

    from prfaas.operator.controller.clients import Unreachable
    from prfaas.operator.controller.runtime import run_operator
    from prfaas.operator.controller.settings import OperatorSettings, parse_apply_mode

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = OperatorSettings.from_env()
    except ValueError as exc:
        typer.echo(f"prfaas operator: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        if apply_mode is not None:
            settings.reconcile.apply_mode = parse_apply_mode(apply_mode)
    except ValueError as exc:
        typer.echo(f"prfaas operator: --apply: {exc}", err=True)
        raise typer.Exit(2) from exc
    if metrics_port is not None:
        settings.metrics_port = metrics_port
    liveness = f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None
    try:
        asyncio.run(run_operator(settings, server=server, liveness_endpoint=liveness))
    except Unreachable as exc:  # the operator's own cluster: nothing to do without it
        typer.echo(f"prfaas operator: {exc.message}", err=True)
        raise typer.Exit(1) from exc
