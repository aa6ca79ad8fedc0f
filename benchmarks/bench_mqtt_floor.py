"""MQTT floors: what N orders and their N acks cost without the integration.

* **HA floor** — N orders published with ``mqtt.async_publish`` (QoS 1, started
  ``PUBLISH_CHUNK`` per loop iteration as the integration's transport does, or all
  in one iteration with ``chunk=None``) and N acks received through one
  ``mqtt.async_subscribe`` wildcard whose handler only counts; timed from the
  first publish until every publish is confirmed and every ack received.
* **bare paho** — the same N orders and N acks through a plain paho client (one
  message per vehicle, paho's defaults) in a process of its own
  (:class:`PahoFloorProcess` runs ``python -m benchmarks.bench_mqtt_floor``), so it
  never shares the GIL with Home Assistant.

Both use ``floor/<id>/command`` / ``floor/<id>/ack`` (same depth as the default
vehicle topics, so a V2G entry loaded in the same Home Assistant never sees them)
and the same peer: a fleet simulator run exactly like the one that answers the
integration (``harness.floor_peer_process``). Orders are built before the clock
starts: the floor is the messaging cost only.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
import contextlib
from dataclasses import dataclass
import json
from pathlib import Path
import subprocess
import sys
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

from custom_components.v2g.channels import PUBLISH_CHUNK
from custom_components.v2g.engine import async_chunks

from .harness import HarnessError, LoopBlockMonitor, floor_vehicle_ids

COMMAND_TEMPLATE = "floor/{vehicle_id}/command"
ACK_FILTER = "floor/+/ack"


def order_messages(count: int, fleet_size: int) -> list[tuple[str, bytes]]:
    """(topic, payload) of ``count`` orders (docs/protocol.md#order) to the floor peer's vehicles."""
    now_ms = int(time.time() * 1000)
    dispatch_id = str(uuid.uuid4())
    messages: list[tuple[str, bytes]] = []
    for vehicle_id in floor_vehicle_ids(count, fleet_size):
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
            # Bytes, as the integration's transport hands them to HA's client.
            (
                COMMAND_TEMPLATE.format(vehicle_id=vehicle_id),
                json.dumps(payload).encode(),
            )
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

    def __init__(self, hass: HomeAssistant, fleet_size: int, qos: int = 1) -> None:
        """Prepare (call :meth:`async_setup` before running).

        ``fleet_size``: the vehicles of the floor peer (runs order at most these).
        """
        self.hass = hass
        self.fleet_size = fleet_size
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
        messages = order_messages(count, self.fleet_size)
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
            publishes: list[asyncio.Future[None]] = []
            async for batch in async_chunks(messages, chunk or len(messages)):
                publishes.extend(
                    asyncio.ensure_future(
                        ha_mqtt.async_publish(
                            hass, topic, payload, qos=qos, retain=False
                        )
                    )
                    for topic, payload in batch
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

    def __init__(
        self, port: int, fleet_size: int, qos: int = 1, host: str = "127.0.0.1"
    ) -> None:
        """Prepare the client (connect with :meth:`start`)."""
        self.port = port
        self.fleet_size = fleet_size
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
        messages = order_messages(count, self.fleet_size)
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


class PahoFloorProcess:
    """:class:`PahoFloor` in its own process: one line in (N), one JSON line out.

    The child prints ``ready`` once its ack subscription is confirmed, then for
    each line ``N`` on its standard input runs ``PahoFloor.run(N)`` and prints
    ``{"seconds": s}`` (or ``{"error": text}``); it exits at end of input.
    """

    def __init__(self, port: int, fleet_size: int, log_path: Path) -> None:
        """Prepare (start with :meth:`start`)."""
        self.port = port
        self.fleet_size = fleet_size
        self.log_path = log_path
        self._process: subprocess.Popen[str] | None = None
        self._log: Any = None

    def start(self) -> None:
        """Start the child and wait until it is ready (blocking)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w", encoding="utf-8")
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.bench_mqtt_floor",
                "--port",
                str(self.port),
                "--fleet-size",
                str(self.fleet_size),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=Path(__file__).resolve().parent.parent,
            text=True,
            bufsize=1,
        )
        if self._readline() != "ready":
            raise HarnessError(f"paho floor process not ready (see {self.log_path})")

    def _readline(self) -> str:
        assert self._process is not None and self._process.stdout is not None
        return self._process.stdout.readline().strip()

    def run(self, count: int) -> FloorRun:
        """One measured run in the child (blocking; call from a thread)."""
        process = self._process
        if process is None or process.stdin is None:
            raise HarnessError("paho floor process not started")
        process.stdin.write(f"{count}\n")
        process.stdin.flush()
        line = self._readline()
        try:
            answer = json.loads(line)
        except ValueError as err:
            raise HarnessError(f"paho floor process answered {line!r}") from err
        if "error" in answer:
            raise HarnessError(f"paho floor: {answer['error']}")
        return FloorRun(float(answer["seconds"]))

    def stop(self) -> None:
        """End the child's input; terminate it if it does not exit."""
        process, self._process = self._process, None
        if process is not None:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


def main(argv: Sequence[str] | None = None) -> int:
    """The child of :class:`PahoFloorProcess`."""
    parser = argparse.ArgumentParser(description=PahoFloorProcess.__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fleet-size", type=int, required=True)
    args = parser.parse_args(argv)
    floor = PahoFloor(args.port, args.fleet_size)
    floor.start()
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            try:
                run = floor.run(int(line))
            except (HarnessError, ValueError) as err:
                print(json.dumps({"error": str(err)}), flush=True)
            else:
                print(json.dumps({"seconds": run.seconds}), flush=True)
    finally:
        floor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
