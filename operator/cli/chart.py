"""``prfaas chart``: render (as ``helm template``) or lint (as ``helm lint --strict``) the Helm
chart offline, with no ``helm`` binary and no cluster.

It runs Helm's own Go code through the Helm SDK binding (``helm-python-sdk``, in the ``test``
extra), so what it prints is what ``helm template`` would. Users who have Helm can run
``helm template prfaas charts/prfaas -n prfaas-system --set image.repository=...`` instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["merge_values", "render_manifests", "run"]

DEFAULT_CHART = Path("charts/prfaas")


def merge_values(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``, nested mappings merged (as Helm merges ``-f``/``--set``)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_values(out[key], value)
        else:
            out[key] = value
    return out


def render_manifests(rendered: dict[str, str]) -> str:
    """Helm's rendered templates as one multi-document YAML stream, in ``helm template``'s
    form (``# Source:`` comments, empty templates and ``NOTES.txt`` left out)."""
    parts = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        parts.append(f"---\n# Source: {path}\n{text.strip()}\n")
    return "".join(parts)


def run(
    chart: Annotated[
        Path, typer.Argument(help="The chart folder (default: charts/prfaas of this checkout).")
    ] = DEFAULT_CHART,
    values_files: Annotated[
        list[Path] | None,
        typer.Option("--values", "-f", help="A values YAML file (repeatable; later ones win)."),
    ] = None,
    set_values: Annotated[
        list[str] | None,
        typer.Option("--set", help="KEY=VALUE as in helm, e.g. image.repository=REG/prfaas."),
    ] = None,
    name: Annotated[str, typer.Option(help="Release name.")] = "prfaas",
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", help="Release namespace.")
    ] = "prfaas-system",
    lint: Annotated[
        bool,
        typer.Option("--lint", help="Lint (helm lint --strict) instead of rendering; exit 1 on "
                     "any warning or error."),
    ] = False,
) -> None:
    """Render the chart to stdout (helm template) or lint it, offline, through the Helm SDK."""
    import yaml

    try:
        import helm_python as helm
    except ImportError as exc:
        typer.echo(
            "prfaas chart: needs the Helm SDK binding: pip install helm-python-sdk (it is in "
            "the test extra: pip install -e '.[test]'); with Helm installed, run "
            f"`helm template {name} {chart} -n {namespace}` instead",
            err=True,
        )
        raise typer.Exit(1) from exc
    if not (chart / "Chart.yaml").is_file():
        typer.echo(f"prfaas chart: {chart} has no Chart.yaml; give the chart folder", err=True)
        raise typer.Exit(2)
    values: dict[str, Any] = {}
    try:
        for path in values_files or []:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: a values file must be a mapping")
            values = merge_values(values, loaded)
        for expression in set_values or []:
            values = merge_values(values, helm.parse_set_string(expression))
    except (OSError, ValueError, yaml.YAMLError, helm.HelmError) as exc:
        typer.echo(f"prfaas chart: {exc}", err=True)
        raise typer.Exit(2) from exc
    if lint:
        report = helm.lint(chart, values, strict=True, namespace=namespace)
        failures = [m for m in report["messages"] if m["severity"] >= 2]
        for m in report["messages"]:
            level = {1: "INFO", 2: "WARNING", 3: "ERROR"}.get(m["severity"], "UNKNOWN")
            typer.echo(f"[{level}] {m['path']}: {m['error']}")
        for error in report["errors"]:
            typer.echo(f"[ERROR] {error}")
        bad = bool(failures or report["errors"])
        typer.echo(f"{report['total_charts_linted']} chart(s) linted, "
                   f"{'failed' if bad else 'no failures'}")
        if bad:
            raise typer.Exit(1)
        return
    try:
        with helm.Chart.load(chart) as loaded_chart:
            rendered = loaded_chart.render(values, name=name, namespace=namespace)
    except helm.HelmError as exc:
        typer.echo(f"prfaas chart: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(render_manifests(rendered), nl=False)
