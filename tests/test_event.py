"""Event entities: the outcome of each order sent to a vehicle."""

from __future__ import annotations

from unittest.mock import patch

from homeassistant.components.event import ATTR_EVENT_TYPE
from homeassistant.const import STATE_UNKNOWN, Platform
from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er
import pytest
from pytest_homeassistant_custom_component.common import snapshot_platform
from pytest_homeassistant_custom_component.typing import MqttMockHAClient
from syrupy.assertion import SnapshotAssertion

from custom_components.v2g.const import CONF_ACK_TIMEOUT, CONF_FALLBACK, DOMAIN

from .helpers import ENTRY_ID, FleetResponder, async_announce, async_setup_fleet
from .snapshot_format import version_neutral


@pytest.mark.freeze_time("2026-03-01 12:00:00+00:00")
@pytest.mark.usefixtures("entity_registry_enabled_by_default")
async def test_event_entities(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    entity_registry: er.EntityRegistry,
    snapshot: SnapshotAssertion,
) -> None:
    with patch("custom_components.v2g.PLATFORMS", [Platform.EVENT]):
        await async_setup_fleet(hass)
        await async_announce(hass, ("car-1", {}))
    await snapshot_platform(hass, entity_registry, version_neutral(snapshot), ENTRY_ID)


@pytest.mark.usefixtures("outcome_events_enabled")
async def test_outcome_events(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await async_setup_fleet(
        hass, options={CONF_ACK_TIMEOUT: 0.05, CONF_FALLBACK: "none"}
    )
    await async_announce(hass, ("v1", {}), ("v2", {}), ("v3", {}), ("v4", {}))
    assert hass.states.get("event.v1_dispatch_outcome").state == STATE_UNKNOWN
    FleetResponder(
        hass,
        fleet_mqtt,
        {"v1": "ack", "v2": "reject", "v3": "ignore", "v4": "fail"},
    )
    with patch("custom_components.v2g.engine.DispatchSettings.retry_backoff_s", 0.0):
        response = await hass.services.async_call(
            DOMAIN,
            "dispatch",
            {
                "config_entry_id": ENTRY_ID,
                "signal_type": "MA",
                "power_kw": 8,
                "strategy": "equal",
            },
            blocking=True,
            return_response=True,
        )
    assert response is not None
    # The events fire with the vehicle entity updates, just after the response.
    assert hass.states.get("event.v1_dispatch_outcome").state == STATE_UNKNOWN
    await hass.async_block_till_done()

    acked = hass.states.get("event.v1_dispatch_outcome")
    assert acked.attributes[ATTR_EVENT_TYPE] == "acknowledged"
    assert acked.attributes["dispatch_id"] == response["dispatch_id"]
    assert acked.attributes["signal_type"] == "MA"
    assert acked.attributes["round"] == "initial"
    assert acked.attributes["power_kw"] == 2.0
    assert acked.attributes["latency_ms"] is not None
    assert acked.attributes["command_id"] == response["vehicles"]["v1"]["command_id"]

    rejected = hass.states.get("event.v2_dispatch_outcome")
    assert rejected.attributes[ATTR_EVENT_TYPE] == "rejected"
    assert rejected.attributes["reason"] == "battery too hot"

    timeout = hass.states.get("event.v3_dispatch_outcome")
    assert timeout.attributes[ATTR_EVENT_TYPE] == "timeout"
    # A failed publish never reached the vehicle: no outcome event.
    assert hass.states.get("event.v4_dispatch_outcome").state == STATE_UNKNOWN
