"""Python 3.13 stand-in for the 3.14 standard library ``annotationlib`` (probe only).

Annotations are strings in the probe (``shim_sources`` adds
``from __future__ import annotations`` to Home Assistant's modules), so VALUE and
FORWARDREF evaluate each string in the owner's namespace; FORWARDREF falls back to a
``typing.ForwardRef`` when the name does not resolve.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import enum
import inspect
import sys
import typing
from typing import Any


class Format(enum.IntEnum):
    """The annotation formats of PEP 649 / 749."""

    VALUE = 1
    VALUE_WITH_FAKE_GLOBALS = 2
    FORWARDREF = 3
    STRING = 4


ForwardRef = typing.ForwardRef


def _namespace(obj: object) -> dict[str, Any]:
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    namespace = dict(vars(module)) if module else {}
    if isinstance(obj, type):
        namespace.update(vars(obj))
        for type_param in getattr(obj, "__type_params__", ()):
            namespace[type_param.__name__] = type_param
    return namespace


def get_annotations(
    obj: Any,
    *,
    globals: Mapping[str, Any] | None = None,
    locals: Mapping[str, Any] | None = None,
    eval_str: bool = False,
    format: Format = Format.VALUE,
) -> dict[str, Any]:
    """Return the annotations of ``obj`` in the requested format."""
    del eval_str  # strings are always evaluated unless STRING is asked for
    annotations = dict(inspect.get_annotations(obj))
    if format == Format.STRING:
        return {
            key: value if isinstance(value, str) else inspect.formatannotation(value)
            for key, value in annotations.items()
        }
    namespace: dict[str, Any] | None = None
    resolved: dict[str, Any] = {}
    for key, value in annotations.items():
        if isinstance(value, str):
            if namespace is None:
                namespace = _namespace(obj)
                namespace.update(globals or {})
                namespace.update(locals or {})
            try:
                value = eval(value, namespace)  # noqa: S307 - annotation strings
            except Exception:
                if format == Format.VALUE:
                    raise
                value = typing.ForwardRef(value)
        resolved[key] = value
    return resolved


def call_annotate_function(
    annotate: Callable[[Format], Any], format: Format, *, owner: object = None
) -> Any:
    """Call an ``__annotate__`` function."""
    del owner
    return annotate(format)


def get_annotate_from_class_namespace(
    namespace: Mapping[str, Any],
) -> Callable[[Format], Any] | None:
    """Return the ``__annotate__`` function of a class namespace, if any."""
    return namespace.get("__annotate__")
