"""What vehicles tell about themselves: discovery answers and telemetry.

Measurement intake, apart from the command channels (channels.py), which carry
orders and their answers. Discovery answers add or update vehicles (with their
hand-set values applied, manual_vehicles.py), one vehicle per answer or a
gateway's vehicles in one answer; telemetry updates SoC, availability and
charging; its power is measured, with its time of receipt, in the fleet's
power readings (learned limits, delivery entities and verification.py). Pull
mode polls telemetry on the request topic (docs/protocol.md#telemetry).

Each discovery request opens a round that closes once its answers stop
arriving; a request is not repeated while they still arrive (a large fleet's
answers would only queue twice at the broker: it joins the round), and each
closed round is reported (`on_round_closed`, broker_health.py compares it with
the fleet).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from homeassistant.components import mqtt
from homeassistant.core import HomeAssistant, callback
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
from .engine import (
    MAX_GATEWAY_PAYLOAD_BYTES,
    EngineError,
    FleetState,
    GatewayVehicles,
    Vehicle,
    decode_discovery,
    decode_telemetry,
)
from .intake import InputLog, Route
from .manual_vehicles import ManualVehicles
from .transport import SubscriptionGate, TopicTemplate

# How long the first discovery request waits for the subscriptions.
SUBSCRIBE_CONFIRM_TIMEOUT_S = 10.0
# A request is not repeated while answers to the previous one still arrive
# (the last one less than this ago; for the request at setup: or the previous
# request was made less than this ago) ...
ROUND_BUSY_S = 2.0
# ... and a round is over once none has arrived for this long.
ROUND_QUIET_S = 5.0


@dataclass(slots=True)
class DiscoveryRound:
    """The answers to one discovery request."""

    requested_at: float  # monotonic
    # The vehicles heard from recently when it was requested (`expected_answers`).
    expected: int
    last_answer_at: float | None = None
    answered: set[str] = field(default_factory=set)
    gateway_answers: int = 0

    def busy(self, now: float, *, counting_request: bool = False) -> bool:
        """Return True while its answers still arrive (or it was just requested)."""
        moments = [self.last_answer_at]
        if counting_request:
            moments.append(self.requested_at)
        return any(at is not None and now - at < ROUND_BUSY_S for at in moments)

    def quiet_for(self, now: float) -> float:
        """Seconds since the request or the last answer, whichever is later."""
        return now - max(self.requested_at, self.last_answer_at or self.requested_at)


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
        # Discovery rounds: the open one, and who hears of those that end.
        self.round: DiscoveryRound | None = None
        self.on_round_closed: Callable[[DiscoveryRound], None] | None = None
        self.expected_answers: Callable[[], int] = lambda: 0
        self._round_timer: asyncio.TimerHandle | None = None
        # Gateway answers and the vehicle items they carried that were skipped.
        self.counters: dict[str, int] = {
            "gateway_answers": 0,
            "gateway_invalid_items": 0,
        }

    def routes(self, *, polled: bool) -> list[Route]:
        """Discovery answers, pushed telemetry and (when ``polled``) poll answers."""
        telemetry_keys = [CONF_STATE_TOPIC]
        if polled:
            telemetry_keys.append(CONF_TELEMETRY_RESPONSE_TOPIC)
        return [
            Route(
                "discovery",
                # A gateway answers for its vehicles in one message (the id
                # level is then the gateway's); one vehicle's answer is limited
                # to MAX_VEHICLE_PAYLOAD_BYTES in `_apply_discovery`.
                TopicTemplate(self._topics[CONF_DISCOVERY_RESPONSE_TOPIC]),
                MAX_GATEWAY_PAYLOAD_BYTES,
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

    async def async_request_discovery(self, *, automatic: bool = False) -> None:
        """Ask every vehicle to introduce itself, unless answers still arrive.

        A request made while the answers to the previous one still arrive joins
        that round instead of asking again; an `automatic` one (at setup) also
        joins a round requested just before.

        Raises:
            HomeAssistantError: the request could not be published.
        """
        now = self._monotonic()
        if self.round is not None and self.round.busy(now, counting_request=automatic):
            return
        self._close_round()
        # Open before publishing: an automatic request made meanwhile joins it.
        opened = self.round = DiscoveryRound(
            requested_at=now, expected=self.expected_answers()
        )
        self._schedule_round_check(ROUND_QUIET_S)
        try:
            await mqtt.async_publish(
                self._hass,
                self._topics[CONF_DISCOVERY_TOPIC],
                DISCOVERY_PAYLOAD,
                qos=self._qos,
                retain=False,
            )
        except HomeAssistantError:
            if self.round is opened:
                self.round = None  # nothing was asked: nothing to report
            raise

    def _schedule_round_check(self, delay: float) -> None:
        if self._round_timer is not None:
            self._round_timer.cancel()
        self._round_timer = self._hass.loop.call_later(delay, self._check_round)

    @callback
    def _check_round(self) -> None:
        self._round_timer = None
        current = self.round
        if current is None:
            return
        quiet = current.quiet_for(self._monotonic())
        if quiet < ROUND_QUIET_S:
            self._schedule_round_check(ROUND_QUIET_S - quiet)
        else:
            self._close_round()

    def _close_round(self) -> None:
        closed, self.round = self.round, None
        if closed is None:
            return
        if self.on_round_closed is not None:
            self.on_round_closed(closed)

    @callback
    def async_stop(self) -> None:
        """Stop following the open round (nothing is reported any more)."""
        if self._round_timer is not None:
            self._round_timer.cancel()
            self._round_timer = None
        self.on_round_closed = None

    async def async_discover(self, window_s: float) -> list[Vehicle]:
        """Ask, then collect the vehicles that answer within ``window_s``.

        Raises:
            HomeAssistantError: not connected, or the request failed (translated).
        """
        await self._ready()
        session: dict[str, Vehicle] = {}
        if (joined := self.round) is not None and joined.busy(self._monotonic()):
            vehicles = self._fleet.vehicles
            session.update(
                (vid, vehicles[vid]) for vid in joined.answered if vid in vehicles
            )
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
            await self.async_request_discovery(automatic=True)
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

    def _apply_discovery(self, topic_id: str | None, payload: bytes) -> bool | str:
        try:
            answer = decode_discovery(payload, topic_id)
        except EngineError:
            # Only a gateway's answer may be larger than one vehicle's.
            return "oversize" if len(payload) > MAX_VEHICLE_PAYLOAD_BYTES else False
        now = self._monotonic()
        if isinstance(answer, GatewayVehicles):
            self.counters["gateway_answers"] += 1
            self.counters["gateway_invalid_items"] += answer.invalid
            if self.round is not None:
                self.round.gateway_answers += 1
            for vehicle in answer:
                self._add_vehicle(vehicle, now)
        elif len(payload) > MAX_VEHICLE_PAYLOAD_BYTES:
            return "oversize"
        else:
            self._add_vehicle(answer, now)
        self._on_change()
        return True

    def _add_vehicle(self, answered: Vehicle, now: float) -> None:
        vehicle = self._manual.overlay(answered)
        vehicle_id = vehicle.vehicle_id
        if self._fleet.upsert(vehicle, now):
            LOGGER.debug("Discovered vehicle %s", vehicle_id)
        self._soc_known.add(vehicle_id)
        for session in self._sessions:
            session.setdefault(vehicle_id, vehicle)
        if (current := self.round) is not None:
            current.answered.add(vehicle_id)
            current.last_answer_at = now

    def _apply_telemetry(self, vehicle_id: str | None, payload: bytes) -> bool:
        try:
            telemetry = decode_telemetry(payload, vehicle_id)
        except EngineError:
            return False
        self._fleet.apply_telemetry(telemetry, self._monotonic(), dt_util.utcnow())
        if telemetry.soc is not None:
            self._soc_known.add(telemetry.vehicle_id)
        self._on_change()
        return True
