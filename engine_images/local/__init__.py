"""The local runtime behind ``prfaas up``: engine and router processes, network namespaces and
the ``tc``-shaped link between two emulated datacenters."""

from prfaas.engine.local.runtime import LocalRuntime, build_layout

__all__ = ["LocalRuntime", "build_layout"]
