"""Every router module declares an ``__all__`` that names all its public definitions (ruff's
RUF022 keeps it sorted)."""

from __future__ import annotations

import importlib
import inspect

import pytest

MODULES = [
    "prfaas.engine.router.service",
    "prfaas.engine.router.app",
    "prfaas.engine.router.config",
    "prfaas.engine.router.errors",
    "prfaas.engine.router.fakes",
    "prfaas.engine.router.fastlane",
    "prfaas.engine.router.metrics",
    "prfaas.engine.router.policy",
    "prfaas.engine.router.proxy",
    "prfaas.engine.router.request",
    "prfaas.engine.router.tokenizer",
    "prfaas.engine.router.upstream",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_complete_and_resolvable(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert len(exported) == len(set(exported))
    assert all(hasattr(module, n) for n in exported)
    defined = {
        n
        for n, obj in vars(module).items()
        if not n.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and getattr(obj, "__module__", None) == name
    }
    assert defined <= set(exported), f"public but not in __all__: {defined - set(exported)}"
