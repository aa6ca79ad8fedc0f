"""Command channels: how an order reaches a vehicle and how its answer comes back.

The engine hands a dispatch's orders to one :class:`OrderRouter` (its
``OrderTransport``). The router gives each order to the first channel that
claims it and starts every channel's sends `PUBLISH_CHUNK` per loop iteration.
A channel also says where its answers arrive (`answer_routes`), and hands them
to the engine, which matches them to the pending orders.

Two channels exist (docs/protocol.md): :class:`VehicleChannel`, one MQTT message
per order on the vehicle's command topic, and :class:`GatewayChannel`, one batch
per gateway and dispatch. A new way to reach vehicles is one more class with
the same three members, added to the router's list; the dispatch logic does not
change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
import functools
from typing import Any, Protocol

from homeassistant.components import mqtt
from homeassistant.core import HomeAssistant

from .const import (
    CONF_ACK_TOPIC,
    CONF_COMMAND_TOPIC,
    CONF_GATEWAY_ACK_TOPIC,
    CONF_GATEWAY_COMMAND_TOPIC,
    MAX_VEHICLE_PAYLOAD_BYTES,
)
from .engine import (
    MAX_GATEWAY_PAYLOAD_BYTES,
    DispatchEngine,
    Order,
    async_chunks,
    encode_gateway_batch,
    encode_order,
)
from .intake import Apply, Route
from .transport import TopicTemplate, gateway_template

# Sends started per event-loop iteration: starting the first step of 10,000
# publish calls in one iteration would block the loop for ~100 ms.
PUBLISH_CHUNK = 250


@dataclass(frozen=True, slots=True)
class Send:
    """One message (or call) carrying some orders of a dispatch."""

    indexes: list[int]  # positions of its orders in the dispatched sequence
    start: Callable[[], Coroutine[Any, Any, None]]


class CommandChannel(Protocol):
    """A way to reach vehicles."""

    def claims(self, order: Order) -> bool:
        """Return True if this channel carries the order."""

    def sends(self, orders: Sequence[Order], indexes: Sequence[int]) -> list[Send]:
        """Group the claimed orders (their positions) into sends."""

    def answer_routes(self, engine: DispatchEngine) -> list[Route]:
        """The subscriptions on which the answers arrive, handed to ``engine``."""


class _MqttChannel:
    """A channel that publishes on a command topic and reads answers on an ack topic."""

    def __init__(
        self,
        hass: HomeAssistant,
        command_topic: TopicTemplate,
        ack_topic: TopicTemplate,
        qos: int,
    ) -> None:
        """Bind the channel to its topic templates."""
        self._hass = hass
        self._command = command_topic
        self._ack = ack_topic
        self._qos = qos

    def _answers(self, kind: str, max_bytes: int, apply: Apply) -> list[Route]:
        """One confirmed subscription to the ack topic (a dispatch waits for it)."""
        return [Route(kind, self._ack, max_bytes, apply, self._qos, confirmed=True)]


class VehicleChannel(_MqttChannel):
    """One MQTT message per order on the vehicle's command topic."""

    def claims(self, order: Order) -> bool:
        """Every order without a gateway."""
        return not order.gateway

    def sends(self, orders: Sequence[Order], indexes: Sequence[int]) -> list[Send]:
        """One send per order (encoded when it starts)."""
        return [
            Send([index], functools.partial(self._publish, orders[index]))
            for index in indexes
        ]

    def _publish(self, order: Order) -> Coroutine[Any, Any, None]:
        return _publish(
            self._hass,
            self._command.format(order.vehicle_id),
            encode_order(order),
            self._qos,
        )

    def answer_routes(self, engine: DispatchEngine) -> list[Route]:
        """Acks on the vehicle's ack topic."""
        return self._answers(
            "ack",
            MAX_VEHICLE_PAYLOAD_BYTES,
            lambda vehicle_id, payload: (
                engine.handle_ack(vehicle_id or "", payload) is not None
            ),
        )


class GatewayChannel(_MqttChannel):
    """One batch per gateway and dispatch on the gateway's command topic."""

    def claims(self, order: Order) -> bool:
        """Orders to vehicles that named a gateway."""
        return bool(order.gateway)

    def sends(self, orders: Sequence[Order], indexes: Sequence[int]) -> list[Send]:
        """One send per (gateway, dispatch)."""
        batches: dict[tuple[str, str], list[int]] = {}
        for index in indexes:
            order = orders[index]
            batches.setdefault((order.gateway or "", order.dispatch_id), []).append(
                index
            )
        return [
            Send(
                batch,
                functools.partial(
                    self._publish, gateway, dispatch_id, [orders[i] for i in batch]
                ),
            )
            for (gateway, dispatch_id), batch in batches.items()
        ]

    def _publish(
        self, gateway: str, dispatch_id: str, orders: list[Order]
    ) -> Coroutine[Any, Any, None]:
        return _publish(
            self._hass,
            self._command.format(gateway),
            encode_gateway_batch(dispatch_id, orders),
            self._qos,
        )

    def answer_routes(self, engine: DispatchEngine) -> list[Route]:
        """Batches of acks on the gateway's ack topic."""
        return self._answers(
            "gateway_ack",
            MAX_GATEWAY_PAYLOAD_BYTES,
            lambda gateway_id, payload: (
                engine.handle_gateway_acks(payload, gateway_id) is not None
            ),
        )


def _publish(
    hass: HomeAssistant, topic: str, payload: bytes, qos: int
) -> Coroutine[Any, Any, None]:
    # Bytes go out as they are (a str would be encoded again by HA's client).
    return mqtt.async_publish(hass, topic, payload, qos=qos, retain=False)


def mqtt_channels(
    hass: HomeAssistant, topics: Mapping[str, str], qos: int
) -> list[CommandChannel]:
    """The MQTT channels of a fleet's topics: gateways first, then vehicles."""
    return [
        GatewayChannel(
            hass,
            gateway_template(topics[CONF_GATEWAY_COMMAND_TOPIC]),
            gateway_template(topics[CONF_GATEWAY_ACK_TOPIC]),
            qos,
        ),
        VehicleChannel(
            hass,
            TopicTemplate(topics[CONF_COMMAND_TOPIC]),
            TopicTemplate(topics[CONF_ACK_TOPIC]),
            qos,
        ),
    ]


class OrderRouter:
    """The engine's transport: each order through the first channel claiming it."""

    def __init__(self, hass: HomeAssistant, channels: Sequence[CommandChannel]) -> None:
        """Route through ``channels`` (first match wins)."""
        self._hass = hass
        self.channels = list(channels)
        self.published = 0
        self.failed = 0
        # Awaited before the first send (the fleet saves its in-flight record
        # there, so a crash mid-dispatch leaves a record of the orders).
        self.before_publish: Callable[[], Awaitable[None]] | None = None

    def _sends(self, orders: Sequence[Order]) -> list[Send]:
        claimed: list[list[int]] = [[] for _ in self.channels]
        for index, order in enumerate(orders):
            for position, channel in enumerate(self.channels):
                if channel.claims(order):
                    claimed[position].append(index)
                    break
            else:
                raise ValueError(f"no channel reaches vehicle {order.vehicle_id}")
        sends: list[Send] = []
        for channel, indexes in zip(self.channels, claimed, strict=True):
            if indexes:
                sends.extend(channel.sends(orders, indexes))
        return sends

    async def publish(self, orders: Sequence[Order]) -> list[Exception | None]:
        """Send every order; return one result per order, in the same order.

        Never raises for a failed send (its orders get the exception); a
        cancellation cancels the sends already started.
        """
        results: list[Exception | None] = [None] * len(orders)
        if not orders:
            return results
        if self.before_publish is not None:
            await self.before_publish()
        sends = self._sends(orders)
        outcomes = await self._start_in_chunks(sends)
        for send, outcome in zip(sends, outcomes, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(
                outcome, Exception
            ):
                raise outcome  # CancelledError & co. must not be swallowed
            for index in send.indexes:
                results[index] = outcome
            if outcome is None:
                self.published += len(send.indexes)
            else:
                self.failed += len(send.indexes)
        return results

    async def _start_in_chunks(
        self, sends: Sequence[Send]
    ) -> list[BaseException | None]:
        tasks: list[asyncio.Task[None]] = []
        create_task = self._hass.loop.create_task
        try:
            async for chunk in async_chunks(sends, PUBLISH_CHUNK):
                tasks.extend(create_task(send.start()) for send in chunk)
            return await asyncio.gather(*tasks, return_exceptions=True)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
