"""MQTT floors: what N orders and their N acks cost without the integration.

* **HA floor** — N orders published with ``mqtt.async_publish`` (QoS 1, started
  ``PUBLISH_CHUNK`` per loop iteration as the integration's transport does, or all
  in one iteration with ``chunk=None``) and N acks received through one
  ``mqtt.async_subscribe`` wildcard whose handler only counts; timed from the
  first publish until every publish is confirmed and every ack received.
* **bare paho** — the same N orders and N acks through a plain paho client (its
  own network thread, one message per vehicle, paho's defaults).

Both use ``floor/<id>/command`` / ``floor/<id>/ack`` (same depth as the default
vehicle topics, so a V2G entry loaded in the same Home Assistant never sees them)
and the same out-of-process responder (``benchmarks/responder.py``). Orders are
built before the clock starts: the floor is the messaging cost only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
import json
import threading
import time
from typing import Any
import uuid

from homeassistant.components import mqtt as ha_mqtt
from homeassistant.core import HomeAssistant, callback
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from custom_components.v2g.transport import PUBLISH_CHUNK

from .harness import HarnessError, LoopBlockMonitor, vehicle_ids

COMMAND_TEMPLATE = "floor/{vehicle_id}/command"
ACK_FILTER = "floor/+/ack"


def order_messages(count: int, prefix: str = "fl") -> list[tuple[str, str]]:
    """(topic, payload) of ``count`` orders shaped like DESIGN §3 orders."""
    now_ms = int(time.time() * 1000)
    dispatch_id = str(uuid.uuid4())
    messages: list[tuple[str, str]] = []
    for vehicle_id in vehicle_ids(count, prefix):
        payload = {
            "command_id": str(uuid.uuid4()),
            "vehicle_id": vehicle_id,
            "power_kw": 1.0,
            "timestamp": now_ms,
            "dispatch_id": dispatch_id,
            "signal_type": "aFRR",
            "duration_s": 900.0,
            "expires_at": now_ms + 900_000,
        }
        messages.append(
            (COMMAND_TEMPLATE.format(vehicle_id=vehicle_id), json.dumps(payload))
        )
    return messages


@dataclass(frozen=True, slots=True)
class FloorRun:
    """One measured run."""

    seconds: float
    max_block_ms: float | None = None
    max_gc_ms: float | None = None
    gc_total_ms: float | None = None
    background_writes: int = 0
    # The same orders all started in one loop iteration (HA floor only).
    burst_seconds: float | None = None
    burst_max_block_ms: float | None = None


class HaFloor:
    """N orders + N acks through Home Assistant's MQTT API with a counting handler."""

    def __init__(self, hass: HomeAssistant, qos: int = 1) -> None:
        """Prepare (call :meth:`async_setup` before running)."""
        self.hass = hass
        self.qos = qos
        self._received = 0
        self._expected = 0
        self._done: asyncio.Future[None] | None = None
        self._unsub: Any = None

    async def async_setup(self) -> None:
        """Subscribe to the ack wildcard and wait for the broker's confirmation."""
        confirmed = asyncio.Event()
        self._unsub = await ha_mqtt.async_subscribe(
            self.hass, ACK_FILTER, self._on_ack, qos=self.qos, encoding=None
        )
        unsub_done = ha_mqtt.async_on_subscribe_done(
            self.hass, ACK_FILTER, self.qos, confirmed.set
        )
        try:
            async with asyncio.timeout(30):
                await confirmed.wait()
        finally:
            unsub_done()

    @callback
    def _on_ack(self, msg: ha_mqtt.ReceiveMessage) -> None:
        self._received += 1
        if (
            self._received >= self._expected
            and self._done is not None
            and not self._done.done()
        ):
            self._done.set_result(None)

    async def async_run(
        self,
        count: int,
        *,
        monitor_block: bool = False,
        limit_s: float = 300.0,
        chunk: int | None = PUBLISH_CHUNK,
    ) -> FloorRun:
        """Publish ``count`` orders, wait for every PUBACK and every ack.

        ``chunk`` publish calls start per loop iteration (None: all at once).
        """
        messages = order_messages(count)
        loop = asyncio.get_running_loop()
        self._received = 0
        self._expected = count
        self._done = loop.create_future()
        monitor = LoopBlockMonitor() if monitor_block else None
        hass = self.hass
        qos = self.qos
        if monitor is not None:
            await monitor.__aenter__()
        try:
            started = time.perf_counter()
            step = chunk or len(messages) or 1
            publishes: list[asyncio.Future[None]] = []
            for start in range(0, len(messages), step):
                if start:
                    await asyncio.sleep(0)
                publishes.extend(
                    asyncio.ensure_future(
                        ha_mqtt.async_publish(
                            hass, topic, payload, qos=qos, retain=False
                        )
                    )
                    for topic, payload in messages[start : start + step]
                )
            async with asyncio.timeout(limit_s):
                await asyncio.gather(*publishes)
                await self._done
            elapsed = time.perf_counter() - started
        except TimeoutError as err:
            raise HarnessError(
                f"HA floor: {self._received}/{count} acks after {limit_s} s"
            ) from err
        finally:
            if monitor is not None:
                await monitor.__aexit__(None, None, None)
        if monitor is None:
            return FloorRun(elapsed)
        return FloorRun(
            elapsed, monitor.max_block_ms, monitor.max_gc_ms, monitor.gc_total_ms
        )

    def close(self) -> None:
        """Unsubscribe."""
        if self._unsub is not None:
            self._unsub()
            self._unsub = None


class PahoFloor:
    """N orders + N acks through a bare paho client (its own network thread)."""

    def __init__(self, port: int, qos: int = 1, host: str = "127.0.0.1") -> None:
        """Prepare the client (connect with :meth:`start`)."""
        self.port = port
        self.host = host
        self.qos = qos
        self._received = 0
        self._expected = 0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-paho-floor-{port}",
            protocol=mqtt.MQTTv311,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        client.subscribe(ACK_FILTER, qos=self.qos)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._subscribed.set()

    def _on_message(
        self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage
    ) -> None:
        with self._lock:
            self._received += 1
            if self._received >= self._expected:
                self._done.set()

    def start(self) -> None:
        """Connect, start the network thread, wait for the ack subscription."""
        self.client.connect(self.host, self.port, keepalive=60)
        self.client.loop_start()
        if not self._subscribed.wait(30):
            raise HarnessError("paho floor: ack subscription not confirmed")

    def run(self, count: int, timeout: float = 300.0) -> FloorRun:
        """Publish ``count`` orders; wait for every PUBACK and every ack."""
        messages = order_messages(count)
        with self._lock:
            self._received = 0
            self._expected = count
            self._done.clear()
        started = time.perf_counter()
        infos = [
            self.client.publish(topic, payload, qos=self.qos)
            for topic, payload in messages
        ]
        if not self._done.wait(timeout):
            raise HarnessError(
                f"paho floor: {self._received}/{count} acks after {timeout} s"
            )
        for info in infos:
            info.wait_for_publish(timeout)
        return FloorRun(time.perf_counter() - started)

    def stop(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()
