"""MQTT adapter: topic templates, order publishing, subscription confirmation."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from unittest.mock import AsyncMock, Mock, patch

from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
import pytest
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.v2g.channels import GatewayChannel, OrderRouter, VehicleChannel
from custom_components.v2g.engine import Order, SignalType
from custom_components.v2g.transport import (
    SubscriptionGate,
    TopicTemplate,
    async_subscribe_all,
    gateway_template,
)

from .helpers import flush_subscriptions, loop_iterations


def _order(vehicle_id: str, gateway: str | None = None, dispatch: str = "d1") -> Order:
    return Order(
        command_id=f"c-{vehicle_id}",
        vehicle_id=vehicle_id,
        power_kw=5.0,
        timestamp_ms=1_000,
        dispatch_id=dispatch,
        signal_type=SignalType.FCR,
        duration_s=60.0,
        expires_at_ms=61_000,
        gateway=gateway,
    )


def _transport(hass: HomeAssistant, qos: int = 1) -> OrderRouter:
    return OrderRouter(
        hass,
        [
            GatewayChannel(
                hass,
                gateway_template("v2g/gateway/{gateway_id}/commands"),
                gateway_template("v2g/gateway/{gateway_id}/acks"),
                qos,
            ),
            VehicleChannel(
                hass,
                TopicTemplate("vehicle/{vehicle_id}/command"),
                TopicTemplate("vehicle/{vehicle_id}/ack"),
                qos,
            ),
        ],
    )


def test_topic_template() -> None:
    template = TopicTemplate("fleet/{vehicle_id}/ack")
    assert template.format("car-1") == "fleet/car-1/ack"
    assert template.wildcard == "fleet/+/ack"
    assert template.extract("fleet/car-1/ack") == "car-1"
    assert template.extract("fleet/car-1/nack") is None
    assert template.extract("fleet/car-1/ack/extra") is None
    assert template.extract("fleet//ack") is None
    assert TopicTemplate("plain/topic").extract("plain/topic") is None
    gateway = gateway_template("v2g/gateway/{gateway_id}/acks")
    assert gateway.extract("v2g/gateway/gw-7/acks") == "gw-7"
    assert gateway.wildcard == "v2g/gateway/+/acks"


async def test_publish_routes_per_vehicle_and_per_gateway(hass: HomeAssistant) -> None:
    transport = _transport(hass, qos=2)
    transport.before_publish = AsyncMock()
    calls: list[tuple[str, Any, int, bool]] = []

    async def publish(
        hass: HomeAssistant, topic: str, payload: Any, qos: int, retain: bool
    ) -> None:
        calls.append((topic, payload, qos, retain))
        if topic == "vehicle/bad/command":
            raise HomeAssistantError("refused")
        if topic == "v2g/gateway/gw-bad/commands":
            raise RuntimeError("gateway down")

    orders = [
        _order("a"),
        _order("g1", "gw"),
        _order("bad"),
        _order("g2", "gw"),
        _order("g3", "gw-bad"),
        _order("g4", "gw", dispatch="d2"),
    ]
    with patch("custom_components.v2g.channels.mqtt.async_publish", publish):
        assert await transport.publish([]) == []
        results = await transport.publish(orders)

    transport.before_publish.assert_awaited_once()
    assert results[0] is None
    assert results[1] is None
    assert isinstance(results[2], HomeAssistantError)
    assert results[3] is None
    assert isinstance(results[4], RuntimeError)
    assert results[5] is None
    assert transport.published == 4
    assert transport.failed == 2
    topics = sorted(call[0] for call in calls)
    assert topics == [
        "v2g/gateway/gw-bad/commands",
        "v2g/gateway/gw/commands",
        "v2g/gateway/gw/commands",
        "vehicle/a/command",
        "vehicle/bad/command",
    ]
    for _, payload, qos, retain in calls:
        assert qos == 2
        assert retain is False
        assert isinstance(payload, bytes)
    batches = [json.loads(c[1]) for c in calls if c[0] == "v2g/gateway/gw/commands"]
    by_dispatch = {
        b["dispatch_id"]: [o["vehicle_id"] for o in b["orders"]] for b in batches
    }
    assert by_dispatch == {"d1": ["g1", "g2"], "d2": ["g4"]}


async def test_publish_does_not_swallow_cancellation(hass: HomeAssistant) -> None:
    transport = _transport(hass)
    with (
        patch(
            "custom_components.v2g.channels.mqtt.async_publish",
            side_effect=asyncio.CancelledError,
        ),
        pytest.raises(asyncio.CancelledError),
    ):
        await transport.publish([_order("a")])


async def test_gate_opens_once_subscriptions_are_confirmed(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    gate = SubscriptionGate()
    gate.async_watch(hass, "test/+/ack", 1)
    gate.async_watch(hass, "test/+/gw", 1)
    assert not gate.is_set
    unsubs = await async_subscribe_all(
        hass, [("test/+/ack", Mock(), 1), ("test/+/gw", Mock(), 1)]
    )
    await flush_subscriptions(hass)
    async with asyncio.timeout(1):
        await gate.async_wait()
    assert gate.is_set
    gate.async_close()
    for unsub in unsubs:
        unsub()


async def test_gate_already_active_subscription(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    unsubs = await async_subscribe_all(hass, [("again/+/ack", Mock(), 1)])
    await flush_subscriptions(hass)
    gate = SubscriptionGate()
    gate.async_watch(hass, "again/+/ack", 1)
    await hass.async_block_till_done()
    assert gate.is_set
    gate.async_close()
    unsubs[0]()


async def test_subscribe_all_rolls_back(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    first = Mock()
    with (
        patch(
            "custom_components.v2g.transport.mqtt.async_subscribe",
            side_effect=[first, HomeAssistantError("no")],
        ),
        pytest.raises(HomeAssistantError),
    ):
        await async_subscribe_all(hass, [("a/+", Mock(), 0), ("b/+", Mock(), 0)])
    first.assert_called_once()


async def test_publish_starts_a_chunk_per_loop_iteration(hass: HomeAssistant) -> None:
    """A large batch never starts all its publish calls in one loop iteration."""
    transport = _transport(hass)
    started_at: list[int] = []
    orders = [_order(f"v{i}") for i in range(7)] + [_order("g", "gw")]
    with loop_iterations(hass) as iteration:

        async def publish(
            hass: HomeAssistant, topic: str, payload: Any, qos: int, retain: bool
        ) -> None:
            started_at.append(iteration())
            await asyncio.sleep(0)

        with (
            patch("custom_components.v2g.channels.PUBLISH_CHUNK", 3),
            patch("custom_components.v2g.channels.mqtt.async_publish", publish),
        ):
            results = await transport.publish(orders)
    assert results == [None] * 8
    assert transport.published == 8
    assert len(started_at) == 8  # 7 vehicle orders + 1 gateway batch
    per_iteration = {i: started_at.count(i) for i in set(started_at)}
    assert sorted(per_iteration.values()) == [2, 3, 3]


async def test_publish_cancelled_between_chunks_cancels_started_calls(
    hass: HomeAssistant,
) -> None:
    transport = _transport(hass)
    waiting: list[asyncio.Future[None]] = []
    first_chunk_started = asyncio.Event()

    async def publish(
        hass: HomeAssistant, topic: str, payload: Any, qos: int, retain: bool
    ) -> None:
        future: asyncio.Future[None] = hass.loop.create_future()
        waiting.append(future)
        if len(waiting) == 2:
            first_chunk_started.set()
        await future

    with (
        patch("custom_components.v2g.channels.PUBLISH_CHUNK", 2),
        patch("custom_components.v2g.channels.mqtt.async_publish", publish),
    ):
        task = hass.async_create_task(
            transport.publish([_order(f"v{i}") for i in range(6)])
        )
        await first_chunk_started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(waiting) < 6
    assert all(future.cancelled() for future in waiting)
