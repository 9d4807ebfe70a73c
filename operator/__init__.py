"""The control plane: ``api`` (the custom resources, CRDs, manifests, translation into planner
inputs), ``autoscaling``, ``controller`` (kopf, reconcile, builders, apply) and ``cli``. Import
the subpackage you need; this package imports none of them, so the router's image can run the
CLI without kopf or kubernetes."""

__all__: list[str] = []
