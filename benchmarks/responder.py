"""A bare paho vehicle responder for the MQTT floors (run as its own process).

It subscribes to a per-vehicle command filter (default ``floor/+/command``) and
answers every order at once with ``{"command_id": ...}`` on the vehicle's ack topic,
like a Go-compatible vehicle with zero latency. It prints ``ready`` once the broker
confirmed the subscription and exits when its standard input closes (so it never
outlives the benchmark process) or on SIGTERM.

Run: ``python -m benchmarks.responder --port 1883``
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

DEFAULT_COMMAND_FILTER = "floor/+/command"
DEFAULT_ACK_TEMPLATE = "floor/{vehicle_id}/ack"


class Responder:
    """Acknowledge every order received on a ``<prefix>/+/command`` filter."""

    def __init__(
        self,
        port: int,
        command_filter: str = DEFAULT_COMMAND_FILTER,
        ack_template: str = DEFAULT_ACK_TEMPLATE,
        qos: int = 1,
        host: str = "127.0.0.1",
    ) -> None:
        """Prepare the client (nothing connects yet)."""
        self.port = port
        self.host = host
        self.command_filter = command_filter
        self.ack_template = ack_template
        self.qos = qos
        self.index = command_filter.split("/").index("+")
        self.ready = threading.Event()
        self.answered = 0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-responder-{port}",
            protocol=mqtt.MQTTv311,
        )
        # Like the fleet simulator (which answers the integration): no cap on the
        # acks in flight, so the responder is never what the floors measure.
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(0)
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
        client.subscribe(self.command_filter, qos=self.qos)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self.ready.set()

    def _on_message(
        self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage
    ) -> None:
        vehicle_id = message.topic.split("/")[self.index]
        try:
            command_id = json.loads(message.payload)["command_id"]
        except (ValueError, KeyError, TypeError):
            return
        client.publish(
            self.ack_template.replace("{vehicle_id}", vehicle_id),
            json.dumps({"command_id": command_id}),
            qos=self.qos,
        )
        self.answered += 1

    def start(self) -> None:
        """Connect and run the network loop in paho's thread."""
        self.client.connect(self.host, self.port, keepalive=60)
        self.client.loop_start()

    def stop(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


def main(argv: list[str] | None = None) -> int:
    """Run a responder until standard input closes or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--command-filter", default=DEFAULT_COMMAND_FILTER)
    parser.add_argument("--ack-template", default=DEFAULT_ACK_TEMPLATE)
    parser.add_argument("--qos", type=int, default=1)
    args = parser.parse_args(argv)
    responder = Responder(args.port, args.command_filter, args.ack_template, args.qos)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    responder.start()
    if not responder.ready.wait(30):
        print("subscription not confirmed", file=sys.stderr)
        return 1
    print("ready", flush=True)

    def _watch_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=_watch_stdin, daemon=True).start()
    stop.wait()
    responder.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
