"""``prfaas profile``: measure one model's layer on this machine's accelerator and write a profile
JSON (``prfaas.planner.latency.measured``) that a ServingPlan can name (``spec.model.
measuredProfile``), so that the planner uses latency source ``measured``.

The model is a catalog name (``--model llama-3-8b``) or the ``architecture`` of a ServingPlan in
a manifest file (``--plan FILE``). Exit status: 0 on success, 2 on bad input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["run"]

EXIT_INVALID = 2


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: give comma-separated integers", param_hint=option
        ) from None
    if not values or any(v <= 0 for v in values):
        raise typer.BadParameter(f"{text!r}: give positive integers", param_hint=option)
    return values


def run(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JSON.")],
    model: Annotated[
        str | None, typer.Option("--model", help="Catalog model name (e.g. llama-3-8b).")
    ] = None,
    plan_file: Annotated[
        Path | None,
        typer.Option("--plan", help="A manifest file; its ServingPlan's model is measured."),
    ] = None,
    tp: Annotated[int, typer.Option("--tp", min=1, help="Tensor parallelism of the shard.")] = 1,
    accelerator: Annotated[
        str | None,
        typer.Option(help="Catalog GPU type of this machine (default: CPU, or asked of CUDA)."),
    ] = None,
    tokens: Annotated[str, typer.Option(help="Prefill token counts.")] = "128,256,512,1024,2048",
    batches: Annotated[str, typer.Option(help="Decode batch sizes.")] = "1,8,32",
    contexts: Annotated[str, typer.Option(help="Decode contexts (tokens).")] = "256,1024,4096",
    reps: Annotated[int, typer.Option(min=1, help="Timed repetitions per point.")] = 5,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs first.")] = 2,
    device: Annotated[str, typer.Option(help="cuda or cpu; empty: CUDA when present.")] = "",
    dtype: Annotated[str, typer.Option(help="bfloat16, float16 or float32.")] = "",
) -> None:
    """Measure a model's layer (prefill over tokens, decode over batch × context) with torch."""
    from prfaas.planner.errors import PlannerError
    from prfaas.planner.latency.catalog import gpu_spec, model_arch
    from prfaas.planner.latency.measure import MeasureSettings, measure_layer_profile
    from rich.console import Console
    from rich.progress import Progress

    err = Console(stderr=True)
    if (model is None) == (plan_file is None):
        err.print("[red]✗[/] give exactly one of --model (a catalog name) or --plan FILE")
        raise typer.Exit(EXIT_INVALID)
    if plan_file is not None:
        from prfaas.operator.cli.common import load_problems

        _, problems = load_problems(plan_file, err, "profile")
        arch = problems[0].model
    else:
        try:
            arch = model_arch(str(model))
        except PlannerError as exc:
            err.print(f"[red]✗[/] --model: {exc}")
            raise typer.Exit(EXIT_INVALID) from exc
    settings = MeasureSettings(
        _ints(tokens, "--tokens"),
        _ints(batches, "--batches"),
        _ints(contexts, "--contexts"),
        warmup,
        reps,
        dtype,
        device,
    )
    gpu_name = accelerator or _guess_accelerator(device)
    try:
        gpu_name = gpu_spec(gpu_name).name
    except PlannerError as exc:
        err.print(f"[red]✗[/] --accelerator: {exc}")
        raise typer.Exit(EXIT_INVALID) from exc
    total = len(settings.tokens) + len(settings.batches) * len(settings.contexts)
    try:
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task(f"profiling {arch.name} TP{tp}", total=total)

            def tick(label: str) -> None:
                bar.update(task, advance=1, description=f"profiling {arch.name}: {label}")

            data = measure_layer_profile(arch, tp, gpu_name, settings, tick)
    except PlannerError as exc:
        err.print(f"[red]✗[/] {exc}")
        raise typer.Exit(EXIT_INVALID) from exc
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(data, indent=1) + "\n")
    err.print(
        f"[green]✓[/] {output}: {len(data['prefill'])} prefill and {len(data['decode'])} decode "
        f"points of {arch.name} TP{tp} on {data['device']} in {data['wall_s']:.1f} s"
    )


def _guess_accelerator(device: str) -> str:
    """The catalog name of the local device: the CUDA device's name if it has one we know."""
    if device == "cpu":
        return "CPU"
    try:
        import torch
    except ImportError:
        return "CPU"
    if not torch.cuda.is_available():
        return "CPU"
    from prfaas.planner.latency.catalog import GPUS

    name = torch.cuda.get_device_name(0)
    for key in sorted(GPUS, key=len, reverse=True):
        if key.lower() in name.lower():
            return key
    return name
