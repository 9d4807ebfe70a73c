"""The control plane: CR models and CRDs, kopf handlers, builders, clients and the CLI."""

__all__: list[str] = []
