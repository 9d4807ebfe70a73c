"""The engine-only compatibility shim (``sitecustomize.py`` in this folder).

Engine processes get this folder on ``PYTHONPATH`` (``EngineLaunch.pythonpath``); nothing else
imports the shim. See ``sitecustomize.py`` for what it patches and why.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SHIM_DIR", "SHIM_LOG_PREFIX"]

SHIM_DIR = Path(__file__).resolve().parent
"""Put this on an engine's ``PYTHONPATH`` to load the shim."""

SHIM_LOG_PREFIX = "prfaas-compat: "
"""Every line the shim writes to stderr starts with this."""
