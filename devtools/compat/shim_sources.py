"""Probe only: rewrite a 3.14 Home Assistant's sources so that they import on 3.13.

Usage: ``python shim_sources.py SITE_PACKAGES`` (with the probe venv's Python).

1. PEP 758 ``except A, B:`` becomes ``except (A, B):``.
2. ``from __future__ import annotations`` in every module (no PEP 649 on 3.13).
3. The recorder's executor uses 3.14 ``ThreadPoolExecutor`` internals.
4. The test plugin's ``common.py`` imports a logger helper that HA 2026.11 dropped.
5. The ``hass`` command refuses to start below its required Python (the end-to-end
   tests start real ``hass`` processes).
6. A compile check of the result: what still does not compile on this Python.

Each step is idempotent and leaves a file untouched when its pattern is absent.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path
import re
import sys

SHIMMED_PACKAGES = ("homeassistant", "hass_nabucasa")
FUTURE_PACKAGES = (*SHIMMED_PACKAGES, "pytest_homeassistant_custom_component")
_PEP758 = re.compile(
    r"^(?P<head>[ \t]*except\*?[ \t]+)(?!\()"
    r"(?P<types>[^:#\n()]+?,[^:#\n()]+?)(?P<tail>[ \t]*:)",
    re.MULTILINE,
)
_RECORDER_OLD = """        additional_args = (
            self._create_worker_context(),
            self._work_queue,
        )"""
_RECORDER_NEW = """        if hasattr(self, "_create_worker_context"):
            additional_args = (self._create_worker_context(), self._work_queue)
        else:  # compat probe: Python 3.13 _worker(ref, work_queue, initializer, initargs)
            additional_args = (self._work_queue, self._initializer, self._initargs)"""
_PHCC_OLD = "    SERVICE_SET_LEVEL,\n    _clear_logger_overwrites,\n)"
_PHCC_NEW = """    SERVICE_SET_LEVEL,
)
try:
    from homeassistant.components.logger import _clear_logger_overwrites
except ImportError:  # compat probe: gone in HA 2026.11
    def _clear_logger_overwrites(hass): pass"""
_MAIN_OLD = "    if sys.version_info[:3] < REQUIRED_PYTHON_VER:"
_MAIN_NEW = "    if sys.version_info[:3] < (3, 13, 2):  # compat probe: runs on 3.13"


def parenthesize_except_clauses(root: Path) -> int:
    """Rewrite unparenthesized multi-type ``except`` clauses; return how many."""
    total = 0
    for path in root.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        fixed, count = _PEP758.subn(
            lambda m: f"{m['head']}({m['types']}){m['tail']}", source
        )
        if count:
            path.write_text(fixed, encoding="utf-8")
            total += count
    return total


def _future_import_line(tree: ast.Module) -> int | None:
    """Where to insert the future import (0-based line), None if it is there."""
    insert_at = 0
    for index, node in enumerate(tree.body):
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            if any(alias.name == "annotations" for alias in node.names):
                return None
            insert_at = node.end_lineno or insert_at
        elif (
            index == 0
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            insert_at = node.end_lineno or insert_at
        else:
            if index == 0:
                decorators = getattr(node, "decorator_list", None) or [node]
                insert_at = min(item.lineno for item in decorators) - 1
            break
    return insert_at


def add_future_annotations(root: Path) -> int:
    """Add ``from __future__ import annotations`` where missing; return how many."""
    count = 0
    for path in root.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        try:
            tree = ast.parse(source)
        except SyntaxError as err:
            print(f"skip (syntax) {path}: {err}")
            continue
        insert_at = _future_import_line(tree)
        if insert_at is None:
            continue
        lines = source.splitlines(keepends=True)
        lines.insert(insert_at, "from __future__ import annotations\n")
        path.write_text("".join(lines), encoding="utf-8")
        count += 1
    return count


def replace_once(path: Path, old: str, new: str) -> bool:
    """Replace ``old`` by ``new`` in ``path``; False when ``old`` is absent."""
    if not path.exists():
        return False
    source = path.read_text(encoding="utf-8")
    if old not in source:
        return False
    path.write_text(source.replace(old, new), encoding="utf-8")
    return True


def uncompilable(root: Path) -> Counter[str]:
    """Count the SyntaxErrors (by message) of the modules under ``root``."""
    errors: Counter[str] = Counter()
    for path in root.rglob("*.py"):
        try:
            compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
        except SyntaxError as err:
            errors[f"{err.msg} (e.g. {path.relative_to(root)}:{err.lineno})"] += 1
    return errors


def main(site_packages: Path) -> int:
    """Apply every shim to ``site_packages``; non-zero when something stays broken."""
    present = [site_packages / name for name in FUTURE_PACKAGES]
    present = [path for path in present if path.is_dir()]
    rewritten = sum(
        parenthesize_except_clauses(path)
        for path in present
        if path.name in SHIMMED_PACKAGES
    )
    print(f"shim 1: {rewritten} 'except A, B:' clauses parenthesized")
    futures = sum(add_future_annotations(path) for path in present)
    print(f"shim 2: future annotations added to {futures} modules")
    recorder = site_packages / "homeassistant/components/recorder/executor.py"
    print(
        "shim 3: recorder executor",
        "patched" if replace_once(recorder, _RECORDER_OLD, _RECORDER_NEW) else "as is",
    )
    common = site_packages / "pytest_homeassistant_custom_component/common.py"
    print(
        "shim 4: test plugin logger import",
        "patched" if replace_once(common, _PHCC_OLD, _PHCC_NEW) else "as is",
    )
    main = site_packages / "homeassistant/__main__.py"
    print(
        "shim 5: hass Python version check",
        "patched" if replace_once(main, _MAIN_OLD, _MAIN_NEW) else "as is",
    )
    errors = uncompilable(site_packages / "homeassistant")
    for message, count in errors.most_common(5):
        print(f"still not compiling: {count} x {message}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
