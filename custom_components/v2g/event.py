"""Per-vehicle dispatch outcome events: acknowledged, rejected, timeout."""

from __future__ import annotations

from typing import Any

from homeassistant.components.event import EventEntity, EventEntityDescription
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .coordinator import V2GConfigEntry, V2GFleetCoordinator
from .entity import V2GVehicleEntity, added_by_hand, async_add_vehicle_entities
from .vehicle_updates import OUTCOME_EVENT_TYPES

PARALLEL_UPDATES = 0

DISPATCH_OUTCOME = EventEntityDescription(
    key="dispatch_outcome",
    translation_key="dispatch_outcome",
    event_types=list(OUTCOME_EVENT_TYPES),
)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: V2GConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    """Add the outcome event entity of every (new) vehicle."""
    coordinator = entry.runtime_data
    async_add_vehicle_entities(
        entry,
        async_add_entities,
        lambda vehicle_id: [V2GDispatchOutcomeEvent(coordinator, vehicle_id)],
    )


class V2GDispatchOutcomeEvent(V2GVehicleEntity, EventEntity):
    """Fires when an order to this vehicle is acknowledged, rejected or timed out.

    Written when it fires and when its availability changes, never because its
    vehicle's other values changed. Enabled by default only for a vehicle added
    by hand: Home Assistant's logbook shows every event entity's state, so a
    discovered fleet would add a line per vehicle to every dispatch (the
    dispatch's own line names the vehicles that failed, docs/entities.md).
    """

    def __init__(self, coordinator: V2GFleetCoordinator, vehicle_id: str) -> None:
        """Create the event entity of one vehicle."""
        super().__init__(coordinator, DISPATCH_OUTCOME, vehicle_id)
        self._attr_entity_registry_enabled_default = added_by_hand(
            coordinator, vehicle_id
        )

    def _state_key(self) -> tuple[Any, ...]:
        # The state and attributes only change when it fires (which writes).
        return (self.available,)

    async def async_added_to_hass(self) -> None:
        """Listen to the dispatch outcomes of this vehicle."""
        await super().async_added_to_hass()
        self.async_on_remove(
            self.coordinator.vehicle_updates.async_subscribe_outcomes(
                self.vehicle_id, self._async_handle_outcome
            )
        )

    @callback
    def _async_handle_outcome(
        self, event_type: str, attributes: dict[str, Any]
    ) -> None:
        self._trigger_event(event_type, attributes)
        self.async_write_state()
