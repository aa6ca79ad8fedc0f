"""Base entities: the fleet (service device) and one device per vehicle."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from homeassistant.core import callback
from homeassistant.helpers.device_registry import DeviceEntryType, DeviceInfo
from homeassistant.helpers.entity import Entity, EntityDescription
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from homeassistant.helpers.update_coordinator import CoordinatorEntity

from .const import DOMAIN
from .coordinator import V2GConfigEntry, V2GFleetCoordinator, VehicleSnapshot

MANUFACTURER = "V2G Fleet Dispatch"


def fleet_device_info(coordinator: V2GFleetCoordinator) -> DeviceInfo:
    """Return the service device of a fleet."""
    entry = coordinator.config_entry
    return DeviceInfo(
        identifiers={(DOMAIN, entry.entry_id)},
        name=entry.title,
        manufacturer=MANUFACTURER,
        model="Fleet dispatcher",
        entry_type=DeviceEntryType.SERVICE,
    )


def vehicle_device_identifier(entry_id: str, vehicle_id: str) -> tuple[str, str]:
    """Return the device registry identifier of a vehicle."""
    return (DOMAIN, f"{entry_id}_{vehicle_id}")


def vehicle_device_info(
    coordinator: V2GFleetCoordinator, vehicle: VehicleSnapshot
) -> DeviceInfo:
    """Return the device of one vehicle (attached to the fleet device)."""
    entry_id = coordinator.config_entry.entry_id
    return DeviceInfo(
        identifiers={vehicle_device_identifier(entry_id, vehicle.vehicle_id)},
        name=vehicle.vehicle_id,
        manufacturer=MANUFACTURER,
        model="V2G vehicle" if vehicle.is_v2g else "Electric vehicle",
        serial_number=vehicle.vehicle_id,
        via_device=(DOMAIN, entry_id),
    )


class V2GFleetEntity(CoordinatorEntity[V2GFleetCoordinator]):
    """An entity of the fleet service device."""

    _attr_has_entity_name = True

    def __init__(
        self, coordinator: V2GFleetCoordinator, description: EntityDescription
    ) -> None:
        """Bind the description to the fleet device."""
        super().__init__(coordinator)
        self.entity_description = description
        self._attr_unique_id = (
            f"{coordinator.config_entry.entry_id}_fleet_{description.key}"
        )
        self._attr_device_info = fleet_device_info(coordinator)

    @property
    def available(self) -> bool:
        """Return False while the MQTT broker is not connected."""
        return super().available and self.coordinator.data.connected


class V2GVehicleEntity(CoordinatorEntity[V2GFleetCoordinator]):
    """An entity of one vehicle device."""

    _attr_has_entity_name = True

    def __init__(
        self,
        coordinator: V2GFleetCoordinator,
        description: EntityDescription,
        vehicle_id: str,
    ) -> None:
        """Bind the description to the vehicle's device."""
        super().__init__(coordinator)
        self.entity_description = description
        self.vehicle_id = vehicle_id
        self._attr_unique_id = (
            f"{coordinator.config_entry.entry_id}_{vehicle_id}_{description.key}"
        )
        self._attr_device_info = vehicle_device_info(
            coordinator, coordinator.data.vehicles[vehicle_id]
        )
        # What the state written when the entity is added reflects.
        self._written = (coordinator.data.connected, self.vehicle)

    @callback
    def _handle_coordinator_update(self) -> None:
        """Write the state only when this vehicle (or the connection) changed.

        A dispatch to a few vehicles of a large fleet then costs a few state
        writes, not one per entity of the fleet.
        """
        current = (self.coordinator.data.connected, self.vehicle)
        if current == self._written:
            return
        self._written = current
        super()._handle_coordinator_update()

    @property
    def vehicle(self) -> VehicleSnapshot | None:
        """Return the latest snapshot of this vehicle (None once removed)."""
        return self.coordinator.data.vehicles.get(self.vehicle_id)

    @property
    def available(self) -> bool:
        """Return False when MQTT is down or the vehicle is stale (or gone)."""
        vehicle = self.vehicle
        return (
            super().available
            and self.coordinator.data.connected
            and vehicle is not None
            and not vehicle.stale
        )


def async_add_vehicle_entities(
    entry: V2GConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
    factory: Callable[[str], Iterable[Entity]],
) -> None:
    """Add the entities of every vehicle now, and of every new vehicle later.

    A vehicle that came from a config subentry gets its entities attached to that
    subentry, so deleting the subentry deletes its device too.
    """
    coordinator = entry.runtime_data
    known: set[str] = set()

    def _add_new() -> None:
        current = coordinator.data.vehicles
        known.intersection_update(current)
        by_subentry: dict[str | None, list[Entity]] = {}
        for vehicle_id, vehicle in current.items():
            if vehicle_id in known:
                continue
            known.add(vehicle_id)
            by_subentry.setdefault(vehicle.subentry_id, []).extend(factory(vehicle_id))
        for subentry_id, entities in by_subentry.items():
            if entities:
                async_add_entities(entities, config_subentry_id=subentry_id)

    _add_new()
    entry.async_on_unload(coordinator.async_add_listener(_add_new))
