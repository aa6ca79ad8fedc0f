"""V2G Fleet Dispatch: dispatch grid flexibility signals to an EV fleet over MQTT."""

from __future__ import annotations

from homeassistant.components import mqtt
from homeassistant.config_entries import (
    SIGNAL_CONFIG_ENTRY_CHANGED,
    ConfigEntry,
    ConfigEntryChange,
    ConfigEntryState,
)
from homeassistant.const import Platform
from homeassistant.core import HomeAssistant, callback
from homeassistant.exceptions import ConfigEntryNotReady, HomeAssistantError
from homeassistant.helpers import config_validation as cv, issue_registry as ir
from homeassistant.helpers.device_registry import DeviceEntry
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.typing import ConfigType

from .broker_health import BrokerHealth
from .const import DOMAIN, LOGGER
from .coordinator import V2GConfigEntry, V2GFleetCoordinator
from .held_setpoints import SetpointHolder
from .persistence import FleetPersistence
from .services import async_setup_services
from .webhook import async_setup_webhook

__all__ = ["V2GConfigEntry"]

PLATFORMS: list[Platform] = [Platform.BINARY_SENSOR, Platform.EVENT, Platform.SENSOR]
CONFIG_SCHEMA = cv.config_entry_only_config_schema(DOMAIN)

MQTT_DOMAIN = "mqtt"
ISSUE_MQTT_NOT_CONFIGURED = "mqtt_not_configured"


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """Register the actions and follow the MQTT integration's config entries."""
    async_setup_services(hass)

    @callback
    def _mqtt_entry_changed(change: ConfigEntryChange, entry: ConfigEntry) -> None:
        """Raise the repair issue and restart the fleets when MQTT is removed."""
        if (
            change is not ConfigEntryChange.REMOVED
            or entry.domain != MQTT_DOMAIN
            or hass.config_entries.async_entries(MQTT_DOMAIN)
        ):
            return
        fleets = hass.config_entries.async_entries(DOMAIN)
        if not fleets:
            return
        _async_create_mqtt_issue(hass)
        for fleet in fleets:
            if fleet.state is ConfigEntryState.LOADED:
                # Setup waits for MQTT again (retrying) and clears the issue.
                hass.config_entries.async_schedule_reload(fleet.entry_id)

    async_dispatcher_connect(hass, SIGNAL_CONFIG_ENTRY_CHANGED, _mqtt_entry_changed)
    return True


@callback
def _async_create_mqtt_issue(hass: HomeAssistant) -> None:
    ir.async_create_issue(
        hass,
        DOMAIN,
        ISSUE_MQTT_NOT_CONFIGURED,
        is_fixable=False,
        severity=ir.IssueSeverity.ERROR,
        translation_key=ISSUE_MQTT_NOT_CONFIGURED,
    )


async def async_setup_entry(hass: HomeAssistant, entry: V2GConfigEntry) -> bool:
    """Set up a fleet once Home Assistant's MQTT client is ready."""
    if not hass.config_entries.async_entries(MQTT_DOMAIN):
        # Not set up at all (or removed): the user has to act.
        _async_create_mqtt_issue(hass)
        raise ConfigEntryNotReady(
            translation_domain=DOMAIN, translation_key="mqtt_not_ready"
        )
    if not await mqtt.async_wait_for_mqtt_client(hass):
        raise ConfigEntryNotReady(
            translation_domain=DOMAIN, translation_key="mqtt_not_ready"
        )
    ir.async_delete_issue(hass, DOMAIN, ISSUE_MQTT_NOT_CONFIGURED)

    # The fleet is loaded before the engine is built around it.
    persistence = FleetPersistence(hass, entry.entry_id)
    restored = await persistence.async_load()
    coordinator = V2GFleetCoordinator(hass, entry, persistence, restored)
    # Judges measured power: learned limits and "Not following" (engine/limits.py).
    coordinator.fleet.delivery_tolerance = coordinator.config.delivery_tolerance
    # Lost messages become repair issues (broker_health.py).
    health = BrokerHealth(
        hass,
        entry,
        fleet=coordinator.fleet,
        fleet_input=coordinator.fleet_input,
        stale_timeout=coordinator.config.stale_timeout,
        is_controlled=coordinator.manual.controlled.is_controlled,
        monotonic=coordinator.runtime.monotonic,
    )
    entry.async_on_unload(health.async_stop)
    try:
        await coordinator.async_setup()
        await health.async_start()
    except HomeAssistantError as err:
        health.async_stop()
        await coordinator.async_shutdown()
        raise ConfigEntryNotReady(
            translation_domain=DOMAIN, translation_key="mqtt_not_ready"
        ) from err
    # The coordinator shuts down (subscriptions, timers, stores) on unload.
    entry.runtime_data = coordinator
    # Undoes itself on unload (entry.async_on_unload).
    async_setup_webhook(hass, entry)
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    return True


async def async_unload_entry(hass: HomeAssistant, entry: V2GConfigEntry) -> bool:
    """Unload a fleet: platforms first, then subscriptions, timers and listeners."""
    return await hass.config_entries.async_unload_platforms(entry, PLATFORMS)


async def async_remove_entry(hass: HomeAssistant, entry: V2GConfigEntry) -> None:
    """Delete the stored fleet, dispatch log, in-flight markers and held setpoints."""
    await FleetPersistence(hass, entry.entry_id).async_remove()
    await SetpointHolder(hass, entry).async_remove()


async def async_remove_config_entry_device(
    hass: HomeAssistant, entry: V2GConfigEntry, device_entry: DeviceEntry
) -> bool:
    """Allow removing a vehicle device when the vehicle is stale or unknown."""
    coordinator = entry.runtime_data
    prefix = f"{entry.entry_id}_"
    for domain, identifier in device_entry.identifiers:
        if domain != DOMAIN or not identifier.startswith(prefix):
            continue
        vehicle_id = identifier.removeprefix(prefix)
        if coordinator.manual.is_manual(vehicle_id):
            LOGGER.info(
                "Vehicle %s was added by hand: delete its entry instead", vehicle_id
            )
            return False
        if not coordinator.is_stale(vehicle_id):
            return False
        coordinator.async_remove_vehicle(vehicle_id)
        return True
    return False
