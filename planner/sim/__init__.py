"""The discrete-event simulator: arrivals, links, prefill/decode pools, metrics, scenarios from a
``Plan``, and goodput (DistServe §2.1). Routing decisions come from
:mod:`prfaas.planner.routing`."""

from prfaas.planner.sim.errors import SimulatorError
from prfaas.planner.sim.metrics import SimResult
from prfaas.planner.sim.simulator import SimConfig, simulate

__all__ = ["SimConfig", "SimResult", "SimulatorError", "simulate"]
