"""What the host gives the engine: a clock and scheduler, and a transport for orders.

The engine reads no clock and does no I/O itself; Home Assistant (and the tests)
provide these.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from .codec import Order


class Cancellable(Protocol):
    """A scheduled callback that can be cancelled."""

    def cancel(self) -> None:
        """Cancel the callback (no effect if it already ran)."""


class Runtime(Protocol):
    """Clock and scheduling, provided by the host (Home Assistant, tests)."""

    def now(self) -> datetime:
        """Current wall time, timezone-aware."""

    def monotonic(self) -> float:
        """Current monotonic time in seconds."""

    def create_future(self) -> asyncio.Future[None]:
        """A future bound to the running event loop."""

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`."""

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Cancellable:
        """Run `callback` after `seconds`."""


class OrderTransport(Protocol):
    """Publishes orders (per vehicle or per gateway, see `Order.gateway`)."""

    async def publish(self, orders: Sequence[Order]) -> list[Exception | None]:
        """Publish `orders`; return one result per order, in the same order.

        None means published; an exception means that order failed (it will be
        retried). Raising fails every order of the call.
        """
