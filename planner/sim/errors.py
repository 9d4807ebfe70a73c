"""The simulator's one exception type, under the planner's base.

Tree::

    PlannerError
    └── SimulatorError          (bad configuration, trace file or schedule; message says the fix)
"""

from __future__ import annotations

from prfaas.planner.errors import PlannerError

__all__ = ["SimulatorError"]


class SimulatorError(PlannerError, ValueError):
    """A simulation could not be set up or run; the message names the input and the fix."""
