"""Inter-datacenter links in the simulator: RTT plus a capacity fair-shared among transfers.

A link is a processor-sharing server: while ``n`` transfers are active each one moves at
``capacity / n``. Instead of updating every transfer at every change, the link keeps one
*virtual service* counter ``V`` (bytes each active transfer has received so far) and a heap of
finish marks ``V_join + size``; a change of membership or capacity only advances ``V`` and
recomputes the head's finish time, so each transfer costs O(log n) however long it lasts.

Capacity may follow a schedule (e.g. 100 → 20 → 100 Gbps); at capacity 0 transfers stall.
Egress over time is recorded as a step function (the link is work-conserving: it sends at full
capacity whenever a transfer is active), so the record costs one pair per busy/idle switch or
capacity change, not one per byte or tick.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from prfaas.planner.sim.errors import SimulatorError

__all__ = ["CapacitySchedule", "LinkSpec", "SharedLink", "parse_schedule"]

CapacitySchedule = tuple[tuple[float, float], ...]
"""``((time_s, gbps), ...)``: from ``time_s`` on the link carries ``gbps``."""


def parse_schedule(text: str) -> CapacitySchedule:
    """Parse ``"0:100,60:20,120:100"`` (seconds:Gbps pairs) into a sorted schedule."""
    out: list[tuple[float, float]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            when, gbps = (float(x) for x in part.split(":"))
        except ValueError as exc:
            raise SimulatorError(
                f"bandwidth schedule entry {part!r} is not SECONDS:GBPS; "
                'write e.g. "0:100,60:20,120:100"'
            ) from exc
        if when < 0 or gbps < 0 or not (math.isfinite(when) and math.isfinite(gbps)):
            raise SimulatorError(f"bandwidth schedule entry {part!r} must be two numbers >= 0")
        out.append((when, gbps))
    if not out:
        raise SimulatorError(f"bandwidth schedule {text!r} is empty; write e.g. '0:100,60:20'")
    return tuple(sorted(out))


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """A directed link carrying KV from ``from_dc`` (prefill) to ``to_dc`` (decode)."""

    name: str
    from_dc: str
    to_dc: str
    capacity_gbps: float
    rtt_s: float = 0.0
    """A transfer starts moving bytes one RTT after it is requested (the pull handshake)."""
    schedule: CapacitySchedule = ()
    """Capacity changes over time; empty: ``capacity_gbps`` throughout."""

    def __post_init__(self) -> None:
        if self.capacity_gbps < 0 or self.rtt_s < 0:
            raise SimulatorError(
                f"link {self.name!r}: capacity_gbps and rtt_s must be >= 0, got "
                f"{self.capacity_gbps} and {self.rtt_s}"
            )

    def capacity_at(self, when: float) -> float:
        """Capacity in Gbit/s at time ``when`` (seconds)."""
        gbps = self.capacity_gbps
        for t, g in self.schedule:
            if t <= when:
                gbps = g
        return gbps


@dataclass(slots=True)
class SharedLink:
    """Processor-sharing state of one link (bytes, seconds); driven by the simulator's clock."""

    spec: LinkSpec
    capacity_Bps: float = 0.0
    _virtual: float = 0.0
    _last: float = 0.0
    _flows: list[tuple[float, int]] = field(default_factory=list)
    delivered_bytes: float = 0.0
    version: int = 0
    """Bumped at every change; a completion event carrying an older version is stale."""
    _series_t: array = field(default_factory=lambda: array("d"))
    _series_bps: array = field(default_factory=lambda: array("d"))

    def __post_init__(self) -> None:
        self.capacity_Bps = self.spec.capacity_at(0.0) * 1e9 / 8.0
        self._record(0.0)

    @property
    def active(self) -> int:
        return len(self._flows)

    @property
    def capacity_bps(self) -> float:
        return self.capacity_Bps * 8.0

    def _advance(self, now: float) -> None:
        n = len(self._flows)
        if n and self.capacity_Bps > 0.0 and now > self._last:
            sent = (now - self._last) * self.capacity_Bps
            self._virtual += sent / n
            self.delivered_bytes += sent
        self._last = now

    def _record(self, now: float) -> None:
        rate = self.capacity_Bps * 8.0 if self._flows else 0.0
        series = self._series_bps
        if series and series[-1] == rate:
            return
        if self._series_t and self._series_t[-1] == now:
            series[-1] = rate
        else:
            self._series_t.append(now)
            series.append(rate)

    def add(self, now: float, flow: int, nbytes: float) -> None:
        """Start moving ``nbytes`` for ``flow`` (an integer id) at ``now``."""
        self._advance(now)
        heapq.heappush(self._flows, (self._virtual + nbytes, flow))
        self.version += 1
        self._record(now)

    def set_capacity(self, now: float, gbps: float) -> None:
        self._advance(now)
        self.capacity_Bps = gbps * 1e9 / 8.0
        self.version += 1
        self._record(now)

    def next_completion(self) -> float:
        """When the transfer closest to done finishes if nothing changes (``inf``: never)."""
        if not self._flows or self.capacity_Bps <= 0.0:
            return math.inf
        remaining = self._flows[0][0] - self._virtual
        return self._last + max(remaining, 0.0) * len(self._flows) / self.capacity_Bps

    def finish(self, now: float) -> list[int]:
        """Advance to ``now`` (a completion time) and return the flows that are done."""
        self._advance(now)
        flows = self._flows
        # The event was computed for the head flow: absorb floating-point shortfall.
        if flows and flows[0][0] > self._virtual:
            self._virtual = flows[0][0]
        limit = self._virtual * (1.0 + 1e-12) + 1e-6
        done: list[int] = []
        while flows and flows[0][0] <= limit:
            done.append(heapq.heappop(flows)[1])
        self.version += 1
        self._record(now)
        return done

    def egress_series(self) -> tuple[Sequence[float], Sequence[float]]:
        """Step function of egress: at ``t[i]`` the link starts sending ``bps[i]`` bit/s."""
        return self._series_t, self._series_bps
