"""The controller: kopf handlers (thin), reconcile, pure builders, apply, per-cluster clients,
status conditions, settings and the operator's metrics."""

__all__: list[str] = []
