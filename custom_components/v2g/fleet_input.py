"""What vehicles tell about themselves: discovery answers and telemetry.

Measurement intake, apart from the command channels (channels.py), which carry
orders and their answers. Discovery answers add or update vehicles (with their
hand-set values applied, manual_vehicles.py); telemetry updates SoC,
availability and charging; its power is measured (learned limits, delivery
entities) and kept with its time of receipt for the delivery verification
(verification.py). Pull mode polls telemetry on the request topic
(docs/protocol.md#telemetry).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from homeassistant.components import mqtt
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.util import dt as dt_util

from .const import (
    CONF_DISCOVERY_RESPONSE_TOPIC,
    CONF_DISCOVERY_TOPIC,
    CONF_STATE_TOPIC,
    CONF_TELEMETRY_REQUEST_TOPIC,
    CONF_TELEMETRY_RESPONSE_TOPIC,
    DISCOVERY_PAYLOAD,
    DOMAIN,
    LOGGER,
    MAX_VEHICLE_PAYLOAD_BYTES,
    TELEMETRY_POLL_PAYLOAD,
)
from .engine import EngineError, FleetState, Vehicle, decode_telemetry, decode_vehicle
from .engine.delivery import PowerReadings
from .intake import InputLog, Route
from .manual_vehicles import ManualVehicles
from .transport import SubscriptionGate, TopicTemplate

# How long the first discovery request waits for the subscriptions.
SUBSCRIBE_CONFIRM_TIMEOUT_S = 10.0


class FleetInput:
    """Discovery answers and telemetry of one fleet, applied to its state."""

    def __init__(
        self,
        hass: HomeAssistant,
        topics: dict[str, str],
        qos: int,
        *,
        fleet: FleetState,
        soc_known: set[str],
        manual: ManualVehicles,
        monotonic: Callable[[], float],
        on_change: Callable[[], None],
        ready: Callable[[], Awaitable[None]],
    ) -> None:
        """Bind to the fleet.

        `on_change` is called after each applied message; `ready` waits until
        requests may be published (raises ``HomeAssistantError`` if not).
        """
        self._hass = hass
        self._topics = topics
        self._qos = qos
        self._fleet = fleet
        self._soc_known = soc_known
        self._manual = manual
        self._monotonic = monotonic
        self._on_change = on_change
        self._ready = ready
        self._sessions: list[dict[str, Vehicle]] = []
        # Measured power of the MQTT vehicles, when received (verification.py).
        self.power_readings = PowerReadings()

    def routes(self, *, polled: bool) -> list[Route]:
        """Discovery answers, pushed telemetry and (when ``polled``) poll answers."""
        telemetry_keys = [CONF_STATE_TOPIC]
        if polled:
            telemetry_keys.append(CONF_TELEMETRY_RESPONSE_TOPIC)
        return [
            Route(
                "discovery",
                TopicTemplate(self._topics[CONF_DISCOVERY_RESPONSE_TOPIC]),
                MAX_VEHICLE_PAYLOAD_BYTES,
                self._apply_discovery,
                self._qos,
                needs_id=False,
            ),
            *(
                Route(
                    "telemetry",
                    TopicTemplate(self._topics[key]),
                    MAX_VEHICLE_PAYLOAD_BYTES,
                    self._apply_telemetry,
                    0,
                    needs_id=False,
                )
                for key in telemetry_keys
            ),
        ]

    async def async_request_discovery(self) -> None:
        """Ask every vehicle to introduce itself.

        Raises:
            HomeAssistantError: the request could not be published.
        """
        await mqtt.async_publish(
            self._hass,
            self._topics[CONF_DISCOVERY_TOPIC],
            DISCOVERY_PAYLOAD,
            qos=self._qos,
            retain=False,
        )

    async def async_discover(self, window_s: float) -> list[Vehicle]:
        """Ask, then collect the vehicles that answer within ``window_s``.

        Raises:
            HomeAssistantError: not connected, or the request failed (translated).
        """
        await self._ready()
        session: dict[str, Vehicle] = {}
        self._sessions.append(session)
        try:
            try:
                await self.async_request_discovery()
            except HomeAssistantError as err:
                raise HomeAssistantError(
                    translation_domain=DOMAIN,
                    translation_key="discovery_failed",
                    translation_placeholders={"error": str(err)},
                ) from err
            await asyncio.sleep(window_s)
        finally:
            self._sessions.remove(session)
        return list(session.values())

    async def async_initial_discovery(self, gate: SubscriptionGate) -> None:
        """Ask the fleet to introduce itself once the subscriptions are live."""
        try:
            async with asyncio.timeout(SUBSCRIBE_CONFIRM_TIMEOUT_S):
                await gate.async_wait()
            await self.async_request_discovery()
        except (TimeoutError, HomeAssistantError) as err:
            LOGGER.debug("Initial discovery request not sent: %s", err)

    async def async_poll_telemetry(self, log: InputLog) -> None:
        """Ask every vehicle for its telemetry (pull and hybrid modes).

        A failed request is logged once (``log``); the next poll tries again.
        """
        try:
            await mqtt.async_publish(
                self._hass,
                self._topics[CONF_TELEMETRY_REQUEST_TOPIC],
                TELEMETRY_POLL_PAYLOAD,
                qos=self._qos,
                retain=False,
            )
        except HomeAssistantError as err:
            log.log_once("poll_failed", "Telemetry poll not published: %s", err)

    def _apply_discovery(self, vehicle_id: str | None, payload: bytes) -> bool:
        try:
            vehicle = self._manual.overlay(decode_vehicle(payload, vehicle_id))
        except EngineError:
            return False
        if self._fleet.upsert(vehicle, self._monotonic()):
            LOGGER.debug("Discovered vehicle %s", vehicle.vehicle_id)
        self._soc_known.add(vehicle.vehicle_id)
        for session in self._sessions:
            session.setdefault(vehicle.vehicle_id, vehicle)
        self._on_change()
        return True

    def _apply_telemetry(self, vehicle_id: str | None, payload: bytes) -> bool:
        try:
            telemetry = decode_telemetry(payload, vehicle_id)
        except EngineError:
            return False
        self._fleet.apply_telemetry(telemetry, self._monotonic(), dt_util.utcnow())
        if telemetry.power_kw is not None:
            self.power_readings.record(
                telemetry.vehicle_id, telemetry.power_kw, dt_util.utcnow()
            )
        if telemetry.soc is not None:
            self._soc_known.add(telemetry.vehicle_id)
        self._on_change()
        return True
