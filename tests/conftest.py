"""Shared fixtures for the integration tests."""

from __future__ import annotations

from collections.abc import Generator
from unittest.mock import PropertyMock, patch

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
def fast_mqtt_subscriptions() -> Generator[None]:
    """Let the MQTT client confirm subscriptions without its real-time cooldown."""
    with (
        patch("homeassistant.components.mqtt.client.INITIAL_SUBSCRIBE_COOLDOWN", 0.0),
        patch("homeassistant.components.mqtt.client.SUBSCRIBE_COOLDOWN", 0.0),
        patch("homeassistant.components.mqtt.client.UNSUBSCRIBE_COOLDOWN", 0.0),
    ):
        yield


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
