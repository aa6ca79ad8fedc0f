"""Vehicles added by hand (config subentries) and the HA entities they follow.

A vehicle subentry gives a vehicle id, its max power, battery size and V2G
capability, and optionally a state-of-charge and a plugged-in entity of Home
Assistant (docs/options.md#vehicle-subentries). Its settings override what the
vehicle reports in discovery answers; its entities give SoC and availability,
and keep the vehicle live while they have a state. The vehicles of "controlled"
subentries, whose orders go through Home Assistant, are kept by the
`ControlledVehicles` this class holds (controlled_vehicles.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import math
from typing import Any

from homeassistant.config_entries import (
    SIGNAL_CONFIG_ENTRY_CHANGED,
    ConfigEntry,
    ConfigEntryChange,
)
from homeassistant.const import STATE_ON, STATE_UNAVAILABLE, STATE_UNKNOWN
from homeassistant.core import (
    CALLBACK_TYPE,
    Event,
    EventStateChangedData,
    HomeAssistant,
    callback,
)
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.event import async_track_state_change_event

from .const import (
    CONF_BATTERY_KWH,
    CONF_IS_V2G,
    CONF_MAX_POWER,
    CONF_PLUGGED_ENTITY,
    CONF_SOC_ENTITY,
    CONF_VEHICLE_ID,
    LOGGER,
    SUBENTRY_TYPE_VEHICLE,
)
from .controlled_vehicles import ControlledVehicles
from .engine import FleetState, InvalidValueError, Vehicle

_NO_STATE = (STATE_UNAVAILABLE, STATE_UNKNOWN)


def vehicle_subentries(entry: ConfigEntry) -> dict[str, tuple[str, Mapping[str, Any]]]:
    """Return vehicle id -> (subentry id, subentry data) of an entry's vehicles."""
    vehicles: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for subentry in entry.subentries.values():
        if subentry.subentry_type != SUBENTRY_TYPE_VEHICLE:
            continue
        vehicle_id = subentry.data.get(CONF_VEHICLE_ID) or subentry.unique_id
        if isinstance(vehicle_id, str) and vehicle_id:
            vehicles[vehicle_id] = (subentry.subentry_id, subentry.data)
    return vehicles


class ManualVehicles:
    """The hand-added vehicles of one fleet, kept in the fleet state."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: ConfigEntry,
        fleet: FleetState,
        *,
        monotonic: Callable[[], float],
        soc_known: set[str],
        on_change: Callable[[], None],
    ) -> None:
        """Bind to the fleet; `on_change` is called when a vehicle changed."""
        self._hass = hass
        self._entry = entry
        self._fleet = fleet
        self._monotonic = monotonic
        self._soc_known = soc_known
        self._on_change = on_change
        self._vehicles: dict[str, tuple[str, Mapping[str, Any]]] = {}
        self._entity_vehicles: dict[str, list[str]] = {}
        self._untrack: CALLBACK_TYPE | None = None
        self._unsub_entry: CALLBACK_TYPE | None = None
        self.controlled = ControlledVehicles(
            hass,
            entry,
            fleet,
            monotonic=monotonic,
            soc_known=soc_known,
            on_change=on_change,
        )

    @callback
    def async_start(self) -> None:
        """Apply the subentries now and whenever the entry changes."""
        self.async_sync()
        self.controlled.async_start()
        self._unsub_entry = async_dispatcher_connect(
            self._hass, SIGNAL_CONFIG_ENTRY_CHANGED, self._handle_entry_changed
        )

    @callback
    def async_stop(self) -> None:
        """Stop following the entry and the entities."""
        for unsub in (self._unsub_entry, self._untrack):
            if unsub is not None:
                unsub()
        self._unsub_entry = self._untrack = None

    def is_manual(self, vehicle_id: str) -> bool:
        """Return True if the vehicle comes from a config subentry."""
        return vehicle_id in self._vehicles or self.controlled.is_controlled(vehicle_id)

    @property
    def subentry_ids(self) -> dict[str, str]:
        """Vehicle id -> subentry id."""
        own = {vid: item[0] for vid, item in self._vehicles.items()}
        return own | self.controlled.subentry_ids

    def plugged_entities(self) -> dict[str, str | None]:
        """Vehicle id -> its configured plugged-in entity (None: not set)."""
        result: dict[str, str | None] = {}
        for vehicle_id, (_, data) in self._vehicles.items():
            entity_id = data.get(CONF_PLUGGED_ENTITY)
            result[vehicle_id] = entity_id if isinstance(entity_id, str) else None
        return result | self.controlled.plugged_entities()

    def overlay(self, vehicle: Vehicle) -> Vehicle:
        """The vehicle with its hand-set values and its entities' states applied."""
        manual = self._vehicles.get(vehicle.vehicle_id)
        if manual is None:
            return vehicle
        data = manual[1]
        changes: dict[str, Any] = {}
        if CONF_MAX_POWER in data:
            changes["max_power_kw"] = float(data[CONF_MAX_POWER])
        if CONF_BATTERY_KWH in data:
            changes["battery_kwh"] = float(data[CONF_BATTERY_KWH])
        if CONF_IS_V2G in data:
            changes["is_v2g"] = bool(data[CONF_IS_V2G])
        changes.update(self._entity_values(data))
        return vehicle.with_changes(**changes) if changes else vehicle

    @callback
    def async_touch_live(self) -> None:
        """Keep the vehicles whose SoC or plug entity has a state from going stale."""
        self.controlled.async_touch_live()
        now = self._monotonic()
        for vehicle_id, (_, data) in self._vehicles.items():
            for key in (CONF_SOC_ENTITY, CONF_PLUGGED_ENTITY):
                entity_id = data.get(key)
                state = self._hass.states.get(entity_id) if entity_id else None
                if state is not None and state.state not in _NO_STATE:
                    self._fleet.touch(vehicle_id, now)
                    break

    @callback
    def async_sync(self) -> None:
        """Apply the vehicle subentries: add, update, drop; track their entities."""
        vehicles = vehicle_subentries(self._entry)
        removed = set(self._vehicles) - set(vehicles)
        self._vehicles = vehicles
        for vehicle_id in removed:
            self._fleet.remove(vehicle_id)
            self._soc_known.discard(vehicle_id)
        for vehicle_id in vehicles:
            self._refresh(vehicle_id)
        self._track_entities()
        if removed or vehicles:
            self._on_change()

    @callback
    def _handle_entry_changed(
        self, change: ConfigEntryChange, entry: ConfigEntry
    ) -> None:
        if (
            change is ConfigEntryChange.UPDATED
            and entry.entry_id == self._entry.entry_id
        ):
            self.async_sync()

    def _entity_values(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """SoC (fraction) and availability read from the followed entities."""
        values: dict[str, Any] = {}
        soc_entity = data.get(CONF_SOC_ENTITY)
        if soc_entity and (state := self._hass.states.get(soc_entity)) is not None:
            try:
                percent = float(state.state)
            except ValueError:
                pass
            else:
                if math.isfinite(percent):
                    values["soc"] = min(max(percent / 100.0, 0.0), 1.0)
        plugged_entity = data.get(CONF_PLUGGED_ENTITY)
        if (
            plugged_entity
            and (state := self._hass.states.get(plugged_entity))
            and state.state not in _NO_STATE
        ):
            values["available"] = state.state == STATE_ON
        return values

    @callback
    def _track_entities(self) -> None:
        entity_vehicles: dict[str, list[str]] = {}
        for vehicle_id, (_, data) in self._vehicles.items():
            for key in (CONF_SOC_ENTITY, CONF_PLUGGED_ENTITY):
                if entity_id := data.get(key):
                    entity_vehicles.setdefault(entity_id, []).append(vehicle_id)
        if self._untrack is not None:
            self._untrack()
            self._untrack = None
        self._entity_vehicles = entity_vehicles
        if entity_vehicles:
            self._untrack = async_track_state_change_event(
                self._hass, list(entity_vehicles), self._handle_entity_state
            )

    @callback
    def _refresh(self, vehicle_id: str) -> None:
        data = self._vehicles[vehicle_id][1]
        fleet = self._fleet
        current = fleet.vehicles.get(vehicle_id)
        try:
            vehicle = self.overlay(current or Vehicle(vehicle_id=vehicle_id))
        except InvalidValueError as err:
            LOGGER.warning("Ignoring vehicle %s: %s", vehicle_id, err)
            return
        entity_values = self._entity_values(data)
        if "soc" in entity_values:
            self._soc_known.add(vehicle_id)
        if current is None:
            fleet.upsert(vehicle, self._monotonic())
            if not entity_values:
                # Known by hand only: stale until it talks (or its entities do).
                fleet.last_seen.pop(vehicle_id, None)
        else:
            fleet.vehicles[vehicle_id] = vehicle
            if entity_values:
                fleet.touch(vehicle_id, self._monotonic())

    @callback
    def _handle_entity_state(self, event: Event[EventStateChangedData]) -> None:
        for vehicle_id in self._entity_vehicles.get(event.data["entity_id"], []):
            if vehicle_id in self._vehicles:
                self._refresh(vehicle_id)
        self._on_change()
