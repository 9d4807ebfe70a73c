"""The routing core: the one decision the router and the simulator both make (threshold
controller, prefix-cache affinity, instance choice, KV bytes, egress estimate)."""

from prfaas.planner.routing.core import (
    EgressMeter,
    PrefixCache,
    Route,
    ThresholdController,
    block_hashes,
    choose_route,
)

__all__ = [
    "EgressMeter",
    "PrefixCache",
    "Route",
    "ThresholdController",
    "block_hashes",
    "choose_route",
]
