"""Pure planning library: ``plan.py`` (the Plan JSON contract), ``solver.plan()``, the
throughput model, multi-cluster thresholds, topology, the parallelism search, and the
``latency``, ``sim`` and ``routing`` subpackages. Nothing here knows Kubernetes or HTTP.

Only ``Plan`` is imported here: the router reads the Plan contract and the routing core, and
must not load the solver's scipy and networkx."""

from prfaas.planner.plan import Plan

__all__ = ["Plan"]
