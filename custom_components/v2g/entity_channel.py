"""The command channel of vehicles controlled through Home Assistant entities.

A third way to reach vehicles (channels.py), beside per-vehicle MQTT and
gateways: an order to a vehicle of a "controlled" subentry sets its `number` /
`input_number` (or runs its script) through Home Assistant's actions.

Each send starts its own task and returns at once, so orders go out
concurrently and a slow or failing action never delays the others. The task
converts the setpoint (home_control.py), holds it until the order ends
(held_setpoints.py), calls the action and waits, until the ack timeout, for the
control entity (or the power sensor, when chosen as confirmation) to reach the
value within the tolerance. The answer goes to the engine as an ack, through
`DispatchEngine.handle_ack`, so latency, learning, entities and the response are
those of every vehicle: acknowledged with the power actually set
(`applied_power_kw`), rejected with the reason when the action raises or the
entity is unavailable, and left to the engine's deadline (`timeout`) otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
import functools
import json
from typing import Any

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import (
    Event,
    EventStateChangedData,
    HomeAssistant,
    State,
    callback,
)
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.event import async_track_state_change_event
import voluptuous as vol

from .channels import Send
from .const import DOMAIN
from .engine import DispatchEngine, Order
from .held_setpoints import SetpointHolder
from .home_control import (
    Bounds,
    ControlSpec,
    async_call_control,
    has_state,
    numeric_state,
    power_kw,
)
from .intake import InputLog, Route

# Diagnostics counters (`dropped_input`): readings that could not confirm.
STATE_KIND = "entity_state"


class EntityChannel:
    """Orders through Home Assistant actions; answers from entity states."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: ConfigEntry,
        specs: Callable[[], Mapping[str, ControlSpec]],
        holder: SetpointHolder,
        input_log: InputLog,
    ) -> None:
        """Drive the vehicles ``specs`` returns (read at each order)."""
        self._hass = hass
        self._entry = entry
        self._specs = specs
        self._holder = holder
        self._log = input_log
        self._engine: DispatchEngine | None = None

    def claims(self, order: Order) -> bool:
        """Orders to the vehicles controlled through Home Assistant."""
        return order.vehicle_id in self._specs()

    def returns_to_idle_itself(self, vehicle_id: str) -> bool:
        """Its control returns to idle when an order ends (held_setpoints.py)."""
        return vehicle_id in self._specs()

    def sends(self, orders: Sequence[Order], indexes: Sequence[int]) -> list[Send]:
        """One send per order; each starts its own task."""
        return [
            Send([index], functools.partial(self._async_start, orders[index]))
            for index in indexes
        ]

    def answer_routes(self, engine: DispatchEngine) -> list[Route]:
        """No subscription: answers come from entity states, handed to ``engine``."""
        self._engine = engine
        return []

    async def _async_start(self, order: Order) -> None:
        spec = self._specs().get(order.vehicle_id)
        engine = self._engine
        if spec is None or engine is None:
            raise HomeAssistantError(f"vehicle {order.vehicle_id} has no control")
        self._entry.async_create_background_task(
            self._hass,
            self._async_apply(engine, spec, order),
            f"{DOMAIN} order {order.vehicle_id}",
        )

    async def _async_apply(
        self, engine: DispatchEngine, spec: ControlSpec, order: Order
    ) -> None:
        """Set the control, then wait for its confirmation (until the ack timeout)."""
        try:
            async with asyncio.timeout(engine.settings.ack_timeout_s):
                async with self._holder.lock(order.vehicle_id):
                    if (
                        engine.tracker.pending(order.command_id) is None
                        or self._holder.stopped
                    ):
                        return  # superseded, timed out or unloading meanwhile
                    applied_kw = await self._async_set(spec, order)
                if applied_kw is not None:
                    await self._async_confirm(engine, spec, order, applied_kw)
        except TimeoutError:
            return  # the engine's own deadline makes it a timeout
        except (HomeAssistantError, vol.Invalid) as err:
            # ServiceValidationError included: the action refused the value.
            reason = str(err) or type(err).__name__
            _answer(engine, order, status="rejected", reason=reason)

    async def _async_set(self, spec: ControlSpec, order: Order) -> float | None:
        """Hold and set the order; the power set (kW), None if rejected."""
        engine = self._engine
        assert engine is not None
        state: State | None = None
        if spec.control_entity is not None:
            state = self._hass.states.get(spec.control_entity)
            if not has_state(state):
                _answer(
                    engine,
                    order,
                    status="rejected",
                    reason=f"{spec.control_entity} is unavailable",
                )
                return None
        value, applied_kw = spec.setpoint(order.power_kw, Bounds.of(state))
        # Held before the call: a crash during it still ends in a return to idle.
        previous = self._holder.held(order.vehicle_id)
        await self._holder.async_hold(order, spec, numeric_state(state))
        try:
            await async_call_control(
                self._hass,
                spec.target,
                value,
                {
                    "power_kw": applied_kw,
                    "duration_s": order.duration_s,
                    "dispatch_id": order.dispatch_id,
                    "signal_type": order.signal_type.value,
                },
            )
        except (HomeAssistantError, vol.Invalid):
            # Refused: the control still holds what it held before.
            self._holder.async_restore(order.vehicle_id, previous)
            raise
        return applied_kw

    async def _async_confirm(
        self,
        engine: DispatchEngine,
        spec: ControlSpec,
        order: Order,
        applied_kw: float,
    ) -> None:
        """Ack once the confirming entity shows the power set (None: right away)."""
        entity_id = spec.confirmation_entity
        if entity_id is None:
            # A script without a power sensor: done when it returned.
            _answer(engine, order, applied_kw=applied_kw)
            return
        confirmed = self._hass.loop.create_future()

        def reached(state: State | None) -> bool:
            reading = self._reading_kw(spec, entity_id, state)
            return reading is not None and abs(reading - applied_kw) <= (
                spec.tolerance_kw + 1e-9
            )

        @callback
        def _state_changed(event: Event[EventStateChangedData]) -> None:
            if confirmed.done():
                return
            if engine.tracker.pending(order.command_id) is None:
                confirmed.set_result(False)  # superseded: nothing to confirm
            elif reached(event.data["new_state"]):
                confirmed.set_result(True)

        if reached(self._hass.states.get(entity_id)):
            _answer(engine, order, applied_kw=applied_kw)
            return
        unsub = async_track_state_change_event(self._hass, entity_id, _state_changed)
        try:
            if await confirmed:
                _answer(engine, order, applied_kw=applied_kw)
        finally:
            unsub()

    def _reading_kw(
        self, spec: ControlSpec, entity_id: str, state: State | None
    ) -> float | None:
        """The confirming entity as kW of our sign; unreadable states are counted."""
        if state is None or not has_state(state):
            self._log.drop(STATE_KIND, "unavailable", entity_id)
            return None
        if entity_id == spec.control_entity:
            value = numeric_state(state)
            reading = None if value is None else spec.to_kw(value)
        else:
            reading = power_kw(state, spec.power_positive_charging)
        if reading is None:
            self._log.drop(STATE_KIND, "non_numeric", entity_id)
        return reading


def _answer(
    engine: DispatchEngine,
    order: Order,
    *,
    applied_kw: float | None = None,
    status: str | None = None,
    reason: str | None = None,
) -> None:
    """Hand the engine an ack, as a vehicle would send it (docs/protocol.md#ack)."""
    ack: dict[str, Any] = {"command_id": order.command_id}
    if status is not None:
        ack["status"] = status
    if reason is not None:
        ack["reason"] = reason
    if applied_kw is not None:
        ack["applied_power_kw"] = applied_kw
    engine.handle_ack(order.vehicle_id, json.dumps(ack))
