"""The engine stays pure: no module under engine/ imports Home Assistant."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE_DIR = Path(__file__).parent.parent / "custom_components" / "v2g" / "engine"
FORBIDDEN_ROOTS = {"homeassistant", "paho", "aiohttp", "socket", "requests"}


def forbidden_imports(source: str) -> list[str]:
    """Return the forbidden top-level modules that `source` imports."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found.extend(n for n in names if n.split(".")[0] in FORBIDDEN_ROOTS)
    return found


def test_checker_catches_homeassistant_imports() -> None:
    assert forbidden_imports("import homeassistant.core") == ["homeassistant.core"]
    assert forbidden_imports("from homeassistant.components import mqtt") == [
        "homeassistant.components"
    ]
    assert forbidden_imports("from .models import Vehicle") == []


def test_engine_does_not_import_homeassistant() -> None:
    modules = sorted(ENGINE_DIR.rglob("*.py"))
    assert modules, "engine package is missing"
    offenders = {
        str(path.relative_to(ENGINE_DIR)): bad
        for path in modules
        if (bad := forbidden_imports(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}
