"""Binary sensors: ack rate below the SLA, vehicle plugged in."""

from __future__ import annotations

import json
from unittest.mock import patch

from homeassistant.const import STATE_OFF, STATE_ON, STATE_UNKNOWN, Platform
from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er
import pytest
from pytest_homeassistant_custom_component.common import (
    async_fire_mqtt_message,
    snapshot_platform,
)
from pytest_homeassistant_custom_component.typing import MqttMockHAClient
from syrupy.assertion import SnapshotAssertion

from custom_components.v2g.const import CONF_ACK_RATE_SLA, CONF_ACK_TIMEOUT, DOMAIN

from .helpers import ENTRY_ID, FleetResponder, async_announce, async_setup_fleet
from .snapshot_format import version_neutral


@pytest.mark.freeze_time("2026-03-01 12:00:00+00:00")
@pytest.mark.usefixtures("entity_registry_enabled_by_default")
async def test_binary_sensors(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    entity_registry: er.EntityRegistry,
    snapshot: SnapshotAssertion,
) -> None:
    with patch("custom_components.v2g.PLATFORMS", [Platform.BINARY_SENSOR]):
        await async_setup_fleet(hass)
        await async_announce(hass, ("car-1", {}), ("car-2", {"Available": False}))
    await snapshot_platform(hass, entity_registry, version_neutral(snapshot), ENTRY_ID)


@pytest.mark.parametrize(("sla", "expected"), [(60.0, STATE_OFF), (70.0, STATE_ON)])
async def test_ack_rate_problem_follows_sla(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, sla: float, expected: str
) -> None:
    await async_setup_fleet(
        hass, options={CONF_ACK_TIMEOUT: 0.05, CONF_ACK_RATE_SLA: sla}
    )
    await async_announce(hass, ("v1", {}), ("v2", {}))
    assert (
        hass.states.get("binary_sensor.depot_ack_rate_below_sla").state == STATE_UNKNOWN
    )
    FleetResponder(hass, fleet_mqtt, {"v2": "reject"})
    await hass.services.async_call(
        DOMAIN,
        "dispatch",
        {
            "config_entry_id": ENTRY_ID,
            "signal_type": "aFRR",
            "power_kw": 4,
            "strategy": "equal",
        },
        blocking=True,
    )
    # v1 acknowledged, v2 rejected, the fallback order to v1 acknowledged: 2/3.
    state = hass.states.get("binary_sensor.depot_ack_rate_below_sla")
    assert state.state == expected


async def test_plugged_in_follows_telemetry(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await async_setup_fleet(hass)
    await async_announce(hass, ("v1", {}))
    assert hass.states.get("binary_sensor.v1_plugged_in").state == STATE_ON
    async_fire_mqtt_message(
        hass, "v2g/vehicle/state/v1", json.dumps({"available": False})
    )
    await async_announce(hass)
    assert hass.states.get("binary_sensor.v1_plugged_in").state == STATE_OFF
