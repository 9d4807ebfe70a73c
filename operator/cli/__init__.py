"""The ``prfaas`` command line: one module per sub-command, on top of every other component.
Sub-commands import what they need when they run, so ``prfaas router`` loads no planner,
simulator or Kubernetes client."""

from prfaas.operator.cli.app import app, main

__all__ = ["app", "main"]
