"""Every prfaas module imports cleanly and declares an ``__all__`` whose names exist."""

from __future__ import annotations

import ast
import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PACKAGE_DIRS: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
PACKAGES: list[str] = PYPROJECT["tool"]["setuptools"]["packages"]
# Modules that act when imported (run the CLI, install an import hook): checked without import.
ACT_ON_IMPORT = {"__main__", "sitecustomize"}


def _modules() -> list[tuple[str, Path]]:
    """(dotted name, file) for every module under the folders pyproject maps into ``prfaas``."""
    found: dict[str, Path] = {}
    for package, folder in PACKAGE_DIRS.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            if rel.parts[0] in {"docker"}:
                continue
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            # A folder mapped to its own package is listed under that package's name.
            owner = max((p for p in PACKAGE_DIRS if name.startswith(p)), key=len)
            if owner == package:
                found[name] = path
    return sorted(found.items())


MODULES = _modules()


def _static_all(path: Path) -> tuple[list[str] | None, set[str]]:
    """``__all__`` and the top-level names of a module, read without importing it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    exported: list[str] | None = None
    defined: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    defined.add(target.id)
                    if target.id == "__all__" and node.value is not None:
                        exported = list(ast.literal_eval(node.value))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
    return exported, defined


def test_modules_were_found() -> None:
    names = {name for name, _ in MODULES}
    assert {"prfaas", "prfaas.operator.api.models", "prfaas.planner.plan"} <= names


def test_every_package_folder_is_listed_in_pyproject() -> None:
    """A sub-package missing from ``[tool.setuptools] packages`` is left out of a wheel."""
    packages = {name for name, path in MODULES if path.name == "__init__.py"}
    assert packages <= set(PACKAGES), sorted(packages - set(PACKAGES))


@pytest.mark.parametrize(("name", "path"), MODULES, ids=[name for name, _ in MODULES])
def test_module_declares_all_and_its_names_exist(name: str, path: Path) -> None:
    if name.rsplit(".", 1)[-1] in ACT_ON_IMPORT:
        exported, defined = _static_all(path)
        if name.endswith("__main__"):
            return  # `python -m prfaas` entry: runs code, exports nothing
        assert exported is not None, f"{name} has no __all__"
        assert sorted(set(exported) - defined) == []
        return
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert all(isinstance(n, str) for n in exported)
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    missing = [n for n in exported if not hasattr(module, n)]
    assert missing == [], f"{name}.__all__ names what it does not define"


@pytest.mark.parametrize("short", ["api.models", "api.crds", "api.manifests"])
def test_operator_foundation_modules_export_what_they_define(short: str) -> None:
    """Public (non-underscore) classes and functions defined in these modules are exported."""
    module = importlib.import_module(f"prfaas.operator.{short}")
    public = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and getattr(v, "__module__", None) == module.__name__
        and callable(v)
    }
    assert sorted(public - set(module.__all__)) == []
