"""Delivery: what the vehicles of a dispatch measurably did (docs/dispatch.md#verification).

Grid services are settled on metered delivery, not on acknowledgements: a vehicle
may acknowledge an order it does not follow, or follow an order whose ack was lost.
Some seconds after a dispatch, each vehicle that answered one of its orders (or let
it time out) is judged on its measured power:

* its **setpoint** is the power of its latest acknowledged order of the dispatch
  (initial or fallback round), 0 when none was acknowledged;
* it is **measured** when a power reading was received at or after its last order
  was resolved (older readings describe what it did before: unmeasured);
* it **follows** when |measured - setpoint| <= max(fraction x |setpoint|, kW).

The delivered power is the signed sum (> 0 discharging, as orders) of the measured
vehicles' readings; an unmeasured vehicle is never counted as delivering. Orders
that never reached their vehicle (publish failed, superseded by another dispatch)
are not judged here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
import math
from typing import Any

from .limits import DeliveryTolerance
from .models import OrderStatus, isoformat_utc
from .results import DispatchResult, OrderOutcome, round_kw
from .steps import Steps, chunks, run_steps

# A tolerance band is compared with this much slack (float sums of kW).
# Orders that reached their vehicle: the vehicle is judged on them.
_JUDGED = frozenset(
    {OrderStatus.ACKNOWLEDGED, OrderStatus.REJECTED, OrderStatus.TIMEOUT}
)
# The keys a verification adds to a dispatch response (docs/actions.md#verification).
VERIFICATION_KEYS = ("delivered_kw", "delivery_ratio", "verified_at", "unmeasured")
# The per-order keys it adds to each entry of `vehicles` and `fallback`.
ORDER_VERIFICATION_KEYS = ("measured_kw", "following")
# At most this many ids in the event's `not_following` list.
EVENT_ID_LIMIT = 20


@dataclass(frozen=True, slots=True)
class PowerSample:
    """A measured power (signed as orders) and when the integration received it."""

    power_kw: float
    received_at: datetime


class PowerReadings:
    """The latest measured power of each vehicle, with its time of receipt.

    Listeners are told the id of each vehicle a reading arrives for (the Home
    Assistant layer waits for poll answers with them).
    """

    def __init__(self) -> None:
        """Start with no reading."""
        self._latest: dict[str, PowerSample] = {}
        self._listeners: list[Callable[[str], None]] = []

    def record(self, vehicle_id: str, power_kw: float, received_at: datetime) -> None:
        """Keep a reading (a non-finite one is ignored) and tell the listeners."""
        if not math.isfinite(power_kw):
            return
        self._latest[vehicle_id] = PowerSample(power_kw, received_at)
        for listener in list(self._listeners):
            listener(vehicle_id)

    def latest(self, vehicle_id: str) -> PowerSample | None:
        """The newest reading of a vehicle, if any."""
        return self._latest.get(vehicle_id)

    def power_kw(self, vehicle_id: str) -> float | None:
        """The newest measured power of a vehicle, if any."""
        sample = self._latest.get(vehicle_id)
        return None if sample is None else sample.power_kw

    def forget(self, vehicle_id: str) -> None:
        """Drop the readings of a vehicle that left the fleet."""
        self._latest.pop(vehicle_id, None)

    def listen(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call `listener(vehicle_id)` for every reading; return the remover."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove


@dataclass(frozen=True, slots=True)
class DeliveryTarget:
    """What one vehicle of a dispatch should be doing once its orders resolved.

    Attributes:
        setpoint_kw: its latest acknowledged setpoint of the dispatch, 0 if none.
        resolved_at: when its last order was resolved; readings received before
            do not count.
    """

    setpoint_kw: float
    resolved_at: datetime


def delivery_targets(result: DispatchResult) -> dict[str, DeliveryTarget]:
    """The vehicles a dispatch is judged on, with their setpoints (both rounds)."""
    return run_steps(delivery_targets_steps(result))


def delivery_targets_steps(result: DispatchResult) -> Steps[dict[str, DeliveryTarget]]:
    """`delivery_targets` in steps of `STEP_SIZE` orders."""
    targets: dict[str, DeliveryTarget] = {}
    for chunk in chunks(result.outcomes):  # initial round first: fallback replaces
        for outcome in chunk:
            if outcome.status in _JUDGED:
                targets[outcome.vehicle_id] = _target(
                    targets.get(outcome.vehicle_id), outcome, result.completed_at
                )
        yield
    return targets


def _target(
    previous: DeliveryTarget | None, outcome: OrderOutcome, completed_at: datetime
) -> DeliveryTarget:
    resolved_at = outcome.resolved_at or completed_at
    if previous is not None:
        resolved_at = max(resolved_at, previous.resolved_at)
    if outcome.status is OrderStatus.ACKNOWLEDGED:
        setpoint = outcome.delivered_kw
    else:  # a rejected or timed-out order leaves the earlier acknowledged one
        setpoint = 0.0 if previous is None else previous.setpoint_kw
    return DeliveryTarget(setpoint, resolved_at)


def verification_start(result: DispatchResult) -> datetime:
    """When the verification window starts: the last ack, else the completion."""
    acked = [
        outcome.resolved_at
        for outcome in result.outcomes
        if outcome.status is OrderStatus.ACKNOWLEDGED and outcome.resolved_at
    ]
    return max(acked) if acked else result.completed_at


def fresh_power(sample: PowerSample | None, target: DeliveryTarget) -> float | None:
    """The sample's power if it was received once the vehicle's orders resolved."""
    if sample is None or sample.received_at < target.resolved_at:
        return None
    return sample.power_kw


@dataclass(frozen=True, slots=True)
class VehicleDelivery:
    """How one vehicle of a dispatch was judged (None: not measured)."""

    setpoint_kw: float
    measured_kw: float | None
    following: bool | None

    def order_fields(self) -> dict[str, Any]:
        """The keys added to each of its orders in the response."""
        return {
            "measured_kw": None
            if self.measured_kw is None
            else round_kw(self.measured_kw),
            "following": self.following,
        }


_UNJUDGED: dict[str, Any] = {"measured_kw": None, "following": None}


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryReport:
    """The verification of one dispatch."""

    dispatch_id: str
    signal_type: str
    requested_kw: float
    acknowledged_kw: float
    delivered_kw: float
    verified_at: datetime
    vehicles: Mapping[str, VehicleDelivery]

    @property
    def delivery_ratio(self) -> float | None:
        """Delivered / acknowledged power; None when nothing was acknowledged."""
        acknowledged = round_kw(self.acknowledged_kw)
        if acknowledged == 0.0:
            return None
        return round(round_kw(self.delivered_kw) / acknowledged, 4)

    @property
    def following(self) -> list[str]:
        """The measured vehicles that followed their setpoint, sorted."""
        return sorted(vid for vid, v in self.vehicles.items() if v.following)

    @property
    def not_following(self) -> list[str]:
        """The measured vehicles that did not follow their setpoint, sorted."""
        return sorted(vid for vid, v in self.vehicles.items() if v.following is False)

    @property
    def unmeasured(self) -> list[str]:
        """The judged vehicles without a fresh measurement, sorted."""
        return sorted(vid for vid, v in self.vehicles.items() if v.measured_kw is None)

    def response_fields(self) -> dict[str, Any]:
        """The top-level keys a verification adds to the dispatch response."""
        return {
            "delivered_kw": round_kw(self.delivered_kw),
            "delivery_ratio": self.delivery_ratio,
            "verified_at": isoformat_utc(self.verified_at),
            "unmeasured": self.unmeasured,
        }

    def verified_response(self, response: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of `response` with the verification's keys (never mutates it)."""
        return run_steps(self.verified_response_steps(response))

    def verified_response_steps(
        self, response: Mapping[str, Any]
    ) -> Steps[dict[str, Any]]:
        """`verified_response` in steps of `STEP_SIZE` orders."""
        verified: dict[str, Any] = {**response, **self.response_fields()}
        for section in ("vehicles", "fallback"):
            orders = response.get(section)
            if not isinstance(orders, Mapping):
                continue
            copied: dict[str, Any] = {}
            for chunk in chunks(list(orders.items())):
                for vehicle_id, order in chunk:
                    judged = self.vehicles.get(vehicle_id)
                    extra = _UNJUDGED if judged is None else judged.order_fields()
                    copied[vehicle_id] = (
                        {**order, **extra} if isinstance(order, Mapping) else order
                    )
                yield
            verified[section] = copied
        return verified

    def event_data(self) -> dict[str, Any]:
        """The data of `v2g_dispatch_verified` (without the config entry id)."""
        return {
            "dispatch_id": self.dispatch_id,
            "signal_type": self.signal_type,
            "requested_kw": round_kw(self.requested_kw),
            "acknowledged_kw": round_kw(self.acknowledged_kw),
            "delivered_kw": round_kw(self.delivered_kw),
            "delivery_ratio": self.delivery_ratio,
            "following": len(self.following),
            "not_following": self.not_following[:EVENT_ID_LIMIT],
            "not_following_count": len(self.not_following),
            "unmeasured": len(self.unmeasured),
        }


def judge_delivery(
    result: DispatchResult,
    targets: Mapping[str, DeliveryTarget],
    measured: Mapping[str, float],
    tolerance: DeliveryTolerance,
    verified_at: datetime,
) -> DeliveryReport:
    """Judge each target vehicle on its measured power (`measured`: fresh only)."""
    return run_steps(
        judge_delivery_steps(result, targets, measured, tolerance, verified_at)
    )


def judge_delivery_steps(
    result: DispatchResult,
    targets: Mapping[str, DeliveryTarget],
    measured: Mapping[str, float],
    tolerance: DeliveryTolerance,
    verified_at: datetime,
) -> Steps[DeliveryReport]:
    """`judge_delivery` in steps of `STEP_SIZE` vehicles."""
    vehicles: dict[str, VehicleDelivery] = {}
    delivered: list[float] = []
    for chunk in chunks(list(targets.items())):
        for vehicle_id, target in chunk:
            power = measured.get(vehicle_id)
            if power is None:
                vehicles[vehicle_id] = VehicleDelivery(target.setpoint_kw, None, None)
                continue
            delivered.append(power)
            vehicles[vehicle_id] = VehicleDelivery(
                target.setpoint_kw,
                power,
                tolerance.follows(power, target.setpoint_kw),
            )
        yield
    return DeliveryReport(
        dispatch_id=result.dispatch_id,
        signal_type=result.signal.signal_type.value,
        requested_kw=result.requested_kw,
        acknowledged_kw=result.acknowledged_kw,
        delivered_kw=math.fsum(delivered),
        verified_at=verified_at,
        vehicles=vehicles,
    )
