"""The import rules of DESIGN.md ("Who may import whom"), checked on the
source: a change that needs an arrow the other way needs an interface."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "mailslot"

# package → mailslot packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "wire": set(),
    "config": set(),
    "logfmt": set(),
    "proxyproto": set(),
    "pop3": {"wire"},
    "sasl": set(),
    "store": {"wire"},
    "auth": {"sasl"},
    "delivery": {"wire"},
}


def mailslot_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "mailslot" and len(parts) > 1:
                found.add(parts[1])
    return found


def package_of(path: Path) -> str:
    relative = path.relative_to(SRC)
    return relative.parts[0].removesuffix(".py")


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_follow_the_layers(path: Path) -> None:
    package = package_of(path)
    if package not in ALLOWED:
        return  # server/, cli.py, __main__.py wire everything together
    forbidden = mailslot_imports(path) - ALLOWED[package] - {package}
    assert not forbidden, f"{path.relative_to(SRC)} imports {sorted(forbidden)}"


def test_the_layer_table_covers_the_packages() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages - set(ALLOWED) == {"server"}
