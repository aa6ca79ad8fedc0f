"""Logbook description of the dispatch completion event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from homeassistant.components.logbook.const import (
    LOGBOOK_ENTRY_MESSAGE,
    LOGBOOK_ENTRY_NAME,
)
from homeassistant.core import Event, HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.v2g.const import DOMAIN, EVENT_DISPATCH_COMPLETED
from custom_components.v2g.logbook import async_describe_events, describe_dispatch


def _describer(hass: HomeAssistant) -> Callable[[Event], dict[str, str]]:
    found: dict[tuple[str, str], Callable[[Event], dict[str, str]]] = {}

    def register(domain: str, event_type: str, describe: Any) -> None:
        found[(domain, event_type)] = describe

    async_describe_events(hass, register)
    return found[(DOMAIN, EVENT_DISPATCH_COMPLETED)]


async def test_describe_dispatch_event(hass: HomeAssistant) -> None:
    entry = MockConfigEntry(domain=DOMAIN, title="Depot")
    entry.add_to_hass(hass)
    describe = _describer(hass)
    data = {
        "config_entry_id": entry.entry_id,
        "status": "completed",
        "signal": {"type": "FCR", "power_kw": 20.0},
        "requested_kw": 20.0,
        "ack_rate": 1.0,
    }
    assert describe(Event(EVENT_DISPATCH_COMPLETED, data)) == {
        LOGBOOK_ENTRY_NAME: "Depot",
        LOGBOOK_ENTRY_MESSAGE: "dispatched 20 kW FCR: completed, 100 % acknowledged",
    }
    unknown = describe(
        Event(EVENT_DISPATCH_COMPLETED, {**data, "config_entry_id": "gone"})
    )
    assert unknown[LOGBOOK_ENTRY_NAME] == "V2G fleet"


def test_describe_dispatch_texts() -> None:
    assert (
        describe_dispatch(
            {
                "status": "partial",
                "signal": {"type": "aFRR", "power_kw": -7.5},
                "requested_kw": -7.5,
                "ack_rate": 2 / 3,
            }
        )
        == "dispatched -7.5 kW aFRR: partial, 67 % acknowledged"
    )
    assert (
        describe_dispatch(
            {"status": "planned", "signal": {"type": "MA", "power_kw": 3.0}}
        )
        == "planned 3 kW MA (dry run)"
    )
    assert (
        describe_dispatch({"status": "failed", "signal": "junk", "ack_rate": None})
        == "dispatched ? kW ?: failed, ? % acknowledged"
    )
