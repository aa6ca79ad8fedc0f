"""Config entry setup and unload."""

from __future__ import annotations

import copy
from datetime import timedelta
import json
import logging
import re
from typing import Any
from unittest.mock import patch

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntryState
from homeassistant.const import EVENT_HOMEASSISTANT_STOP, EVENT_STATE_CHANGED
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import device_registry as dr, issue_registry as ir
from homeassistant.helpers.dispatcher import async_dispatcher_send
from homeassistant.setup import async_setup_component
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_capture_events,
    async_fire_mqtt_message,
    async_fire_time_changed,
)
from pytest_homeassistant_custom_component.typing import (
    MqttMockHAClient,
    MqttMockPahoClient,
    WebSocketGenerator,
)
import yaml

from custom_components.v2g import binary_sensor, event, sensor
from custom_components.v2g.const import CONF_TELEMETRY_MODE, DOMAIN

from .helpers import (
    COMPONENT_DIR,
    STRINGS,
    FleetResponder,
    async_announce,
    async_setup_fleet,
    flush_subscriptions,
)


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
        "homeassistant.components.mqtt.async_wait_for_mqtt_client",
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
        "homeassistant.components.mqtt.async_subscribe",
        side_effect=HomeAssistantError("not now"),
    ):
        await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.SETUP_RETRY


async def test_unload_releases_everything(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    mqtt_client_mock: MqttMockPahoClient,
    hass_storage: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After unload nothing of the fleet is left: subscriptions, timers, listeners."""
    topics = {
        "vehicle/+/ack",
        "v2g/gateway/+/acks",
        "v2g/fleet/response/+",
        "v2g/vehicle/state/+",
        "v2g/telemetry/response/+",
    }
    entry = MockConfigEntry(
        domain=DOMAIN,
        title="Depot",
        options={CONF_TELEMETRY_MODE: "hybrid"},
    )
    entry.add_to_hass(hass)
    # One setup and unload first: what Home Assistant itself keeps after the
    # first load (platforms, registries) is the baseline.
    await async_setup_fleet(hass, entry=entry)
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    baseline = hass.bus.async_listeners()

    mqtt_client_mock.subscribe.reset_mock()
    mqtt_client_mock.unsubscribe.reset_mock()
    await async_setup_fleet(hass, entry=entry)
    await async_announce(hass, ("v1", {}))
    FleetResponder(hass, fleet_mqtt)
    await hass.services.async_call(
        DOMAIN,
        "dispatch",
        {"config_entry_id": entry.entry_id, "signal_type": "FCR", "power_kw": 5},
        blocking=True,
    )
    # Home Assistant 2026.2 subscribes in lists of (topic, qos); 2026.11 sends
    # each wildcard on its own: subscribe(topic, qos, properties=...).
    subscribed = {
        topic
        for call in mqtt_client_mock.subscribe.call_args_list
        for topic in (
            [call.args[0]]
            if isinstance(call.args[0], str)
            else [item[0] for item in call.args[0]]
        )
    }
    assert topics <= subscribed
    # The fleet listens to Home Assistant stopping (and its entities to more).
    loaded = hass.bus.async_listeners()
    assert loaded[EVENT_HOMEASSISTANT_STOP] > baseline[EVENT_HOMEASSISTANT_STOP]

    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.NOT_LOADED
    # Every subscription is given back to the broker.
    await flush_subscriptions(hass)
    unsubscribed = {
        topic
        for call in mqtt_client_mock.unsubscribe.call_args_list
        for topic in call.args[0]
    }
    assert topics <= unsubscribed
    assert hass.bus.async_listeners() == baseline

    stored = copy.deepcopy(hass_storage)
    changes = async_capture_events(hass, EVENT_STATE_CHANGED)
    fleet_mqtt.async_publish.reset_mock()
    with caplog.at_level(logging.DEBUG, logger="custom_components.v2g"):
        caplog.clear()
        # Messages on every topic, a broker reconnect, Home Assistant stopping,
        # and a day of timers (housekeeping, polls, debouncers, store delays).
        for topic in (
            "vehicle/v1/ack",
            "v2g/gateway/gw/acks",
            "v2g/fleet/response/v2",
            "v2g/vehicle/state/v1",
            "v2g/telemetry/response/v1",
        ):
            async_fire_mqtt_message(hass, topic, "{broken")
        async_dispatcher_send(hass, mqtt.MQTT_CONNECTION_STATE, False)
        async_dispatcher_send(hass, mqtt.MQTT_CONNECTION_STATE, True)
        hass.bus.async_fire(EVENT_HOMEASSISTANT_STOP)
        async_fire_time_changed(hass, dt_util.utcnow() + timedelta(days=1))
        await hass.async_block_till_done(wait_background_tasks=True)
    # ... are ignored quietly: nothing is written, published, logged or saved.
    assert not [r for r in caplog.records if r.name.startswith("custom_components")]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [
        e
        for e in changes
        if e.data["entity_id"].startswith(("sensor.", "binary_sensor.", "event."))
    ]
    assert not fleet_mqtt.async_publish.called
    assert {k: v for k, v in hass_storage.items() if k.startswith("v2g.")} == {
        k: v for k, v in stored.items() if k.startswith("v2g.")
    }


async def test_initial_discovery_failure_is_only_logged(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The discovery request sent after setup may fail: the fleet loads anyway."""
    fleet_mqtt.async_publish.side_effect = HomeAssistantError("broker refused")
    with caplog.at_level(logging.DEBUG, logger="custom_components.v2g"):
        entry = await async_setup_fleet(hass)
        await hass.async_block_till_done(wait_background_tasks=True)
    assert entry.state is ConfigEntryState.LOADED
    assert fleet_mqtt.async_publish.call_args.args[:2] == (
        "v2g/fleet/discovery",
        "hello",
    )
    assert "Initial discovery request not sent: broker refused" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_setup_retries_while_mqtt_is_starting(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    issue_registry: ir.IssueRegistry,
) -> None:
    entry = MockConfigEntry(domain=DOMAIN, data={}, title="Fleet")
    entry.add_to_hass(hass)
    with patch(
        "homeassistant.components.mqtt.async_wait_for_mqtt_client",
        return_value=False,
    ):
        await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.SETUP_RETRY
    # MQTT is configured, only late: no repair issue.
    assert issue_registry.async_get_issue(DOMAIN, "mqtt_not_configured") is None


async def test_remove_foreign_device_refused(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    device_registry: dr.DeviceRegistry,
    hass_ws_client: WebSocketGenerator,
) -> None:
    """A device of the entry that is not one of its vehicles is not removed."""
    assert await async_setup_component(hass, "config", {})
    entry = await async_setup_fleet(hass)
    device = device_registry.async_get_or_create(
        config_entry_id=entry.entry_id,
        identifiers={("other", "x"), (DOMAIN, "unrelated")},
    )
    client = await hass_ws_client(hass)
    await client.send_json_auto_id(
        {
            "type": "config/device_registry/remove_config_entry",
            "config_entry_id": entry.entry_id,
            "device_id": device.id,
        }
    )
    assert not (await client.receive_json())["success"]
    assert device_registry.async_get(device.id) is not None


def test_strings_cover_every_key() -> None:
    """Every translation key the HA layer uses has an English string."""
    root, strings = COMPONENT_DIR, STRINGS
    # The errors raised by every module of the HA layer, wherever they live.
    sources = "".join(path.read_text() for path in sorted(root.glob("*.py")))
    raised = set(
        re.findall(r'translation_domain=DOMAIN,\s*translation_key="([a-z_]+)"', sources)
    )
    assert "dispatch_interrupted" in raised  # the pattern still finds them
    for key in raised:
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
    root, strings = COMPONENT_DIR, STRINGS
    services = yaml.safe_load((root / "services.yaml").read_text())
    for spec in services.values():
        for field in spec["fields"].values():
            select = (field.get("selector") or {}).get("select")
            if select and "translation_key" in select:
                options = strings["selector"][select["translation_key"]]["options"]
                assert set(select["options"]) <= set(options)
