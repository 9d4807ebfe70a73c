"""The README's layout table matches the tree: every package folder has a row (or is named in
its parent's row), and every module of a package is named in that package's row."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PACKAGE_DIRS: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
README = (ROOT / "README.md").read_text(encoding="utf-8")
ROWS = {
    m.group(1): m.group(0)
    for m in re.finditer(r"^\| `([^`]+)` \|.*$", README, flags=re.MULTILINE)
}


def _folder(package: str) -> Path:
    owner = max((p for p in PACKAGE_DIRS if package == p or package.startswith(p + ".")), key=len)
    rest = package[len(owner) :].lstrip(".").split(".") if package != owner else []
    return ROOT / PACKAGE_DIRS[owner] / Path(*rest) if rest else ROOT / PACKAGE_DIRS[owner]


PACKAGES = sorted(PYPROJECT["tool"]["setuptools"]["packages"])


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_is_named_in_its_row(package: str) -> None:
    folder = _folder(package)
    rel = folder.relative_to(ROOT).as_posix() + "/"
    row = ROWS.get(rel)
    if row is None:
        parent = ROWS.get(folder.parent.relative_to(ROOT).as_posix() + "/", "")
        if f"`{folder.name}/`" in parent:
            return  # a helper folder named in its parent's row (vllm's compat/)
        # A namespace of subpackages without its own row: each module gets a row of its own.
        for module in sorted(folder.glob("*.py")):
            if module.stem in ("__init__", "__main__"):
                continue
            assert module.relative_to(ROOT).as_posix() in ROWS, f"README: no row for {module}"
        return
    missing = [
        m.name
        for m in sorted(folder.glob("*.py"))
        if m.stem not in ("__init__", "__main__")
        and f"`{m.stem}`" not in row
        and f"`{m.name}`" not in row
        and f"`{m.stem}/" not in row
    ]
    assert missing == [], f"README layout row {rel} does not name {missing}"


def test_every_row_names_something_that_exists() -> None:
    for path in ROWS:
        if "/" in path and not path.startswith("."):
            assert (ROOT / path).exists(), f"README layout names {path}, which does not exist"
