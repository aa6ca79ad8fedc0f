"""Diagnostics of a fleet: options, topics, fleet summary, counters, recent log."""

from __future__ import annotations

from typing import Any

from homeassistant.components.diagnostics import async_redact_data
from homeassistant.core import HomeAssistant

from .const import CONF_WEBHOOK_ID
from .coordinator import V2GConfigEntry

TO_REDACT = {CONF_WEBHOOK_ID, "password", "username", "token"}
LOG_ENTRIES = 20


async def async_get_config_entry_diagnostics(
    hass: HomeAssistant, entry: V2GConfigEntry
) -> dict[str, Any]:
    """Return the diagnostics of a config entry (webhook id redacted)."""
    coordinator = entry.runtime_data
    return {
        "entry": {
            "title": entry.title,
            "data": async_redact_data(dict(entry.data), TO_REDACT),
            "options": async_redact_data(dict(entry.options), TO_REDACT),
            "subentries": [
                {
                    "type": subentry.subentry_type,
                    "title": subentry.title,
                    "data": async_redact_data(dict(subentry.data), TO_REDACT),
                }
                for subentry in entry.subentries.values()
            ],
        },
        "effective_options": async_redact_data(coordinator.options, TO_REDACT),
        "topics": coordinator.topics,
        **coordinator.diagnostics(LOG_ENTRIES),
    }
