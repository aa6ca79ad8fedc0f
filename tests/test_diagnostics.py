"""Diagnostics of a fleet entry."""

from __future__ import annotations

from typing import Any

from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
import pytest
from pytest_homeassistant_custom_component.common import async_fire_mqtt_message
from pytest_homeassistant_custom_component.components.diagnostics import (
    get_diagnostics_for_config_entry,
    get_diagnostics_for_device,
)
from pytest_homeassistant_custom_component.typing import (
    ClientSessionGenerator,
    MqttMockHAClient,
)
from syrupy.assertion import SnapshotAssertion
from syrupy.filters import props

from custom_components.v2g.const import CONF_WEBHOOK_ENABLED, CONF_WEBHOOK_ID, DOMAIN

from .helpers import (
    ENTRY_ID,
    FleetResponder,
    async_announce,
    async_dispatch,
    async_setup_fleet,
    find_device,
    flush_subscriptions,
)


def assert_rounded(data: Any, key: str = "") -> None:
    """kW, kWh and ms to 3 decimals, other numbers to 4, at any depth."""
    if isinstance(data, float):
        decimals = 3 if key.endswith(("_kw", "_kwh", "_ms")) else 4
        assert round(data, decimals) == data, (key, data)
    elif isinstance(data, dict):
        for name, item in data.items():
            assert_rounded(item, name)
    elif isinstance(data, list):
        for item in data:
            assert_rounded(item, key)


@pytest.mark.freeze_time("2026-03-01 12:00:00+00:00")
async def test_diagnostics(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
    snapshot: SnapshotAssertion,
) -> None:
    entry = await async_setup_fleet(
        hass,
        options={CONF_WEBHOOK_ENABLED: True, CONF_WEBHOOK_ID: "secret-hook-id"},
    )
    await async_announce(hass, ("car-1", {}), ("car-2", {"gateway": "depot"}))
    async_fire_mqtt_message(hass, "vehicle/car-1/ack", "{broken")
    async_fire_mqtt_message(
        hass, "vehicle/car-1/ack", '{"command_id": "spoofed-or-replayed"}'
    )
    await hass.async_block_till_done()
    # The broker's subscription confirmation arrives a moment after setup.
    for _ in range(20):
        await flush_subscriptions(hass)
        if entry.runtime_data.gate_open:
            break
    FleetResponder(hass, fleet_mqtt)
    await hass.services.async_call(
        DOMAIN,
        "dispatch",
        {
            "config_entry_id": ENTRY_ID,
            "signal_type": "aFRR",
            "power_kw": 5,
            "dry_run": True,
        },
        blocking=True,
    )
    diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, entry)
    assert "secret-hook-id" not in str(diagnostics)
    assert diagnostics["dropped_input"] == {"ack_malformed": 1}
    assert diagnostics["ack_tracker"]["counters"]["unknown"] == 1
    assert diagnostics == snapshot(exclude=props("dispatch_id", "last_seen"))


async def test_diagnostics_stay_bounded_on_a_depot(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
) -> None:
    """A large fleet: a sample of vehicles and latencies summarised, not listed."""
    entry = await async_setup_fleet(hass)
    await async_announce(hass, *((f"car-{i:02}", {}) for i in range(30)))
    FleetResponder(hass, fleet_mqtt)
    await async_dispatch(hass, signal_type="aFRR", power_kw=30)

    diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, entry)
    assert diagnostics["fleet"]["vehicles"] == 30
    assert list(diagnostics["fleet"]["sample"]) == [f"car-{i:02}" for i in range(20)]
    latency = diagnostics["metrics"]["latency_ms"]
    assert latency["count"] == 30
    assert latency["p50"] <= latency["p95"] <= latency["max"]
    assert "latencies_ms" not in str(diagnostics)


async def test_vehicle_device_diagnostics_hold_that_vehicle_only(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
    device_registry: dr.DeviceRegistry,
) -> None:
    entry = await async_setup_fleet(hass)
    # What a car reports is shown rounded, not with its float noise.
    noisy = {"SoC": 0.6206423999999999, "MaxPower": 7.123456789}
    await async_announce(hass, ("car-1", noisy), ("car-2", {}))
    FleetResponder(hass, fleet_mqtt)
    await async_dispatch(hass, signal_type="aFRR", power_kw=8, strategy="equal")

    car = find_device(device_registry, (DOMAIN, f"{ENTRY_ID}_car-1"))
    assert car is not None
    diagnostics = await get_diagnostics_for_device(hass, hass_client, entry, car)
    assert diagnostics["vehicle_id"] == "car-1"
    assert diagnostics["setpoint_kw"] == 4.0
    assert diagnostics["stats"]["acknowledged"] == 1
    [dispatched] = diagnostics["recent_dispatches"]
    assert dispatched["initial"]["status"] == "acknowledged"
    assert "car-2" not in str(diagnostics)
    assert diagnostics["vehicle"]["soc"] == 0.6206
    assert diagnostics["vehicle"]["max_power_kw"] == 7.123
    assert_rounded(diagnostics)
    fleet_file = await get_diagnostics_for_config_entry(hass, hass_client, entry)
    assert fleet_file["fleet"]["sample"]["car-1"]["vehicle"]["soc"] == 0.6206
    assert_rounded(fleet_file)

    fleet = find_device(device_registry, (DOMAIN, ENTRY_ID))
    assert fleet is not None
    summary = await get_diagnostics_for_device(hass, hass_client, entry, fleet)
    assert summary["metrics"]["dispatches"] == 1
