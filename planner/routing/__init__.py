"""The routing core: the one decision the router and the simulator both make.

``prefix`` (block chains, LRU prefix caches), ``threshold`` (the threshold controller, the egress
meter and every routing default), ``policy`` (the decision: path, instances, KV bytes, egress
estimate and dispatch bookkeeping). Pure: the standard library and numpy only.
"""

from prfaas.planner.routing.policy import (
    Decision,
    Link,
    Route,
    RoutingCore,
    Target,
    choose_route,
)
from prfaas.planner.routing.prefix import PrefixCache, block_hashes
from prfaas.planner.routing.threshold import (
    DEFAULTS,
    EgressMeter,
    RoutingDefaults,
    ThresholdController,
)

__all__ = [
    "DEFAULTS",
    "Decision",
    "EgressMeter",
    "Link",
    "PrefixCache",
    "Route",
    "RoutingCore",
    "RoutingDefaults",
    "Target",
    "ThresholdController",
    "block_hashes",
    "choose_route",
]
