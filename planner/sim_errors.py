"""The simulator's one exception type.

Tree::

    ValueError
    └── SimulatorError          (bad configuration, trace file or schedule; message says the fix)
"""

from __future__ import annotations

__all__ = ["SimulatorError"]


class SimulatorError(ValueError):
    """A simulation could not be set up or run; the message names the input and the fix."""
