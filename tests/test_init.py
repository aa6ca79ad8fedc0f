"""Config entry setup and unload."""

from __future__ import annotations

import json
from pathlib import Path
import re
from typing import Any
from unittest.mock import Mock, patch

from homeassistant.components import mqtt
from homeassistant.components.mqtt.models import DATA_MQTT
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import issue_registry as ir
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_fire_mqtt_message,
)
from pytest_homeassistant_custom_component.typing import MqttMockHAClient
import yaml

from custom_components.v2g import (
    async_remove_config_entry_device,
    binary_sensor,
    event,
    sensor,
)
from custom_components.v2g.const import CONF_TELEMETRY_MODE, DOMAIN

from .helpers import async_announce, async_setup_fleet


async def test_setup_and_unload(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient
) -> None:
    entry = MockConfigEntry(domain=DOMAIN, data={}, title="Fleet")
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.LOADED
    assert await hass.config_entries.async_unload(entry.entry_id)
    assert entry.state is ConfigEntryState.NOT_LOADED


async def test_setup_retries_without_mqtt(hass: HomeAssistant) -> None:
    entry = MockConfigEntry(domain=DOMAIN, data={}, title="Fleet")
    entry.add_to_hass(hass)
    with patch(
        "homeassistant.components.mqtt.util.async_wait_for_mqtt_client",
        return_value=False,
    ):
        await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.SETUP_RETRY


async def test_setup_creates_repair_issue_without_mqtt(
    hass: HomeAssistant, issue_registry: ir.IssueRegistry
) -> None:
    entry = MockConfigEntry(domain=DOMAIN, data={}, title="Fleet")
    entry.add_to_hass(hass)
    await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.SETUP_RETRY
    issue = issue_registry.async_get_issue(DOMAIN, "mqtt_not_configured")
    assert issue is not None
    assert issue.translation_key == "mqtt_not_configured"
    assert issue.severity is ir.IssueSeverity.ERROR


async def test_repair_issue_cleared_when_mqtt_is_back(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    issue_registry: ir.IssueRegistry,
) -> None:
    ir.async_create_issue(
        hass,
        DOMAIN,
        "mqtt_not_configured",
        is_fixable=False,
        severity=ir.IssueSeverity.ERROR,
        translation_key="mqtt_not_configured",
    )
    await async_setup_fleet(hass)
    assert issue_registry.async_get_issue(DOMAIN, "mqtt_not_configured") is None


async def test_mqtt_removed_raises_issue_and_restarts(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    issue_registry: ir.IssueRegistry,
) -> None:
    entry = await async_setup_fleet(hass)
    mqtt_entry = hass.config_entries.async_entries("mqtt")[0]
    assert await hass.config_entries.async_remove(mqtt_entry.entry_id)
    await hass.async_block_till_done()
    assert issue_registry.async_get_issue(DOMAIN, "mqtt_not_configured") is not None
    assert entry.state is ConfigEntryState.SETUP_RETRY


async def test_subscription_failure_retries_setup(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = MockConfigEntry(domain=DOMAIN, data={}, title="Fleet")
    entry.add_to_hass(hass)
    with patch(
        "custom_components.v2g.transport.mqtt.async_subscribe",
        side_effect=HomeAssistantError("not now"),
    ):
        await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.SETUP_RETRY


async def test_unload_releases_everything(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    real_subscribe = mqtt.async_subscribe
    unsubscribers: list[Mock] = []

    async def spy_subscribe(*args: Any, **kwargs: Any) -> Mock:
        unsub = Mock(side_effect=await real_subscribe(*args, **kwargs))
        unsubscribers.append(unsub)
        return unsub

    with patch("custom_components.v2g.transport.mqtt.async_subscribe", spy_subscribe):
        entry = await async_setup_fleet(hass, options={CONF_TELEMETRY_MODE: "hybrid"})
    await async_announce(hass, ("v1", {}))
    coordinator = entry.runtime_data
    assert len(unsubscribers) == 5  # ack, gateway ack, discovery, state, response

    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.NOT_LOADED
    for unsub in unsubscribers:
        unsub.assert_called_once()
    assert coordinator._unsubs == []
    assert coordinator._outcome_listeners == {}
    assert not coordinator._listeners
    # No MQTT callback of ours is left on the client.
    client = hass.data[DATA_MQTT].client
    for topic in ("vehicle/+/ack", "v2g/gateway/+/acks", "v2g/vehicle/state/+"):
        assert not client.is_active_subscription(topic)
    # Messages after unload are ignored quietly.
    async_fire_mqtt_message(hass, "vehicle/v1/ack", "{}")
    await hass.async_block_till_done()
    assert coordinator.counters == {}


async def test_setup_retries_while_mqtt_is_starting(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    issue_registry: ir.IssueRegistry,
) -> None:
    entry = MockConfigEntry(domain=DOMAIN, data={}, title="Fleet")
    entry.add_to_hass(hass)
    with patch(
        "homeassistant.components.mqtt.util.async_wait_for_mqtt_client",
        return_value=False,
    ):
        await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.SETUP_RETRY
    # MQTT is configured, only late: no repair issue.
    assert issue_registry.async_get_issue(DOMAIN, "mqtt_not_configured") is None


async def test_remove_foreign_device_refused(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = await async_setup_fleet(hass)
    device = Mock(identifiers={("other", "x"), (DOMAIN, "unrelated")})
    assert not await async_remove_config_entry_device(hass, entry, device)


def test_strings_cover_every_key() -> None:
    """Every translation key the HA layer uses has an English string."""
    root = Path(__file__).parent.parent / "custom_components" / "v2g"
    strings = json.loads((root / "translations" / "en.json").read_text())
    sources = "".join(
        (root / name).read_text()
        for name in ("__init__.py", "coordinator.py", "services.py")
    )
    for key in set(re.findall(r'translation_key="([a-z_]+)"', sources)):
        assert key in strings["exceptions"] or key in strings["issues"], key
    entity = strings["entity"]
    for platform, descriptions in (
        ("sensor", [*sensor.FLEET_SENSORS, *sensor.VEHICLE_SENSORS]),
        (
            "binary_sensor",
            [
                *binary_sensor.FLEET_BINARY_SENSORS,
                *binary_sensor.VEHICLE_BINARY_SENSORS,
            ],
        ),
        ("event", [event.DISPATCH_OUTCOME]),
    ):
        for description in descriptions:
            assert description.translation_key in entity[platform], description.key
    for state in sensor.DISPATCH_STATUSES:
        assert state in entity["sensor"]["last_dispatch_status"]["state"]
    for event_type in event.DISPATCH_OUTCOME.event_types or []:
        assert (
            event_type
            in (
                entity["event"]["dispatch_outcome"]["state_attributes"]["event_type"][
                    "state"
                ]
            )
        )
    services = yaml.safe_load((root / "services.yaml").read_text())
    icons = json.loads((root / "icons.json").read_text())
    for service, spec in services.items():
        assert service in icons["services"]
        fields = strings["services"][service]["fields"]
        assert set(spec["fields"]) == set(fields), service


def test_service_selectors_use_existing_translations() -> None:
    root = Path(__file__).parent.parent / "custom_components" / "v2g"
    strings = json.loads((root / "translations" / "en.json").read_text())
    services = yaml.safe_load((root / "services.yaml").read_text())
    for spec in services.values():
        for field in spec["fields"].values():
            select = (field.get("selector") or {}).get("select")
            if select and "translation_key" in select:
                options = strings["selector"][select["translation_key"]]["options"]
                assert set(select["options"]) <= set(options)
