"""Does the broker let the whole fleet through? Repair issues when it does not.

A stock mosquitto holds at most 20 messages in flight and 1,000 queued per
client and drops the rest: a large fleet's discovery answers or acks then never
reach Home Assistant, and the fleet just looks smaller. Three signs are
followed, each raising a repair issue that says what was lost and which broker
settings to raise (docs/protocol.md#broker-health, README "Depot set-up"):

* ``dropped_messages``: the broker's own count,
  ``$SYS/broker/publish/messages/dropped`` (mosquitto publishes it, retained,
  when it changed, at most every ``sys_interval``, 10 s by default), grew while
  the fleet follows it. A count published during a flood may itself be dropped
  on its way to Home Assistant (it is QoS 0): the subscription is renewed a
  while after each burst (discovery round, large dispatch), which makes the
  broker send its current count again. The issue goes when the broker restarts
  (its count starts again from 0);
* ``fleet_shrank``: a discovery round (fleet_input.py) answered by clearly
  fewer vehicles than were heard from just before it; goes with the next round
  that is whole again;
* ``acks_missing``: a dispatch of many orders left many without an ack; goes
  with the next large dispatch whose acks all came.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry
from homeassistant.const import ATTR_CONFIG_ENTRY_ID
from homeassistant.core import CALLBACK_TYPE, Event, HomeAssistant, callback
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers.event import async_call_later
from homeassistant.util import dt as dt_util
from homeassistant.util.hass_dict import HassKey

from .const import DOMAIN, EVENT_DISPATCH_COMPLETED, LOGGER
from .engine import FleetState, OrderStatus
from .fleet_input import DiscoveryRound, FleetInput

SYS_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
ISSUE_DROPPED = "dropped_messages"
ISSUE_SHRANK = "fleet_shrank"
ISSUE_ACKS = "acks_missing"
ISSUES = (ISSUE_DROPPED, ISSUE_SHRANK, ISSUE_ACKS)
# A round is short when it misses more than this share of the vehicles heard
# from before it, and at least SHRINK_MIN_MISSING of them (a car or two that
# left a home fleet is no news).
SHRINK_RATIO = 0.1
SHRINK_MIN_MISSING = 10
# A dispatch is a burst from this many orders on; its acks are missing when
# more than this share of its orders timed out.
BURST_MIN_ORDERS = 50
MISSING_ACKS_RATIO = 0.1
# The broker's count is asked again this long after a burst (more than
# mosquitto's default sys_interval, 10 s).
RECOUNT_AFTER_BURST_S = 15.0

DATA_BROKER_HEALTH: HassKey[dict[str, BrokerHealth]] = HassKey(
    f"{DOMAIN}_broker_health"
)


@dataclass(slots=True)
class DroppedCount:
    """What the broker's dropped-messages count said."""

    broker_total: int | None = None  # the latest value (since the broker started)
    since_followed: int = 0  # the growth while followed
    first_drop_at: datetime | None = None  # when the growth was first seen


def broker_health(hass: HomeAssistant, entry_id: str) -> BrokerHealth | None:
    """The broker health of a loaded fleet (None when not followed)."""
    return hass.data.get(DATA_BROKER_HEALTH, {}).get(entry_id)


class BrokerHealth:
    """Watches one fleet's messages for losses and tells the operator."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: ConfigEntry,
        *,
        fleet: FleetState,
        fleet_input: FleetInput,
        stale_timeout: float,
        is_controlled: Callable[[str], bool],
        monotonic: Callable[[], float],
    ) -> None:
        """Bind to the fleet; `is_controlled` tells vehicles that use no MQTT."""
        self._hass = hass
        self._entry = entry
        self._fleet = fleet
        self._fleet_input = fleet_input
        self._stale_timeout = stale_timeout
        self._is_controlled = is_controlled
        self._monotonic = monotonic
        self._unsubs: list[CALLBACK_TYPE] = []
        self._unsub_count: CALLBACK_TYPE | None = None
        self._cancel_recount: CALLBACK_TYPE | None = None
        self.dropped = DroppedCount()
        self.last_round: dict[str, Any] | None = None
        self.last_burst: dict[str, Any] | None = None
        self.active: set[str] = set()
        self._stopped = False

    async def async_start(self) -> None:
        """Follow the broker's count, discovery rounds and dispatches.

        Raises:
            HomeAssistantError: the subscription could not be made.
        """
        hass = self._hass
        self._fleet_input.expected_answers = self._live_mqtt_vehicles
        self._fleet_input.on_round_closed = self._round_closed
        entry_id = self._entry.entry_id
        hass.data.setdefault(DATA_BROKER_HEALTH, {})[entry_id] = self
        self._unsubs.append(
            hass.bus.async_listen(
                EVENT_DISPATCH_COMPLETED,
                self._dispatch_completed,
                event_filter=self._own_dispatch,
            )
        )
        await self._async_follow_count()

    async def _async_follow_count(self) -> None:
        """(Re)subscribe to the broker's count: it sends its retained value."""
        unsub = await mqtt.async_subscribe(
            self._hass, SYS_DROPPED_TOPIC, self._dropped_count, qos=0, encoding=None
        )
        if self._stopped:
            unsub()
            return
        previous, self._unsub_count = self._unsub_count, unsub
        if previous is not None:
            previous()

    @callback
    def _recount_later(self) -> None:
        """Ask for the broker's count again once a burst is over."""
        if self._cancel_recount is not None:
            self._cancel_recount()

        @callback
        def _recount(_now: datetime) -> None:
            self._cancel_recount = None
            self._entry.async_create_background_task(
                self._hass, self._async_follow_count(), f"{DOMAIN} broker count"
            )

        self._cancel_recount = async_call_later(
            self._hass, RECOUNT_AFTER_BURST_S, _recount
        )

    @callback
    def async_stop(self) -> None:
        """Stop following; the fleet's issues go with it."""
        self._stopped = True
        self._fleet_input.async_stop()
        while self._unsubs:
            self._unsubs.pop()()
        for cancel in (self._cancel_recount, self._unsub_count):
            if cancel is not None:
                cancel()
        self._cancel_recount = self._unsub_count = None
        self._hass.data.get(DATA_BROKER_HEALTH, {}).pop(self._entry.entry_id, None)
        for key in ISSUES:
            self._clear(key)

    def as_dict(self) -> dict[str, Any]:
        """The diagnostics: what was seen and which issues are raised."""
        first = self.dropped.first_drop_at
        return {
            "dropped_messages": {
                "broker_total": self.dropped.broker_total,
                "since_followed": self.dropped.since_followed,
                "first_drop_at": None if first is None else first.isoformat(),
            },
            "last_discovery_round": self.last_round,
            "discovery_answers": dict(self._fleet_input.counters),
            "last_large_dispatch": self.last_burst,
            "issues": sorted(self.active),
        }

    # --- the broker's count ---------------------------------------------------

    @callback
    def _dropped_count(self, msg: mqtt.ReceiveMessage) -> None:
        payload = msg.payload
        try:
            value = int(
                payload.decode() if isinstance(payload, bytes | bytearray) else payload
            )
        except (TypeError, ValueError, UnicodeDecodeError):
            return
        dropped = self.dropped
        previous = dropped.broker_total
        dropped.broker_total = value
        if previous is None:
            if msg.retain:
                return  # the count when the fleet began to follow: not its drops
            # Its count changed, but the value before was lost (dropped too).
            previous = 0
        if value < previous:
            # The broker restarted (with new settings, presumably): start again.
            dropped.since_followed = 0
            dropped.first_drop_at = None
            self._clear(ISSUE_DROPPED)
            previous = 0
        if value == previous:
            return
        dropped.since_followed += value - previous
        if dropped.first_drop_at is None:
            dropped.first_drop_at = dt_util.now()
        LOGGER.warning(
            "The MQTT broker dropped %d messages (%d since %s)",
            value - previous,
            dropped.since_followed,
            dropped.first_drop_at.isoformat(timespec="seconds"),
        )
        self._raise(
            ISSUE_DROPPED,
            dropped=f"{dropped.since_followed:,}",
            since=dropped.first_drop_at.strftime("%Y-%m-%d %H:%M"),
        )

    # --- discovery rounds -----------------------------------------------------

    def _live_mqtt_vehicles(self) -> int:
        """Vehicles heard from within the stale timeout that talk MQTT."""
        fleet = self._fleet
        stale = set(fleet.stale_ids(self._monotonic(), self._stale_timeout))
        return sum(
            1
            for vehicle_id in fleet.vehicles
            if vehicle_id not in stale and not self._is_controlled(vehicle_id)
        )

    @callback
    def _round_closed(self, closed: DiscoveryRound) -> None:
        answered = len(closed.answered)
        previous = self.last_round
        expected = max(
            closed.expected, 0 if previous is None else int(previous["answered"])
        )
        self.last_round = {
            "answered": answered,
            "expected": expected,
            "gateway_answers": closed.gateway_answers,
        }
        if answered:
            self._recount_later()
        missing = expected - answered
        if missing >= SHRINK_MIN_MISSING and missing > expected * SHRINK_RATIO:
            LOGGER.warning(
                "Only %d of %d vehicles answered the discovery request",
                answered,
                expected,
            )
            self._raise(
                ISSUE_SHRANK, answered=f"{answered:,}", expected=f"{expected:,}"
            )
        else:
            self._clear(ISSUE_SHRANK)

    # --- bursts of orders -----------------------------------------------------

    @callback
    def _own_dispatch(self, data: Mapping[str, Any]) -> bool:
        return bool(data.get(ATTR_CONFIG_ENTRY_ID) == self._entry.entry_id)

    @callback
    def _dispatch_completed(self, event: Event[dict[str, Any]]) -> None:
        orders = [
            order
            for round_name in ("vehicles", "fallback")
            for order in (event.data.get(round_name) or {}).values()
            if isinstance(order, dict)
        ]
        if len(orders) < BURST_MIN_ORDERS:
            return
        self._recount_later()
        missing = sum(
            1 for order in orders if order.get("status") == OrderStatus.TIMEOUT.value
        )
        dispatch_id = str(event.data.get("dispatch_id"))
        self.last_burst = {
            "dispatch_id": dispatch_id,
            "orders": len(orders),
            "missing_acks": missing,
        }
        if missing > len(orders) * MISSING_ACKS_RATIO:
            LOGGER.warning(
                "%d of %d orders of dispatch %s got no ack",
                missing,
                len(orders),
                dispatch_id,
            )
            self._raise(
                ISSUE_ACKS,
                missing=f"{missing:,}",
                orders=f"{len(orders):,}",
                dispatch_id=dispatch_id,
            )
        else:
            self._clear(ISSUE_ACKS)

    # --- issues ---------------------------------------------------------------

    def _raise(self, key: str, **placeholders: str) -> None:
        self.active.add(key)
        ir.async_create_issue(
            self._hass,
            DOMAIN,
            f"{key}_{self._entry.entry_id}",
            is_fixable=False,
            severity=ir.IssueSeverity.WARNING,
            translation_key=key,
            translation_placeholders={"fleet": self._entry.title, **placeholders},
        )

    def _clear(self, key: str) -> None:
        if key in self.active:
            self.active.discard(key)
            ir.async_delete_issue(self._hass, DOMAIN, f"{key}_{self._entry.entry_id}")
