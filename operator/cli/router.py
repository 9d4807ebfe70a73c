"""``prfaas router``: serve the PrfaaS router from its config file (the router ConfigMap)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["run"]


def run(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Router file (YAML/JSON), reloaded on change.")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    reload_interval: Annotated[
        float, typer.Option(help="Seconds between checks of the file's modification time.")
    ] = 1.0,
) -> None:
    """Serve the OpenAI-compatible router until Ctrl-C / SIGTERM."""
    from prfaas.engine.router.errors import ConfigError
    from prfaas.engine.router.service import run_router

    try:
        run_router(config, host=host, port=port, reload_interval_s=reload_interval)
    except ConfigError as exc:
        typer.echo(f"prfaas router: {exc.message}", err=True)
        raise typer.Exit(2) from exc
