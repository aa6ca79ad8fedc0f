"""Probe only: make a 3.14 Home Assistant start on Python 3.13.

- ``inspect.signature(annotation_format=...)`` is 3.14 API: accept and drop it.
- Home Assistant's package ``__init__`` aliases ``httpx`` and ``voluptuous`` to their
  replacements and must run before anything imports them; the test plugin imports
  ``respx`` (hence ``httpx``) first. Import ``homeassistant`` here, at start-up.
"""

from __future__ import annotations

import functools
import inspect
import sys
from typing import Any

_signature = inspect.signature


@functools.wraps(_signature)
def _signature_without_format(
    obj: Any, *args: Any, annotation_format: object = None, **kwargs: Any
) -> inspect.Signature:
    del annotation_format
    return _signature(obj, *args, **kwargs)


inspect.signature = _signature_without_format

try:
    import homeassistant  # noqa: F401
except Exception as err:  # noqa: BLE001 - report and let the test run fail clearly
    print(f"[sitecustomize] import homeassistant failed: {err!r}", file=sys.stderr)
