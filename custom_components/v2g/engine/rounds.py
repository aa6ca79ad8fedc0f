"""One round of orders: register, publish (with retries), wait for acks or deadline.

A dispatch runs at most two rounds (see `engine.dispatch`); each is one
`transport.publish` call with all its orders, failed ones retried with
exponential backoff, and one ack deadline. Pending entries are registered
before publishing (an ack may beat the publish call), each with the round that
waits for it, so concurrent dispatches never mix acks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from .acks import AckTracker, PendingOrder
from .codec import Order
from .inflight import PHASE_FALLBACK, PHASE_PUBLISHING, PHASE_WAITING, InFlight
from .models import OrderStatus
from .ports import Cancellable, OrderTransport, Runtime
from .results import OrderRound
from .settings import DispatchSettings


class StartedRound:
    """A published round: resolves its future when nothing is pending."""

    def __init__(
        self,
        future: asyncio.Future[None],
        flight: InFlight | None,
        round_name: OrderRound,
        on_resolved: Callable[[PendingOrder], None] | None = None,
    ) -> None:
        """Start the bookkeeping of one round (see `RoundRunner.start`)."""
        self.future = future
        self.flight = flight
        self.round_name = round_name
        self.on_resolved = on_resolved
        self.outstanding = 0
        self.entries: list[PendingOrder] = []
        self.deadline: Cancellable | None = None

    def order_resolved(self, entry: PendingOrder) -> None:
        """Count one answered (or expired) order of the round."""
        if self.on_resolved is not None:
            self.on_resolved(entry)
        self.outstanding -= 1
        if self.outstanding <= 0 and not self.future.done():
            self.future.set_result(None)


class RoundRunner:
    """Runs rounds of orders through a transport, answered through a tracker."""

    def __init__(
        self,
        transport: OrderTransport,
        runtime: Runtime,
        tracker: AckTracker,
        settings: Callable[[], DispatchSettings],
    ) -> None:
        """Wire the runner.

        Args:
            transport: publishes orders.
            runtime: clock, futures and timers.
            tracker: matches acks to the registered orders.
            settings: the current dispatch settings; read when used, as the
                engine's settings may be replaced at any time.
        """
        self.transport = transport
        self.runtime = runtime
        self.tracker = tracker
        self._settings = settings

    async def run(
        self,
        flight: InFlight | None,
        round_name: OrderRound,
        orders: Sequence[Order],
    ) -> list[PendingOrder]:
        """Register, publish (with retries) and wait for the acks of one round."""
        return await self.wait(await self.start(flight, round_name, orders))

    async def start(
        self,
        flight: InFlight | None,
        round_name: OrderRound,
        orders: Sequence[Order],
        on_resolved: Callable[[PendingOrder], None] | None = None,
    ) -> StartedRound:
        """Register and publish (with retries) one round; `wait` for its acks.

        `flight` is None for orders outside a dispatch (releases at the end).
        `on_resolved` is called with each order when it is answered or expires,
        whether or not anybody waits for the round.
        """
        runtime = self.runtime
        tracker = self.tracker
        rnd = StartedRound(runtime.create_future(), flight, round_name, on_resolved)
        registered_at = runtime.monotonic()
        for order in orders:
            tracker.register(order, registered_at, rnd)
            entry = tracker.pending(order.command_id)
            assert entry is not None
            rnd.entries.append(entry)
        rnd.outstanding = len(rnd.entries)
        if flight is not None:
            flight.rounds[round_name] = rnd.entries
            flight.phase = PHASE_PUBLISHING

        to_publish = list(orders)
        attempt = 0
        while to_publish:
            results = await self._publish(to_publish)
            failed = [
                (order, error)
                for order, error in zip(to_publish, results, strict=True)
                # An ack may already have arrived (or a newer order superseded it).
                if error is not None and tracker.pending(order.command_id) is not None
            ]
            if not failed:
                break
            if attempt >= self._settings().publish_retries:
                now = runtime.monotonic()
                for order, error in failed:
                    tracker.resolve(
                        order.command_id,
                        OrderStatus.PUBLISH_FAILED,
                        now,
                        reason=_describe(error),
                    )
                break
            await runtime.sleep(self._settings().retry_backoff_s * 2**attempt)
            attempt += 1
            to_publish = [
                order
                for order, _ in failed
                if tracker.pending(order.command_id) is not None
            ]
        if rnd.outstanding > 0:
            command_ids = [entry.order.command_id for entry in rnd.entries]

            def deadline() -> None:
                # One timer per round, not per order: 10,000 orders, one wake-up.
                tracker.expire(command_ids, runtime.monotonic())

            rnd.deadline = runtime.call_later(self._settings().ack_timeout_s, deadline)
        return rnd

    async def wait(self, rnd: StartedRound) -> list[PendingOrder]:
        """Wait until every order of a started round is answered or timed out."""
        if rnd.outstanding > 0:
            if rnd.flight is not None and rnd.round_name is not OrderRound.REVOKE:
                rnd.flight.phase = (
                    PHASE_WAITING
                    if rnd.round_name is OrderRound.INITIAL
                    else PHASE_FALLBACK
                )
            try:
                await rnd.future
            finally:
                if rnd.deadline is not None:
                    rnd.deadline.cancel()
        return rnd.entries

    async def _publish(self, orders: Sequence[Order]) -> list[Exception | None]:
        try:
            results = await self.transport.publish(orders)
        except Exception as err:  # noqa: BLE001 - any transport error fails the call
            return [err] * len(orders)
        if len(results) != len(orders):
            error = RuntimeError(
                f"transport returned {len(results)} results for {len(orders)} orders"
            )
            return [error] * len(orders)
        return list(results)


def _describe(error: Exception) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
