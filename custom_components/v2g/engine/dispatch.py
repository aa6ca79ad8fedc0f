"""Dispatch orchestration: eligibility -> allocation -> orders -> acks -> fallback.

One dispatch runs at most two rounds of orders, plus revokes:

1. the allocation of the chosen strategy;
   an order of it that timed out is *revoked* (a 0 kW order) before its power
   is re-allocated: a vehicle that applied it and lost its ack must not hold
   it while another vehicle takes the same power (docs/dispatch.md#revoke);
2. a fallback round: the power that was assigned but not acknowledged (rejected,
   timed out, failed to publish, superseded, or only partly applied) is
   re-allocated (`fallback.reallocate`) to donors — eligible vehicles that either
   acknowledged their first order in full or got none — and **sent** as new total
   setpoints, acknowledged like the first round (the Go system only computed it).

Each round is one `transport.publish` call with all its orders (failed ones are
retried with exponential backoff) and one ack deadline, run by
`rounds.RoundRunner`. Pending entries are registered before publishing, and each
knows its dispatch, so concurrent dispatches never mix acks; a newer order to a
vehicle supersedes the older one. Acks arrive through `intake.AckIntake`.

Setpoints that outlive their dispatch are released (`release_ended`, 0 kW
orders) when the host asks, at their end (docs/dispatch.md#release-at-the-end).

All timing goes through the injected `Runtime`; the engine reads no clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
import math
from typing import Any

from .acks import AckDisposition, AckTracker, PendingOrder
from .codec import Order
from .eligibility import Candidate, evaluate_eligibility
from .fallback import reallocate
from .fleet import FleetState
from .idle import IdleOrders
from .inflight import InFlight, close_record
from .intake import AckIntake
from .models import (
    DispatchStatus,
    ExclusionReason,
    FallbackMode,
    FlexibilitySignal,
    InvalidValueError,
    OrderStatus,
    Strategy,
    Vehicle,
)
from .ports import OrderTransport, Runtime
from .prediction import PredictionEngine
from .results import (
    POWER_ABS_TOL,
    DispatchResult,
    OrderOutcome,
    OrderRound,
    final_status,
    summarise,
)
from .rounds import RoundRunner
from .settings import DispatchRequest, DispatchSettings, new_id
from .steps import async_chunks
from .strategies import Allocation, allocate

# How many unknown ids an error message lists before "…".
_MAX_LISTED_IDS = 10


@dataclass(slots=True)
class _Plan:
    """What a dispatch decided before sending anything."""

    request: DispatchRequest
    strategy: Strategy
    candidates: list[Candidate]
    excluded: dict[str, ExclusionReason]
    allocation: Allocation
    orders: list[Order]
    flight: InFlight


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
        id_factory: Callable[[], str] = new_id,
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
        self._inflight: dict[str, InFlight] = {}
        # Answers arrive on their own and rounds wait for them: two collaborators
        # sharing the tracker. Settings are read through the engine on each use.
        self._intake = AckIntake(self.tracker, fleet, runtime)
        self._rounds = RoundRunner(
            transport, runtime, self.tracker, lambda: self.settings
        )
        self._idle = IdleOrders(fleet, runtime, self.tracker, self._rounds, id_factory)

    # --- incoming acks (see `intake`) -------------------------------------------

    def handle_ack(
        self, topic_vehicle_id: str, payload: bytes | str
    ) -> AckDisposition | None:
        """Handle a per-vehicle ack message; None if it was malformed (counted)."""
        return self._intake.handle_ack(topic_vehicle_id, payload)

    def handle_gateway_acks(
        self, payload: bytes | str, gateway_id: str | None = None
    ) -> dict[AckDisposition, int] | None:
        """Handle a gateway ack message; return the count per disposition.

        None if the envelope was malformed (counted). With `gateway_id` (from the
        topic) an ack only counts for orders routed through that gateway.
        """
        return self._intake.handle_gateway_acks(payload, gateway_id)

    # --- in-flight view ---------------------------------------------------------

    def pending_dispatches(self) -> list[dict[str, Any]]:
        """JSON-safe records of the dispatches in flight (see `engine.inflight`).

        A dispatch is listed from before its first publish call (so the host can
        persist it) until the fleet has learnt from its result. Feed a record to
        `record_interrupted` (or `interrupted_response`) to close it as
        interrupted.
        """
        return [flight.record() for flight in self._inflight.values()]

    def record_interrupted(
        self, record: object, completed_at: datetime
    ) -> dict[str, Any]:
        """Close an in-flight record as `interrupted`; the fleet keeps the answers.

        The acknowledged orders reached their vehicles before the stop: their
        setpoints (until the order's expiry, counted from the dispatch start),
        ack statistics and participation are kept as after any dispatch, and so
        are rejections. Orders still waiting teach nothing about their vehicle
        (the stop cut them short); they are reported as `timeout`. A malformed
        record never raises: what can be read is learnt (see `close_record`).
        """
        closed = close_record(record, completed_at)
        response = closed.response
        signal = response["signal"]
        _learn(
            self.fleet,
            closed.answered(self.settings.order_ttl_s),
            completed_at,
            dispatch_id=response["dispatch_id"] or None,
            signal_type=signal.get("type"),
        )
        return response

    # --- release at the end (docs/dispatch.md#release-at-the-end) ---------------

    async def release_ended(
        self, skip: Callable[[str], bool] = lambda _vehicle_id: False
    ) -> dict[str, list[OrderOutcome]]:
        """Release the setpoints whose dispatch ended (see `IdleOrders.release`)."""
        return await self._idle.release(skip, _engaged(self._inflight.values()))

    async def dispatch(self, request: DispatchRequest) -> DispatchResult:
        """Run one dispatch to the end (or plan it, for a dry run).

        Raises:
            InvalidValueError: unknown vehicle ids, or a dispatch id in flight.
        """
        if request.dispatch_id in self._inflight:
            raise InvalidValueError("dispatch_id", "a dispatch with this id is running")
        plan = await self._plan(request)
        flight = plan.flight
        if request.dry_run:
            planned = {
                order.vehicle_id: OrderOutcome(
                    vehicle_id=order.vehicle_id,
                    power_kw=order.power_kw,
                    status=OrderStatus.PLANNED,
                    command_id=None,
                    score=plan.allocation.scores.get(order.vehicle_id),
                )
                for order in plan.orders
            }
            return _result(plan, planned, {}, self.runtime.now())

        self._inflight[request.dispatch_id] = flight
        try:
            await _yield_to_loop()
            first = await self._rounds.run(flight, OrderRound.INITIAL, plan.orders)
            # Revokes leave before the fallback round. Nobody waits for their
            # acks (a silent vehicle would hold the dispatch for another ack
            # timeout): an ack, whenever it comes, ends the vehicle's setpoint.
            revokes = await self._idle.revoke(flight, request, first)
            second: list[PendingOrder] = []
            if request.signal.power_kw != 0.0:
                fallback_orders = self._fallback_orders(plan, first)
                if fallback_orders:
                    second = await self._rounds.run(
                        flight, OrderRound.FALLBACK, fallback_orders
                    )
            revoked = await _outcomes(flight, OrderRound.REVOKE, revokes.entries)
            initial = await _outcomes(flight, OrderRound.INITIAL, first)
            fallback = await _outcomes(flight, OrderRound.FALLBACK, second)
            result = _result(plan, initial, fallback, self.runtime.now())
            result.revoked = revoked
            # The outcomes of 10,000 orders and learning from them: two steps.
            await _yield_to_loop()
            _learn(self.fleet, result.outcomes, result.completed_at, request)
        finally:
            del self._inflight[request.dispatch_id]
            # Until here the dispatch is listed in flight: a stop of Home
            # Assistant records it as interrupted with everything it knows.
            # Only does something if this task was cancelled mid-way.
            self.tracker.forget(
                entry.order.command_id
                for round_name, entries in flight.rounds.items()
                if round_name is not OrderRound.REVOKE
                for entry in entries
                if entry.status is OrderStatus.PENDING
            )

        return result

    async def _plan(self, request: DispatchRequest) -> _Plan:
        """Choose the vehicles and their powers, and write the first orders."""
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
                vehicles,
                signal,
                self.settings.safety,
                started_at,
                self.fleet.learned_limits.limits,
            )
            excluded = eligibility.excluded
            candidates = _with_predictions(
                self.prediction, eligibility.candidates, signal
            )
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
        flight = InFlight(
            request, strategy, started_at, started_mono, excluded, allocation.scores
        )
        return _Plan(
            request, strategy, candidates, excluded, allocation, orders, flight
        )

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

    def _fallback_orders(
        self, plan: _Plan, first: Sequence[PendingOrder]
    ) -> list[Order]:
        mode = self.settings.fallback
        residual = math.fsum(e.order.power_kw - e.delivered_kw for e in first)
        if mode is FallbackMode.NONE or abs(residual) <= POWER_ABS_TOL:
            return []
        by_vehicle = {entry.order.vehicle_id: entry for entry in first}
        donors: list[Candidate] = []
        current: dict[str, float] = {}
        for candidate in plan.candidates:
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
        return self._make_orders(plan.request, totals, vehicles)


def _with_predictions(
    prediction: PredictionEngine | None,
    candidates: list[Candidate],
    signal: FlexibilitySignal,
) -> list[Candidate]:
    """The candidates with their predicted availability, when there is a model."""
    if prediction is None:
        return candidates
    # Seed §3.2 step 4: the probability of still being there at the end.
    at = signal.end
    predicted: list[Candidate] = []
    for candidate in candidates:
        vehicle = candidate.vehicle
        probability = prediction.availability(vehicle.vehicle_id, at)
        if isinstance(probability, int | float) and math.isfinite(probability):
            vehicle = vehicle.with_changes(
                availability_prob=min(max(float(probability), 0.0), 1.0)
            )
        predicted.append(Candidate(vehicle, candidate.capacity_kw))
    return predicted


async def _outcomes(
    flight: InFlight, round_name: OrderRound, entries: Sequence[PendingOrder]
) -> dict[str, OrderOutcome]:
    """The outcome of each order of a finished round, by vehicle."""
    outcomes: dict[str, OrderOutcome] = {}
    async for chunk in async_chunks(entries):
        outcomes.update(
            (e.order.vehicle_id, flight.outcome(e, round_name)) for e in chunk
        )
    return outcomes


def _result(
    plan: _Plan,
    initial: dict[str, OrderOutcome],
    fallback: dict[str, OrderOutcome],
    completed_at: datetime,
) -> DispatchResult:
    """The result of a dispatch (of a dry run: its orders are `planned`)."""
    request = plan.request
    signal = request.signal
    summary = summarise(initial.values(), fallback.values())
    return DispatchResult(
        dispatch_id=request.dispatch_id,
        signal=signal,
        strategy=plan.strategy,
        status=DispatchStatus.PLANNED
        if request.dry_run
        else final_status(signal.power_kw, summary, len(initial)),
        requested_kw=signal.power_kw,
        assigned_kw=summary.assigned_kw,
        acknowledged_kw=summary.acknowledged_kw,
        ack_rate=summary.ack_rate,
        vehicles=initial,
        fallback=fallback,
        excluded=plan.excluded,
        started_at=plan.flight.started_at,
        completed_at=completed_at,
        scores=plan.allocation.scores,
        shortfall_kw=plan.allocation.shortfall_kw,
        orders_published=summary.published,
        orders_acknowledged=summary.acknowledged,
    )


def _learn(
    fleet: FleetState,
    outcomes: Iterable[OrderOutcome],
    completed_at: datetime,
    request: DispatchRequest | None = None,
    *,
    dispatch_id: str | None = None,
    signal_type: str | None = None,
) -> None:
    """Teach the fleet the final status of each order, and who took part.

    A rejection for being over the vehicle's power also teaches its limit.
    """
    if request is not None:
        dispatch_id = request.dispatch_id
        signal_type = request.signal.signal_type.value
    participants: set[str] = set()
    for outcome in outcomes:
        vehicle = fleet.vehicles.get(outcome.vehicle_id)
        if outcome.status is OrderStatus.REJECTED and vehicle is not None:
            fleet.learned_limits.learn_rejection(
                vehicle, outcome.power_kw, outcome.reason
            )
        fleet.record_outcome(
            outcome.vehicle_id,
            outcome.status,
            outcome.delivered_kw,
            outcome.latency_ms,
            outcome.resolved_at or completed_at,
            expires_at=outcome.expires_at,
            dispatch_id=dispatch_id,
            signal_type=signal_type,
        )
        if outcome.status is OrderStatus.ACKNOWLEDGED and outcome.delivered_kw:
            participants.add(outcome.vehicle_id)
    fleet.add_participation(sorted(participants))


def _engaged(flights: Iterable[InFlight]) -> set[str]:
    """The vehicles with an order in a running dispatch (answered or not)."""
    return {
        entry.order.vehicle_id
        for flight in flights
        for entries in flight.rounds.values()
        for entry in entries
    }


async def _yield_to_loop() -> None:
    """Let the event loop run other callbacks between two phases of a dispatch.

    Each phase walks every order once (10,000 orders: 10 to 40 ms each); run back to
    back they would block the loop for longer than 100 ms.
    """
    await asyncio.sleep(0)
