"""Diagnostics of a fleet entry."""

from __future__ import annotations

from homeassistant.core import HomeAssistant
import pytest
from pytest_homeassistant_custom_component.common import async_fire_mqtt_message
from pytest_homeassistant_custom_component.components.diagnostics import (
    get_diagnostics_for_config_entry,
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
    async_setup_fleet,
    flush_subscriptions,
)


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
