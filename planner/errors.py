"""The planner's exceptions (one base, so callers catch one type).

::

    PlannerError                 anything the planner refuses, with a message saying how to fix it
    ├── CatalogError             an unknown GPU or model name, or an inconsistent architecture
    ├── ProfileError             profile points that cannot be fitted (too few, non-positive)
    └── Infeasible               inputs that admit no plan (raised inside ``plan()`` only)

Infeasible *plans* (a model that fits no GPU, a link of zero bandwidth, an SLO below the unloaded
prefill time) do not escape as exceptions: ``plan()`` catches ``Infeasible`` and returns a
``Plan`` with ``feasible=False`` and the message as ``reason``, so the operator can report it in
``status`` and keep what runs.
"""

from __future__ import annotations

__all__ = ["CatalogError", "Infeasible", "PlannerError", "ProfileError"]


class PlannerError(Exception):
    """Base of every planner error."""


class CatalogError(PlannerError, KeyError):
    """An unknown catalog name or an architecture the planner cannot use."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class ProfileError(PlannerError, ValueError):
    """Profile points that cannot produce a latency model."""


class Infeasible(PlannerError):
    """The inputs admit no plan; the message says which input and how to fix it."""
