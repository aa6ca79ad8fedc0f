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


# --- the import graph of the integration --------------------------------------------

PACKAGE_DIR = ENGINE_DIR.parent
# Imports point one way: engine <- const <- adapters <- coordinator <- platforms.
# A module may import modules of its own rank or below, never above.
RANKS: dict[str, int] = {"const": 1, "coordinator": 3}
PLATFORMS_AND_GLUE = {
    "__init__",
    "binary_sensor",
    "config_flow",
    "diagnostics",
    "entity",
    "event",
    "logbook",
    "options_flow",
    "sensor",
    "services",
    "vehicle_flow",
    "webhook",
}
MAX_MODULE_LINES = 400  # Home Assistant modules (engine/dispatch.py: 600)
MAX_CLASS_LINES = 300


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE_DIR).with_suffix("")
    return ".".join(relative.parts)


def _rank(module: str) -> int:
    if module.startswith("engine"):
        return 0
    if module in PLATFORMS_AND_GLUE:
        return 4
    return RANKS.get(module, 2)


def _local_imports(path: Path) -> set[str]:
    """The package modules a module imports (also under TYPE_CHECKING)."""
    package = _module_name(path).split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        base = package[: len(package) - (node.level - 1)]
        target = [*base, *(node.module.split(".") if node.module else [])]
        for alias in node.names:
            candidate = ".".join([*target, alias.name])
            if (PACKAGE_DIR / Path(*candidate.split("."))).with_suffix(".py").exists():
                found.add(candidate)
            elif target:
                found.add(".".join(target))
    return {name.removesuffix(".__init__") or "__init__" for name in found}


def _import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        name = _module_name(path)
        if name == "engine.__init__":
            name = "engine"
        graph[name] = {m for m in _local_imports(path) if m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle once (depth-first search, back edges)."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_integration_has_no_import_cycle() -> None:
    graph = _import_graph()
    assert "coordinator" in graph["sensor"]  # the graph is read at all
    assert _cycles(graph) == []


def test_imports_point_from_platforms_to_the_engine() -> None:
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in _import_graph().items()
        for target in targets
        if _rank(target) > _rank(module)
    )
    assert upward == []


def test_modules_and_classes_stay_small() -> None:
    too_big: list[str] = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        name = _module_name(path)
        limit = 600 if name == "engine.dispatch" else MAX_MODULE_LINES
        if not name.startswith("engine") or name == "engine.dispatch":
            lines = len(source.splitlines())
            if lines > limit:
                too_big.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    too_big.append(f"{name}.{node.name}: {size} lines")
    assert too_big == []
