"""Shared fixtures for the integration tests."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from unittest.mock import AsyncMock, MagicMock, Mock, PropertyMock, patch

import pytest
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

# Import our package first: otherwise Home Assistant mounts the test plugin's own
# `custom_components` namespace and cannot find `v2g`.
import custom_components.v2g  # noqa: F401


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations(
    enable_custom_integrations: None,
) -> Generator[None]:
    """Let Home Assistant load integrations from custom_components."""
    return


@pytest.fixture
def mock_setup_entry() -> Generator[AsyncMock]:
    """Keep the runtime out of the tests of a form (config, options, subentries)."""
    with (
        patch(
            "custom_components.v2g.async_setup_entry", return_value=True
        ) as setup_entry,
        patch("custom_components.v2g.async_unload_entry", return_value=True),
    ):
        yield setup_entry


@pytest.fixture
def fast_mqtt_subscriptions() -> Generator[None]:
    """Let the MQTT client confirm subscriptions without its real-time cooldown."""
    with (
        patch("homeassistant.components.mqtt.client.INITIAL_SUBSCRIBE_COOLDOWN", 0.0),
        patch("homeassistant.components.mqtt.client.SUBSCRIBE_COOLDOWN", 0.0),
        patch("homeassistant.components.mqtt.client.UNSUBSCRIBE_COOLDOWN", 0.0),
    ):
        yield


@pytest.fixture
async def mqtt_mock(
    mqtt_mock: MqttMockHAClient, mqtt_client_mock: MagicMock
) -> AsyncGenerator[MqttMockHAClient]:
    """The test plugin's MQTT mock, whose socket closes at the end like a real one.

    Home Assistant's MQTT client runs a timer from the socket's opening to its
    closing; the mocked paho client never closes it, and the test plugin of
    2026.10 and newer fails a test that leaves a timer behind.
    """
    yield mqtt_mock
    mqtt_client_mock.on_socket_close(
        mqtt_client_mock, None, Mock(fileno=Mock(return_value=-1))
    )


@pytest.fixture
async def fleet_mqtt(
    fast_mqtt_subscriptions: None, mqtt_mock: MqttMockHAClient
) -> MqttMockHAClient:
    """The MQTT mock, set up after the cooldowns are patched."""
    return mqtt_mock


@pytest.fixture
def entity_registry_enabled_by_default() -> Generator[None]:
    """Register every entity enabled (as Home Assistant core's tests do)."""
    with patch(
        "homeassistant.helpers.entity.Entity.entity_registry_enabled_default",
        return_value=True,
        new_callable=PropertyMock,
    ):
        yield


@pytest.fixture
def outcome_events_enabled() -> Generator[None]:
    """Register the dispatch outcome events of discovered vehicles enabled too.

    For the tests of those events: they are disabled by default for discovered
    vehicles (docs/entities.md#dispatch-outcome-event).
    """
    with patch(
        "custom_components.v2g.event.V2GDispatchOutcomeEvent"
        ".entity_registry_enabled_default",
        return_value=True,
        new_callable=PropertyMock,
    ):
        yield
