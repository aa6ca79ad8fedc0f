"""Test doubles for the dispatch engine: a virtual-time runtime and a fake transport.

`FakeRuntime` keeps a virtual clock. Timers never fire on their own: `drive()`
runs a coroutine, lets the event loop settle, and only when nothing else can
progress advances the clock to the earliest timer and fires it. So acks,
deadlines and retry backoffs happen in virtual-time order, deterministically, and
no test depends on the wall clock.

`FakeTransport` records every publish call and, per vehicle, follows a `Rule`:
ack / reject / stay silent / ack late / fail to publish, with a virtual delay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
import heapq
import json
import math
from typing import Any

from custom_components.v2g.engine import (
    DispatchEngine,
    FlexibilitySignal,
    Order,
    SignalType,
    Vehicle,
)

START = datetime(2025, 7, 7, 10, 0, tzinfo=UTC)


class FakeHandle:
    """A cancellable timer handle."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeRuntime:
    """Virtual clock + timers; see the module docstring."""

    def __init__(self, start: datetime = START) -> None:
        self.start = start
        self.clock = 0.0
        self.sleeps: list[float] = []
        self._timers: list[tuple[float, int, FakeHandle, Callable[[], None]]] = []
        self._seq = 0

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.clock)

    def monotonic(self) -> float:
        return self.clock

    def create_future(self) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        future = self.create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        self.call_later(seconds, wake)
        await future

    def call_later(self, seconds: float, callback: Callable[[], None]) -> FakeHandle:
        handle = FakeHandle()
        heapq.heappush(
            self._timers, (self.clock + seconds, self._seq, handle, callback)
        )
        self._seq += 1
        return handle

    @property
    def pending_timers(self) -> int:
        return sum(1 for _, _, handle, _ in self._timers if not handle.cancelled)

    def fire_next(self) -> bool:
        """Advance to the earliest live deadline and run every timer due then.

        Returns False if no live timer is left.
        """
        fired = False
        while self._timers:
            deadline, _, handle, callback = self._timers[0]
            if fired and deadline > self.clock:
                break
            heapq.heappop(self._timers)
            if handle.cancelled:
                continue
            self.clock = max(self.clock, deadline)
            callback()
            fired = True
        return fired

    def run_all(self) -> None:
        """Fire every remaining timer (e.g. late acks after a dispatch)."""
        while self.fire_next():
            pass

    async def drive[T](self, awaitable: Awaitable[T]) -> T:
        """Run `awaitable` to completion, firing timers only when it is idle."""
        task = asyncio.ensure_future(awaitable)
        while not task.done():
            for _ in range(50):
                await asyncio.sleep(0)
                if task.done():
                    break
            else:
                if not self.fire_next():
                    task.cancel()
                    raise AssertionError("deadlock: the task waits but no timer is set")
        return task.result()


@dataclass
class Rule:
    """How one vehicle answers orders.

    action: "ack", "reject", "silent" (never answers), "late" (answers after
        `delay`, meant to exceed the ack timeout), "instant" (answers inside the
        publish call, before it returns).
    publish_failures: how many publish attempts fail before one succeeds
        (math.inf: always).
    """

    action: str = "ack"
    delay: float = 0.01
    reason: str | None = None
    applied_power_kw: float | None = None
    publish_failures: float = 0


@dataclass
class FakeTransport:
    """Records publish calls and answers like the vehicles' rules say."""

    runtime: FakeRuntime
    rules: dict[str, Rule] = field(default_factory=dict)
    default: Rule = field(default_factory=Rule)
    # How a vehicle answers 0 kW orders (revokes, releases), if not by its rule.
    idle_rules: dict[str, Rule] = field(default_factory=dict)
    engine: DispatchEngine | None = None
    calls: list[list[Order]] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    raise_on_call: int | None = None
    short_result: bool = False

    def rule(self, vehicle_id: str) -> Rule:
        return self.rules.get(vehicle_id, self.default)

    def rule_for(self, order: Order) -> Rule:
        if order.power_kw == 0.0 and order.vehicle_id in self.idle_rules:
            return self.idle_rules[order.vehicle_id]
        return self.rule(order.vehicle_id)

    def payload(self, order: Order, rule: Rule) -> bytes:
        body: dict[str, Any] = {"command_id": order.command_id}
        if rule.action == "reject":
            body["status"] = "rejected"
        if rule.reason is not None:
            body["reason"] = rule.reason
        if rule.applied_power_kw is not None:
            body["applied_power_kw"] = rule.applied_power_kw
        return json.dumps(body).encode()

    def deliver(self, order: Order) -> None:
        assert self.engine is not None
        rule = self.rule_for(order)
        payload = self.payload(order, rule)
        if order.gateway:
            item = {**json.loads(payload), "vehicle_id": order.vehicle_id}
            self.engine.handle_gateway_acks(
                json.dumps({"acks": [item]}).encode(), order.gateway
            )
        else:
            self.engine.handle_ack(order.vehicle_id, payload)

    async def publish(self, orders: Sequence[Order]) -> list[Exception | None]:
        self.calls.append(list(orders))
        if self.raise_on_call is not None and len(self.calls) == self.raise_on_call:
            raise ConnectionError("broker gone")
        results: list[Exception | None] = []
        for order in orders:
            rule = self.rule_for(order)
            attempt = self.attempts.get(order.command_id, 0)
            self.attempts[order.command_id] = attempt + 1
            if attempt < rule.publish_failures:
                results.append(ConnectionError("publish failed"))
                continue
            results.append(None)
            if rule.action == "silent":
                continue
            if rule.action == "instant":
                self.deliver(order)
                continue
            self.runtime.call_later(rule.delay, lambda order=order: self.deliver(order))
        await asyncio.sleep(0)
        if self.short_result:
            return results[:-1]
        return results

    @property
    def published_vehicles(self) -> list[list[str]]:
        return [[o.vehicle_id for o in call] for call in self.calls]


def make_vehicle(vehicle_id: str, **changes: Any) -> Vehicle:
    """A V2G vehicle with the QA defaults (SoC 0.7, 22 kW, 40 kWh)."""
    values: dict[str, Any] = {
        "soc": 0.7,
        "is_v2g": True,
        "max_power_kw": 22.0,
        "battery_kwh": 40.0,
        "available": True,
    }
    values.update(changes)
    return Vehicle(vehicle_id=vehicle_id, **values)


def make_signal(
    power_kw: float,
    signal_type: SignalType = SignalType.FCR,
    duration_s: float = 900.0,
    start: datetime = START,
) -> FlexibilitySignal:
    return FlexibilitySignal(
        signal_type=signal_type, power_kw=power_kw, duration_s=duration_s, start=start
    )


NEVER = math.inf
