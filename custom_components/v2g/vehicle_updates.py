"""Per-vehicle entity updates and outcome events, after each fleet snapshot.

The fleet entities are ordinary coordinator listeners. The entities of a vehicle
are called only when that vehicle's `VehicleSnapshot` changed (or when the broker
connection changed), from one tracked task that walks the changed vehicles
`VEHICLE_UPDATE_CHUNK` at a time and yields between chunks: a snapshot that
changed 10,000 vehicles never blocks the loop, and a dispatch returns before its
vehicle entities are written. A dispatch's outcome events wait for the snapshot
of that dispatch, then fire with their vehicle's entity update.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from itertools import islice
from typing import Any

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback

from .const import DOMAIN, LOGGER
from .engine import DispatchResult, OrderOutcome, OrderStatus
from .engine.snapshot import FleetSnapshot

# Vehicles whose entities are updated between two yields to the event loop (a
# vehicle costs up to ~8 state writes of ~50 µs).
VEHICLE_UPDATE_CHUNK = 100

# The order outcomes a vehicle's event entity reports.
OUTCOME_EVENT_TYPES: tuple[str, ...] = (
    OrderStatus.ACKNOWLEDGED.value,
    OrderStatus.REJECTED.value,
    OrderStatus.TIMEOUT.value,
)
_OUTCOME_STATUSES = frozenset(OrderStatus(value) for value in OUTCOME_EVENT_TYPES)

type OutcomeCallback = Callable[[str, dict[str, Any]], None]
# An outcome event waiting for its vehicle's entity update: result, outcome, round.
type _QueuedOutcome = tuple[DispatchResult, OrderOutcome, str]


class VehicleUpdates:
    """Hands each new snapshot to the entities of the vehicles it changed."""

    def __init__(self, hass: HomeAssistant, entry: ConfigEntry) -> None:
        """Create the registry of one fleet."""
        self._hass = hass
        self._entry = entry
        self._listeners: dict[str, list[CALLBACK_TYPE]] = {}
        self._outcome_listeners: dict[str, list[OutcomeCallback]] = {}
        self._pending: dict[str, None] = {}
        self._pending_outcomes: dict[str, list[_QueuedOutcome]] = {}
        self._staged_outcomes: dict[str, list[_QueuedOutcome]] = {}
        self._published: FleetSnapshot | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @callback
    def async_add_listener(
        self, vehicle_id: str, update_callback: CALLBACK_TYPE
    ) -> CALLBACK_TYPE:
        """Call ``update_callback()`` after each snapshot that changed the vehicle.

        Also after a change of the broker connection (every vehicle).
        """
        return _add_keyed(self._listeners, vehicle_id, update_callback)

    @callback
    def async_subscribe_outcomes(
        self, vehicle_id: str, listener: OutcomeCallback
    ) -> CALLBACK_TYPE:
        """Call ``listener(event_type, attributes)`` for each outcome of a vehicle.

        Called with the vehicle's entity update, after the dispatch returned.
        """
        return _add_keyed(self._outcome_listeners, vehicle_id, listener)

    @callback
    def stage_outcomes(self, result: DispatchResult) -> None:
        """Hold a dispatch's outcome events until the next snapshot is published."""
        listened = self._outcome_listeners
        staged = self._staged_outcomes
        for round_name, outcomes in (
            ("initial", result.vehicles),
            ("fallback", result.fallback),
        ):
            for vehicle_id, outcome in outcomes.items():
                if vehicle_id in listened and outcome.status in _OUTCOME_STATUSES:
                    staged.setdefault(vehicle_id, []).append(
                        (result, outcome, round_name)
                    )

    @callback
    def async_snapshot_published(self, snapshot: FleetSnapshot) -> None:
        """Queue the vehicles the snapshot changed; start walking them."""
        previous, self._published = self._published, snapshot
        self._mark_changed(previous, snapshot)
        if staged := self._staged_outcomes:
            self._staged_outcomes = {}
            for vehicle_id, queued in staged.items():
                self._pending_outcomes.setdefault(vehicle_id, []).extend(queued)
            self._pending.update(dict.fromkeys(staged))
        if self._pending and self._task is None and not self._closed:
            # Tracked (async_block_till_done waits for it); not eager: whoever
            # published the snapshot (a dispatch: its response) goes first.
            self._task = self._entry.async_create_task(
                self._hass,
                self._async_walk(),
                f"{DOMAIN} vehicle entity updates",
                eager_start=False,
            )

    @callback
    def async_close(self) -> None:
        """Stop updating (the entry unloads); queued events are dropped."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._pending.clear()
        self._pending_outcomes.clear()
        self._staged_outcomes.clear()

    def _mark_changed(
        self, previous: FleetSnapshot | None, current: FleetSnapshot
    ) -> None:
        listened = self._listeners
        pending = self._pending
        if previous is None or previous.connected != current.connected:
            pending.update(dict.fromkeys(listened))
            return
        before = previous.vehicles
        after = current.vehicles
        for vehicle_id in listened:
            # Unchanged vehicles keep their snapshot object (engine/snapshot.py).
            if before.get(vehicle_id) is not after.get(vehicle_id):
                pending[vehicle_id] = None

    async def _async_walk(self) -> None:
        """Update the queued vehicles, a chunk per loop iteration.

        A vehicle queued again meanwhile is visited again; its listeners read
        the latest snapshot.
        """
        pending = self._pending
        try:
            while pending:
                for vehicle_id in list(islice(pending, VEHICLE_UPDATE_CHUNK)):
                    del pending[vehicle_id]
                    try:
                        self._update(vehicle_id)
                    except Exception:  # noqa: BLE001 - the other vehicles go on
                        LOGGER.exception(
                            "Error updating the entities of vehicle %s", vehicle_id
                        )
                if pending:
                    await asyncio.sleep(0)
        finally:
            self._task = None

    def _update(self, vehicle_id: str) -> None:
        for result, outcome, round_name in self._pending_outcomes.pop(vehicle_id, ()):
            attributes = outcome_attributes(result, outcome, round_name)
            for outcome_listener in list(self._outcome_listeners.get(vehicle_id, ())):
                outcome_listener(outcome.status.value, attributes)
        for listener in list(self._listeners.get(vehicle_id, ())):
            listener()


def outcome_attributes(
    result: DispatchResult, outcome: OrderOutcome, round_name: str
) -> dict[str, Any]:
    """The attributes of a vehicle's dispatch outcome event (docs/entities.md)."""
    return {
        "dispatch_id": result.dispatch_id,
        "signal_type": result.signal.signal_type.value,
        "round": round_name,
        "command_id": outcome.command_id,
        "power_kw": round(outcome.power_kw, 3),
        "latency_ms": None
        if outcome.latency_ms is None
        else round(outcome.latency_ms, 3),
        "reason": outcome.reason,
    }


def _add_keyed[T](registry: dict[str, list[T]], key: str, listener: T) -> CALLBACK_TYPE:
    """Add a listener under a key; return the callback that removes it."""
    listeners = registry.setdefault(key, [])
    listeners.append(listener)

    @callback
    def _remove() -> None:
        if listener in listeners:
            listeners.remove(listener)
        if not listeners and registry.get(key) is listeners:
            del registry[key]

    return _remove
