"""Base entities: the fleet (service device) and one device per vehicle.

Every entity writes its state only when what Home Assistant shows of it changed
(availability, the state as displayed, the attributes): a dispatch to a few
vehicles of a large fleet then costs a few state writes, not one per entity. The
vehicle entities listen to their own vehicle only; the coordinator hands them the
changed vehicles in chunks, without blocking the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any, Final
from weakref import WeakKeyDictionary

from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import callback
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers.device_registry import DeviceEntryType, DeviceInfo
from homeassistant.helpers.entity import Entity, EntityDescription
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from homeassistant.helpers.update_coordinator import CoordinatorEntity

from .const import DOMAIN
from .coordinator import V2GConfigEntry, V2GFleetCoordinator
from .engine.snapshot import VehicleSnapshot

MANUFACTURER = "V2G Fleet Dispatch"
FLEET_MODEL: Final = "Fleet dispatcher"
# A vehicle device names its fleet device by registry id (``via_device_id``) where
# the device info has that key (2026.11 deprecates ``via_device``); the floor,
# 2026.2, only takes the fleet device's identifier (``via_device``).
VIA_DEVICE_ID_SUPPORTED: Final = "via_device_id" in DeviceInfo.__optional_keys__
# Vehicles whose entities one ``async_add_entities`` call adds; the loop is free
# between two calls. Home Assistant adds an entity in ~0.3 ms (registries, first
# state): 10 vehicles (110 entities) stay well under 50 ms, where 50 took 100-200 ms
# and a depot's discovery blocked the loop that long ~100 times (issue 16).
ADD_BATCH_VEHICLES: Final = 10
_NOT_WRITTEN: Final = object()
# The fleet device's registry id, per running fleet (see async_fleet_device_id).
_fleet_device_ids: WeakKeyDictionary[V2GFleetCoordinator, str] = WeakKeyDictionary()


def fleet_device_identifier(entry_id: str) -> tuple[str, str]:
    """Return the device registry identifier of a fleet."""
    return (DOMAIN, entry_id)


def fleet_device_info(coordinator: V2GFleetCoordinator) -> DeviceInfo:
    """Return the service device of a fleet."""
    entry = coordinator.config_entry
    return DeviceInfo(
        identifiers={fleet_device_identifier(entry.entry_id)},
        name=entry.title,
        manufacturer=MANUFACTURER,
        model=FLEET_MODEL,
        entry_type=DeviceEntryType.SERVICE,
    )


@callback
def async_fleet_device_id(coordinator: V2GFleetCoordinator) -> str:
    """Return the registry id of the fleet device, registering the device if needed.

    The vehicle devices link to it by id, and a platform may add vehicles before
    any fleet entity registered it. Looked up once per running fleet.
    """
    registry = dr.async_get(coordinator.hass)
    device_id = _fleet_device_ids.get(coordinator)
    if device_id is None or registry.async_get(device_id) is None:
        entry = coordinator.config_entry
        device_id = registry.async_get_or_create(
            config_entry_id=entry.entry_id,
            identifiers={fleet_device_identifier(entry.entry_id)},
            name=entry.title,
            manufacturer=MANUFACTURER,
            model=FLEET_MODEL,
            entry_type=DeviceEntryType.SERVICE,
        ).id
        _fleet_device_ids[coordinator] = device_id
    return device_id


def vehicle_device_identifier(entry_id: str, vehicle_id: str) -> tuple[str, str]:
    """Return the device registry identifier of a vehicle."""
    return (DOMAIN, f"{entry_id}_{vehicle_id}")


def vehicle_device_info(
    coordinator: V2GFleetCoordinator, vehicle: VehicleSnapshot
) -> DeviceInfo:
    """Return the device of one vehicle (attached to the fleet device)."""
    entry_id = coordinator.config_entry.entry_id
    info = DeviceInfo(
        identifiers={vehicle_device_identifier(entry_id, vehicle.vehicle_id)},
        name=vehicle.vehicle_id,
        manufacturer=MANUFACTURER,
        model="V2G vehicle" if vehicle.is_v2g else "Electric vehicle",
        serial_number=vehicle.vehicle_id,
    )
    if VIA_DEVICE_ID_SUPPORTED:
        # Not a key of the floor's DeviceInfo (this branch does not run there).
        info["via_device_id"] = async_fleet_device_id(coordinator)  # type: ignore[typeddict-unknown-key, unused-ignore]
    else:
        info["via_device"] = fleet_device_identifier(entry_id)
    return info


class V2GEntity(Entity):
    """Writes its state only when what Home Assistant shows of it changed."""

    _attr_has_entity_name = True
    _attr_should_poll = False
    # What the last state write showed (see _state_key).
    _written_key: object = _NOT_WRITTEN

    def _state_key(self) -> tuple[Any, ...]:
        """What a state write would show: availability, state, attributes."""
        return (self.available, self._rendered_state(), self.extra_state_attributes)

    def _rendered_state(self) -> Any:
        """The state as it is displayed (sensors round to their precision)."""
        return self.state

    # No write method is overridden (``async_write_ha_state`` is final from 2026.11
    # on, and so is the event entity's ``_async_write_ha_state``): the writes Home
    # Assistant makes by itself and that can change what is shown are followed
    # through its hooks instead.

    async def async_added_to_hass(self) -> None:
        """Remember what Home Assistant's first state write will show.

        It writes right after ``async_added_to_hass`` (the subclasses await
        nothing after this).
        """
        await super().async_added_to_hass()
        self._written_key = self._state_key()

    @callback
    def async_registry_entry_updated(self) -> None:
        """The next change check writes: a new unit or precision changes the display.

        Home Assistant writes the state itself after this hook.
        """
        super().async_registry_entry_updated()
        self._written_key = _NOT_WRITTEN

    @callback
    def async_write_state(self) -> None:
        """Write the state now and remember what it shows."""
        self._written_key = self._state_key()
        self.async_write_ha_state()

    @callback
    def async_write_if_changed(self) -> bool:
        """Write the state if what it shows changed since the last write."""
        if self._state_key() == self._written_key:
            return False
        self.async_write_state()
        return True


class V2GFleetEntity(V2GEntity, CoordinatorEntity[V2GFleetCoordinator]):
    """An entity of the fleet service device (updated with every snapshot)."""

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

    @callback
    def _handle_coordinator_update(self) -> None:
        self.async_write_if_changed()

    @property
    def available(self) -> bool:
        """Return False while the MQTT broker is not connected."""
        return super().available and self.coordinator.data.connected


class V2GVehicleEntity(V2GEntity):
    """An entity of one vehicle device.

    Not a coordinator listener: the coordinator calls the entities of the
    vehicles that changed (``async_add_vehicle_listener``), in chunks.
    """

    def __init__(
        self,
        coordinator: V2GFleetCoordinator,
        description: EntityDescription,
        vehicle_id: str,
    ) -> None:
        """Bind the description to the vehicle's device."""
        self.coordinator = coordinator
        self.entity_description = description
        self.vehicle_id = vehicle_id
        self._attr_unique_id = (
            f"{coordinator.config_entry.entry_id}_{vehicle_id}_{description.key}"
        )
        self._attr_device_info = vehicle_device_info(
            coordinator, coordinator.data.vehicles[vehicle_id]
        )

    async def async_added_to_hass(self) -> None:
        """Listen to the updates of this vehicle."""
        await super().async_added_to_hass()
        self.async_on_remove(
            self.coordinator.vehicle_updates.async_add_listener(
                self.vehicle_id, self._handle_vehicle_update
            )
        )

    @callback
    def _handle_vehicle_update(self) -> None:
        """The vehicle (or the connection) changed: write if this entity did."""
        self.async_write_if_changed()

    @property
    def vehicle(self) -> VehicleSnapshot | None:
        """Return the latest snapshot of this vehicle (None once removed)."""
        return self.coordinator.data.vehicles.get(self.vehicle_id)

    @property
    def available(self) -> bool:
        """Return False when MQTT is down or the vehicle is stale (or gone)."""
        coordinator = self.coordinator
        vehicle = self.vehicle
        return (
            coordinator.last_update_success
            and coordinator.data.connected
            and vehicle is not None
            and not vehicle.stale
        )


def added_by_hand(coordinator: V2GFleetCoordinator, vehicle_id: str) -> bool:
    """Whether a vehicle comes from a config subentry (not from discovery).

    Entities that change with every dispatch of every vehicle are enabled by
    default only for these: a home has a car or two, a depot hundreds.
    """
    vehicle = coordinator.data.vehicles.get(vehicle_id)
    return vehicle is not None and vehicle.subentry_id is not None


def async_add_vehicle_entities(
    entry: V2GConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
    factory: Callable[[str], Iterable[Entity]],
) -> None:
    """Add the entities of every vehicle now, and of every new vehicle later.

    A vehicle that came from a config subentry gets its entities attached to that
    subentry, so deleting the subentry deletes its device too.
    """
    adder = _VehicleEntityAdder(entry, async_add_entities, factory)
    adder.async_add_new()
    entry.async_on_unload(entry.runtime_data.async_add_listener(adder.async_add_new))
    entry.async_on_unload(adder.async_cancel)


class _VehicleEntityAdder:
    """Adds the entities of new vehicles, ``ADD_BATCH_VEHICLES`` at a time.

    The batches come from a tracked task that lets the loop run between two of
    them; the first batch is added right away (eager task).
    """

    def __init__(
        self,
        entry: V2GConfigEntry,
        async_add_entities: AddConfigEntryEntitiesCallback,
        factory: Callable[[str], Iterable[Entity]],
    ) -> None:
        self.entry = entry
        self.coordinator = entry.runtime_data
        self.async_add_entities = async_add_entities
        self.factory = factory
        self.known: set[str] = set()
        self.queue: dict[str, None] = {}
        self.task: asyncio.Task[None] | None = None

    @callback
    def async_add_new(self) -> None:
        """Queue the vehicles without entities (a coordinator listener)."""
        current = self.coordinator.data.vehicles
        known = self.known
        known.intersection_update(current)
        new = [vehicle_id for vehicle_id in current if vehicle_id not in known]
        if not new:
            return
        known.update(new)
        self.queue.update(dict.fromkeys(new))
        if self.task is None or self.task.done():
            self.task = self.entry.async_create_task(
                self.coordinator.hass,
                self._async_add_queued(),
                f"{DOMAIN} add vehicle entities",
            )

    @callback
    def async_cancel(self) -> None:
        """Stop adding (the entry unloads)."""
        self.queue.clear()
        if self.task is not None:
            self.task.cancel()

    async def _async_add_queued(self) -> None:
        while self.queue and self.entry.state in (
            ConfigEntryState.SETUP_IN_PROGRESS,
            ConfigEntryState.LOADED,
        ):
            self._add_batch()
            if self.queue:
                await asyncio.sleep(0)

    def _add_batch(self) -> None:
        vehicles = self.coordinator.data.vehicles
        queue = self.queue
        by_subentry: dict[str | None, list[Entity]] = {}
        for vehicle_id in list(islice(queue, ADD_BATCH_VEHICLES)):
            del queue[vehicle_id]
            vehicle = vehicles.get(vehicle_id)
            if vehicle is None:  # removed while queued
                self.known.discard(vehicle_id)
                continue
            by_subentry.setdefault(vehicle.subentry_id, []).extend(
                self.factory(vehicle_id)
            )
        for subentry_id, entities in by_subentry.items():
            if entities:
                self.async_add_entities(entities, config_subentry_id=subentry_id)
