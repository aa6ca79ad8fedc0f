"""The record of a dispatch in flight, and its conversion to an `interrupted` response.

A record is JSON-safe and shaped like the dispatch response (docs/actions.md):
dispatch_id, signal, strategy, requested_kw, assigned_kw, vehicles, fallback,
excluded, started_at, plus `phase` (starting | publishing | waiting | fallback).
Each order also carries its `delivered_kw`; orders still waiting have status
`pending`. The host stores it before the first publish and refreshes it while
the dispatch runs; a record left behind by a stop is closed as `interrupted`.

A record read back from disk may be anything: `close_record` never raises. What
cannot be read is reported as unknown (None) or left out, and only what can be
read teaches the fleet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
import math
from typing import Any

from .acks import PendingOrder, delivered_power
from .models import (
    MAX_SIGNAL_DURATION_S,
    DispatchStatus,
    ExclusionReason,
    OrderStatus,
    SignalType,
    Strategy,
    isoformat_utc,
    parse_utc_time,
)
from .results import (
    OrderOutcome,
    OrderRound,
    dispatch_response,
    round_kw,
    round_ms,
    round_score,
    summarise,
)
from .settings import DispatchRequest

PHASE_STARTING = "starting"
PHASE_PUBLISHING = "publishing"
PHASE_WAITING = "waiting"
PHASE_FALLBACK = "fallback"

_SECTIONS = {
    OrderRound.INITIAL: "vehicles",
    OrderRound.FALLBACK: "fallback",
    OrderRound.REVOKE: "revoked",
}
_ANSWERED = frozenset({OrderStatus.ACKNOWLEDGED, OrderStatus.REJECTED})
# Statuses an order can end with; any other is closed as `timeout`.
_FINAL = frozenset(OrderStatus) - {OrderStatus.PENDING, OrderStatus.PLANNED}
_STATUSES = {status.value: status for status in OrderStatus}
_EXCLUSION_REASONS = {reason.value: reason for reason in ExclusionReason}


def starting_record(
    request: DispatchRequest, strategy: Strategy, started_at: datetime | None = None
) -> dict[str, Any]:
    """The record of a dispatch about to start: phase `starting`, no order yet.

    `started_at` defaults to the signal's start.
    """
    signal = request.signal
    return {
        "dispatch_id": request.dispatch_id,
        "signal": signal.as_dict(),
        "strategy": strategy.value,
        "phase": PHASE_STARTING,
        "requested_kw": round_kw(signal.power_kw),
        "assigned_kw": 0.0,
        "vehicles": {},
        "fallback": {},
        "excluded": {},
        "started_at": isoformat_utc(signal.start if started_at is None else started_at),
    }


@dataclass(slots=True)
class InFlight:
    """A running dispatch, kept for `DispatchEngine.pending_dispatches()`."""

    request: DispatchRequest
    strategy: Strategy
    started_at: datetime
    started_mono: float
    excluded: dict[str, ExclusionReason]
    scores: dict[str, float]
    phase: str = PHASE_PUBLISHING
    rounds: dict[OrderRound, list[PendingOrder]] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The JSON-safe record of the dispatch as it stands."""
        sections: dict[str, dict[str, dict[str, Any]]] = {
            "vehicles": {},
            "fallback": {},
        }
        for round_name, entries in self.rounds.items():
            scores = self.scores if round_name is OrderRound.INITIAL else {}
            sections[_SECTIONS[round_name]] = {
                entry.order.vehicle_id: {
                    "power_kw": round_kw(entry.order.power_kw),
                    "status": entry.status.value,
                    "latency_ms": round_ms(entry.latency_ms),
                    "command_id": entry.order.command_id,
                    "reason": entry.reason,
                    "score": round_score(scores.get(entry.order.vehicle_id)),
                    "delivered_kw": round_kw(entry.delivered_kw),
                }
                for entry in entries
            }
        assigned = math.fsum(
            entry.order.power_kw for entry in self.rounds.get(OrderRound.INITIAL, ())
        )
        return {
            **starting_record(self.request, self.strategy, self.started_at),
            "phase": self.phase,
            "assigned_kw": round_kw(assigned),
            **sections,
            "excluded": {vid: r.value for vid, r in self.excluded.items()},
        }

    def outcome(self, entry: PendingOrder, round_name: OrderRound) -> OrderOutcome:
        """What became of one order of this dispatch, placed in wall time."""
        resolved_at = None
        if entry.resolved_at is not None:
            resolved_at = self.started_at + timedelta(
                seconds=entry.resolved_at - self.started_mono
            )
        order = entry.order
        return OrderOutcome(
            vehicle_id=order.vehicle_id,
            power_kw=order.power_kw,
            status=entry.status,
            command_id=order.command_id,
            latency_ms=entry.latency_ms,
            reason=entry.reason,
            score=self.scores.get(order.vehicle_id)
            if round_name is OrderRound.INITIAL
            else None,
            delivered_kw=entry.delivered_kw,
            round=round_name,
            resolved_at=resolved_at,
            expires_at=datetime.fromtimestamp(order.expires_at_ms / 1000.0, UTC),
        )


@dataclass(slots=True)
class ClosedRecord:
    """An in-flight record closed as `interrupted`.

    Attributes:
        response: the `interrupted` response.
        started_at: when the dispatch started (None: unreadable).
        duration_s: the signal's duration (None: unreadable or out of range).
        readable: the orders whose power could be read (only they can teach the
            fleet; an unreadable status already reads as `timeout`).
    """

    response: dict[str, Any]
    started_at: datetime | None
    duration_s: float | None
    readable: list[OrderOutcome]

    def answered(self, order_ttl_s: float | None) -> list[OrderOutcome]:
        """The readable orders a vehicle answered, placed in time.

        Each is resolved at the dispatch start plus its latency and (if
        acknowledged) lapses `order_ttl_s` (default: the signal's duration) after
        the start. Empty when the start or that lifetime is unknown: an answer that
        cannot be placed in time would set a setpoint that never lapses.
        """
        ttl_s = order_ttl_s or self.duration_s
        if self.started_at is None or ttl_s is None:
            return []
        answered: list[OrderOutcome] = []
        for outcome in self.readable:
            if outcome.status not in _ANSWERED:
                continue
            latency_s = (outcome.latency_ms or 0.0) / 1000.0
            try:
                outcome.resolved_at = self.started_at + timedelta(seconds=latency_s)
                outcome.expires_at = self.started_at + timedelta(seconds=ttl_s)
            except OverflowError:  # a latency or start near the end of the calendar
                continue
            answered.append(outcome)
        return answered


def interrupted_response(record: object, completed_at: datetime) -> dict[str, Any]:
    """The `interrupted` response of an in-flight record (see `close_record`)."""
    return close_record(record, completed_at).response


def close_record(record: object, completed_at: datetime) -> ClosedRecord:
    """Close an in-flight record (read back from disk) as `interrupted`; never raises.

    Orders still pending (or with an unreadable status) are reported as
    `timeout`: no ack was seen for them. Unreadable values are reported as None:
    the dispatch id as "", an order's power as 0 kW; unknown exclusion reasons
    are left out. `ack_rate` is acknowledged / published orders of both rounds
    (None when nothing was published).
    """
    data: Mapping[Any, Any] = record if isinstance(record, Mapping) else {}
    readable: list[OrderOutcome] = []
    # A revoke round teaches nothing about a vehicle: its orders are not read.
    rounds = {
        round_name: _read_orders(data.get(_SECTIONS[round_name]), round_name, readable)
        for round_name in (OrderRound.INITIAL, OrderRound.FALLBACK)
    }
    signal = data.get("signal")
    signal = signal if isinstance(signal, Mapping) else {}
    signal_type = _parse_enum(signal.get("type"), SignalType.parse)
    strategy = _parse_enum(data.get("strategy"), Strategy.parse)
    power_kw = _number(signal.get("power_kw"))
    duration_s = _number(signal.get("duration_s"))
    start = parse_utc_time(signal.get("start"))
    started_at = parse_utc_time(data.get("started_at"))
    dispatch_id = data.get("dispatch_id")
    # The signal's power is the requested power; the record's own is a fallback.
    requested_kw = (
        power_kw if power_kw is not None else _number(data.get("requested_kw"))
    )
    summary = summarise(
        rounds[OrderRound.INITIAL].values(), rounds[OrderRound.FALLBACK].values()
    )
    response = dispatch_response(
        dispatch_id=dispatch_id if isinstance(dispatch_id, str) else "",
        status=DispatchStatus.INTERRUPTED,
        signal={
            "type": signal_type,
            "power_kw": power_kw,
            "duration_s": duration_s,
            "start": None if start is None else isoformat_utc(start),
        },
        strategy=strategy,
        requested_kw=requested_kw,
        assigned_kw=summary.assigned_kw,
        acknowledged_kw=summary.acknowledged_kw,
        ack_rate=summary.ack_rate,
        vehicles=rounds[OrderRound.INITIAL],
        fallback=rounds[OrderRound.FALLBACK],
        excluded=_read_excluded(data.get("excluded")),
        started_at=None if started_at is None else isoformat_utc(started_at),
        completed_at=completed_at,
    )
    if duration_s is not None and not 0.0 < duration_s <= MAX_SIGNAL_DURATION_S:
        duration_s = None
    return ClosedRecord(response, started_at, duration_s, readable)


def _read_orders(
    raw: object, round_name: OrderRound, readable: list[OrderOutcome]
) -> dict[str, OrderOutcome]:
    """The orders of one round; those that can teach the fleet go to `readable`."""
    orders: dict[str, OrderOutcome] = {}
    if not isinstance(raw, Mapping):
        return orders
    for vehicle_id, item in raw.items():
        if not isinstance(vehicle_id, str):
            continue
        item = item if isinstance(item, Mapping) else {}
        power_kw = _number(item.get("power_kw"))
        status = _status(item.get("status"))
        latency_ms = _number(item.get("latency_ms"))
        outcome = OrderOutcome(
            vehicle_id=vehicle_id,
            power_kw=power_kw or 0.0,
            status=status,
            command_id=_text(item.get("command_id")),
            latency_ms=latency_ms if latency_ms is None or latency_ms >= 0 else None,
            reason=_text(item.get("reason")),
            score=_number(item.get("score"))
            if round_name is OrderRound.INITIAL
            else None,
            delivered_kw=delivered_power(
                status, power_kw or 0.0, _number(item.get("delivered_kw"))
            ),
            round=round_name,
        )
        orders[vehicle_id] = outcome
        if power_kw is not None:
            readable.append(outcome)
    return orders


def _read_excluded(raw: object) -> dict[str, ExclusionReason]:
    if not isinstance(raw, Mapping):
        return {}
    return {
        vehicle_id: _EXCLUSION_REASONS[reason]
        for vehicle_id, reason in raw.items()
        if isinstance(vehicle_id, str)
        and isinstance(reason, str)
        and reason in _EXCLUSION_REASONS
    }


def _status(value: object) -> OrderStatus:
    """The final status of an order; one still waiting (or unreadable) timed out."""
    status = _STATUSES.get(value) if isinstance(value, str) else None
    if status is None or status not in _FINAL:
        return OrderStatus.TIMEOUT
    return status


def _parse_enum(
    value: object, parse: Callable[[str], SignalType | Strategy]
) -> str | None:
    """The canonical value of a signal type or strategy name, None if unknown."""
    if not isinstance(value, str):
        return None
    try:
        return parse(value).value
    except ValueError:
        return None


def _number(value: object) -> float | None:
    """A finite number (not a bool), as a float; None otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return number if math.isfinite(number) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
