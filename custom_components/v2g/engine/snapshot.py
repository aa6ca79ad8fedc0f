"""What the entities show: the fleet snapshot and how it is computed.

A :class:`FleetSnapshot` is immutable; the Home Assistant coordinator publishes
one after a dispatch, a discovery, coalesced telemetry and housekeeping. It is
built in steps (`steps.py`) so 10,000 vehicles never hold the event loop.
Vehicles whose values did not change keep their :class:`VehicleSnapshot` object,
so the entity layer finds the changed vehicles by identity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .eligibility import SafetySettings, evaluate_eligibility
from .fleet import NOT_RESPONDING_TIMEOUTS, FleetState
from .kpi import co2_avoided_g
from .limits import PowerLimits
from .metrics import DispatchMetrics
from .models import FlexibilitySignal, SignalType, Vehicle, parse_utc_time
from .prediction import PredictionEngine
from .steps import Steps, chunks

# Flexibility is the power the fleet could hold for this long (15 min).
FLEXIBILITY_PROBE_S = 900.0


@dataclass(frozen=True, slots=True)
class VehicleSnapshot:
    """What the entities of one vehicle show (built from `_vehicle_values`)."""

    vehicle_id: str
    is_v2g: bool
    subentry_id: str | None
    stale: bool
    soc: float | None
    plugged_in: bool | None
    setpoint_kw: float
    ack_rate: float | None
    last_ack_latency_ms: float | None
    energy_discharged_kwh: float
    energy_charged_kwh: float
    co2_avoided_g: float
    availability_forecast: float | None
    # Latest measured power (kW, signed like setpoints); None: never measured.
    measured_power_kw: float | None = None
    # Since when the measured power is off the setpoint by more than the delivery
    # tolerance (the first snapshot that showed it); None while it follows.
    deviating_since: datetime | None = None
    learned_charge_kw: float | None = None
    learned_discharge_kw: float | None = None
    # Orders timed out since it last answered one (engine/fleet.py).
    timeouts_in_a_row: int = 0

    @property
    def not_responding(self) -> bool:
        """Whether its last orders all timed out (`NOT_RESPONDING_TIMEOUTS`)."""
        return self.timeouts_in_a_row >= NOT_RESPONDING_TIMEOUTS


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetSnapshot:
    """What the fleet entities show (fractions for rates)."""

    connected: bool
    vehicles: Mapping[str, VehicleSnapshot]
    vehicles_available: int = 0
    flexibility_up_kw: float = 0.0
    flexibility_down_kw: float = 0.0
    last_ack_rate: float | None = None
    ack_rate_24h: float | None = None
    ack_rate_sla: float = 0.9
    last_dispatch_at: datetime | None = None
    last_status: str | None = None
    last_requested_kw: float | None = None
    last_acknowledged_kw: float | None = None
    dispatches: int = 0
    orders_sent: int = 0
    orders_acknowledged: int = 0
    publish_failures: int = 0
    ack_latency_p95_ms: float | None = None
    last_delivered_kw: float | None = None
    delivery_ratio_24h: float | None = None
    # The last dispatches (dry runs excluded) with their failed vehicles, newest
    # first (`metrics.dispatch_summary`).
    recent_dispatches: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotInputs:
    """Everything a snapshot depends on besides the fleet and the metrics."""

    now: datetime
    stale: AbstractSet[str]
    connected: bool
    safety: SafetySettings
    ack_rate_sla: float
    emission_factor: float
    soc_known: AbstractSet[str]
    subentry_ids: Mapping[str, str]
    prediction: PredictionEngine | None


# The values one vehicle's entities show, in `VehicleSnapshot` field order
# (after vehicle_id): compared to find the vehicles that changed.
type _Values = tuple[Any, ...]


class SnapshotBuilder:
    """Builds snapshots, reusing the snapshot objects of unchanged vehicles."""

    def __init__(self) -> None:
        """Start with no vehicle known."""
        self._cache: dict[str, tuple[_Values, VehicleSnapshot]] = {}
        self._deviating_since: dict[str, datetime] = {}

    def steps(
        self, fleet: FleetState, metrics: DispatchMetrics, inputs: SnapshotInputs
    ) -> Steps[FleetSnapshot]:
        """The snapshot, `STEP_SIZE` vehicles per step.

        The vehicles are listed first; one that arrives meanwhile is in the next
        snapshot. The cache is replaced when the vehicles are done. Vehicles that
        are stale or not responding are not counted as available (nor in the
        flexibility).
        """
        now = inputs.now
        fleet.accrue(now)
        setpoints = fleet.setpoints
        vehicles: dict[str, VehicleSnapshot] = {}
        live: list[Vehicle] = []
        cache = self._cache
        new_cache: dict[str, tuple[_Values, VehicleSnapshot]] = {}
        deviating: dict[str, datetime] = {}
        for chunk in chunks(list(fleet.vehicles.items())):
            for vehicle_id, vehicle in chunk:
                is_stale = vehicle_id in inputs.stale
                stats = fleet.stats.get(vehicle_id)
                if not is_stale and (stats is None or not stats.not_responding):
                    live.append(vehicle)
                since = self._deviation(fleet, vehicle_id, setpoints, now)
                if since is not None:
                    deviating[vehicle_id] = since
                values = _vehicle_values(
                    fleet, vehicle_id, vehicle, is_stale, setpoints, inputs, since
                )
                cached = cache.get(vehicle_id)
                if cached is None or cached[0] != values:
                    cached = (values, VehicleSnapshot(vehicle_id, *values))
                new_cache[vehicle_id] = cached
                vehicles[vehicle_id] = cached[1]
            yield
        self._cache = new_cache
        self._deviating_since = deviating
        limits = fleet.learned_limits.limits
        flexibility_up = yield from flexibility_steps(
            live, 1.0, inputs.safety, now, limits
        )
        flexibility_down = yield from flexibility_steps(
            live, -1.0, inputs.safety, now, limits
        )
        last = metrics.last or {}
        delivery = metrics.last_delivery or {}
        return FleetSnapshot(
            connected=inputs.connected,
            vehicles=vehicles,
            vehicles_available=sum(1 for v in live if v.available),
            flexibility_up_kw=flexibility_up,
            flexibility_down_kw=flexibility_down,
            last_ack_rate=last.get("ack_rate"),
            ack_rate_24h=metrics.ack_rate_24h(now),
            ack_rate_sla=inputs.ack_rate_sla,
            last_dispatch_at=parse_utc_time(last.get("started_at")),
            last_status=last.get("status"),
            last_requested_kw=last.get("requested_kw"),
            last_acknowledged_kw=last.get("acknowledged_kw"),
            dispatches=metrics.dispatches,
            orders_sent=metrics.orders_sent,
            orders_acknowledged=metrics.orders_acknowledged,
            publish_failures=metrics.publish_failures,
            ack_latency_p95_ms=metrics.latency_p95(),
            last_delivered_kw=delivery.get("delivered_kw"),
            delivery_ratio_24h=metrics.delivery_ratio_24h(now),
            recent_dispatches=tuple(reversed(metrics.recent)),
        )

    def _deviation(
        self,
        fleet: FleetState,
        vehicle_id: str,
        setpoints: Mapping[str, float],
        now: datetime,
    ) -> datetime | None:
        """Since when a vehicle's measured power is off its setpoint (0 when none).

        The deviation starts with the first snapshot that shows it and lasts while
        every snapshot does; a vehicle never measured does not deviate.
        """
        measured = fleet.power.power_kw(vehicle_id)
        if measured is None or fleet.delivery_tolerance.follows(
            measured, setpoints.get(vehicle_id, 0.0)
        ):
            return None
        return self._deviating_since.get(vehicle_id, now)


def _vehicle_values(
    fleet: FleetState,
    vehicle_id: str,
    vehicle: Vehicle,
    is_stale: bool,
    setpoints: Mapping[str, float],
    inputs: SnapshotInputs,
    deviating_since: datetime | None,
) -> _Values:
    """What the entities of one vehicle show, in `VehicleSnapshot` order."""
    stats = fleet.stats.get(vehicle_id)
    discharged = fleet.energy_discharged_kwh.get(vehicle_id, 0.0)
    prediction = inputs.prediction
    measured = fleet.power.power_kw(vehicle_id)
    limits = fleet.learned_limits.get(vehicle_id)
    return (
        vehicle.is_v2g,
        inputs.subentry_ids.get(vehicle_id),
        is_stale,
        vehicle.soc if vehicle_id in inputs.soc_known else None,
        vehicle.available,
        round(setpoints.get(vehicle_id, 0.0), 3),
        None if stats is None else stats.ack_rate,
        None
        if stats is None or stats.last_latency_ms is None
        else round(stats.last_latency_ms, 3),
        discharged,
        fleet.energy_charged_kwh.get(vehicle_id, 0.0),
        co2_avoided_g(discharged, inputs.emission_factor)
        if inputs.emission_factor > 0
        else 0.0,
        None if prediction is None else prediction.availability(vehicle_id, inputs.now),
        None if measured is None else round(measured, 3),
        deviating_since,
        None if limits is None else limits.charge_kw,
        None if limits is None else limits.discharge_kw,
        0 if stats is None else stats.timeouts_in_a_row,
    )


def flexibility_steps(
    vehicles: Sequence[Vehicle],
    direction: float,
    safety: SafetySettings,
    now: datetime,
    limits: Mapping[str, PowerLimits] | None = None,
) -> Steps[float]:
    """Power the live fleet could sustain for 15 min in one direction (kW).

    Only the safety rules and the learned limits apply (aFRR has no signal-type
    rule of its own).
    """
    probe = FlexibilitySignal(
        signal_type=SignalType.AFRR,
        power_kw=direction,
        duration_s=FLEXIBILITY_PROBE_S,
        start=now,
    )
    total = 0.0
    for chunk in chunks(vehicles):
        total += evaluate_eligibility(
            chunk, probe, safety, now, limits
        ).total_capacity_kw
        yield
    return round(total, 3)
