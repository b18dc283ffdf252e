"""docs/security.md stays true: every module and test it names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"
TRUST = ROOT / "tests" / "trust"


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_the_readme_links_the_threat_model() -> None:
    assert "docs/security.md" in (ROOT / "README.md").read_text()


def test_every_named_module_exists() -> None:
    text = DOC.read_text()
    modules = set(re.findall(r"`((?:api|cas|meta|cli|fuse|lfs)/[a-z_]+\.py|[a-z_]+\.py)`", text))
    assert len(modules) > 15
    for m in modules:
        if m.startswith("test_") or m == "forge.py":
            continue
        assert (ROOT / "datamon" / m).is_file(), f"docs/security.md names datamon/{m}, which does not exist"


def test_every_named_test_exists() -> None:
    text = DOC.read_text()
    files = set(re.findall(r"`(test_[a-z_]+\.py)", text))
    assert len(files) >= 10
    for f in files:
        assert (TRUST / f).is_file(), f"docs/security.md names tests/trust/{f}, which does not exist"
    # `file.py::test_a`, `::test_b` (a bare `::` continues the last file named in that cell)
    checked = 0
    for cell in re.split(r"\|", text):
        current: Path | None = None
        for m in re.finditer(r"`(test_[a-z_]+\.py)?::(test_[a-z0-9_*]+)`|`(test_[a-z_]+\.py)`", cell):
            if m.group(3):
                current = TRUST / m.group(3)
                continue
            if m.group(1):
                current = TRUST / m.group(1)
            assert current is not None, f"{m.group(0)} follows no file name"
            name = m.group(2)
            names = _test_names(current)
            if name.endswith("*"):
                assert any(n.startswith(name[:-1]) for n in names), f"{current.name}::{name}"
            else:
                assert name in names, f"docs/security.md names {current.name}::{name}, which does not exist"
            checked += 1
    assert checked >= 20
