"""One MQTT connection (paho) driven by the simulator's asyncio event loop.

paho's external-loop API is used instead of `loop_start()`: every connection of the
simulator shares one thread, which keeps a few hundred per-vehicle connections cheap
and makes the simulator single-threaded (no locks around the vehicle state).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
import contextlib
import logging
import socket
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

_LOGGER = logging.getLogger(__name__)

MIN_RECONNECT_DELAY = 0.05
MAX_RECONNECT_DELAY = 2.0
MISC_INTERVAL = 1.0

type MessageHandler = Callable[[Endpoint, str, bytes], None]


class Endpoint:
    """A paho client plus its subscriptions, reconnect and readiness state.

    Must be used from the event loop's thread only.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        client_id: str,
        host: str,
        port: int,
        keepalive: int,
        qos: int,
        subscriptions: Sequence[str],
        on_message: MessageHandler,
        on_state: Callable[[Endpoint], None],
    ) -> None:
        """Create the client (not connected yet; call `open()`)."""
        self.loop = loop
        self.client_id = client_id
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self.qos = qos
        self.subscriptions = list(subscriptions)
        self.wanted = False
        self.connected = False
        self.ready = False
        self._on_message_cb = on_message
        self._on_state_cb = on_state
        self._sub_mid: int | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._misc: asyncio.TimerHandle | None = None
        self._delay = MIN_RECONNECT_DELAY
        self._sock: Any = None
        self._configured = False
        self.connects = 0
        self.disconnects = 0

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self.client = client

    @property
    def is_closed(self) -> bool:
        """True when no socket is open."""
        return self._sock is None

    def open(self) -> None:
        """Connect (and keep reconnecting until `close()`)."""
        if self.wanted:
            return
        self.wanted = True
        self._delay = MIN_RECONNECT_DELAY
        self._connect()

    def close(self) -> None:
        """Disconnect cleanly and stop reconnecting."""
        self.wanted = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._sock is not None:
            self.client.disconnect()
            self.client.loop_write()
        self._set_state(connected=False, ready=False)

    def abort(self) -> None:
        """Drop the socket without a DISCONNECT (last resort at shutdown)."""
        self.wanted = False
        sock = self._sock
        if sock is not None:
            self._forget_socket(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def publish(self, topic: str, payload: bytes, qos: int | None = None) -> bool:
        """Publish (never retained); False if not connected or paho refused."""
        if not self.connected:
            return False
        info = self.client.publish(
            topic, payload, self.qos if qos is None else qos, retain=False
        )
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    # -- connection management ------------------------------------------------

    def _connect(self) -> None:
        self._retry = None
        if not self.wanted:
            return
        try:
            if not self._configured:
                self.client.connect_async(self.host, self.port, self.keepalive)
                self._configured = True
            self.client.reconnect()
        except OSError as err:
            _LOGGER.debug("%s: connect failed: %s", self.client_id, err)
            self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if not self.wanted or self._retry is not None:
            return
        delay = self._delay
        self._delay = min(self._delay * 2, MAX_RECONNECT_DELAY)
        self._retry = self.loop.call_later(delay, self._connect)

    def _set_state(self, *, connected: bool, ready: bool) -> None:
        changed = (connected, ready) != (self.connected, self.ready)
        self.connected = connected
        self.ready = ready
        if changed:
            self._on_state_cb(self)

    # -- paho callbacks (run inside loop_read / loop_write, in the loop thread) ---

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            _LOGGER.warning("%s: connection refused: %s", self.client_id, reason_code)
            return
        self.connects += 1
        self._delay = MIN_RECONNECT_DELAY
        _LOGGER.debug("%s: connected", self.client_id)
        if self.subscriptions:
            result, mid = client.subscribe([(t, self.qos) for t in self.subscriptions])
            self._sub_mid = mid if result == MQTTErrorCode.MQTT_ERR_SUCCESS else None
            self._set_state(connected=True, ready=False)
        else:
            self._set_state(connected=True, ready=True)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Any,
    ) -> None:
        if mid != self._sub_mid:
            return
        failed = [
            topic
            for topic, code in zip(self.subscriptions, reason_codes, strict=False)
            if code.is_failure
        ]
        if failed:
            _LOGGER.error("%s: subscription refused for %s", self.client_id, failed)
        self._set_state(connected=True, ready=True)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        self.disconnects += 1
        _LOGGER.debug("%s: disconnected (%s)", self.client_id, reason_code)
        self._set_state(connected=False, ready=False)
        self._schedule_reconnect()

    def _on_message(
        self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage
    ) -> None:
        self._on_message_cb(self, message.topic, message.payload)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._sock = sock
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.loop.add_reader(sock, self._read)
        self._misc = self.loop.call_later(MISC_INTERVAL, self._run_misc)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._forget_socket(sock)

    def _forget_socket(self, sock: Any) -> None:
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        if self._sock is sock:
            self._sock = None

    def _on_socket_register_write(
        self, client: mqtt.Client, userdata: Any, sock: Any
    ) -> None:
        self.loop.add_writer(sock, self._write)

    def _on_socket_unregister_write(
        self, client: mqtt.Client, userdata: Any, sock: Any
    ) -> None:
        self.loop.remove_writer(sock)

    def _read(self) -> None:
        self.client.loop_read()

    def _write(self) -> None:
        self.client.loop_write()

    def _run_misc(self) -> None:
        self._misc = None
        if self._sock is None:
            return
        self.client.loop_misc()
        if self._sock is not None:
            self._misc = self.loop.call_later(MISC_INTERVAL, self._run_misc)
