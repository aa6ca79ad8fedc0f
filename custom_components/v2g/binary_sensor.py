"""Binary sensors: fleet ack rate; vehicle plugged in, following, responding.

See docs/entities.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from homeassistant.components.binary_sensor import (
    BinarySensorDeviceClass,
    BinarySensorEntity,
    BinarySensorEntityDescription,
)
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from homeassistant.helpers.event import async_track_point_in_utc_time
from homeassistant.util import dt as dt_util

from .coordinator import V2GConfigEntry, V2GFleetCoordinator
from .engine.snapshot import FleetSnapshot, VehicleSnapshot
from .entity import (
    V2GFleetEntity,
    V2GVehicleEntity,
    added_by_hand,
    async_add_vehicle_entities,
)

PARALLEL_UPDATES = 0


def _below_sla(data: FleetSnapshot) -> bool | None:
    if data.ack_rate_24h is None:
        return None
    return data.ack_rate_24h < data.ack_rate_sla


def _ack_rates(data: FleetSnapshot) -> dict[str, Any]:
    """The rate and the SLA it is held to, in % (what a notification quotes)."""
    rate = data.ack_rate_24h
    return {
        "ack_rate_24h": None if rate is None else round(rate * 100.0, 1),
        "ack_rate_sla": round(data.ack_rate_sla * 100.0, 1),
    }


@dataclass(frozen=True, kw_only=True)
class V2GFleetBinarySensorDescription(BinarySensorEntityDescription):
    """A binary sensor of the fleet device."""

    is_on_fn: Callable[[FleetSnapshot], bool | None]
    attributes_fn: Callable[[FleetSnapshot], dict[str, Any] | None] = lambda data: None


@dataclass(frozen=True, kw_only=True)
class V2GVehicleBinarySensorDescription(BinarySensorEntityDescription):
    """A binary sensor of a vehicle device."""

    is_on_fn: Callable[[VehicleSnapshot], bool | None]


FLEET_BINARY_SENSORS: tuple[V2GFleetBinarySensorDescription, ...] = (
    V2GFleetBinarySensorDescription(
        key="ack_rate_problem",
        translation_key="ack_rate_problem",
        device_class=BinarySensorDeviceClass.PROBLEM,
        is_on_fn=_below_sla,
        attributes_fn=_ack_rates,
    ),
)

VEHICLE_BINARY_SENSORS: tuple[V2GVehicleBinarySensorDescription, ...] = (
    V2GVehicleBinarySensorDescription(
        key="plugged_in",
        translation_key="plugged_in",
        device_class=BinarySensorDeviceClass.PLUG,
        is_on_fn=lambda vehicle: vehicle.plugged_in,
    ),
)

# On once the vehicle's power has been off its setpoint for the grace period;
# the entity reads the clock (V2GNotFollowingBinarySensor).
NOT_FOLLOWING = V2GVehicleBinarySensorDescription(
    key="not_following",
    translation_key="not_following",
    device_class=BinarySensorDeviceClass.PROBLEM,
    is_on_fn=lambda vehicle: None,
)

# On once the vehicle's last orders all timed out, until it answers again
# (docs/entities.md#vehicle-lifecycle).
NOT_RESPONDING = V2GVehicleBinarySensorDescription(
    key="not_responding",
    translation_key="not_responding",
    device_class=BinarySensorDeviceClass.PROBLEM,
    is_on_fn=lambda vehicle: vehicle.not_responding,
)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: V2GConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    """Add the fleet binary sensors and those of every (new) vehicle."""
    coordinator = entry.runtime_data
    async_add_entities(
        V2GFleetBinarySensor(coordinator, description)
        for description in FLEET_BINARY_SENSORS
    )
    async_add_vehicle_entities(
        entry,
        async_add_entities,
        lambda vehicle_id: [
            *(
                V2GVehicleBinarySensor(coordinator, description, vehicle_id)
                for description in VEHICLE_BINARY_SENSORS
            ),
            V2GNotFollowingBinarySensor(coordinator, NOT_FOLLOWING, vehicle_id),
            V2GNotRespondingBinarySensor(coordinator, NOT_RESPONDING, vehicle_id),
        ],
    )


class V2GFleetBinarySensor(V2GFleetEntity, BinarySensorEntity):
    """A fleet binary sensor."""

    entity_description: V2GFleetBinarySensorDescription

    @property
    def is_on(self) -> bool | None:
        """Return the state from the latest fleet snapshot."""
        return self.entity_description.is_on_fn(self.coordinator.data)

    @property
    def extra_state_attributes(self) -> dict[str, Any] | None:
        """Return what the description adds (the ack rates it compares)."""
        return self.entity_description.attributes_fn(self.coordinator.data)


class V2GVehicleBinarySensor(V2GVehicleEntity, BinarySensorEntity):
    """A vehicle binary sensor."""

    entity_description: V2GVehicleBinarySensorDescription

    @property
    def is_on(self) -> bool | None:
        """Return the state from the vehicle's latest snapshot."""
        vehicle = self.vehicle
        return None if vehicle is None else self.entity_description.is_on_fn(vehicle)


class V2GNotRespondingBinarySensor(V2GVehicleBinarySensor):
    """On while the vehicle's last orders all timed out.

    Enabled by default for the vehicles added by hand: their entities keep them
    live however their orders fare. A discovered vehicle that falls silent goes
    stale instead, and the fleet's *Last dispatch failures* names the ones that
    time out.
    """

    def __init__(
        self,
        coordinator: V2GFleetCoordinator,
        description: V2GVehicleBinarySensorDescription,
        vehicle_id: str,
    ) -> None:
        """Create the sensor; enabled by default for a hand-added vehicle."""
        super().__init__(coordinator, description, vehicle_id)
        self._attr_entity_registry_enabled_default = added_by_hand(
            coordinator, vehicle_id
        )

    @property
    def extra_state_attributes(self) -> dict[str, Any] | None:
        """Return how many orders in a row timed out."""
        vehicle = self.vehicle
        return (
            None
            if vehicle is None
            else {"timeouts_in_a_row": vehicle.timeouts_in_a_row}
        )


class V2GNotFollowingBinarySensor(V2GVehicleBinarySensor):
    """On while the measured power has been off the setpoint for the grace period.

    The snapshot says since when the vehicle deviates (by more than the delivery
    tolerance from its acknowledged setpoint, 0 when none); this entity turns on
    once that lasted `not_following_grace` seconds, with a timer for that moment.
    Unknown while the vehicle was never measured.
    """

    _unsub_deadline: CALLBACK_TYPE | None = None
    _deadline: datetime | None = None

    @property
    def is_on(self) -> bool | None:
        """Return whether the deviation has lasted the grace period."""
        vehicle = self.vehicle
        if vehicle is None or vehicle.measured_power_kw is None:
            return None
        deadline = self._deadline_of(vehicle.deviating_since)
        return deadline is not None and dt_util.utcnow() >= deadline

    async def async_added_to_hass(self) -> None:
        """Follow the vehicle, and its deviation's deadline."""
        await super().async_added_to_hass()
        self.async_on_remove(self._cancel_deadline)
        self._schedule_deadline()

    @callback
    def _handle_vehicle_update(self) -> None:
        self._schedule_deadline()
        super()._handle_vehicle_update()

    def _deadline_of(self, since: datetime | None) -> datetime | None:
        if since is None:
            return None
        grace = self.coordinator.config.not_following_grace
        return since + timedelta(seconds=grace)

    @callback
    def _schedule_deadline(self) -> None:
        """Wake up when the current deviation reaches the grace period."""
        vehicle = self.vehicle
        deadline = self._deadline_of(
            None if vehicle is None else vehicle.deviating_since
        )
        if deadline == self._deadline:
            return
        self._cancel_deadline()
        if deadline is not None and deadline > dt_util.utcnow():
            self._deadline = deadline
            self._unsub_deadline = async_track_point_in_utc_time(
                self.hass, self._deadline_reached, deadline
            )

    @callback
    def _cancel_deadline(self) -> None:
        self._deadline = None
        if self._unsub_deadline is not None:
            self._unsub_deadline()
            self._unsub_deadline = None

    @callback
    def _deadline_reached(self, _now: datetime) -> None:
        self._unsub_deadline = None
        self.async_write_if_changed()
