"""Pure planning library: catalog, latency models, PrfaaS throughput model, DistServe
parallelism search, topology, simulator and ``plan()``. Imports numpy/networkx only."""

from prfaas.planner.plan import Plan

__all__ = ["Plan"]
