"""Which vehicles may take part in a signal, and how much power each can give.

Two layers of rules:

* signal-type rules of the Go `SimpleVehicleFilter` (seed §3.4): every vehicle
  must be available; FCR needs a V2G vehicle with SoC >= 0.6; NEBEF needs a
  vehicle that is charging and not marked priority (it can reduce its charge);
* safety rules (docs/dispatch.md#safety): a discharge needs a V2G vehicle and never takes it
  below max(the configured min SoC, the safe floor), nor below what it needs to
  reach its own min SoC by its departure when recharging at its charge rate
  after the signal (if it leaves before the signal ends, it must keep its min
  SoC). A vehicle without a departure time keeps its own min SoC as a floor too
  (Go's `MinSoC`: "minimum SoC required at departure" — with no departure known,
  the only safe reading is "at all times"). A charge never overfills the battery.

  Hence `soc_below_min` when the SoC is at or below the configured floors (or the
  own min SoC of a vehicle without departure), `departure_protected` when the
  departure requirement is what leaves nothing to give.

The outcome per vehicle is a capacity in kW: what it can sustain in the signal's
direction for the whole signal, within its power: max power to discharge, charge
rate to charge, each lowered by a learned limit when there is one (`limits`,
docs/dispatch.md#learned-limits). Unlike the Go system, a vehicle that cannot cover
the whole request is kept with the power it *can* give; the allocator reports the
shortfall instead of dropping the vehicle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from .limits import PowerLimits
from .models import (
    ExclusionReason,
    FlexibilitySignal,
    InvalidValueError,
    SignalType,
    Vehicle,
)

FCR_MIN_SOC = 0.6
# Below 10 W a vehicle cannot meaningfully follow a setpoint; treat it as empty.
MIN_CAPACITY_KW = 0.01
# SoC comparisons tolerate float noise from upstream arithmetic.
_SOC_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class SafetySettings:
    """Safety limits applied to every dispatch (fractions of the battery)."""

    min_soc: float = 0.1
    safe_discharge_floor: float = 0.1
    soc_constraints: bool = True

    def __post_init__(self) -> None:
        """Validate the fractions.

        Raises:
            InvalidValueError: a fraction is outside 0..1.
        """
        for name in ("min_soc", "safe_discharge_floor"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0.0 <= value <= 1.0
            ):
                raise InvalidValueError(name, "must be between 0 and 1")


@dataclass(frozen=True, slots=True)
class Candidate:
    """An eligible vehicle and the power (kW, > 0) it can sustain for the signal."""

    vehicle: Vehicle
    capacity_kw: float


@dataclass(frozen=True, slots=True)
class Eligibility:
    """Result of `evaluate_eligibility`."""

    candidates: list[Candidate] = field(default_factory=list)
    excluded: dict[str, ExclusionReason] = field(default_factory=dict)

    @property
    def total_capacity_kw(self) -> float:
        """Sum of the candidates' capacities."""
        return sum(c.capacity_kw for c in self.candidates)


def _departure_floor(
    vehicle: Vehicle, recharge_from: datetime, charge_rate_kw: float
) -> float | None:
    """SoC the vehicle must keep so it still reaches its min SoC by departure.

    From `recharge_from` (the later of the signal's end and now) the vehicle
    recharges at `charge_rate_kw` until it leaves; if it leaves before that, it
    must already hold its min SoC. None when there is no departure or no min SoC
    to protect. The result may be negative (enough time to recharge from empty).
    """
    departure = vehicle.departure
    if departure is None or vehicle.min_soc <= 0.0:
        return None
    if departure <= recharge_from:
        return vehicle.min_soc
    hours = (departure - recharge_from).total_seconds() / 3600.0
    return vehicle.min_soc - charge_rate_kw * hours / vehicle.battery_kwh


@dataclass(frozen=True, slots=True)
class _Rules:
    """What every vehicle of one evaluation is checked against, computed once."""

    signal_type: SignalType
    power_kw: float
    duration_h: float
    recharge_from: datetime
    base_floor: float
    soc_constraints: bool
    limits: Mapping[str, PowerLimits]

    @classmethod
    def of(
        cls,
        signal: FlexibilitySignal,
        safety: SafetySettings,
        now: datetime,
        limits: Mapping[str, PowerLimits] | None,
    ) -> _Rules:
        return cls(
            signal.signal_type,
            signal.power_kw,
            signal.duration_h,
            max(signal.end, now),
            max(safety.min_soc, safety.safe_discharge_floor),
            safety.soc_constraints,
            {} if limits is None else limits,
        )

    def power_kw_of(self, vehicle: Vehicle, *, discharge: bool) -> float:
        """Max power (discharge) or charge rate, capped by a learned limit."""
        power = vehicle.max_power_kw if discharge else vehicle.effective_charge_rate_kw
        limits = self.limits.get(vehicle.vehicle_id)
        learned = None if limits is None else limits.in_direction(discharge)
        return power if learned is None else min(power, learned)


def _signal_type_rule(
    vehicle: Vehicle, signal_type: SignalType
) -> ExclusionReason | None:
    """The Go `SimpleVehicleFilter` rules (seed §3.4)."""
    if not vehicle.available:
        return ExclusionReason.UNAVAILABLE
    if signal_type is SignalType.FCR:
        if not vehicle.is_v2g:
            return ExclusionReason.NOT_V2G
        if vehicle.soc < FCR_MIN_SOC:
            return ExclusionReason.SOC_BELOW_MIN
    elif signal_type is SignalType.NEBEF and (not vehicle.charging or vehicle.priority):
        return ExclusionReason.NOT_CHARGING
    return None


def _discharge_capacity(vehicle: Vehicle, rules: _Rules) -> float | ExclusionReason:
    if not vehicle.is_v2g:
        return ExclusionReason.NOT_V2G
    capacity = rules.power_kw_of(vehicle, discharge=True)
    protected_by_departure = False
    if rules.soc_constraints:
        soc = vehicle.soc
        floor = rules.base_floor
        if vehicle.departure is None and vehicle.min_soc > floor:
            floor = vehicle.min_soc
        if soc <= floor + _SOC_EPSILON:
            return ExclusionReason.SOC_BELOW_MIN
        needed = _departure_floor(
            vehicle, rules.recharge_from, rules.power_kw_of(vehicle, discharge=False)
        )
        if needed is not None and needed > floor:
            floor = needed
            protected_by_departure = True
            if soc <= floor + _SOC_EPSILON:
                return ExclusionReason.DEPARTURE_PROTECTED
        sustainable = (soc - floor) * vehicle.battery_kwh / rules.duration_h
        capacity = min(capacity, sustainable)
    capacity *= 1.0 - vehicle.degradation_factor
    if capacity < MIN_CAPACITY_KW:
        if protected_by_departure:
            return ExclusionReason.DEPARTURE_PROTECTED
        return ExclusionReason.INSUFFICIENT_ENERGY
    return capacity


def _charge_capacity(vehicle: Vehicle, rules: _Rules) -> float | ExclusionReason:
    capacity = rules.power_kw_of(vehicle, discharge=False)
    if rules.soc_constraints:
        room_kwh = (1.0 - vehicle.soc) * vehicle.battery_kwh
        capacity = min(capacity, room_kwh / rules.duration_h)
    capacity *= 1.0 - vehicle.degradation_factor
    if capacity < MIN_CAPACITY_KW:
        return ExclusionReason.INSUFFICIENT_ENERGY
    return capacity


def _capacity(vehicle: Vehicle, rules: _Rules) -> float | ExclusionReason:
    reason = _signal_type_rule(vehicle, rules.signal_type)
    if reason is not None:
        return reason
    if rules.power_kw > 0.0:
        return _discharge_capacity(vehicle, rules)
    if rules.power_kw < 0.0:
        return _charge_capacity(vehicle, rules)
    # A zero-power signal asks for nothing: report the nominal power.
    return vehicle.max_power_kw * (1.0 - vehicle.degradation_factor)


def vehicle_capacity(
    vehicle: Vehicle,
    signal: FlexibilitySignal,
    safety: SafetySettings,
    now: datetime,
    limits: Mapping[str, PowerLimits] | None = None,
) -> float | ExclusionReason:
    """Return what one vehicle can give for `signal` (kW), or why it cannot."""
    return _capacity(vehicle, _Rules.of(signal, safety, now, limits))


def evaluate_eligibility(
    vehicles: Iterable[Vehicle],
    signal: FlexibilitySignal,
    safety: SafetySettings,
    now: datetime,
    limits: Mapping[str, PowerLimits] | None = None,
) -> Eligibility:
    """Split `vehicles` into candidates (with capacities) and excluded (with reasons).

    Candidates keep the input order. `now` bounds the departure protection: the
    recharge window starts at the later of the signal's end and `now`. `limits`
    are the learned limits by vehicle id (`FleetState.learned_limits.limits`).
    """
    rules = _Rules.of(signal, safety, now, limits)
    candidates: list[Candidate] = []
    excluded: dict[str, ExclusionReason] = {}
    add_candidate = candidates.append
    for vehicle in vehicles:
        outcome = _capacity(vehicle, rules)
        if isinstance(outcome, ExclusionReason):
            excluded[vehicle.vehicle_id] = outcome
        else:
            add_candidate(Candidate(vehicle, outcome))
    return Eligibility(candidates, excluded)
