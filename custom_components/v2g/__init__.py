"""V2G Fleet Dispatch: dispatch grid flexibility signals to an EV fleet over MQTT."""

from __future__ import annotations

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ConfigEntryNotReady

from .const import DOMAIN

type V2GConfigEntry = ConfigEntry[None]


async def async_setup_entry(hass: HomeAssistant, entry: V2GConfigEntry) -> bool:
    """Set up a fleet once Home Assistant's MQTT client is ready."""
    if not await mqtt.util.async_wait_for_mqtt_client(hass):
        raise ConfigEntryNotReady(
            translation_domain=DOMAIN, translation_key="mqtt_not_ready"
        )
    return True


async def async_unload_entry(hass: HomeAssistant, entry: V2GConfigEntry) -> bool:
    """Unload a fleet."""
    return True
