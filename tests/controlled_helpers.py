"""Helpers of the tests of vehicles controlled through Home Assistant entities."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeassistant.config_entries import SOURCE_USER
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.v2g.const import DOMAIN, SUBENTRY_TYPE_CONTROLLED

from .helpers import ENTRY_ID


async def async_add_controlled_vehicle(
    hass: HomeAssistant,
    entry: MockConfigEntry,
    control: Mapping[str, Any],
    settings: Mapping[str, Any] | None = None,
) -> str:
    """Add a vehicle through the subentry flow (both steps); return its subentry id."""
    result = await hass.config_entries.subentries.async_init(
        (entry.entry_id, SUBENTRY_TYPE_CONTROLLED), context={"source": SOURCE_USER}
    )
    assert result["type"] is FlowResultType.FORM
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], dict(control)
    )
    assert result["type"] is FlowResultType.FORM, result
    assert result["step_id"] == "settings", result.get("errors")
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], dict(settings or {})
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY, result.get("errors")
    await hass.async_block_till_done()
    return next(
        subentry_id
        for subentry_id, subentry in entry.subentries.items()
        if subentry.unique_id == control["vehicle_id"]
    )


async def async_dispatch_afrr(
    hass: HomeAssistant, power_kw: float, minutes: float = 15, **data: Any
) -> dict[str, Any]:
    """Dispatch aFRR to the fleet; return the response once entities are written."""
    response = await hass.services.async_call(
        DOMAIN,
        "dispatch",
        {
            "config_entry_id": ENTRY_ID,
            "signal_type": "aFRR",
            "power_kw": power_kw,
            "duration": {"seconds": minutes * 60},
            **data,
        },
        blocking=True,
        return_response=True,
    )
    assert isinstance(response, dict)
    await hass.async_block_till_done()
    return response
