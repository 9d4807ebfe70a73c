"""Measured profiles (``prfaas profile``): the JSON they are written in, and the whole-instance
points the planner fits from them (latency source ``measured``).

A profile is one JSON object in the shape of ``shared/profiles/h200-layer-bf16.json``::

    {"format": "prfaas-profile/1", "scope": "layer" | "instance",
     "accelerator": "H100",             # the catalog GPU type it was taken on ("CPU" for vLLM-CPU)
     "tensorParallel": 1, "device": "...", "software": {"torch": "...", ...}, "method": "...",
     "model": {"layers": 32, "hidden": 4096, "heads": 32, "kvHeads": 8, "headDim": 128,
               "ffn": 14336, "vocab": 128256},          # the whole model, not the TP shard
     "prefill": [{"tokens": 1024, "median_ms": 0.77, ...}],
     "decode":  [{"batch": 32, "context": 4096, "median_ms": 0.2, "graph_median_ms": 0.15}],
     "dataPlane": {"localMs": 9.5, "remoteMs": 120.0, "cores": 2, ...}}   # optional

``dataPlane`` (optional, ``scope: instance`` profiles of a running deployment, written by
``bench/fidelity.py``): what one request costs on each path *outside* the engine steps the rows
time, measured with tiny requests one at a time at idle (``DataPlane``).

``scope: layer`` rows time ONE TP-sharded transformer layer (torch, random weights); a whole
step is ``layers ×`` that plus what a layer lacks — the LM head, the TP all-reduce and the host's
per-step overhead (the same completion as the H200 ``fit``). ``scope: instance`` rows are whole
steps read from a running engine's own timings and are used as they are. Decode rows prefer the
CUDA-graph median where there is one (engines replay decode from graphs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prfaas.planner.errors import ProfileError
from prfaas.planner.latency.catalog import ModelArch, gpu_spec
from prfaas.planner.latency.profiles import ProfileData
from prfaas.planner.latency.roofline import RooflineSettings, collective_seconds

__all__ = [
    "PROFILE_FORMAT",
    "DataPlane",
    "measured_data_plane",
    "measured_profile",
    "profile_shape_problems",
]

PROFILE_FORMAT = "prfaas-profile/1"

_SHAPE_KEYS = ("layers", "hidden", "heads", "kvHeads", "headDim", "ffn")


def _field(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ProfileError(f"{where}: missing field {key!r} (run `prfaas profile` to write one)")
    return data[key]


def _positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ProfileError(f"{where}: must be a positive number, got {value!r}")
    return float(value)


def profile_shape_problems(data: Mapping[str, Any], model: ModelArch) -> list[str]:
    """Why this profile's ``model`` shape is not ``model``'s (empty when it is)."""
    shape = data.get("model")
    if not isinstance(shape, Mapping):
        return ["model: missing the measured model shape (layers, hidden, heads, ...)"]
    want = {
        "layers": model.layers,
        "hidden": model.hidden,
        "heads": model.heads,
        "kvHeads": model.kv_heads,
        "headDim": model.head_dim,
        "ffn": model.ffn,
    }
    return [
        f"model.{k}: profile has {shape.get(k)!r}, the plan's model has {v}"
        for k, v in want.items()
        if shape.get(k) != v
    ]


def _step_ms(row: Mapping[str, Any], where: str, decode: bool) -> float:
    graph = row.get("graph_median_ms")
    value = graph if decode and graph is not None else _field(row, "median_ms", where)
    return _positive(value, f"{where}.median_ms")


def measured_profile(
    data: Mapping[str, Any],
    model: ModelArch,
    where: str = "profile",
    settings: RooflineSettings | None = None,
) -> ProfileData:
    """Whole-instance ``ProfileData`` (source ``measured``) from a ``prfaas profile`` JSON.

    Raises ``ProfileError`` naming the field when the JSON is not a profile of ``model``.
    """
    if not isinstance(data, Mapping):
        raise ProfileError(f"{where}: a profile is a JSON object, got {type(data).__name__}")
    fmt = data.get("format", PROFILE_FORMAT)
    if fmt != PROFILE_FORMAT:
        raise ProfileError(f"{where}.format: {fmt!r} is not {PROFILE_FORMAT!r}")
    scope = data.get("scope", "layer")
    if scope not in ("layer", "instance"):
        raise ProfileError(f"{where}.scope: {scope!r}; use 'layer' or 'instance'")
    accelerator = str(_field(data, "accelerator", where))
    try:
        gpu = gpu_spec(accelerator)
    except Exception as err:
        raise ProfileError(f"{where}.accelerator: {err}") from None
    tp = int(_positive(data.get("tensorParallel", 1), f"{where}.tensorParallel"))
    problems = profile_shape_problems(data, model)
    if problems:
        raise ProfileError(f"{where}: not a profile of model {model.name!r}: {'; '.join(problems)}")
    s = settings or RooflineSettings()
    layers = model.layers if scope == "layer" else 1
    lm_head = (
        model.vocab_params
        * model.weight_bytes_per_param
        / (tp * gpu.hbm_gbps * 1e9 * s.bandwidth_efficiency)
    )
    extra = lm_head + gpu.step_overhead_s if scope == "layer" else 0.0

    def whole(ms: float, tokens: float) -> float:
        comm = collective_seconds(model, gpu, tp, 1, tokens) if scope == "layer" else 0.0
        return layers * ms / 1e3 + extra + comm

    prefill = []
    for i, row in enumerate(data.get("prefill") or ()):
        w = f"{where}.prefill[{i}]"
        tokens = _positive(_field(row, "tokens", w), f"{w}.tokens")
        prefill.append((tokens, whole(_step_ms(row, w, False), tokens)))
    decode = []
    for i, row in enumerate(data.get("decode") or ()):
        w = f"{where}.decode[{i}]"
        batch = _positive(_field(row, "batch", w), f"{w}.batch")
        context = float(_field(row, "context", w))
        if context < 0:
            raise ProfileError(f"{w}.context: must be ≥ 0, got {context!r}")
        decode.append((batch, context, whole(_step_ms(row, w, True), batch)))
    if not prefill and not decode:
        raise ProfileError(f"{where}: no prefill or decode rows")
    device = data.get("device", accelerator)
    origin = f"measured by prfaas profile ({scope}) on {device}"
    if data.get("measuredAt"):
        origin += f" at {data['measuredAt']}"
    return ProfileData(
        gpu.name,
        tp,
        1,
        origin,
        tuple(prefill),
        tuple(decode),
        source="measured",
    )


@dataclass(frozen=True, slots=True)
class DataPlane:
    """Per-request seconds the data plane adds to the times a client sees, on each path.

    The profile's rows are the engine's own timings (its TTFT histogram starts when its API
    server has parsed the request and ends when the step's output reaches it; its steps).
    A client's request also crosses, and no engine histogram sees:

    * ``local_s`` — the router (HTTP parse, tokenise, decide, open the engine leg, relay the
      first chunk) and the engine's API server around the engine's own TTFT (HTTP, JSON,
      SSE framing): the local path is one leg.
    * ``remote_s`` — the same router costs, plus the prefill leg's whole HTTP round trip (its API
      server on both ends, the non-streamed answer with ``kv_transfer_params``), then the decode
      leg's API server, and NIXL's per-request work on the decode engine (handshake/metadata,
      posting the read, waiting a step for the notification): everything on the remote path
      beyond the prefill engine's own TTFT and the decode engine's first step, which the rows
      already model, and beyond the link's RTT and bytes/bandwidth, which the simulator adds.

    They are latency, not engine occupancy: the work runs in other processes (router, API
    servers, NIXL threads), so the simulator adds them to each request's client-visible times
    (first token and finish: TPOT is unchanged) and not to the engines' busy time. Measured, not
    fitted: medians of tiny requests at idle, minus the engine-side parts read from the
    engines' own histograms for the same requests (``bench/fidelity.py``).
    """

    local_s: float
    remote_s: float
    cores: int = 0
    """Host cores the deployment ran on when this was measured (0: not recorded); on a host
    that also runs the router and the load, these costs grow with the CPU contention."""
    origin: str = ""

    def seconds(self, remote: bool) -> float:
        """The cost of one request on the remote (``True``) or the local path."""
        return self.remote_s if remote else self.local_s


def measured_data_plane(data: Mapping[str, Any], where: str = "profile") -> DataPlane | None:
    """The profile's ``dataPlane`` (``None`` when it has none). Raises ``ProfileError`` naming
    the field when it is malformed."""
    if not isinstance(data, Mapping):
        raise ProfileError(f"{where}: a profile is a JSON object, got {type(data).__name__}")
    dp = data.get("dataPlane")
    if dp is None:
        return None
    w = f"{where}.dataPlane"
    if not isinstance(dp, Mapping):
        raise ProfileError(f"{w}: an object with localMs and remoteMs, got {type(dp).__name__}")
    values = []
    for key in ("localMs", "remoteMs"):
        if key not in dp:
            raise ProfileError(
                f"{w}: missing field {key!r} (bench/fidelity.py measures both paths)"
            )
        v = dp[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0:
            raise ProfileError(f"{w}.{key}: must be a number of milliseconds >= 0, got {v!r}")
        values.append(float(v) / 1e3)
    cores = dp.get("cores", 0)
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 0:
        raise ProfileError(f"{w}.cores: must be a whole number of cores >= 0, got {cores!r}")
    origin = f"measured on {data.get('device', 'this host')}"
    if data.get("measuredAt"):
        origin += f" at {data['measuredAt']}"
    return DataPlane(values[0], values[1], cores, origin)
