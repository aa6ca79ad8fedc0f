"""Sensors: the fleet and vehicle sensors (snapshot) and their values."""

from __future__ import annotations

from unittest.mock import patch

from homeassistant.const import Platform
from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers.entity import Entity
import pytest
from pytest_homeassistant_custom_component.common import snapshot_platform
from pytest_homeassistant_custom_component.typing import MqttMockHAClient
from syrupy.assertion import SnapshotAssertion

from custom_components.v2g.const import (
    CONF_ACK_TIMEOUT,
    CONF_EMISSION_FACTOR,
    CONF_PREDICTION,
    DOMAIN,
)

from .helpers import ENTRY_ID, FleetResponder, async_announce, async_setup_fleet
from .snapshot_format import version_neutral


@pytest.mark.freeze_time("2026-03-01 12:00:00+00:00")
@pytest.mark.usefixtures("entity_registry_enabled_by_default")
async def test_sensors(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    entity_registry: er.EntityRegistry,
    snapshot: SnapshotAssertion,
) -> None:
    with patch("custom_components.v2g.PLATFORMS", [Platform.SENSOR]):
        await async_setup_fleet(
            hass,
            options={CONF_EMISSION_FACTOR: 56.0, CONF_PREDICTION: "static_profile"},
        )
        await async_announce(
            hass, ("car-1", {"SoC": 0.65}), ("car-2", {"IsV2G": False})
        )
    await snapshot_platform(hass, entity_registry, version_neutral(snapshot), ENTRY_ID)


@pytest.mark.usefixtures("entity_registry_enabled_by_default")
async def test_sensor_values_after_dispatch(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
) -> None:
    await async_setup_fleet(hass, options={CONF_ACK_TIMEOUT: 0.05})
    await async_announce(hass, ("v1", {"MaxPower": 10.0}), ("v2", {"MaxPower": 10.0}))
    assert hass.states.get("sensor.depot_vehicles_available").state == "2"
    assert hass.states.get("sensor.depot_flexibility_available_up").state == "20.0"
    assert hass.states.get("sensor.depot_flexibility_available_down").state == "20.0"
    assert hass.states.get("sensor.depot_last_dispatch").state == "unknown"
    assert hass.states.get("sensor.depot_ack_rate_24_h").state == "unknown"
    assert hass.states.get("sensor.v1_ack_rate").state == "unknown"
    # Optional sensors are only there when their option is on.
    assert hass.states.get("sensor.v1_co2_avoided") is None
    assert hass.states.get("sensor.v1_availability_forecast") is None

    FleetResponder(hass, fleet_mqtt, {"v2": "ignore"})
    response = await hass.services.async_call(
        DOMAIN,
        "dispatch",
        {
            "config_entry_id": ENTRY_ID,
            "signal_type": "MA",
            "power_kw": -6,
            "strategy": "equal",
        },
        blocking=True,
        return_response=True,
    )
    assert response is not None
    # The fleet entities are written before the response, the vehicles' just after.
    assert hass.states.get("sensor.depot_last_requested_power").state == "-6.0"
    assert hass.states.get("sensor.v1_setpoint").state == "0.0"
    await hass.async_block_till_done()
    state = hass.states.get("sensor.depot_last_dispatch")
    assert state.state == response["started_at"].split(".")[0] + "+00:00"
    assert hass.states.get("sensor.depot_last_requested_power").state == "-6.0"
    assert hass.states.get("sensor.v1_setpoint").state != "0.0"
    assert float(hass.states.get("sensor.depot_ack_latency_p95").state) >= 0
    assert float(hass.states.get("sensor.v1_last_ack_latency").state) >= 0
    assert hass.states.get("sensor.v2_last_ack_latency").state == "unknown"


async def test_vehicle_latency_sensor_disabled_by_default(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    entity_registry: er.EntityRegistry,
) -> None:
    """Per-vehicle latency changes with every dispatch: off unless enabled."""
    await async_setup_fleet(hass)
    await async_announce(hass, ("v1", {}))
    entry = entity_registry.async_get("sensor.v1_last_ack_latency")
    assert entry is not None
    assert entry.disabled_by is er.RegistryEntryDisabler.INTEGRATION
    assert hass.states.get("sensor.v1_last_ack_latency") is None
    assert hass.states.get("sensor.depot_ack_latency_p95") is not None


async def test_state_writes_are_bounded(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await async_setup_fleet(hass, options={CONF_ACK_TIMEOUT: 0.05})
    await async_announce(hass, *[(f"v{i}", {}) for i in range(1, 11)])
    FleetResponder(hass, fleet_mqtt)
    written: list[str] = []
    original = Entity.async_write_ha_state

    def spy(self: Entity) -> None:
        written.append(self.entity_id)
        original(self)

    with patch.object(Entity, "async_write_ha_state", spy):
        await hass.services.async_call(
            DOMAIN,
            "dispatch",
            {
                "config_entry_id": ENTRY_ID,
                "signal_type": "aFRR",
                "power_kw": 4,
                "vehicles": ["v1"],
            },
            blocking=True,
        )
        await hass.async_block_till_done()
    # Each entity at most once; the vehicles that got no order not at all; the
    # outcome events of discovered vehicles are disabled by default.
    assert len(written) == len(set(written))
    assert not [e for e in written if e.startswith(("sensor.v2_", "event."))]
    assert "sensor.v1_setpoint" in written
