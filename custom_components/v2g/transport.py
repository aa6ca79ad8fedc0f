"""MQTT plumbing: topic templates, subscriptions and their confirmation.

* :class:`TopicTemplate` turns a template such as ``vehicle/{vehicle_id}/ack`` into
  a concrete topic, a ``+`` wildcard for subscribing, and back (topic -> id).
* :class:`SubscriptionGate` turns ``mqtt.async_on_subscribe_done`` into an
  ``asyncio.Event`` a dispatch awaits before its first publish, so no early
  acknowledgment can be lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from homeassistant.components import mqtt
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback

from .const import GATEWAY_ID_PLACEHOLDER, VEHICLE_ID_PLACEHOLDER


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
