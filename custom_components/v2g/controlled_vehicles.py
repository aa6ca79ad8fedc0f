"""Vehicles controlled through Home Assistant entities, kept in the fleet state.

A "controlled" vehicle subentry (controlled_flow.py) names the control its
orders go to (entity_channel.py) and the entities it is read from: state of
charge, plugged in, power, departure time. This module keeps those vehicles in
the fleet: limits from the subentry within the control's min / max (a control
that cannot go below 0 in "positive = charging" only charges: the vehicle is
not V2G), availability while the control has a state (and the vehicle is
plugged in), SoC, charging and the measured power (from the power sensor) and
departure. A control
entity that disappears (removed or renamed) makes the vehicle unavailable and
raises a repair issue naming the entity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from homeassistant.config_entries import (
    SIGNAL_CONFIG_ENTRY_CHANGED,
    ConfigEntry,
    ConfigEntryChange,
)
from homeassistant.const import ATTR_RESTORED, STATE_ON
from homeassistant.core import (
    CALLBACK_TYPE,
    CoreState,
    Event,
    EventStateChangedData,
    HomeAssistant,
    callback,
)
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.event import async_track_state_change_event
from homeassistant.helpers.start import async_at_started
from homeassistant.util import dt as dt_util

from .const import DOMAIN, ISSUE_CONTROL_MISSING, LOGGER, SUBENTRY_TYPE_CONTROLLED
from .engine import FleetState, InvalidValueError, Vehicle
from .entity_channel import EntityChannel
from .held_setpoints import SetpointHolder
from .home_control import (
    Bounds,
    ControlSpec,
    departure_time,
    has_state,
    numeric_state,
    power_kw,
)
from .intake import InputLog

# Below this a power reading is noise, not charging (kW).
CHARGING_THRESHOLD_KW = 0.05


def controlled_specs(entry: ConfigEntry) -> dict[str, ControlSpec]:
    """Vehicle id -> control spec of an entry's controlled vehicle subentries."""
    specs: dict[str, ControlSpec] = {}
    for subentry in entry.subentries.values():
        if subentry.subentry_type != SUBENTRY_TYPE_CONTROLLED:
            continue
        try:
            spec = ControlSpec.from_subentry(subentry.subentry_id, subentry.data)
        except (TypeError, ValueError) as err:
            LOGGER.warning("Ignoring controlled vehicle %s: %s", subentry.title, err)
            continue
        specs[spec.vehicle_id] = spec
    return specs


class ControlledVehicles:
    """The vehicles of one fleet that Home Assistant entities control."""

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
        self._specs: dict[str, ControlSpec] = {}
        self._entity_vehicles: dict[str, list[str]] = {}
        self._untrack: CALLBACK_TYPE | None = None
        self._unsubs: list[CALLBACK_TYPE] = []
        self._issues: set[str] = set()
        # Readings that could not confirm an order (diagnostics: dropped input).
        self.input_log = InputLog()
        self.holder = SetpointHolder(hass, entry)
        self.channel = EntityChannel(
            hass, entry, lambda: self._specs, self.holder, self.input_log
        )

    @property
    def subentry_ids(self) -> dict[str, str]:
        """Vehicle id -> subentry id."""
        return {vid: spec.subentry_id for vid, spec in self._specs.items()}

    def is_controlled(self, vehicle_id: str) -> bool:
        """Return True if the vehicle is driven through Home Assistant."""
        return vehicle_id in self._specs

    def plugged_entities(self) -> dict[str, str | None]:
        """Vehicle id -> its plugged-in entity (None: not set)."""
        return {vid: spec.plugged_entity for vid, spec in self._specs.items()}

    @callback
    def async_start(self) -> None:
        """Apply the subentries and follow them; release what ended while stopped.

        Stops (every held control back to idle) when the entry unloads.
        """
        self._entry.async_on_unload(self.async_stop)
        self._entry.async_create_task(
            self._hass, self.holder.async_start(), f"{DOMAIN} held setpoints"
        )
        self.async_sync()
        self._unsubs.append(
            async_dispatcher_connect(
                self._hass, SIGNAL_CONFIG_ENTRY_CHANGED, self._handle_entry_changed
            )
        )
        # Controls of integrations set up after ours exist once HA has started.
        self._unsubs.append(async_at_started(self._hass, self._async_started))

    async def async_stop(self) -> None:
        """Stop following; set every held control back to idle (unload)."""
        while self._unsubs:
            self._unsubs.pop()()
        if self._untrack is not None:
            self._untrack()
            self._untrack = None
        await self.holder.async_stop()
        for issue_id in self._issues:
            ir.async_delete_issue(self._hass, DOMAIN, issue_id)
        self._issues.clear()

    @callback
    def async_touch_live(self) -> None:
        """Refresh the vehicles (departure moves with time); keep live ones fresh."""
        for vehicle_id in self._specs:
            self._refresh(vehicle_id)

    @callback
    def async_sync(self) -> None:
        """Apply the subentries: add, update, drop; track their entities."""
        specs = controlled_specs(self._entry)
        previous = self._specs
        self._specs = specs
        for vehicle_id, spec in previous.items():
            new = specs.get(vehicle_id)
            if new is None:
                self._fleet.remove(vehicle_id)
                self._soc_known.discard(vehicle_id)
            if new is None or new.target != spec.target:
                # Its control is no longer ours to hold: back to idle now.
                self._entry.async_create_task(
                    self._hass,
                    self.holder.async_release(vehicle_id),
                    f"{DOMAIN} release {vehicle_id}",
                )
        for vehicle_id in specs:
            self._refresh(vehicle_id)
        self._track_entities()
        self._check_controls()
        if previous or specs:
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

    async def _async_started(self, _hass: HomeAssistant) -> None:
        self._check_controls()
        for vehicle_id in self._specs:
            self._refresh(vehicle_id)
        self._on_change()

    @callback
    def _check_controls(self) -> None:
        """A repair issue per control that does not exist (once HA has started).

        A state restored by Home Assistant for a registered entity that nothing
        provides any more (e.g. a YAML helper removed) counts as missing too.
        """
        if self._hass.state is not CoreState.running:
            return
        wanted: dict[str, ControlSpec] = {
            f"{ISSUE_CONTROL_MISSING}_{spec.subentry_id}": spec
            for spec in self._specs.values()
            if (state := self._hass.states.get(spec.target)) is None
            or state.attributes.get(ATTR_RESTORED) is True
        }
        for issue_id in self._issues - set(wanted):
            ir.async_delete_issue(self._hass, DOMAIN, issue_id)
        for issue_id, spec in wanted.items():
            ir.async_create_issue(
                self._hass,
                DOMAIN,
                issue_id,
                is_fixable=False,
                severity=ir.IssueSeverity.ERROR,
                translation_key=ISSUE_CONTROL_MISSING,
                translation_placeholders={
                    "entity_id": spec.target,
                    "vehicle_id": spec.vehicle_id,
                },
            )
        self._issues = set(wanted)

    @callback
    def _track_entities(self) -> None:
        entity_vehicles: dict[str, list[str]] = {}
        for vehicle_id, spec in self._specs.items():
            for entity_id in (
                spec.target,
                spec.power_entity,
                spec.soc_entity,
                spec.plugged_entity,
                spec.departure_entity,
            ):
                if entity_id:
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
    def _handle_entity_state(self, event: Event[EventStateChangedData]) -> None:
        entity_id = event.data["entity_id"]
        for vehicle_id in self._entity_vehicles.get(entity_id, []):
            if vehicle_id in self._specs:
                self._refresh(vehicle_id)
        if any(spec.target == entity_id for spec in self._specs.values()):
            self._check_controls()
        self._on_change()

    @callback
    def _refresh(self, vehicle_id: str) -> None:
        spec = self._specs[vehicle_id]
        fleet = self._fleet
        current = fleet.vehicles.get(vehicle_id)
        values = self._values(spec)
        try:
            vehicle = (current or Vehicle(vehicle_id=vehicle_id)).with_changes(**values)
        except InvalidValueError as err:
            LOGGER.warning("Ignoring vehicle %s: %s", vehicle_id, err)
            return
        if "soc" in values:
            self._soc_known.add(vehicle_id)
        control = self._hass.states.get(spec.target)
        live = has_state(control) if spec.control_entity else control is not None
        if current is None:
            fleet.upsert(vehicle, self._monotonic())
            if not live:
                fleet.last_seen.pop(vehicle_id, None)
        else:
            fleet.vehicles[vehicle_id] = vehicle
            if live:
                fleet.touch(vehicle_id, self._monotonic())
        self._observe_power(spec)

    @callback
    def _observe_power(self, spec: ControlSpec) -> None:
        """The power sensor's reading is the vehicle's measured power.

        Timed by when the sensor last reported it, so a reading seen again (any
        of the vehicle's entities changed) is one sample for the learned limits.
        """
        if not spec.power_entity:
            return
        state = self._hass.states.get(spec.power_entity)
        measured = power_kw(state, spec.power_positive_charging)
        if state is None or measured is None:
            self._fleet.power.forget(spec.vehicle_id)
        else:
            self._fleet.observe_power(spec.vehicle_id, measured, state.last_reported)

    def _values(self, spec: ControlSpec) -> dict[str, Any]:
        """The vehicle's fields from its subentry and its entities' states."""
        states = self._hass.states
        control = states.get(spec.target)
        bounds = Bounds.of(control) if spec.control_entity else Bounds()
        discharge_kw, charge_kw = spec.limits_kw(bounds)
        is_v2g = discharge_kw > 0.0
        available = has_state(control) if spec.control_entity else control is not None
        if spec.plugged_entity and has_state(
            plugged := states.get(spec.plugged_entity)
        ):
            available = available and plugged is not None and plugged.state == STATE_ON
        values: dict[str, Any] = {
            "is_v2g": is_v2g,
            "max_power_kw": discharge_kw if is_v2g else charge_kw,
            "charge_rate_kw": charge_kw,
            "battery_kwh": spec.battery_kwh,
            "available": available,
            "departure": None,
        }
        if (
            spec.soc_entity
            and (percent := numeric_state(states.get(spec.soc_entity))) is not None
        ):
            values["soc"] = min(max(percent / 100.0, 0.0), 1.0)
        if (
            spec.power_entity
            and (
                measured := power_kw(
                    states.get(spec.power_entity), spec.power_positive_charging
                )
            )
            is not None
        ):
            values["charging"] = measured < -CHARGING_THRESHOLD_KW
        if spec.departure_entity:
            values["departure"] = departure_time(
                states.get(spec.departure_entity), dt_util.utcnow()
            )
        if spec.target_soc is not None:
            values["min_soc"] = min(max(spec.target_soc / 100.0, 0.0), 1.0)
        return values
