"""The router: the OpenAI-compatible HTTP service, request parsing, the two-leg proxy, config,
tokenizer and metrics. It imports the routing core, never kopf or the controller."""

from prfaas.engine.router.config import RouterConfig, load_router_config
from prfaas.engine.router.service import RouterService, run_router

__all__ = ["RouterConfig", "RouterService", "load_router_config", "run_router"]
