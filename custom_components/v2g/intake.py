"""MQTT input of a fleet: one table of routes, one guarded handler.

Each route names a kind of message (acks, gateway acks, discovery answers,
telemetry), the topic template it arrives on, its size limit and the function
that applies its payload. Input from the network never raises out of a callback
and never corrupts state: a message that does not fit is counted per kind and
reason (diagnostics) and logged once (docs/protocol.md#size-limits-and-bad-input).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from homeassistant.components import mqtt
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback

from .const import LOGGER
from .transport import SubscriptionGate, TopicTemplate, async_subscribe_all

# What a route does with a payload: True if applied, False if malformed, or
# why else it was dropped (e.g. "oversize").
type Apply = Callable[[str | None, bytes], bool | str]


@dataclass(frozen=True, slots=True)
class Route:
    """One subscription and how its messages are read."""

    kind: str
    template: TopicTemplate
    max_bytes: int
    apply: Apply
    qos: int
    # The id level must be present (acks name their sender in the topic).
    needs_id: bool = True
    # A dispatch waits for the broker's confirmation of this subscription.
    confirmed: bool = False


class InputLog:
    """Counters of ignored input and the log-once rule."""

    def __init__(self) -> None:
        """Start with nothing counted."""
        self.counters: dict[str, int] = {}
        self._warned: set[str] = set()

    def log_once(self, key: str, message: str, *args: Any, **kwargs: Any) -> None:
        """Warn the first time for ``key``, then log at debug level."""
        if key in self._warned:
            LOGGER.debug(message, *args, **kwargs)
        else:
            self._warned.add(key)
            LOGGER.warning(
                message + " (further ones are logged at debug level)", *args, **kwargs
            )

    def drop(
        self, kind: str, reason: str, topic: str, *, exc_info: bool = False
    ) -> None:
        """Count (and log once per kind and reason) an input message we ignore."""
        key = f"{kind}_{reason}"
        self.counters[key] = self.counters.get(key, 0) + 1
        self.log_once(
            key, "Ignored %s message on %s: %s", kind, topic, reason, exc_info=exc_info
        )


class MqttIntake:
    """The subscriptions of one fleet, each read through its route."""

    def __init__(self, hass: HomeAssistant, log: InputLog) -> None:
        """Create an intake that counts into ``log``."""
        self._hass = hass
        self._log = log
        self.gate = SubscriptionGate()
        self._unsubs: list[CALLBACK_TYPE] = []

    async def async_start(self, routes: Sequence[Route]) -> None:
        """Subscribe to every route (raw bytes); arm the gate first.

        Raises:
            HomeAssistantError: a subscription could not be made.
        """
        for route in routes:
            if route.confirmed:
                # Armed before subscribing so no confirmation can be missed.
                self.gate.async_watch(self._hass, route.template.wildcard, route.qos)
        self._unsubs.append(self.gate.async_close)
        self._unsubs.extend(
            await async_subscribe_all(
                self._hass,
                [
                    (route.template.wildcard, self._handler(route), route.qos)
                    for route in routes
                ],
            )
        )

    @callback
    def async_stop(self) -> None:
        """Unsubscribe everything."""
        while self._unsubs:
            self._unsubs.pop()()

    def _handler(self, route: Route) -> Callable[[mqtt.ReceiveMessage], None]:
        log = self._log

        @callback
        def _handle(msg: mqtt.ReceiveMessage) -> None:
            try:
                topic_id = route.template.extract(msg.topic)
                if topic_id is None and route.needs_id:
                    log.drop(route.kind, "bad_topic", msg.topic)
                    return
                payload = _payload_bytes(msg.payload)
                if len(payload) > route.max_bytes:
                    log.drop(route.kind, "oversize", msg.topic)
                    return
                if (applied := route.apply(topic_id, payload)) is not True:
                    log.drop(route.kind, applied or "malformed", msg.topic)
            except Exception:  # noqa: BLE001 - a message must never break the loop
                log.drop(route.kind, "error", msg.topic, exc_info=True)

        return _handle


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray):
        return bytes(payload)
    return str(payload).encode()
