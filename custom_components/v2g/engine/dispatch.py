"""Dispatch orchestration: eligibility -> allocation -> orders -> acks -> fallback.

One dispatch runs at most two rounds of orders:

1. the allocation of the chosen strategy;
2. a fallback round: the power that was assigned but not acknowledged (rejected,
   timed out, failed to publish, superseded, or only partly applied) is
   re-allocated (`fallback.reallocate`) to donors — eligible vehicles that either
   acknowledged their first order in full or got none — and **sent** as new total
   setpoints, acknowledged like the first round (the Go system only computed it).

Each round is one `transport.publish` call with all its orders (failed ones are
retried with exponential backoff) and one ack deadline. Pending entries are
registered before publishing, and each knows its dispatch, so concurrent
dispatches never mix acks; a newer order to a vehicle supersedes the older one.

All timing goes through the injected `Runtime`; the engine reads no clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
import math
from types import MappingProxyType
from typing import Any, Protocol
import uuid

from .acks import AckDisposition, AckTracker, PendingOrder
from .codec import DecodeError, Order, decode_ack, decode_gateway_acks
from .eligibility import Candidate, SafetySettings, evaluate_eligibility
from .fallback import reallocate
from .fleet import FleetState
from .models import (
    DispatchStatus,
    ExclusionReason,
    FallbackMode,
    FlexibilitySignal,
    InvalidValueError,
    OrderStatus,
    SignalType,
    Strategy,
    Vehicle,
    isoformat_utc,
)
from .prediction import PredictionEngine
from .steps import async_chunks
from .strategies import (
    DEFAULT_SEGMENTS,
    Allocation,
    ScoreWeights,
    SegmentConfig,
    allocate,
)

# Relative tolerance when comparing acknowledged with assigned power.
_POWER_REL_TOL = 1e-9
_POWER_ABS_TOL = 1e-9
# How many unknown ids an error message lists before "…".
_MAX_LISTED_IDS = 10


class Cancellable(Protocol):
    """A scheduled callback that can be cancelled."""

    def cancel(self) -> None:
        """Cancel the callback (no effect if it already ran)."""


class Runtime(Protocol):
    """Clock and scheduling, provided by the host (Home Assistant, tests)."""

    def now(self) -> datetime:
        """Current wall time, timezone-aware."""

    def monotonic(self) -> float:
        """Current monotonic time in seconds."""

    def create_future(self) -> asyncio.Future[None]:
        """A future bound to the running event loop."""

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`."""

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Cancellable:
        """Run `callback` after `seconds`."""


class OrderTransport(Protocol):
    """Publishes orders (per vehicle or per gateway, see `Order.gateway`)."""

    async def publish(self, orders: Sequence[Order]) -> list[Exception | None]:
        """Publish `orders`; return one result per order, in the same order.

        None means published; an exception means that order failed (it will be
        retried). Raising fails every order of the call.
        """


class OrderRound(StrEnum):
    """Which round of a dispatch an order belongs to."""

    INITIAL = "initial"
    FALLBACK = "fallback"


def _default_strategies() -> Mapping[SignalType, Strategy]:
    strategies = dict.fromkeys(SignalType, Strategy.SMART)
    strategies[SignalType.FCR] = Strategy.OPTIMAL
    return MappingProxyType(strategies)


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """Engine options (DESIGN §6); defaults are the documented ones."""

    strategies: Mapping[SignalType, Strategy] = field(
        default_factory=_default_strategies
    )
    fallback: FallbackMode = FallbackMode.BALANCED
    ack_timeout_s: float = 5.0
    safety: SafetySettings = field(default_factory=SafetySettings)
    weights: ScoreWeights = field(default_factory=ScoreWeights)
    segments: Mapping[str, SegmentConfig] = DEFAULT_SEGMENTS
    publish_retries: int = 3
    retry_backoff_s: float = 0.1
    order_ttl_s: float | None = None
    # A vehicle silent for longer than this is treated as unavailable (None: never).
    stale_timeout_s: float | None = None

    def __post_init__(self) -> None:
        """Validate timings and counts.

        Raises:
            InvalidValueError: a value is out of range.
        """
        if not math.isfinite(self.ack_timeout_s) or self.ack_timeout_s <= 0.0:
            raise InvalidValueError("ack_timeout_s", "must be > 0")
        if self.publish_retries < 0:
            raise InvalidValueError("publish_retries", "must be >= 0")
        if not math.isfinite(self.retry_backoff_s) or self.retry_backoff_s < 0.0:
            raise InvalidValueError("retry_backoff_s", "must be >= 0")
        if self.order_ttl_s is not None and (
            not math.isfinite(self.order_ttl_s) or self.order_ttl_s <= 0.0
        ):
            raise InvalidValueError("order_ttl_s", "must be > 0")
        if self.stale_timeout_s is not None and (
            not math.isfinite(self.stale_timeout_s) or self.stale_timeout_s <= 0.0
        ):
            raise InvalidValueError("stale_timeout_s", "must be > 0")

    def strategy_for(self, signal_type: SignalType) -> Strategy:
        """Strategy configured for a signal type (smart when not configured)."""
        return self.strategies.get(signal_type, Strategy.SMART)


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class DispatchRequest:
    """One dispatch to run.

    `vehicle_ids` None means the whole fleet; unknown ids are an error.
    `strategy` None means the one configured for the signal type.
    """

    signal: FlexibilitySignal
    vehicle_ids: tuple[str, ...] | None = None
    strategy: Strategy | None = None
    dry_run: bool = False
    dispatch_id: str = field(default_factory=_new_id)


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
        """The `vehicles.<id>` object of DESIGN §4."""
        return {
            "power_kw": self.power_kw,
            "status": self.status.value,
            "latency_ms": _round_ms(self.latency_ms),
            "command_id": self.command_id,
            "reason": self.reason,
            "score": self.score,
        }

    def as_fallback_response(self) -> dict[str, Any]:
        """The `fallback.<id>` object of DESIGN §4."""
        return {
            "power_kw": self.power_kw,
            "status": self.status.value,
            "latency_ms": _round_ms(self.latency_ms),
            "command_id": self.command_id,
        }


def _round_ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass(slots=True)
class DispatchResult:
    """Outcome of one dispatch; `as_response()` is the DESIGN §4 response."""

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

    @property
    def outcomes(self) -> list[OrderOutcome]:
        """Every order of both rounds (initial first)."""
        return [*self.vehicles.values(), *self.fallback.values()]

    def final_outcomes(self) -> dict[str, OrderOutcome]:
        """The last order of each vehicle (a fallback order overrides)."""
        final = dict(self.vehicles)
        final.update(self.fallback)
        return final

    def as_response(self) -> dict[str, Any]:
        """Return exactly the DESIGN §4 response (JSON-safe)."""
        return {
            "dispatch_id": self.dispatch_id,
            "status": self.status.value,
            "signal": self.signal.as_dict(),
            "strategy": self.strategy.value,
            "requested_kw": self.requested_kw,
            "assigned_kw": self.assigned_kw,
            "acknowledged_kw": self.acknowledged_kw,
            "ack_rate": self.ack_rate,
            "vehicles": {
                vid: o.as_vehicle_response() for vid, o in self.vehicles.items()
            },
            "fallback": {
                vid: o.as_fallback_response() for vid, o in self.fallback.items()
            },
            "excluded": {vid: r.value for vid, r in self.excluded.items()},
            "started_at": isoformat_utc(self.started_at),
            "completed_at": isoformat_utc(self.completed_at),
        }


class _Round:
    """Ack bookkeeping of one round: resolves its future when nothing is pending."""

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self.outstanding = 0
        self.entries: list[PendingOrder] = []

    def order_resolved(self, entry: PendingOrder) -> None:
        self.outstanding -= 1
        if self.outstanding <= 0 and not self.future.done():
            self.future.set_result(None)


@dataclass(slots=True)
class _InFlight:
    """A running dispatch, kept for `pending_dispatches()`."""

    request: DispatchRequest
    strategy: Strategy
    started_at: datetime
    started_mono: float
    excluded: dict[str, ExclusionReason]
    scores: dict[str, float]
    phase: str = "publishing"
    rounds: dict[OrderRound, list[PendingOrder]] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """JSON-safe view, shaped like the DESIGN §4 response."""
        rounds: dict[OrderRound, dict[str, dict[str, Any]]] = {
            OrderRound.INITIAL: {},
            OrderRound.FALLBACK: {},
        }
        assigned = 0.0
        for round_name, entries in self.rounds.items():
            for entry in entries:
                order = entry.order
                if round_name is OrderRound.INITIAL:
                    assigned += order.power_kw
                rounds[round_name][order.vehicle_id] = {
                    "power_kw": order.power_kw,
                    "status": entry.status.value,
                    "latency_ms": _round_ms(entry.latency_ms),
                    "command_id": order.command_id,
                    "reason": entry.reason,
                    "score": self.scores.get(order.vehicle_id)
                    if round_name is OrderRound.INITIAL
                    else None,
                    "delivered_kw": entry.delivered_kw,
                }
        signal = self.request.signal
        return {
            "dispatch_id": self.request.dispatch_id,
            "signal": signal.as_dict(),
            "strategy": self.strategy.value,
            "phase": self.phase,
            "requested_kw": signal.power_kw,
            "assigned_kw": assigned,
            "vehicles": rounds[OrderRound.INITIAL],
            "fallback": rounds[OrderRound.FALLBACK],
            "excluded": {vid: r.value for vid, r in self.excluded.items()},
            "started_at": isoformat_utc(self.started_at),
        }


def _summarise(
    initial: Iterable[OrderOutcome], fallback: Iterable[OrderOutcome]
) -> tuple[float, float, int, int]:
    """Return (assigned kW, acknowledged kW, orders published, orders acknowledged)."""
    initial = list(initial)
    fallback = list(fallback)
    final: dict[str, float] = {}
    sent = 0
    acked = 0
    for outcome in (*initial, *fallback):
        if outcome.status is OrderStatus.ACKNOWLEDGED:
            acked += 1
            final[outcome.vehicle_id] = outcome.delivered_kw
        # DESIGN §4: ack_rate = acknowledged / *published* orders, so an order
        # that never left (publish_failed) does not count as sent.
        if outcome.status not in (
            OrderStatus.SUPERSEDED,
            OrderStatus.PLANNED,
            OrderStatus.PENDING,
            OrderStatus.PUBLISH_FAILED,
        ):
            sent += 1
    assigned = math.fsum(o.power_kw for o in initial)
    return assigned, math.fsum(final.values()), sent, acked


def _status(
    power_kw: float, assigned_kw: float, acknowledged_kw: float, orders: int, acked: int
) -> DispatchStatus:
    if power_kw == 0.0:
        # Return to idle: judged by orders, since every order carries 0 kW.
        if acked == orders:
            return DispatchStatus.COMPLETED
        return DispatchStatus.PARTIAL if acked else DispatchStatus.FAILED
    if assigned_kw == 0.0 or acknowledged_kw == 0.0:
        return DispatchStatus.FAILED
    if math.isclose(
        abs(acknowledged_kw),
        abs(assigned_kw),
        rel_tol=_POWER_REL_TOL,
        abs_tol=_POWER_ABS_TOL,
    ) or abs(acknowledged_kw) > abs(assigned_kw):
        return DispatchStatus.COMPLETED
    return DispatchStatus.PARTIAL


_ANSWERED_STATUSES = frozenset({OrderStatus.ACKNOWLEDGED, OrderStatus.REJECTED})


def _closed_status(value: str) -> OrderStatus:
    # No ack was seen for an order still waiting when the dispatch stopped.
    status = OrderStatus(value)
    return OrderStatus.TIMEOUT if status is OrderStatus.PENDING else status


def interrupted_response(
    record: Mapping[str, Any], completed_at: datetime
) -> dict[str, Any]:
    """Build the DESIGN §4 response (status `interrupted`) of an in-flight record.

    `record` is one item of `DispatchEngine.pending_dispatches()` (it may have
    been stored and reloaded as JSON). Orders still pending are reported as
    `timeout`: no ack was seen for them.
    """
    return interrupted_result(record, completed_at).as_response()


def interrupted_result(
    record: Mapping[str, Any], completed_at: datetime
) -> DispatchResult:
    """The `interrupted` result of an in-flight record (see `interrupted_response`)."""
    signal_data = record["signal"]
    signal = FlexibilitySignal(
        signal_type=SignalType.parse(signal_data["type"]),
        power_kw=float(signal_data["power_kw"]),
        duration_s=float(signal_data["duration_s"]),
        start=datetime.fromisoformat(signal_data["start"]),
    )
    rounds: dict[OrderRound, dict[str, OrderOutcome]] = {}
    for round_name in OrderRound:
        rounds[round_name] = {
            vehicle_id: OrderOutcome(
                vehicle_id=vehicle_id,
                power_kw=float(item["power_kw"]),
                status=_closed_status(item["status"]),
                command_id=item.get("command_id"),
                latency_ms=item.get("latency_ms"),
                reason=item.get("reason"),
                score=item.get("score"),
                delivered_kw=float(item.get("delivered_kw", 0.0)),
                round=round_name,
            )
            for vehicle_id, item in record.get(
                "vehicles" if round_name is OrderRound.INITIAL else "fallback", {}
            ).items()
        }
    initial = rounds[OrderRound.INITIAL]
    fallback = rounds[OrderRound.FALLBACK]
    assigned, acknowledged, sent, acked = _summarise(
        initial.values(), fallback.values()
    )
    return DispatchResult(
        dispatch_id=record["dispatch_id"],
        signal=signal,
        strategy=Strategy.parse(record["strategy"]),
        status=DispatchStatus.INTERRUPTED,
        requested_kw=signal.power_kw,
        assigned_kw=assigned,
        acknowledged_kw=acknowledged,
        ack_rate=acked / sent if sent else None,
        vehicles=initial,
        fallback=fallback,
        excluded={
            vid: ExclusionReason(reason)
            for vid, reason in record.get("excluded", {}).items()
        },
        started_at=datetime.fromisoformat(record["started_at"]),
        completed_at=completed_at,
    )


class DispatchEngine:
    """Runs dispatches against a fleet, a transport and a runtime."""

    def __init__(
        self,
        transport: OrderTransport,
        runtime: Runtime,
        settings: DispatchSettings,
        fleet: FleetState,
        *,
        prediction: PredictionEngine | None = None,
        tracker: AckTracker | None = None,
        id_factory: Callable[[], str] = _new_id,
    ) -> None:
        """Wire the engine.

        Args:
            transport: publishes orders.
            runtime: clock, futures and timers.
            settings: dispatch options (replace the attribute to change them).
            fleet: the fleet state, updated after each dispatch.
            prediction: optional availability prediction (seed §3.2 step 4).
            tracker: ack tracker (a new one by default).
            id_factory: makes command ids (uuid4 strings by default).
        """
        self.transport = transport
        self.runtime = runtime
        self.settings = settings
        self.fleet = fleet
        self.prediction = prediction
        self.tracker = tracker if tracker is not None else AckTracker()
        self._new_id = id_factory
        self._inflight: dict[str, _InFlight] = {}

    # --- incoming acks ----------------------------------------------------------

    def handle_ack(
        self, topic_vehicle_id: str, payload: bytes | str
    ) -> AckDisposition | None:
        """Handle a per-vehicle ack message; None if it was malformed (counted)."""
        try:
            ack = decode_ack(payload)
        except DecodeError:
            self.tracker.count_malformed()
            return None
        now = self.runtime.monotonic()
        disposition = self.tracker.handle_ack(topic_vehicle_id, ack, now)
        self._learn_from_ack(topic_vehicle_id, disposition, now)
        return disposition

    def handle_gateway_acks(
        self, payload: bytes | str, gateway_id: str | None = None
    ) -> dict[AckDisposition, int] | None:
        """Handle a gateway ack message; return the count per disposition.

        None if the envelope was malformed (counted). With `gateway_id` (from the
        topic) an ack only counts for orders routed through that gateway.
        """
        try:
            acks = decode_gateway_acks(payload)
        except DecodeError:
            self.tracker.count_malformed()
            return None
        if acks.invalid:
            self.tracker.count_malformed(acks.invalid)
        now = self.runtime.monotonic()
        summary: dict[AckDisposition, int] = {}
        for ack in acks:
            vehicle_id = ack.vehicle_id
            assert vehicle_id is not None  # guaranteed for gateway acks
            disposition = self.tracker.handle_ack(
                vehicle_id, ack, now, gateway_id=gateway_id
            )
            self._learn_from_ack(vehicle_id, disposition, now)
            summary[disposition] = summary.get(disposition, 0) + 1
        return summary

    def _learn_from_ack(
        self, vehicle_id: str, disposition: AckDisposition, now: float
    ) -> None:
        if disposition in (
            AckDisposition.ACCEPTED,
            AckDisposition.REJECTED,
            AckDisposition.LATE,
        ):
            self.fleet.touch(vehicle_id, now)
        if disposition is AckDisposition.LATE:
            self.fleet.record_late(vehicle_id)

    # --- in-flight view ---------------------------------------------------------

    def pending_dispatches(self) -> list[dict[str, Any]]:
        """JSON-safe records of the dispatches in flight.

        Each is shaped like the DESIGN §4 response (dispatch_id, signal,
        strategy, requested_kw, assigned_kw, vehicles, fallback, excluded,
        started_at) plus `phase` (publishing | waiting | fallback); orders
        still waiting have status `pending`, and each order also carries its
        `delivered_kw`. A dispatch is listed from before its first publish call
        (so the transport can persist an in-flight marker). Feed a record to
        `interrupted_response` to record it as interrupted.
        """
        return [flight.record() for flight in self._inflight.values()]

    def interrupted_responses(self) -> list[dict[str, Any]]:
        """The `interrupted` responses of every dispatch in flight, as of now."""
        now = self.runtime.now()
        return [interrupted_response(r, now) for r in self.pending_dispatches()]

    def record_interrupted(
        self, record: Mapping[str, Any], completed_at: datetime
    ) -> dict[str, Any]:
        """Close an in-flight record as `interrupted`; the fleet keeps the answers.

        The acknowledged orders reached their vehicles before the stop: their
        setpoints (until the order's expiry, counted from the dispatch start),
        ack statistics and participation are kept as after any dispatch, and so
        are rejections. Orders still waiting teach nothing about their vehicle
        (the stop cut them short); they are reported as `timeout`.

        Raises:
            EngineError, KeyError, TypeError, ValueError: a malformed record.
        """
        result = interrupted_result(record, completed_at)
        ttl = timedelta(seconds=self.settings.order_ttl_s or result.signal.duration_s)
        answered: list[OrderOutcome] = []
        for outcome in result.outcomes:
            if outcome.status in _ANSWERED_STATUSES:
                latency_s = (outcome.latency_ms or 0.0) / 1000.0
                outcome.resolved_at = result.started_at + timedelta(seconds=latency_s)
                outcome.expires_at = result.started_at + ttl
                answered.append(outcome)
        self._learn(answered, completed_at)
        return result.as_response()

    # --- dispatch ---------------------------------------------------------------

    def _select_vehicles(self, vehicle_ids: tuple[str, ...] | None) -> list[Vehicle]:
        vehicles = self.fleet.vehicles
        if vehicle_ids is None:
            selected = list(vehicles.values())
        else:
            unique = list(dict.fromkeys(vehicle_ids))
            unknown = [vid for vid in unique if vid not in vehicles]
            if unknown:
                listed = ", ".join(unknown[:_MAX_LISTED_IDS])
                if len(unknown) > _MAX_LISTED_IDS:
                    listed += ", …"
                raise InvalidValueError("vehicles", f"unknown vehicle ids: {listed}")
            selected = [vehicles[vid] for vid in unique]
        timeout = self.settings.stale_timeout_s
        if timeout is None:
            return selected
        # A silent vehicle has most likely left: report it unavailable, order nothing.
        stale = set(self.fleet.stale_ids(self.runtime.monotonic(), timeout))
        return [
            v.with_changes(available=False)
            if v.vehicle_id in stale and v.available
            else v
            for v in selected
        ]

    def _predict(
        self, candidates: list[Candidate], signal: FlexibilitySignal
    ) -> list[Candidate]:
        if self.prediction is None:
            return candidates
        # Seed §3.2 step 4: the probability of still being there at the end.
        at = signal.end
        predicted: list[Candidate] = []
        for candidate in candidates:
            vehicle = candidate.vehicle
            probability = self.prediction.availability(vehicle.vehicle_id, at)
            if isinstance(probability, int | float) and math.isfinite(probability):
                vehicle = vehicle.with_changes(
                    availability_prob=min(max(float(probability), 0.0), 1.0)
                )
            predicted.append(Candidate(vehicle, candidate.capacity_kw))
        return predicted

    def _make_orders(
        self,
        request: DispatchRequest,
        powers: Mapping[str, float],
        vehicles: Mapping[str, Vehicle],
        timestamp_ms: int | None = None,
    ) -> list[Order]:
        signal = request.signal
        if timestamp_ms is None:
            timestamp_ms = int(self.runtime.now().timestamp() * 1000)
        ttl_s = self.settings.order_ttl_s or signal.duration_s
        expires_ms = timestamp_ms + int(ttl_s * 1000)
        return [
            Order(
                command_id=self._new_id(),
                vehicle_id=vehicle_id,
                power_kw=power,
                timestamp_ms=timestamp_ms,
                dispatch_id=request.dispatch_id,
                signal_type=signal.signal_type,
                duration_s=signal.duration_s,
                expires_at_ms=expires_ms,
                gateway=vehicles[vehicle_id].gateway,
            )
            for vehicle_id, power in powers.items()
        ]

    async def _publish(self, orders: Sequence[Order]) -> list[Exception | None]:
        try:
            results = await self.transport.publish(orders)
        except Exception as err:  # noqa: BLE001 - any transport error fails the call
            return [err] * len(orders)
        if len(results) != len(orders):
            error = RuntimeError(
                f"transport returned {len(results)} results for {len(orders)} orders"
            )
            return [error] * len(orders)
        return list(results)

    async def _run_round(
        self, flight: _InFlight, round_name: OrderRound, orders: Sequence[Order]
    ) -> list[PendingOrder]:
        """Register, publish (with retries) and wait for the acks of one round."""
        runtime = self.runtime
        tracker = self.tracker
        rnd = _Round(runtime.create_future())
        registered_at = runtime.monotonic()
        for order in orders:
            tracker.register(order, registered_at, rnd)
            entry = tracker.pending(order.command_id)
            assert entry is not None
            rnd.entries.append(entry)
        rnd.outstanding = len(rnd.entries)
        flight.rounds[round_name] = rnd.entries
        flight.phase = "publishing"

        to_publish = list(orders)
        attempt = 0
        while to_publish:
            results = await self._publish(to_publish)
            failed = [
                (order, error)
                for order, error in zip(to_publish, results, strict=True)
                # An ack may already have arrived (or a newer order superseded it).
                if error is not None and tracker.pending(order.command_id) is not None
            ]
            if not failed:
                break
            if attempt >= self.settings.publish_retries:
                now = runtime.monotonic()
                for order, error in failed:
                    tracker.resolve(
                        order.command_id,
                        OrderStatus.PUBLISH_FAILED,
                        now,
                        reason=_describe(error),
                    )
                break
            await runtime.sleep(self.settings.retry_backoff_s * 2**attempt)
            attempt += 1
            to_publish = [
                order
                for order, _ in failed
                if tracker.pending(order.command_id) is not None
            ]

        if rnd.outstanding > 0:
            flight.phase = "waiting" if round_name is OrderRound.INITIAL else "fallback"
            command_ids = [entry.order.command_id for entry in rnd.entries]

            def deadline() -> None:
                # One timer per round, not per order: 10,000 orders, one wake-up.
                tracker.expire(command_ids, runtime.monotonic())

            handle = runtime.call_later(self.settings.ack_timeout_s, deadline)
            try:
                await rnd.future
            finally:
                handle.cancel()
        return rnd.entries

    def _outcome(
        self,
        entry: PendingOrder,
        round_name: OrderRound,
        score: float | None,
        flight: _InFlight,
    ) -> OrderOutcome:
        resolved_at = None
        if entry.resolved_at is not None:
            resolved_at = flight.started_at + timedelta(
                seconds=entry.resolved_at - flight.started_mono
            )
        return OrderOutcome(
            vehicle_id=entry.order.vehicle_id,
            power_kw=entry.order.power_kw,
            status=entry.status,
            command_id=entry.order.command_id,
            latency_ms=entry.latency_ms,
            reason=entry.reason,
            score=score,
            delivered_kw=entry.delivered_kw,
            round=round_name,
            resolved_at=resolved_at,
            expires_at=datetime.fromtimestamp(entry.order.expires_at_ms / 1000.0, UTC),
        )

    def _fallback_orders(
        self,
        request: DispatchRequest,
        candidates: Sequence[Candidate],
        first: Sequence[PendingOrder],
    ) -> list[Order]:
        mode = self.settings.fallback
        residual = math.fsum(e.order.power_kw - e.delivered_kw for e in first)
        if mode is FallbackMode.NONE or abs(residual) <= _POWER_ABS_TOL:
            return []
        by_vehicle = {entry.order.vehicle_id: entry for entry in first}
        donors: list[Candidate] = []
        current: dict[str, float] = {}
        for candidate in candidates:
            vehicle_id = candidate.vehicle.vehicle_id
            entry = by_vehicle.get(vehicle_id)
            if entry is not None and (
                entry.status is not OrderStatus.ACKNOWLEDGED
                or entry.delivered_kw != entry.order.power_kw
            ):
                continue  # it failed, or applied only part of its order
            if self.tracker.pending_for_vehicle(vehicle_id) is not None:
                continue  # another dispatch has an order in flight for it
            donors.append(candidate)
            current[vehicle_id] = 0.0 if entry is None else entry.delivered_kw
        totals = reallocate(
            mode, residual, donors, current, self.fleet.reliability_map()
        )
        vehicles = {c.vehicle.vehicle_id: c.vehicle for c in donors}
        return self._make_orders(request, totals, vehicles)

    async def dispatch(self, request: DispatchRequest) -> DispatchResult:
        """Run one dispatch to the end (or plan it, for a dry run).

        Raises:
            InvalidValueError: unknown vehicle ids, or a dispatch id in flight.
        """
        if request.dispatch_id in self._inflight:
            raise InvalidValueError("dispatch_id", "a dispatch with this id is running")
        runtime = self.runtime
        signal = request.signal
        started_at = runtime.now()
        started_mono = runtime.monotonic()
        self.fleet.accrue(started_at)
        vehicles = self._select_vehicles(request.vehicle_ids)
        strategy = request.strategy or self.settings.strategy_for(signal.signal_type)

        if signal.power_kw == 0.0:
            candidates: list[Candidate] = []
            excluded: dict[str, ExclusionReason] = {}
            setpoints = self.fleet.setpoints
            # Return to idle only where something is not idle.
            powers = {
                v.vehicle_id: 0.0 for v in vehicles if setpoints.get(v.vehicle_id)
            }
            allocation = Allocation(powers, {}, 0.0)
        else:
            eligibility = evaluate_eligibility(
                vehicles, signal, self.settings.safety, started_at
            )
            excluded = eligibility.excluded
            candidates = self._predict(eligibility.candidates, signal)
            await _yield_to_loop()
            allocation = allocate(
                strategy,
                candidates,
                signal,
                now=started_at,
                weights=self.settings.weights,
                participation=self.fleet.participation_share(),
                reliability=self.fleet.reliability_map(),
                segments=self.settings.segments,
            )
            powers = allocation.assignments
        by_id = {v.vehicle_id: v for v in vehicles}
        # Every order of a round carries the same timestamp (and expiry).
        timestamp_ms = int(runtime.now().timestamp() * 1000)
        orders: list[Order] = []
        async for chunk in async_chunks(list(powers.items())):
            orders.extend(self._make_orders(request, dict(chunk), by_id, timestamp_ms))
        flight = _InFlight(
            request, strategy, started_at, started_mono, excluded, allocation.scores
        )

        if request.dry_run:
            planned = {
                order.vehicle_id: OrderOutcome(
                    vehicle_id=order.vehicle_id,
                    power_kw=order.power_kw,
                    status=OrderStatus.PLANNED,
                    command_id=None,
                    score=allocation.scores.get(order.vehicle_id),
                )
                for order in orders
            }
            return DispatchResult(
                dispatch_id=request.dispatch_id,
                signal=signal,
                strategy=strategy,
                status=DispatchStatus.PLANNED,
                requested_kw=signal.power_kw,
                assigned_kw=math.fsum(powers.values()),
                acknowledged_kw=0.0,
                ack_rate=None,
                vehicles=planned,
                fallback={},
                excluded=excluded,
                started_at=started_at,
                completed_at=runtime.now(),
                scores=allocation.scores,
                shortfall_kw=allocation.shortfall_kw,
            )

        self._inflight[request.dispatch_id] = flight
        try:
            await _yield_to_loop()
            first = await self._run_round(flight, OrderRound.INITIAL, orders)
            second: list[PendingOrder] = []
            if signal.power_kw != 0.0:
                fallback_orders = self._fallback_orders(request, candidates, first)
                if fallback_orders:
                    second = await self._run_round(
                        flight, OrderRound.FALLBACK, fallback_orders
                    )
            result = await self._async_result(
                request, strategy, allocation, excluded, flight, first, second
            )
            # The outcomes of 10,000 orders and learning from them: two steps.
            await _yield_to_loop()
            self._update_fleet(result)
        finally:
            del self._inflight[request.dispatch_id]
            # Until here the dispatch is listed in flight: a stop of Home
            # Assistant records it as interrupted with everything it knows.
            # Only does something if this task was cancelled mid-way.
            self.tracker.forget(
                entry.order.command_id
                for entries in flight.rounds.values()
                for entry in entries
                if entry.status is OrderStatus.PENDING
            )

        return result

    async def _async_result(
        self,
        request: DispatchRequest,
        strategy: Strategy,
        allocation: Allocation,
        excluded: dict[str, ExclusionReason],
        flight: _InFlight,
        first: Sequence[PendingOrder],
        second: Sequence[PendingOrder],
    ) -> DispatchResult:
        """The result of a dispatch whose rounds are over."""
        signal = request.signal
        scores = allocation.scores
        initial: dict[str, OrderOutcome] = {}
        async for chunk in async_chunks(first):
            initial.update(
                (
                    e.order.vehicle_id,
                    self._outcome(
                        e, OrderRound.INITIAL, scores.get(e.order.vehicle_id), flight
                    ),
                )
                for e in chunk
            )
        fallback: dict[str, OrderOutcome] = {}
        async for chunk in async_chunks(second):
            fallback.update(
                (
                    e.order.vehicle_id,
                    self._outcome(e, OrderRound.FALLBACK, None, flight),
                )
                for e in chunk
            )
        assigned, acknowledged, sent, acked = _summarise(
            initial.values(), fallback.values()
        )
        if first:
            status = _status(signal.power_kw, assigned, acknowledged, len(first), acked)
        elif signal.power_kw == 0.0:
            status = DispatchStatus.COMPLETED
        else:
            status = DispatchStatus.FAILED
        return DispatchResult(
            dispatch_id=request.dispatch_id,
            signal=signal,
            strategy=strategy,
            status=status,
            requested_kw=signal.power_kw,
            assigned_kw=assigned,
            acknowledged_kw=acknowledged,
            ack_rate=acked / sent if sent else None,
            vehicles=initial,
            fallback=fallback,
            excluded=excluded,
            started_at=flight.started_at,
            completed_at=self.runtime.now(),
            scores=scores,
            shortfall_kw=allocation.shortfall_kw,
            orders_published=sent,
            orders_acknowledged=acked,
        )

    def _update_fleet(self, result: DispatchResult) -> None:
        self._learn(result.outcomes, result.completed_at)

    def _learn(self, outcomes: Iterable[OrderOutcome], completed_at: datetime) -> None:
        fleet = self.fleet
        participants: set[str] = set()
        for outcome in outcomes:
            fleet.record_outcome(
                outcome.vehicle_id,
                outcome.status,
                outcome.delivered_kw,
                outcome.latency_ms,
                outcome.resolved_at or completed_at,
                expires_at=outcome.expires_at,
            )
            if outcome.status is OrderStatus.ACKNOWLEDGED and outcome.delivered_kw:
                participants.add(outcome.vehicle_id)
        fleet.add_participation(sorted(participants))


async def _yield_to_loop() -> None:
    """Let the event loop run other callbacks between two phases of a dispatch.

    Each phase walks every order once (10,000 orders: 10 to 40 ms each); run back to
    back they would block the loop for longer than 100 ms.
    """
    await asyncio.sleep(0)


def _describe(error: Exception) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
