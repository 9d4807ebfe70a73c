"""The controller: kopf handlers (thin), reconcile in phases, pure builders, apply, per-cluster
clients, status conditions and settings. It runs only in the operator's image (kopf,
kubernetes)."""

from prfaas.operator.controller.builders import PlanInputs, build_children
from prfaas.operator.controller.reconcile import Reconciler
from prfaas.operator.controller.runtime import run_operator
from prfaas.operator.controller.settings import OperatorSettings

__all__ = ["OperatorSettings", "PlanInputs", "Reconciler", "build_children", "run_operator"]
