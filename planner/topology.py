"""Cross-datacenter topology: where offloaded KV can flow, and how much.

A directed ``networkx`` graph: one node per datacenter, one per prefill and decode cluster, and
one per inter-DC link (so parallel links stay distinct). A prefill cluster feeds its datacenter,
a datacenter reaches its decode clusters for free (intra-DC RDMA), and a link carries
``headroom × bandwidth`` from its ``from`` datacenter to its ``to`` datacenter (transit through a
third datacenter is allowed). Flows are in offloaded requests per second; a request ships
``S_kv(l_long)`` bytes, so a link's capacity is ``headroom · B / S_kv(l_long)`` req/s.

``max_offload`` answers "how much offload can be served" (max-flow, called for every threshold
the optimiser tries); ``assign`` routes the final flow at minimum cost (round-trip time) with
``max_flow_min_cost`` and reports egress per link.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
from networkx.algorithms.flow import build_residual_network, preflow_push
from prfaas.planner.problem import ClusterInput, LinkInput

__all__ = ["Assignment", "Network", "build_network"]

_SOURCE = ("source", "")
_SINK = ("sink", "")
_UNITS = 1e6
"""Integer flow units per req/s for the min-cost flow (network simplex needs integers)."""
_BIG = 1e15
"""Stands for an unbounded capacity in the reused residual network (all real ones are ≪)."""


@dataclass(frozen=True, slots=True)
class Assignment:
    """The routed offload: per decode cluster, per link, per (decode, prefill) pair (req/s)."""

    served: dict[str, float]
    link_rps: dict[str, float]
    pairs: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    """``(decode, prefill)`` → names of the links on the path (empty: same datacenter)."""
    pair_rps: dict[tuple[str, str], float] = field(default_factory=dict)


@dataclass
class Network:
    graph: nx.DiGraph
    links: dict[str, LinkInput]
    prefill: list[str]
    decode: list[str]
    headroom: float
    _residual: nx.DiGraph | None = None
    _shape: nx.DiGraph | None = None
    _ids: dict[tuple[str, str], int] = field(default_factory=dict)

    def _id(self, node: tuple[str, str]) -> int:
        """Flow algorithms run on integer nodes: their set iteration order, hence which of
        several maximum flows they return, must not depend on string hash randomisation."""
        if not self._ids:
            self._ids = {n: i for i, n in enumerate(self.graph.nodes)}
        return self._ids[node]

    def _residual_network(self) -> tuple[nx.DiGraph, nx.DiGraph]:
        """The residual network, built once; ``max_offload`` only rewrites its capacities."""
        if self._residual is None or self._shape is None:
            # networkx leaves zero-capacity edges out of a residual network: build it from a
            # copy whose edges all have capacity, then every query writes the real ones.
            shape = nx.DiGraph()
            shape.add_nodes_from(self._id(n) for n in self.graph.nodes)
            shape.add_edges_from(
                (self._id(u), self._id(v), {"capacity": 1.0}) for u, v in self.graph.edges
            )
            r = build_residual_network(shape, "capacity")
            r.graph["inf"] = _BIG
            self._residual, self._shape = r, shape
        return self._residual, self._shape

    def _set(
        self,
        prefill_rps: Mapping[str, float],
        demand_rps: Mapping[str, float],
        bytes_per_request: float,
    ) -> None:
        g = self.graph
        for name in self.prefill:
            g[_SOURCE][("p", name)]["capacity"] = max(prefill_rps.get(name, 0.0), 0.0)
        for name in self.decode:
            g[("d", name)][_SINK]["capacity"] = max(demand_rps.get(name, 0.0), 0.0)
        for name, link in self.links.items():
            bps = self.headroom * link.bandwidth_gbps * 1e9 / 8.0
            g[("dc", link.from_)][("l", name)]["capacity"] = (
                bps / bytes_per_request if bytes_per_request > 0 else math.inf
            )

    def max_offload(
        self,
        prefill_rps: Mapping[str, float],
        demand_rps: Mapping[str, float],
        bytes_per_request: float,
    ) -> dict[str, float]:
        """Offloaded req/s each decode cluster can get (a maximum flow)."""
        if not self.prefill or not self.decode:
            return dict.fromkeys(self.decode, 0.0)
        self._set(prefill_rps, demand_rps, bytes_per_request)
        finite = {k: v for k, v in demand_rps.items() if math.isfinite(v)}
        if len(finite) != len(demand_rps):  # an unbounded demand: cap by total supply
            supply = sum(prefill_rps.values())
            for name in self.decode:
                cap = self.graph[("d", name)][_SINK]["capacity"]
                self.graph[("d", name)][_SINK]["capacity"] = min(cap, supply)
        r, shape = self._residual_network()
        ids = self._id
        for u, v, data in self.graph.edges(data=True):
            cap = data.get("capacity", math.inf)
            r[ids(u)][ids(v)]["capacity"] = min(cap, _BIG)
        # Phase one of preflow-push already fixes the flow on edges into the sink.
        preflow_push(shape, ids(_SOURCE), ids(_SINK), residual=r, value_only=True)
        sink = ids(_SINK)
        return {name: max(r[ids(("d", name))][sink]["flow"], 0.0) for name in self.decode}

    def assign(
        self,
        prefill_rps: Mapping[str, float],
        served_rps: Mapping[str, float],
        bytes_per_request: float,
    ) -> Assignment:
        """Route ``served_rps`` at minimum total RTT within every capacity."""
        self._set(prefill_rps, served_rps, bytes_per_request)
        g = nx.DiGraph()
        g.add_nodes_from(self._id(n) for n in self.graph.nodes)
        for u, v, data in self.graph.edges(data=True):
            cap = data.get("capacity", math.inf)
            attrs: dict[str, int] = {"weight": int(data.get("weight", 0))}
            if math.isfinite(cap):
                attrs["capacity"] = math.floor(cap * _UNITS)
            g.add_edge(self._id(u), self._id(v), **attrs)
        label = {i: n for n, i in self._ids.items()}
        by_id = nx.max_flow_min_cost(g, self._id(_SOURCE), self._id(_SINK))
        flow = {label[u]: {label[v]: f for v, f in vs.items()} for u, vs in by_id.items()}
        served = {name: flow[("d", name)][_SINK] / _UNITS for name in self.decode}
        link_rps = {
            name: flow[("l", name)][("dc", lk.to)] / _UNITS for name, lk in self.links.items()
        }
        pairs, pair_rps = _decompose(flow, self.links)
        return Assignment(served, link_rps, pairs, pair_rps)


def _decompose(
    flow: dict, links: Mapping[str, LinkInput]
) -> tuple[dict[tuple[str, str], list[str]], dict[tuple[str, str], float]]:
    """Split a flow into source→sink paths: which prefill cluster serves which decode cluster."""
    rest = {u: {v: f for v, f in vs.items() if f > 0} for u, vs in flow.items()}
    pairs: dict[tuple[str, str], list[str]] = {}
    pair_rps: dict[tuple[str, str], float] = {}
    while rest.get(_SOURCE):
        path = [_SOURCE]
        seen = {_SOURCE}
        while path[-1] != _SINK:
            nxt = next(iter(rest.get(path[-1], {})), None)
            if nxt is None or nxt in seen:
                break
            path.append(nxt)
            seen.add(nxt)
        if path[-1] != _SINK:
            rest[path[0]].pop(path[1], None)
            continue
        amount = min(rest[u][v] for u, v in itertools.pairwise(path))
        for u, v in itertools.pairwise(path):
            rest[u][v] -= amount
            if rest[u][v] <= 0:
                del rest[u][v]
        pre = next(n[1] for n in path if n[0] == "p")
        dec = next(n[1] for n in path if n[0] == "d")
        pairs[(dec, pre)] = [n[1] for n in path if n[0] == "l"]
        pair_rps[(dec, pre)] = pair_rps.get((dec, pre), 0.0) + amount / _UNITS
    return pairs, pair_rps


def build_network(
    clusters: Sequence[ClusterInput], links: Sequence[LinkInput], headroom: float
) -> Network:
    """The topology graph of these clusters and links (capacities are set per query)."""
    g = nx.DiGraph()
    g.add_node(_SOURCE)
    g.add_node(_SINK)
    prefill, decode = [], []
    for c in clusters:
        if c.kind == "prefill":
            g.add_edge(_SOURCE, ("p", c.name), capacity=0.0, weight=0)
            g.add_edge(("p", c.name), ("dc", c.datacenter), weight=0)
            prefill.append(c.name)
        else:
            g.add_edge(("dc", c.datacenter), ("d", c.name), weight=0)
            g.add_edge(("d", c.name), _SINK, capacity=0.0, weight=0)
            decode.append(c.name)
    for link in links:
        weight = 1 + round(link.rtt_ms * 1000)
        g.add_edge(("dc", link.from_), ("l", link.name), capacity=0.0, weight=weight)
        g.add_edge(("l", link.name), ("dc", link.to), weight=0)
    return Network(g, {link.name: link for link in links}, prefill, decode, headroom)
