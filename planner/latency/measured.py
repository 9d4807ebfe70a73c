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
     "dataPlane": {"localMs": 9.5, "remoteMs": 120.0, "cores": 2, ...},   # optional
     "idleWake": {"referenceS": 0.05, "points": [                           # optional
        {"idleS": 1.0, "prefill": {"engineMs": 16, "outsideMs": 11},
                       "decode": {"engineMs": 12, "outsideMs": 5}}, ...]}}

``dataPlane`` (optional, ``scope: instance`` profiles of a running deployment, written by
``bench/fidelity.py``): what one request costs on each path *outside* the engine steps the rows
time, measured with tiny requests one at a time at idle (``DataPlane``). ``idleWake``
(optional, same provenance): what an engine left idle adds to its next request (``IdleWake``).

``scope: layer`` rows time ONE TP-sharded transformer layer (torch, random weights); a whole
step is ``layers ×`` that plus what a layer lacks — the LM head, the TP all-reduce and the host's
per-step overhead (the same completion as the H200 ``fit``). ``scope: instance`` rows are whole
steps read from a running engine's own timings and are used as they are. Decode rows prefer the
CUDA-graph median where there is one (engines replay decode from graphs).
"""

from __future__ import annotations

import math
from bisect import bisect_right
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
    "IdleWake",
    "measured_data_plane",
    "measured_idle_wake",
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


def _origin(data: Mapping[str, Any]) -> str:
    """Where and when a deployment's ``dataPlane`` / ``idleWake`` were measured."""
    origin = f"measured on {data.get('device', 'this host')}"
    if data.get("measuredAt"):
        origin += f" at {data['measuredAt']}"
    return origin


def _section(
    data: Mapping[str, Any], key: str, where: str, fields: str
) -> tuple[Mapping[str, Any] | None, str]:
    """An optional object of a profile (``None`` when absent) and its field path for errors."""
    if not isinstance(data, Mapping):
        raise ProfileError(f"{where}: a profile is a JSON object, got {type(data).__name__}")
    section = data.get(key)
    w = f"{where}.{key}"
    if section is not None and not isinstance(section, Mapping):
        raise ProfileError(f"{w}: an object with {fields}, got {type(section).__name__}")
    return section, w


def _ms(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ProfileError(f"{where}: must be a number of milliseconds >= 0, got {value!r}")
    return float(value) / 1e3


def measured_data_plane(data: Mapping[str, Any], where: str = "profile") -> DataPlane | None:
    """The profile's ``dataPlane`` (``None`` when it has none). Raises ``ProfileError`` naming
    the field when it is malformed."""
    dp, w = _section(data, "dataPlane", where, "localMs and remoteMs")
    if dp is None:
        return None
    values = []
    for key in ("localMs", "remoteMs"):
        if key not in dp:
            raise ProfileError(
                f"{w}: missing field {key!r} (bench/fidelity.py measures both paths)"
            )
        values.append(_ms(dp[key], f"{w}.{key}"))
    cores = dp.get("cores", 0)
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 0:
        raise ProfileError(f"{w}.cores: must be a whole number of cores >= 0, got {cores!r}")
    return DataPlane(values[0], values[1], cores, _origin(data))


@dataclass(frozen=True, slots=True)
class IdleWake:
    """Seconds an engine left idle adds to its next request, by how long it was idle.

    Measured on this project's CPU hosts (``bench/fidelity.py``): after 1 s with nothing to do,
    a vLLM CPU engine's next prefill took 16-40 ms longer by its own histogram, and the client
    saw 27-71 ms more; after 4 s, 50-92 and 80-165 ms (it drifts over minutes). The cost grows
    with the idle time and with the memory a step touches, not with guest page faults (none are
    counted): the host re-faults what it reclaimed from an idle guest. Back-to-back steps never
    pay it, so it is not a constant: a busy engine does not see it, and at low load it is most
    of the gap between a profile taken back to back and what a client sees.

    Two parts per kind of step, each piecewise linear in the idle seconds between the measured
    points (0 at ``idle_s[0]``, the spacing the profile's rows were taken at; flat beyond the
    last point, never extrapolated):

    * ``engine`` — the engine's own step is longer (its TTFT histogram): engine occupancy, so
      the simulator lengthens the step, and whoever queues behind it waits too.
    * ``outside`` — what the API servers, the router and NIXL's threads add as they wake:
      latency outside the engine, added to the request's client-visible times like the data
      plane.

    ``prefill`` is a prompt's first step on an idle engine (local path); ``decode`` a remote
    request's first decode step, KV pull included, on an idle decode engine (its ``outside``:
    what the remote path's client sees beyond both engines and beyond the local path's).
    """

    idle_s: tuple[float, ...]
    prefill_engine_s: tuple[float, ...]
    prefill_outside_s: tuple[float, ...]
    decode_engine_s: tuple[float, ...]
    decode_outside_s: tuple[float, ...]
    origin: str = ""

    def _at(self, ys: tuple[float, ...], idle: float) -> float:
        xs = self.idle_s
        i = bisect_right(xs, idle)
        if i == 0:
            return 0.0
        if i == len(xs):
            return ys[-1]
        x0, x1 = xs[i - 1], xs[i]
        return ys[i - 1] + (ys[i] - ys[i - 1]) * (idle - x0) / (x1 - x0)

    def prefill(self, idle: float) -> tuple[float, float]:
        """``(engine, outside)`` seconds a prompt's first step on an engine idle ``idle`` s
        adds."""
        return self._at(self.prefill_engine_s, idle), self._at(self.prefill_outside_s, idle)

    def expected_prefill_engine(self, rate: float, service_s: float) -> float:
        """Mean engine seconds the wake adds per prompt on one engine that Poisson arrivals
        reach at ``rate`` per second, each prompt taking ``service_s``: an arrival finds the
        engine idle with probability ``1 − ρ`` (``ρ = rate · service_s``), and then it has been
        idle for an Exp(``rate``) time (M/G/1: an idle period ends at the next arrival), so
        ``(1 − ρ) · E[w(X)]``. Calibration uses it to compare like with like."""
        if not rate > 0.0:
            return 0.0
        rho = min(rate * max(service_s, 0.0), 1.0)
        xs, ys = self.idle_s, self.prefill_engine_s
        # E[w(X)] for w linear between the points, 0 before the first, flat after the last:
        # ∫ w'(x) P(X > x) dx = Σ over segments of slope · (e^{-r·x0} − e^{-r·x1}) / r.
        mean = 0.0
        for i in range(1, len(xs)):
            slope = (ys[i] - ys[i - 1]) / (xs[i] - xs[i - 1])
            mean += slope * (math.exp(-rate * xs[i - 1]) - math.exp(-rate * xs[i])) / rate
        return (1.0 - rho) * mean

    def decode(self, idle: float) -> tuple[float, float]:
        """``(engine, outside)`` seconds a remote request's first decode step on an engine
        idle ``idle`` s adds."""
        return self._at(self.decode_engine_s, idle), self._at(self.decode_outside_s, idle)


def measured_idle_wake(data: Mapping[str, Any], where: str = "profile") -> IdleWake | None:
    """The profile's ``idleWake`` (``None`` when it has none). Raises ``ProfileError`` naming
    the field when it is malformed."""
    wake, w = _section(data, "idleWake", where, "referenceS and points")
    if wake is None:
        return None
    ref = wake.get("referenceS", 0.0)
    if isinstance(ref, bool) or not isinstance(ref, int | float) or not ref >= 0:
        raise ProfileError(f"{w}.referenceS: must be a number of seconds >= 0, got {ref!r}")
    points = wake.get("points")
    if not isinstance(points, list) or not points:
        raise ProfileError(
            f"{w}.points: a non-empty list of {{idleS, prefill, decode}} "
            "(bench/fidelity.py measures them)"
        )
    xs, cols = [float(ref)], [[0.0], [0.0], [0.0], [0.0]]
    for i, point in enumerate(points):
        pw = f"{w}.points[{i}]"
        if not isinstance(point, Mapping):
            raise ProfileError(f"{pw}: an object with idleS, prefill and decode")
        idle = point.get("idleS")
        if isinstance(idle, bool) or not isinstance(idle, int | float) or not idle >= 0:
            raise ProfileError(f"{pw}.idleS: must be a number of seconds >= 0, got {idle!r}")
        if idle <= xs[-1]:
            if i == 0 and idle == xs[0]:
                continue  # the reference itself, listed with its zero cost
            raise ProfileError(
                f"{pw}.idleS: {idle} must exceed the previous point's {xs[-1]} "
                "(points in increasing idle time, after referenceS)"
            )
        xs.append(float(idle))
        for k, kind in enumerate(("prefill", "decode")):
            part = point.get(kind)
            if not isinstance(part, Mapping):
                raise ProfileError(f"{pw}.{kind}: an object with engineMs and outsideMs")
            for j, key in enumerate(("engineMs", "outsideMs")):
                if key not in part:
                    raise ProfileError(f"{pw}.{kind}: missing field {key!r}")
                cols[2 * k + j].append(_ms(part[key], f"{pw}.{kind}.{key}"))
    pe, po, de, do = (tuple(c) for c in cols)
    return IdleWake(tuple(xs), pe, po, de, do, _origin(data))
