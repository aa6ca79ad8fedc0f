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
from datetime import datetime
import math
from typing import Any

from .acks import AckDisposition, AckTracker, PendingOrder
from .codec import DecodeError, Order, decode_ack, decode_gateway_acks
from .eligibility import Candidate, evaluate_eligibility
from .fallback import reallocate
from .fleet import FleetState
from .inflight import (
    PHASE_FALLBACK,
    PHASE_PUBLISHING,
    PHASE_WAITING,
    InFlight,
    close_record,
)
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
from .settings import DispatchRequest, DispatchSettings, new_id
from .steps import async_chunks
from .strategies import Allocation, allocate

# How many unknown ids an error message lists before "…".
_MAX_LISTED_IDS = 10


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
        self._learn(closed.answered(self.settings.order_ttl_s), completed_at)
        return closed.response

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
        self, flight: InFlight, round_name: OrderRound, orders: Sequence[Order]
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
        flight.phase = PHASE_PUBLISHING

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
            flight.phase = (
                PHASE_WAITING if round_name is OrderRound.INITIAL else PHASE_FALLBACK
            )
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

    def _fallback_orders(
        self,
        request: DispatchRequest,
        candidates: Sequence[Candidate],
        first: Sequence[PendingOrder],
    ) -> list[Order]:
        mode = self.settings.fallback
        residual = math.fsum(e.order.power_kw - e.delivered_kw for e in first)
        if mode is FallbackMode.NONE or abs(residual) <= POWER_ABS_TOL:
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
        flight = InFlight(
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
            return self._result(
                request, strategy, allocation, excluded, flight, planned, {}
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
        flight: InFlight,
        first: Sequence[PendingOrder],
        second: Sequence[PendingOrder],
    ) -> DispatchResult:
        """The result of a dispatch whose rounds are over."""
        initial: dict[str, OrderOutcome] = {}
        async for chunk in async_chunks(first):
            initial.update(
                (e.order.vehicle_id, flight.outcome(e, OrderRound.INITIAL))
                for e in chunk
            )
        fallback: dict[str, OrderOutcome] = {}
        async for chunk in async_chunks(second):
            fallback.update(
                (e.order.vehicle_id, flight.outcome(e, OrderRound.FALLBACK))
                for e in chunk
            )
        return self._result(
            request, strategy, allocation, excluded, flight, initial, fallback
        )

    def _result(
        self,
        request: DispatchRequest,
        strategy: Strategy,
        allocation: Allocation,
        excluded: dict[str, ExclusionReason],
        flight: InFlight,
        initial: dict[str, OrderOutcome],
        fallback: dict[str, OrderOutcome],
    ) -> DispatchResult:
        """The result of a dispatch (of a dry run: its orders are `planned`)."""
        signal = request.signal
        summary = summarise(initial.values(), fallback.values())
        return DispatchResult(
            dispatch_id=request.dispatch_id,
            signal=signal,
            strategy=strategy,
            status=DispatchStatus.PLANNED
            if request.dry_run
            else final_status(signal.power_kw, summary, len(initial)),
            requested_kw=signal.power_kw,
            assigned_kw=summary.assigned_kw,
            acknowledged_kw=summary.acknowledged_kw,
            ack_rate=summary.ack_rate,
            vehicles=initial,
            fallback=fallback,
            excluded=excluded,
            started_at=flight.started_at,
            completed_at=self.runtime.now(),
            scores=allocation.scores,
            shortfall_kw=allocation.shortfall_kw,
            orders_published=summary.published,
            orders_acknowledged=summary.acknowledged,
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
