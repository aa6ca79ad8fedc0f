"""Setpoints held on Home Assistant controls, and their return to idle.

A vehicle speaking our MQTT protocol returns to idle at its order's
`expires_at` (docs/protocol.md#expiry); a `number` entity or a script does not.
The integration plays that part for the vehicles it drives through Home
Assistant: each order's control, idle value and end are held here and kept in
a small store (``v2g.<entry_id>.held_setpoints``). When the order ends, the
control is set back to its idle value unless a newer order took over; so are
the orders that ended while Home Assistant was down (at start-up) and every
held order when the entry is unloaded. A failed return to idle is tried again
until it succeeds: a charger must never stay discharging.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
import functools
from typing import Any

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.event import async_call_later, async_track_point_in_utc_time
from homeassistant.helpers.storage import Store
from homeassistant.util import dt as dt_util
import voluptuous as vol

from .const import DOMAIN, LOGGER
from .engine import Order, parse_utc_time
from .home_control import Bounds, ControlSpec, async_call_control, has_state
from .storage import store_key

HELD_STORAGE_VERSION = 1
HELD_STORAGE_MINOR_VERSION = 1
# Written at once (coalesced within a loop iteration): a held order must survive
# a crash that follows it.
HELD_SAVE_DELAY_S = 0.0
RELEASE_RETRY_S = 30.0
# A control that does not answer in time is tried again later.
RELEASE_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Held:
    """One order held on a control until it ends."""

    command_id: str
    target: str  # the number / input_number entity, or the script
    idle_value: float | None  # in the control's unit; None for a script
    until: datetime
    dispatch_id: str
    signal_type: str

    def as_dict(self) -> dict[str, Any]:
        """The JSON-safe form kept in the store."""
        return {
            "command_id": self.command_id,
            "target": self.target,
            "idle_value": self.idle_value,
            "until": self.until.isoformat(),
            "dispatch_id": self.dispatch_id,
            "signal_type": self.signal_type,
        }

    @classmethod
    def from_dict(cls, data: object) -> Held | None:
        """Read a stored record; None if it cannot be read."""
        if not isinstance(data, Mapping):
            return None
        until = parse_utc_time(data.get("until"))
        target = data.get("target")
        idle = data.get("idle_value")
        if until is None or not isinstance(target, str) or not target:
            return None
        if idle is not None and (
            isinstance(idle, bool) or not isinstance(idle, int | float)
        ):
            return None
        return cls(
            str(data.get("command_id", "")),
            target,
            None if idle is None else float(idle),
            until,
            str(data.get("dispatch_id", "")),
            str(data.get("signal_type", "")),
        )


class _HeldFile(Store[dict[str, Any]]):
    """The held-setpoints file, migrated from older formats when loaded."""

    async def _async_migrate_func(
        self, old_major_version: int, old_minor_version: int, old_data: Any
    ) -> dict[str, Any]:
        if old_major_version != HELD_STORAGE_VERSION:
            raise NotImplementedError
        # Only 1.1 exists: a newer minor version is read as it is.
        return old_data if isinstance(old_data, dict) else {}


class SetpointHolder:
    """The orders held on the controls of one fleet, by vehicle."""

    def __init__(self, hass: HomeAssistant, entry: ConfigEntry) -> None:
        """Create the holder (nothing is read yet)."""
        self._hass = hass
        self._entry = entry
        self._store = _HeldFile(
            hass,
            HELD_STORAGE_VERSION,
            held_store_key(entry.entry_id),
            minor_version=HELD_STORAGE_MINOR_VERSION,
        )
        self._held: dict[str, Held] = {}
        self._timers: dict[str, CALLBACK_TYPE] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._stopped = False
        self._has_file = False

    def lock(self, vehicle_id: str) -> asyncio.Lock:
        """The lock every call to this vehicle's control takes (one at a time)."""
        return self._locks.setdefault(vehicle_id, asyncio.Lock())

    @property
    def stopped(self) -> bool:
        """True once the entry unloads: no control may be set any more."""
        return self._stopped

    async def async_start(self) -> None:
        """Read what a previous run held; release what ended, follow the rest."""
        saved = await self._store.async_load()
        self._has_file = saved is not None
        records = (saved or {}).get("held")
        if isinstance(records, dict):
            for vehicle_id, data in records.items():
                if (held := Held.from_dict(data)) is not None:
                    # An order given since the start is newer.
                    self._held.setdefault(str(vehicle_id), held)
        now = dt_util.utcnow()
        for vehicle_id, held in list(self._held.items()):
            if held.until <= now:
                # It ended while Home Assistant was down: back to idle now.
                self._release_soon(vehicle_id)
            else:
                self._arm(vehicle_id, held)

    def held(self, vehicle_id: str) -> Held | None:
        """The order held for a vehicle, if any."""
        return self._held.get(vehicle_id)

    async def async_hold(
        self, order: Order, spec: ControlSpec, current: float | None
    ) -> None:
        """Hold ``order`` (call with the vehicle's lock taken, before the action).

        The idle value is the fixed one, or (idle mode "previous") the value the
        control had before the first of the orders held in a row.
        """
        vehicle_id = order.vehicle_id
        previous = self._held.get(vehicle_id)
        if previous is not None and previous.target != spec.target:
            # The vehicle now has another control: the old one goes idle first.
            await self._async_release_locked(vehicle_id)
            previous = None
        idle: float | None = None
        if spec.control_entity is not None:
            idle = spec.idle_value
            if spec.idle_previous:
                if previous is not None:
                    idle = previous.idle_value
                elif current is not None:
                    idle = current
        held = Held(
            order.command_id,
            spec.target,
            idle,
            datetime.fromtimestamp(order.expires_at_ms / 1000.0, UTC),
            order.dispatch_id,
            order.signal_type.value,
        )
        self._held[vehicle_id] = held
        self._arm(vehicle_id, held)
        self._schedule_save()

    @callback
    def async_restore(self, vehicle_id: str, previous: Held | None) -> None:
        """Hold ``previous`` again: the action of a newer order failed."""
        if previous is None:
            self._held.pop(vehicle_id, None)
            if (unsub := self._timers.pop(vehicle_id, None)) is not None:
                unsub()
        else:
            self._held[vehicle_id] = previous
            self._arm(vehicle_id, previous)
        self._schedule_save()

    async def async_release(self, vehicle_id: str) -> bool:
        """Set the vehicle's control back to idle now; False if it failed."""
        async with self.lock(vehicle_id):
            return await self._async_release_locked(vehicle_id)

    async def async_stop(self) -> None:
        """Release every held order (the entry unloads) and write the store."""
        self._stopped = True
        await asyncio.gather(*(self.async_release(v) for v in list(self._held)))
        for unsub in self._timers.values():
            unsub()
        self._timers.clear()
        if self._has_file:
            # What could not be released is released at the next start.
            await self._store.async_save(self._data())

    async def async_remove(self) -> None:
        """Delete the store (the entry is removed)."""
        await self._store.async_remove()

    # --- internals -----------------------------------------------------------------

    @callback
    def _arm(self, vehicle_id: str, held: Held) -> None:
        if (unsub := self._timers.pop(vehicle_id, None)) is not None:
            unsub()
        self._timers[vehicle_id] = async_track_point_in_utc_time(
            self._hass,
            functools.partial(self._due, vehicle_id, held.command_id),
            max(held.until, dt_util.utcnow()),
        )

    @callback
    def _due(self, vehicle_id: str, command_id: str, _now: datetime) -> None:
        self._timers.pop(vehicle_id, None)
        held = self._held.get(vehicle_id)
        if held is None or held.command_id != command_id:
            return  # a newer order took over
        self._release_soon(vehicle_id)

    @callback
    def _release_soon(self, vehicle_id: str) -> None:
        """Release in a task of the entry (an unload waits for it)."""
        if not self._stopped:
            self._entry.async_create_task(
                self._hass,
                self.async_release(vehicle_id),
                f"{DOMAIN} release {vehicle_id}",
            )

    async def _async_release_locked(self, vehicle_id: str) -> bool:
        held = self._held.get(vehicle_id)
        if held is None:
            return True
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                await self._async_set_idle(held)
        except (HomeAssistantError, vol.Invalid, TimeoutError) as err:
            LOGGER.warning(
                "Could not return %s (vehicle %s) to idle: %s; trying again in %s s",
                held.target,
                vehicle_id,
                err or type(err).__name__,
                RELEASE_RETRY_S,
            )
            if not self._stopped:
                self._retry_later(vehicle_id, held)
            return False
        if self._held.get(vehicle_id) is held:
            del self._held[vehicle_id]
            if (unsub := self._timers.pop(vehicle_id, None)) is not None:
                unsub()
            self._schedule_save()
        return True

    async def _async_set_idle(self, held: Held) -> None:
        fields = {
            "power_kw": 0.0,
            "duration_s": 0.0,
            "dispatch_id": held.dispatch_id,
            "signal_type": held.signal_type,
        }
        if held.idle_value is None:
            await async_call_control(self._hass, held.target, None, fields)
            return
        state = self._hass.states.get(held.target)
        if not has_state(state):
            raise HomeAssistantError(f"{held.target} is unavailable")
        value = Bounds.of(state).clamp(held.idle_value)
        await async_call_control(self._hass, held.target, value, fields)

    @callback
    def _retry_later(self, vehicle_id: str, held: Held) -> None:
        if (unsub := self._timers.pop(vehicle_id, None)) is not None:
            unsub()

        @callback
        def _retry(_now: datetime) -> None:
            self._timers.pop(vehicle_id, None)
            if self._held.get(vehicle_id) is held:
                self._release_soon(vehicle_id)

        self._timers[vehicle_id] = async_call_later(self._hass, RELEASE_RETRY_S, _retry)

    def _data(self) -> dict[str, Any]:
        return {"held": {vid: held.as_dict() for vid, held in self._held.items()}}

    @callback
    def _schedule_save(self) -> None:
        self._has_file = True
        self._store.async_delay_save(self._data, HELD_SAVE_DELAY_S)


def held_store_key(entry_id: str) -> str:
    """The storage key of an entry's held setpoints."""
    return store_key(entry_id, "held_setpoints")
