"""MQTT adapter: engine orders -> Home Assistant's MQTT client, and subscriptions.

* :class:`TopicTemplate` turns a template such as ``vehicle/{vehicle_id}/ack`` into
  a concrete topic, a ``+`` wildcard for subscribing, and back (topic -> id).
* :class:`MqttOrderTransport` implements the engine's ``OrderTransport`` protocol:
  a batch of orders is published per vehicle on the command topic, or grouped per
  gateway on the gateway command topic as ``{"dispatch_id", "orders": [...]}``;
  every publish uses an explicit ``int`` QoS and ``retain=False``; the outcome is
  reported per order (``None`` or the exception), never raised.
* :class:`SubscriptionGate` turns ``mqtt.async_on_subscribe_done`` into an
  ``asyncio.Event`` a dispatch awaits before its first publish, so no early
  acknowledgment can be lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from homeassistant.components import mqtt
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback

from .const import GATEWAY_ID_PLACEHOLDER, VEHICLE_ID_PLACEHOLDER
from .engine import async_chunks, encode_gateway_batch, encode_order

if TYPE_CHECKING:
    from .engine import Order

# Publish calls started per event-loop iteration (see `MqttOrderTransport.publish`).
PUBLISH_CHUNK = 250


@dataclass(frozen=True, slots=True)
class TopicTemplate:
    """A topic template with one placeholder level (``{vehicle_id}``/``{gateway_id}``)."""

    template: str
    placeholder: str = VEHICLE_ID_PLACEHOLDER
    _levels: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _index: int | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Split the template once."""
        levels = tuple(self.template.split("/"))
        object.__setattr__(self, "_levels", levels)
        index = levels.index(self.placeholder) if self.placeholder in levels else None
        object.__setattr__(self, "_index", index)

    def format(self, value: str) -> str:
        """Return the concrete topic for one vehicle (or gateway)."""
        return self.template.replace(self.placeholder, value)

    @property
    def wildcard(self) -> str:
        """Return the subscription filter (``+`` in place of the placeholder)."""
        return self.template.replace(self.placeholder, "+")

    def extract(self, topic: str) -> str | None:
        """Return the id a concrete topic carries, or None when it does not match."""
        if self._index is None:
            return None
        levels = topic.split("/")
        if len(levels) != len(self._levels):
            return None
        for position, (got, want) in enumerate(zip(levels, self._levels, strict=True)):
            if position == self._index:
                continue
            if got != want:
                return None
        value = levels[self._index]
        return value or None


def gateway_template(template: str) -> TopicTemplate:
    """Return a gateway topic template (``{gateway_id}`` placeholder)."""
    return TopicTemplate(template, GATEWAY_ID_PLACEHOLDER)


class MqttOrderTransport:
    """Publish engine orders through Home Assistant's MQTT integration."""

    def __init__(
        self,
        hass: HomeAssistant,
        command_topic: TopicTemplate,
        gateway_command_topic: TopicTemplate,
        qos: int,
    ) -> None:
        """Create the transport of one fleet."""
        self._hass = hass
        self._command = command_topic
        self._gateway_command = gateway_command_topic
        self._qos = int(qos)
        self.published = 0
        self.failed = 0
        # Awaited before each publish call (the coordinator saves its in-flight
        # markers there, so a crash mid-dispatch leaves a record of the orders).
        self.before_publish: Callable[[], Awaitable[None]] | None = None

    def _jobs(self, orders: Sequence[Order]) -> list[_PublishJob]:
        """One publish per vehicle order, one per gateway (and dispatch) batch."""
        jobs: list[_PublishJob] = []
        batches: dict[tuple[str, str], list[int]] = {}
        for index, order in enumerate(orders):
            if order.gateway:
                key = (order.gateway, order.dispatch_id)
                batches.setdefault(key, []).append(index)
            else:
                jobs.append(_PublishJob([index], None))
        for (gateway, _dispatch_id), indexes in batches.items():
            jobs.append(_PublishJob(indexes, gateway))
        return jobs

    def _start(self, job: _PublishJob, orders: Sequence[Order]) -> asyncio.Task[None]:
        """Encode one job's message and start publishing it."""
        if job.gateway is None:
            order = orders[job.indexes[0]]
            topic = self._command.format(order.vehicle_id)
            payload = encode_order(order)
        else:
            batch = [orders[i] for i in job.indexes]
            topic = self._gateway_command.format(job.gateway)
            payload = encode_gateway_batch(batch[0].dispatch_id, batch)
        # Bytes go out as they are (a str would be encoded again by HA's client).
        return self._hass.loop.create_task(
            mqtt.async_publish(self._hass, topic, payload, qos=self._qos, retain=False)
        )

    async def publish(self, orders: Sequence[Order]) -> list[Exception | None]:
        """Publish every order; return one result per order, in the same order.

        The publish calls start `PUBLISH_CHUNK` at a time, one chunk per loop
        iteration: the first step of 10,000 publish calls in one iteration would
        block the event loop for ~100 ms. The broker sees no difference (HA's
        MQTT client keeps at most 20 QoS>0 messages in flight; the rest wait in
        its queue either way).
        """
        results: list[Exception | None] = [None] * len(orders)
        if not orders:
            return results
        if self.before_publish is not None:
            await self.before_publish()
        jobs = self._jobs(orders)
        outcomes = await self._publish_in_chunks(jobs, orders)
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(
                outcome, Exception
            ):
                raise outcome  # CancelledError & co. must not be swallowed
            for index in job.indexes:
                results[index] = outcome
            if outcome is None:
                self.published += len(job.indexes)
            else:
                self.failed += len(job.indexes)
        return results

    async def _publish_in_chunks(
        self, jobs: Sequence[_PublishJob], orders: Sequence[Order]
    ) -> list[BaseException | None]:
        """Start the jobs a chunk per loop iteration; gather every outcome."""
        tasks: list[asyncio.Task[None]] = []
        try:
            async for chunk in async_chunks(jobs, PUBLISH_CHUNK):
                tasks.extend(self._start(job, orders) for job in chunk)
            return await asyncio.gather(*tasks, return_exceptions=True)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise


@dataclass(slots=True)
class _PublishJob:
    """One MQTT message to publish: a vehicle's order or a gateway batch."""

    indexes: list[int]  # positions of its orders in the published sequence
    gateway: str | None


class SubscriptionGate:
    """An event set once the broker confirmed a set of subscriptions."""

    def __init__(self) -> None:
        """Create an open-pending gate."""
        self._watched: set[str] = set()
        self._pending: set[str] = set()
        self._event = asyncio.Event()
        self._unsubs: list[CALLBACK_TYPE] = []

    @callback
    def async_watch(self, hass: HomeAssistant, topic: str, qos: int) -> None:
        """Wait for the confirmation of ``topic`` (subscribed with ``qos``).

        The watch lasts until `async_close`: a resubscription after a reconnect
        confirms the topic again.
        """
        self._watched.add(topic)
        self._pending.add(topic)
        self._event.clear()

        @callback
        def _done() -> None:
            self._pending.discard(topic)
            if not self._pending:
                self._event.set()

        self._unsubs.append(mqtt.async_on_subscribe_done(hass, topic, qos, _done))

    @callback
    def async_reset(self) -> None:
        """Close the gate until every watched topic is confirmed again.

        Called when the broker connection is lost: the broker may have forgotten
        the subscriptions (clean session, restart), and the MQTT client reports
        the new connection before it has resubscribed.
        """
        if self._watched:
            self._pending = set(self._watched)
            self._event.clear()

    @property
    def is_set(self) -> bool:
        """Return True once every watched subscription is confirmed."""
        return self._event.is_set()

    async def async_wait(self) -> None:
        """Wait until the gate opens (wrap in ``asyncio.timeout`` to bound it)."""
        await self._event.wait()

    @callback
    def async_close(self) -> None:
        """Stop watching."""
        while self._unsubs:
            self._unsubs.pop()()


type MessageCallback = Callable[[mqtt.ReceiveMessage], None]


async def async_subscribe_all(
    hass: HomeAssistant,
    subscriptions: Sequence[tuple[str, MessageCallback, int]],
) -> list[CALLBACK_TYPE]:
    """Subscribe to every ``(topic, callback, qos)``; return the unsubscribers.

    Payloads are delivered as raw bytes (``encoding=None``) so that oversize and
    invalid UTF-8 input is detected by our decoders, not by the MQTT client.
    """
    unsubs: list[CALLBACK_TYPE] = []
    try:
        for topic, msg_callback, qos in subscriptions:
            unsubs.append(
                await mqtt.async_subscribe(
                    hass, topic, msg_callback, qos=qos, encoding=None
                )
            )
    except Exception:
        for unsub in unsubs:
            unsub()
        raise
    return unsubs
