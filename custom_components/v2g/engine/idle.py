"""0 kW orders outside a dispatch's allocation: revokes and releases.

* A *revoke* goes to a vehicle whose order timed out, before that order's power is
  re-allocated (docs/dispatch.md#revoke): a vehicle that applied it and lost its
  ack must not hold it while another vehicle takes the same power.
* A *release* goes, when a dispatch's orders end, to every vehicle still holding
  the setpoint of that dispatch (docs/dispatch.md#release-at-the-end): a vehicle
  that ignores `expires_at` would otherwise keep it.

An acknowledged revoke or release ends the vehicle's setpoint; neither counts in
the vehicle's ack statistics (they are not the allocation's orders).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from .acks import AckTracker, PendingOrder
from .codec import Order
from .fleet import FleetState
from .inflight import InFlight
from .models import InvalidValueError, OrderStatus, SignalType, Vehicle
from .ports import Runtime
from .results import OrderOutcome, OrderRound
from .rounds import RoundRunner, StartedRound
from .settings import DispatchRequest

# Lifetime of a 0 kW order: it only returns a vehicle to idle.
IDLE_ORDER_DURATION_S = 60.0


class IdleOrders:
    """Sends revokes and releases for a dispatch engine."""

    def __init__(
        self,
        fleet: FleetState,
        runtime: Runtime,
        tracker: AckTracker,
        rounds: RoundRunner,
        id_factory: Callable[[], str],
    ) -> None:
        """Share the engine's fleet, clock, tracker and rounds."""
        self._fleet = fleet
        self._runtime = runtime
        self._tracker = tracker
        self._rounds = rounds
        self._new_id = id_factory

    async def release(
        self, skip: Callable[[str], bool], engaged: Collection[str] = ()
    ) -> dict[str, list[OrderOutcome]]:
        """Send 0 kW to every vehicle whose dispatch setpoint ended; wait for acks.

        A vehicle with an order in flight, or `engaged` in a running dispatch
        (its newer order may be acknowledged already and not yet learnt), is left
        alone: that order replaces the setpoint. One for which `skip` is true is considered released (its
        channel returns it to idle itself). An acknowledged release ends the
        setpoint; the others stay unreleased for the next call.

        Returns:
            The release orders and what became of them, by dispatch id.
        """
        fleet = self._fleet
        now = self._runtime.now()
        fleet.accrue(now)
        orders: list[Order] = []
        timestamp_ms = int(now.timestamp() * 1000)
        for vehicle_id, setpoint in dict(fleet.energy.unreleased).items():
            vehicle = fleet.vehicles.get(vehicle_id)
            if vehicle is None or skip(vehicle_id):
                fleet.energy.release_sent(vehicle_id)
                continue
            if (
                vehicle_id in engaged
                or self._tracker.pending_for_vehicle(vehicle_id) is not None
            ):
                continue
            orders.append(
                self._idle_order(
                    vehicle,
                    setpoint.dispatch_id or "",
                    _signal_type(setpoint.signal_type),
                    timestamp_ms,
                )
            )
        if not orders:
            return {}
        rounds = self._rounds
        entries = await rounds.wait(
            await rounds.start(
                None, OrderRound.RELEASE, orders, self.idle_when_acknowledged
            )
        )
        completed_at = self._runtime.now()
        released: dict[str, list[OrderOutcome]] = {}
        for entry in entries:
            released.setdefault(entry.order.dispatch_id, []).append(
                OrderOutcome(
                    vehicle_id=entry.order.vehicle_id,
                    power_kw=0.0,
                    status=entry.status,
                    command_id=entry.order.command_id,
                    latency_ms=entry.latency_ms,
                    reason=entry.reason,
                    round=OrderRound.RELEASE,
                    resolved_at=completed_at,
                )
            )
        return released

    def idle_when_acknowledged(self, entry: PendingOrder) -> None:
        """A vehicle that acknowledged a revoke or release is idle from now."""
        if entry.status is OrderStatus.ACKNOWLEDGED:
            self._fleet.hold_idle(entry.order.vehicle_id, self._runtime.now())

    def _idle_order(
        self,
        vehicle: Vehicle,
        dispatch_id: str,
        signal_type: SignalType,
        timestamp_ms: int,
    ) -> Order:
        """A 0 kW order (revoke or release) for one vehicle."""
        return Order(
            command_id=self._new_id(),
            vehicle_id=vehicle.vehicle_id,
            power_kw=0.0,
            timestamp_ms=timestamp_ms,
            dispatch_id=dispatch_id,
            signal_type=signal_type,
            duration_s=IDLE_ORDER_DURATION_S,
            expires_at_ms=timestamp_ms + int(IDLE_ORDER_DURATION_S * 1000),
            gateway=vehicle.gateway,
        )

    async def revoke(
        self,
        flight: InFlight,
        request: DispatchRequest,
        first: Sequence[PendingOrder],
    ) -> StartedRound:
        """Revoke (0 kW) every non-zero order of `first` that timed out.

        The round is published, not waited for: a silent vehicle would hold the
        dispatch for another ack timeout. An ack, whenever it comes, ends the
        vehicle's setpoint.
        """
        return await self._rounds.start(
            flight,
            OrderRound.REVOKE,
            self._revoke_orders(request, first),
            self.idle_when_acknowledged,
        )

    def _revoke_orders(
        self, request: DispatchRequest, first: Sequence[PendingOrder]
    ) -> list[Order]:
        """0 kW for every vehicle whose non-zero order of `first` timed out."""
        timestamp_ms = int(self._runtime.now().timestamp() * 1000)
        vehicles = self._fleet.vehicles
        return [
            self._idle_order(
                vehicles[entry.order.vehicle_id],
                request.dispatch_id,
                request.signal.signal_type,
                timestamp_ms,
            )
            for entry in first
            if entry.status is OrderStatus.TIMEOUT
            and entry.order.power_kw != 0.0
            and entry.order.vehicle_id in vehicles
        ]

    # --- dispatch ---------------------------------------------------------------


def _signal_type(value: str | None) -> SignalType:
    """The signal type a setpoint was stored with (aFRR if unreadable)."""
    try:
        return SignalType.parse(value or "")
    except InvalidValueError:
        return SignalType.AFRR
