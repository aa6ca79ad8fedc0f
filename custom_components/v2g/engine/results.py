"""What a dispatch produced: its orders, its totals and the response built from them.

The response is the one documented in docs/actions.md (`v2g.dispatch`). Powers
are reported to the watt (3 decimals), scores to 4 decimals, latencies to the
microsecond (3 decimals of a millisecond); totals are summed exactly first and
rounded once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
import math
from typing import Any

from .models import (
    DispatchStatus,
    ExclusionReason,
    FlexibilitySignal,
    OrderStatus,
    Strategy,
    isoformat_utc,
)

# Relative tolerance when comparing acknowledged with assigned power.
_POWER_REL_TOL = 1e-9
POWER_ABS_TOL = 1e-9

# Orders that never reached a vehicle: ack_rate = acknowledged / published orders.
NOT_PUBLISHED = frozenset(
    {
        OrderStatus.SUPERSEDED,
        OrderStatus.PUBLISH_FAILED,
        OrderStatus.PLANNED,
        OrderStatus.PENDING,
    }
)


def round_kw(value: float) -> float:
    """Power to the watt (`+ 0.0` turns a rounded -0.0 into 0.0)."""
    return round(value, 3) + 0.0


def round_score(value: float | None) -> float | None:
    """A score to 4 decimals."""
    return None if value is None else round(value, 4)


def round_ms(value: float | None) -> float | None:
    """A latency in milliseconds to 3 decimals."""
    return None if value is None else round(value, 3)


class OrderRound(StrEnum):
    """Which round of a dispatch an order belongs to."""

    INITIAL = "initial"
    FALLBACK = "fallback"
    # 0 kW to a vehicle whose order timed out, before its power is re-allocated.
    REVOKE = "revoke"
    # 0 kW to a vehicle whose setpoint outlived its dispatch's end.
    RELEASE = "release"


@dataclass(slots=True)
class OrderOutcome:
    """One order of a dispatch and what became of it."""

    vehicle_id: str
    power_kw: float
    status: OrderStatus
    command_id: str | None
    latency_ms: float | None = None
    reason: str | None = None
    score: float | None = None
    delivered_kw: float = 0.0
    round: OrderRound = OrderRound.INITIAL
    resolved_at: datetime | None = None
    expires_at: datetime | None = None

    def as_vehicle_response(self) -> dict[str, Any]:
        """The `vehicles.<id>` object of the response."""
        return {
            "power_kw": round_kw(self.power_kw),
            "status": self.status.value,
            "latency_ms": round_ms(self.latency_ms),
            "command_id": self.command_id,
            "reason": self.reason,
            "score": round_score(self.score),
        }

    def as_revoke_response(self) -> dict[str, Any]:
        """The `revoked.<id>` object of the response (a 0 kW order)."""
        return {
            "status": self.status.value,
            "latency_ms": round_ms(self.latency_ms),
            "command_id": self.command_id,
        }

    def as_fallback_response(self) -> dict[str, Any]:
        """The `fallback.<id>` object of the response."""
        return {
            "power_kw": round_kw(self.power_kw),
            "status": self.status.value,
            "latency_ms": round_ms(self.latency_ms),
            "command_id": self.command_id,
        }


@dataclass(frozen=True, slots=True)
class OrderSummary:
    """Totals of the orders of a dispatch (both rounds)."""

    assigned_kw: float
    acknowledged_kw: float
    published: int
    acknowledged: int

    @property
    def ack_rate(self) -> float | None:
        """Acknowledged / published orders; None when nothing was published."""
        return self.acknowledged / self.published if self.published else None


def summarise(
    initial: Iterable[OrderOutcome], fallback: Iterable[OrderOutcome]
) -> OrderSummary:
    """Assigned power (initial round), acknowledged power and order counts.

    A fallback order carries the new total setpoint of its vehicle, so the
    acknowledged power of a vehicle is that of its latest acknowledged order.
    """
    initial = list(initial)
    final: dict[str, float] = {}
    published = acknowledged = 0
    for outcome in (*initial, *fallback):
        if outcome.status is OrderStatus.ACKNOWLEDGED:
            acknowledged += 1
            final[outcome.vehicle_id] = outcome.delivered_kw
        if outcome.status not in NOT_PUBLISHED:
            published += 1
    return OrderSummary(
        assigned_kw=math.fsum(o.power_kw for o in initial),
        acknowledged_kw=math.fsum(final.values()),
        published=published,
        acknowledged=acknowledged,
    )


def final_status(
    power_kw: float, summary: OrderSummary, initial_orders: int
) -> DispatchStatus:
    """The status of a dispatch whose rounds are over."""
    if not initial_orders:
        # Nothing to order: an idle fleet is idle; nothing eligible is a failure.
        return DispatchStatus.COMPLETED if power_kw == 0.0 else DispatchStatus.FAILED
    acked = summary.acknowledged
    if power_kw == 0.0:
        # Return to idle: judged by orders, since every order carries 0 kW.
        if acked == initial_orders:
            return DispatchStatus.COMPLETED
        return DispatchStatus.PARTIAL if acked else DispatchStatus.FAILED
    assigned = summary.assigned_kw
    acknowledged = summary.acknowledged_kw
    if assigned == 0.0 or acknowledged == 0.0:
        return DispatchStatus.FAILED
    if math.isclose(
        abs(acknowledged), abs(assigned), rel_tol=_POWER_REL_TOL, abs_tol=POWER_ABS_TOL
    ) or abs(acknowledged) > abs(assigned):
        return DispatchStatus.COMPLETED
    return DispatchStatus.PARTIAL


def shortfall(requested_kw: float | None, assigned_kw: float) -> float | None:
    """The part of a request no vehicle could take (kW, >= 0; to the watt)."""
    if requested_kw is None:
        return None
    return round_kw(max(abs(requested_kw) - abs(assigned_kw), 0.0))


def dispatch_response(
    *,
    dispatch_id: str,
    status: DispatchStatus,
    signal: Mapping[str, Any],
    strategy: str | None,
    requested_kw: float | None,
    assigned_kw: float,
    acknowledged_kw: float,
    ack_rate: float | None,
    vehicles: Mapping[str, OrderOutcome],
    fallback: Mapping[str, OrderOutcome],
    excluded: Mapping[str, ExclusionReason],
    started_at: str | None,
    completed_at: datetime,
) -> dict[str, Any]:
    """The response of a dispatch (JSON-safe, every documented key)."""
    return {
        "dispatch_id": dispatch_id,
        "status": status.value,
        "signal": dict(signal),
        "strategy": strategy,
        "requested_kw": None if requested_kw is None else round_kw(requested_kw),
        "assigned_kw": round_kw(assigned_kw),
        "shortfall_kw": shortfall(requested_kw, assigned_kw),
        "acknowledged_kw": round_kw(acknowledged_kw),
        "ack_rate": ack_rate,
        "vehicles": {vid: o.as_vehicle_response() for vid, o in vehicles.items()},
        "fallback": {vid: o.as_fallback_response() for vid, o in fallback.items()},
        "excluded": {vid: reason.value for vid, reason in excluded.items()},
        "started_at": started_at,
        "completed_at": isoformat_utc(completed_at),
    }


@dataclass(slots=True)
class DispatchResult:
    """Outcome of one dispatch; `as_response()` is the documented response."""

    dispatch_id: str
    signal: FlexibilitySignal
    strategy: Strategy
    status: DispatchStatus
    requested_kw: float
    assigned_kw: float
    acknowledged_kw: float
    ack_rate: float | None
    vehicles: dict[str, OrderOutcome]
    fallback: dict[str, OrderOutcome]
    excluded: dict[str, ExclusionReason]
    started_at: datetime
    completed_at: datetime
    scores: dict[str, float] = field(default_factory=dict)
    shortfall_kw: float = 0.0
    orders_published: int = 0
    orders_acknowledged: int = 0
    # Timed-out orders revoked (0 kW) before their power was re-allocated.
    revoked: dict[str, OrderOutcome] = field(default_factory=dict)

    @property
    def outcomes(self) -> list[OrderOutcome]:
        """Every order of both rounds (initial first)."""
        return [*self.vehicles.values(), *self.fallback.values()]

    def as_response(self) -> dict[str, Any]:
        """Return exactly the documented response (JSON-safe, rounded).

        `revoked` is present only when an order was revoked.
        """
        response = dispatch_response(
            dispatch_id=self.dispatch_id,
            status=self.status,
            signal=self.signal.as_dict(),
            strategy=self.strategy.value,
            requested_kw=self.requested_kw,
            assigned_kw=self.assigned_kw,
            acknowledged_kw=self.acknowledged_kw,
            ack_rate=self.ack_rate,
            vehicles=self.vehicles,
            fallback=self.fallback,
            excluded=self.excluded,
            started_at=isoformat_utc(self.started_at),
            completed_at=self.completed_at,
        )
        if self.revoked:
            response["revoked"] = {
                vid: o.as_revoke_response() for vid, o in self.revoked.items()
            }
        return response
