"""Describe V2G Fleet Dispatch events in the logbook."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from homeassistant.components.logbook.const import (
    LOGBOOK_ENTRY_MESSAGE,
    LOGBOOK_ENTRY_NAME,
)
from homeassistant.core import Event, HomeAssistant, callback

from .const import ATTR_CONFIG_ENTRY_ID, DEFAULT_NAME, DOMAIN, EVENT_DISPATCH_COMPLETED


def _number(value: Any) -> str:
    if isinstance(value, (int, float)):
        return f"{round(float(value), 3):g}"
    return "?"


def describe_dispatch(data: dict[str, Any]) -> str:
    """Return the one-line summary of a finished dispatch."""
    signal = data.get("signal")
    signal = signal if isinstance(signal, dict) else {}
    power = data.get("requested_kw", signal.get("power_kw"))
    kind = signal.get("type", "?")
    status = data.get("status", "?")
    if status == "planned":
        return f"planned {_number(power)} kW {kind} (dry run)"
    rate = data.get("ack_rate")
    percent = (
        f"{round(float(rate) * 100):d} %" if isinstance(rate, (int, float)) else "? %"
    )
    return f"dispatched {_number(power)} kW {kind}: {status}, {percent} acknowledged"


@callback
def async_describe_events(
    hass: HomeAssistant,
    async_describe_event: Callable[[str, str, Callable[[Event], dict[str, str]]], None],
) -> None:
    """Describe the dispatch completion event."""

    @callback
    def async_describe_dispatch(event: Event) -> dict[str, str]:
        name = DEFAULT_NAME
        entry_id = event.data.get(ATTR_CONFIG_ENTRY_ID)
        if isinstance(entry_id, str) and (
            entry := hass.config_entries.async_get_entry(entry_id)
        ):
            name = entry.title
        return {
            LOGBOOK_ENTRY_NAME: name,
            LOGBOOK_ENTRY_MESSAGE: describe_dispatch(dict(event.data)),
        }

    async_describe_event(DOMAIN, EVENT_DISPATCH_COMPLETED, async_describe_dispatch)
