"""prfaas: cross-datacenter Prefill-as-a-Service for LLM serving on Kubernetes.

The distribution maps three folders into this namespace:
``planner/`` → :mod:`prfaas.planner`, ``operator/`` → :mod:`prfaas.operator`,
``engine_images/`` → :mod:`prfaas.engine`.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
