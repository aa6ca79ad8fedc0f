"""Binary sensors: fleet ack-rate problem, vehicle plugged in (docs/entities.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from homeassistant.components.binary_sensor import (
    BinarySensorDeviceClass,
    BinarySensorEntity,
    BinarySensorEntityDescription,
)
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .coordinator import V2GConfigEntry
from .engine.snapshot import FleetSnapshot, VehicleSnapshot
from .entity import V2GFleetEntity, V2GVehicleEntity, async_add_vehicle_entities

PARALLEL_UPDATES = 0


def _below_sla(data: FleetSnapshot) -> bool | None:
    if data.ack_rate_24h is None:
        return None
    return data.ack_rate_24h < data.ack_rate_sla


@dataclass(frozen=True, kw_only=True)
class V2GFleetBinarySensorDescription(BinarySensorEntityDescription):
    """A binary sensor of the fleet device."""

    is_on_fn: Callable[[FleetSnapshot], bool | None]


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
            V2GVehicleBinarySensor(coordinator, description, vehicle_id)
            for description in VEHICLE_BINARY_SENSORS
        ],
    )


class V2GFleetBinarySensor(V2GFleetEntity, BinarySensorEntity):
    """A fleet binary sensor."""

    entity_description: V2GFleetBinarySensorDescription

    @property
    def is_on(self) -> bool | None:
        """Return the state from the latest fleet snapshot."""
        return self.entity_description.is_on_fn(self.coordinator.data)


class V2GVehicleBinarySensor(V2GVehicleEntity, BinarySensorEntity):
    """A vehicle binary sensor."""

    entity_description: V2GVehicleBinarySensorDescription

    @property
    def is_on(self) -> bool | None:
        """Return the state from the vehicle's latest snapshot."""
        vehicle = self.vehicle
        return None if vehicle is None else self.entity_description.is_on_fn(vehicle)
