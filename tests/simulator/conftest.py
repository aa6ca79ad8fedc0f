"""Fixtures: a real mosquitto, a paho "dispatcher" client and simulator factory."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
import json
import threading
import time
from typing import Any
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
import pytest

from simulator import FleetSimulator, SimulatorConfig
from tests.mqtt_broker import MosquittoBroker


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Dispatcher:
    """A plain paho client playing the integration's role."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.broker = broker
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._subacks: set[int] = set()
        self._connected = threading.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"dispatcher-{uuid.uuid4().hex[:8]}"
        )
        client.max_inflight_messages_set(0)
        client.on_connect = lambda *_: self._connected.set()
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self.client = client

    def start(self) -> None:
        self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        self.client.loop_start()
        assert self._connected.wait(5), "dispatcher did not connect"

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Message(msg.topic, msg.payload, bool(msg.retain)))
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, *_: Any) -> None:
        with self._cond:
            self._subacks.add(mid)
            self._cond.notify_all()

    def subscribe(self, *topics: str, qos: int = 1) -> None:
        """Subscribe and wait for the SUBACK."""
        _rc, mid = self.client.subscribe([(t, qos) for t in topics])
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self._subacks, 5)

    def publish(
        self, topic: str, payload: bytes | str | dict[str, Any], qos: int = 1
    ) -> mqtt.MQTTMessageInfo:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        return self.client.publish(topic, payload, qos=qos)

    def matching(self, topic_filter: str) -> list[Message]:
        with self._cond:
            return [
                m
                for m in self.messages
                if mqtt.topic_matches_sub(topic_filter, m.topic)
            ]

    def wait_for(
        self, topic_filter: str, count: int = 1, timeout: float = 5.0
    ) -> list[Message]:
        """Wait until `count` messages matched `topic_filter`; return them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [
                    m
                    for m in self.messages
                    if mqtt.topic_matches_sub(topic_filter, m.topic)
                ]
                remaining = deadline - time.monotonic()
                if len(found) >= count or remaining <= 0:
                    break
                self._cond.wait(remaining)
        assert len(found) >= count, (
            f"{len(found)}/{count} messages on {topic_filter}: "
            f"{[m.topic for m in self.messages][-10:]}"
        )
        return found

    def wait_until(
        self, predicate: Callable[[list[Message]], bool], timeout: float = 5.0
    ) -> list[Message]:
        """Wait until `predicate(all messages so far)` holds; return the messages."""
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(list(self.messages)), timeout)
            messages = list(self.messages)
        assert ok, f"condition not met; got {[m.topic for m in messages][-10:]}"
        return messages

    def assert_quiet(
        self, topic_filter: str, window: float = 0.3, already: int = 0
    ) -> None:
        """Assert no (more) messages arrive on `topic_filter` during `window`.

        Used only where silence is the expected outcome (nothing can be awaited).
        """
        time.sleep(window)
        assert len(self.matching(topic_filter)) == already

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()


def order(
    vehicle_id: str,
    power_kw: float,
    command_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "command_id": command_id or str(uuid.uuid4()),
        "vehicle_id": vehicle_id,
        "power_kw": power_kw,
        "timestamp": int(time.time() * 1000),
    }
    payload.update(extra)
    return payload


@pytest.fixture
def broker(socket_enabled: None) -> Generator[MosquittoBroker]:
    with MosquittoBroker() as broker:
        yield broker


@pytest.fixture
def dispatcher(broker: MosquittoBroker) -> Generator[Dispatcher]:
    client = Dispatcher(broker)
    client.start()
    try:
        yield client
    finally:
        client.stop()


@pytest.fixture
def make_sim(
    broker: MosquittoBroker,
) -> Generator[Callable[..., FleetSimulator]]:
    sims: list[FleetSimulator] = []

    def factory(start: bool = True, **options: Any) -> FleetSimulator:
        options.setdefault("port", broker.port)
        options.setdefault("seed", 1)
        options.setdefault("client_id_prefix", f"sim-{uuid.uuid4().hex[:6]}-")
        sim = FleetSimulator(SimulatorConfig(**options))
        sims.append(sim)
        if start:
            sim.start(timeout=10)
        return sim

    try:
        yield factory
    finally:
        for sim in sims:
            sim.stop()


def by_command(messages: Iterable[Message]) -> dict[str, dict[str, Any]]:
    return {m.json()["command_id"]: m.json() for m in messages}
