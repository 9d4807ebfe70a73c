"""The router's Prometheus metrics (``prfaas_router_*``), in a registry owned by one router.

Latencies are what the client sees: TTFT from the request's arrival to the first byte of the
decode stream (the whole answer when not streaming), TPOT ``(last event − first event) /
(events − 1)`` over a streamed answer (vLLM streams one token per event, so this is
``(last token − first token) / (o − 1)``). On the NIXL P/D path the decode engine emits token 1,
so the simulator (``planner/sim/metrics.py``) measures the same two quantities (README: "TTFT and
TPOT").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "RouterMetrics"]

_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    40.0,
    80.0,
)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
_TOKEN_BUCKETS = tuple(float(2**k) for k in range(4, 21))


@dataclass(slots=True)
class RouterMetrics:
    """All metric families of one router (no global registry, so tests can run many)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    requests: Counter = field(init=False)
    ttft: Histogram = field(init=False)
    tpot: Histogram = field(init=False)
    uncached: Histogram = field(init=False)
    kv_in_flight: Gauge = field(init=False)
    kv_shipped: Counter = field(init=False)
    kv_transfer_seconds: Counter = field(init=False)
    threshold: Gauge = field(init=False)
    planned_threshold: Gauge = field(init=False)
    capacity: Gauge = field(init=False)
    headroom: Gauge = field(init=False)
    link_up: Gauge = field(init=False)
    egress: Gauge = field(init=False)
    instance_up: Gauge = field(init=False)
    backend_failures: Counter = field(init=False)
    config_reloads: Counter = field(init=False)
    _busy: dict[str, tuple[int, float]] = field(default_factory=dict, init=False)
    """Per link: transfers under way and when the current busy period began."""
    _request_counters: dict[tuple[str, str], Counter] = field(default_factory=dict, init=False)
    """``requests`` children by (path, outcome): a label lookup costs more than the increment."""
    _link_counters: dict[str, tuple[Counter, Counter]] = field(default_factory=dict, init=False)
    """``kv_shipped`` and ``kv_transfer_seconds`` children by link, for the same reason."""

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "prfaas_router_requests",
            "Requests by path (local, remote, fallback, none) and "
            "outcome (ok, client_error, error, cancelled).",
            ["path", "outcome"],
            registry=r,
        )
        self.ttft = Histogram(
            "prfaas_router_ttft_seconds",
            "Time to first token as the client sees it.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "prfaas_router_tpot_seconds",
            "Time per output token of streamed answers.",
            buckets=_TPOT_BUCKETS,
            registry=r,
        )
        self.uncached = Histogram(
            "prfaas_router_uncached_tokens",
            "Prompt tokens not in any local prefix cache.",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.kv_in_flight = Gauge(
            "prfaas_router_kv_bytes_in_flight",
            "KV bytes of remote prefills not yet pulled.",
            ["link"],
            registry=r,
        )
        self.kv_shipped = Counter(
            "prfaas_router_kv_bytes",
            "KV bytes of remote prefills that decode pulled (shipped over the link).",
            ["link"],
            registry=r,
        )
        self.kv_transfer_seconds = Counter(
            "prfaas_router_kv_transfer_seconds",
            "Seconds during which at least one KV transfer was under way on the link (from the "
            "remote prefill's answer to decode's first byte); kv_bytes / this = the link's "
            "achieved throughput while busy, which the operator writes to InterDCLink status.",
            ["link"],
            registry=r,
        )
        self.threshold = Gauge(
            "prfaas_router_threshold_tokens",
            "Current offload threshold t (+Inf: no offload).",
            ["link"],
            registry=r,
        )
        self.planned_threshold = Gauge(
            "prfaas_router_planned_threshold_tokens",
            "The plan's offload threshold t (+Inf: the plan offloads nothing over this link); "
            "the live t never drops below it.",
            ["link"],
            registry=r,
        )
        self.capacity = Gauge(
            "prfaas_router_link_capacity_bits_per_second",
            "The link capacity the router steers t by (+Inf: unbounded, 0: down).",
            ["link"],
            registry=r,
        )
        self.headroom = Gauge(
            "prfaas_router_link_headroom_ratio",
            "Fraction of the link capacity KV may fill before t rises.",
            ["link"],
            registry=r,
        )
        self.egress = Gauge(
            "prfaas_router_link_egress_bits_per_second",
            "Estimated KV egress on the link (what t is steered by).",
            ["link"],
            registry=r,
        )
        self.instance_up = Gauge(
            "prfaas_router_instance_up",
            "1 while the engine instance's circuit lets requests through.",
            ["datacenter", "role", "url"],
            registry=r,
        )
        self.link_up = Gauge(
            "prfaas_router_link_up",
            "1 while remote prefill over this link is allowed.",
            ["link"],
            registry=r,
        )
        self.backend_failures = Counter(
            "prfaas_router_backend_failures",
            "Failed engine calls by datacenter and role.",
            ["datacenter", "role"],
            registry=r,
        )
        self.config_reloads = Counter(
            "prfaas_router_config_reloads",
            "Router file reloads by outcome (ok, error).",
            ["outcome"],
            registry=r,
        )

    def request_done(self, path: str, outcome: str) -> None:
        """Count one finished request (``requests{path, outcome}``)."""
        child = self._request_counters.get((path, outcome))
        if child is None:
            child = self._request_counters[path, outcome] = self.requests.labels(path, outcome)
        child.inc()

    def transfer_started(self, link: str, now: float) -> None:
        """A KV transfer on ``link`` began (the remote prefill answered; decode pulls next)."""
        active, since = self._busy.get(link, (0, now))
        self._busy[link] = (active + 1, since if active else now)

    def transfer_ended(self, link: str, now: float, shipped_bytes: float) -> None:
        """That transfer ended; ``shipped_bytes`` (0 when abandoned) crossed the link. Busy
        time is the union of transfer intervals, so concurrent transfers are not counted twice
        and bytes / seconds is the throughput the link achieved, not a per-transfer share."""
        active, since = self._busy.get(link, (0, now))
        if active <= 0:
            return
        children = self._link_counters.get(link)
        if children is None:
            children = self._link_counters[link] = (
                self.kv_shipped.labels(link),
                self.kv_transfer_seconds.labels(link),
            )
        if shipped_bytes > 0:
            children[0].inc(shipped_bytes)
        if active == 1:
            del self._busy[link]
            children[1].inc(max(0.0, now - since))
        else:
            self._busy[link] = (active - 1, since)

    def exposition(self) -> bytes:
        """The text format served at ``/metrics``."""
        return generate_latest(self.registry)
