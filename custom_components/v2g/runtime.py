"""The engine's clock and scheduler, on Home Assistant's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from homeassistant.core import HomeAssistant
from homeassistant.util import dt as dt_util


class HassRuntime:
    """Implements the engine's ``Runtime`` protocol (engine/dispatch.py)."""

    def __init__(self, hass: HomeAssistant) -> None:
        """Bind to the loop of ``hass``."""
        self._loop = hass.loop
        self._handles: set[asyncio.TimerHandle] = set()

    def now(self) -> datetime:
        """Return the current UTC time."""
        return dt_util.utcnow()

    def monotonic(self) -> float:
        """Return the loop's monotonic time."""
        return self._loop.time()

    def create_future(self) -> asyncio.Future[None]:
        """Return a future of the loop."""
        return self._loop.create_future()

    async def sleep(self, seconds: float) -> None:
        """Wait on the loop."""
        await asyncio.sleep(seconds)

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Any:
        """Schedule ``callback``; the handle is cancelled on unload at the latest."""
        handles = self._handles

        def _run() -> None:
            handles.discard(handle)
            callback()

        handle = self._loop.call_later(seconds, _run)
        handles.add(handle)
        return handle

    def close(self) -> None:
        """Cancel every pending timer."""
        while self._handles:
            self._handles.pop().cancel()
