"""Power limits learned from what vehicles really do (docs/dispatch.md#learned-limits).

A vehicle may announce more than it can give: the Go vehicles announce no charge
rate (so their max power is assumed for charging), and some acknowledge an order
they then do not follow. Two kinds of evidence lower a vehicle's charge or
discharge limit:

* **Measurements.** While a vehicle holds an acknowledged setpoint (for at least
  `LIMIT_SETTLE_S`, so it had time to ramp), each measured power that falls short
  of the setpoint by more than the delivery tolerance, in the setpoint's
  direction, is a short sample. `LIMIT_SAMPLES` short samples in a row on the
  same setpoint teach a limit: the largest power measured in the setpoint's
  direction among them, when the vehicle moved at all (it saturates there);
  otherwise (it acknowledged and did not move) the rejection rule below.
* **Rejections** whose reason says the power is beyond the vehicle's limit
  (`LIMIT_REASONS`): the limit is below the ordered power. It becomes
  `REJECTION_STEP` (90 %) of the ordered |power|, or stays at the learned limit if
  that is lower. A rejection says only "less than this": stepping down by 10 %
  keeps the vehicle within 10 % of its real limit once it accepts, and converges
  in a few dispatches (10 -> 9 -> 8.1 -> 7.3 -> 6.6 kW for a 7 kW limit), where
  halving would waste up to half of it.

Any measurement at or above a learned limit, with or without a setpoint, raises it
to that power (a vehicle whose limit came back); once it reaches the announced
limit the learned one is dropped. Samples near a full battery (charging) or an
empty one (discharging) teach nothing: the vehicle tapers there, its limit is
unchanged. Limits are rounded to 0.1 kW and persisted with the fleet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
import math
from typing import Any, Protocol

from .models import InvalidValueError, Vehicle

# A setpoint must be held this long before a measurement says something about it.
LIMIT_SETTLE_S = 3.0
# Short samples in a row on one setpoint before a limit is learned.
LIMIT_SAMPLES = 3
# A rejection for being over the limit: the limit is at most this share of the order.
REJECTION_STEP = 0.9
# Ack reasons saying an order is beyond the vehicle's power (the simulator's).
LIMIT_REASONS = frozenset(
    {"exceeds_max_power", "exceeds_charge_rate", "exceeds_discharge_rate"}
)
# Below this (kW) in the setpoint's direction, the vehicle did not move at all.
MOVING_KW = 0.1
# Batteries taper near full (charging) and near empty (discharging).
TAPER_FULL_SOC = 0.95
TAPER_EMPTY_SOC = 0.05
_DECIMALS = 1

_BAND_SLACK_KW = 1e-9


@dataclass(frozen=True, slots=True)
class DeliveryTolerance:
    """How far measured power may be from a setpoint and still follow it.

    The allowed difference is max(`fraction` x |setpoint|, `kw`).
    """

    fraction: float = 0.1
    kw: float = 1.0

    def __post_init__(self) -> None:
        """Validate the tolerance.

        Raises:
            InvalidValueError: a value is negative or not finite.
        """
        for name in ("fraction", "kw"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0.0:
                raise InvalidValueError(name, "must be a finite number >= 0")

    def band_kw(self, setpoint_kw: float) -> float:
        """The largest difference (kW) that still follows `setpoint_kw`."""
        return max(self.fraction * abs(setpoint_kw), self.kw)

    def follows(self, measured_kw: float, setpoint_kw: float) -> bool:
        """Return True if `measured_kw` is within the tolerance of `setpoint_kw`."""
        # A reading exactly on the band's edge follows despite float noise.
        band = self.band_kw(setpoint_kw) + _BAND_SLACK_KW
        return abs(measured_kw - setpoint_kw) <= band


@dataclass(frozen=True, slots=True)
class PowerLimits:
    """Learned limits of one vehicle (kW, > 0); None where nothing was learned."""

    charge_kw: float | None = None
    discharge_kw: float | None = None

    def in_direction(self, discharge: bool) -> float | None:
        """The learned discharge (True) or charge (False) limit."""
        return self.discharge_kw if discharge else self.charge_kw

    def as_dict(self) -> dict[str, float | None]:
        """Return a JSON-safe dict."""
        return {"charge_kw": self.charge_kw, "discharge_kw": self.discharge_kw}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PowerLimits:
        """Inverse of `as_dict`."""
        return cls(_limit(data.get("charge_kw")), _limit(data.get("discharge_kw")))


def _limit(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number) or number <= 0.0:
        raise ValueError(f"bad learned limit {value!r}")
    return number


class HeldSetpoint(Protocol):
    """What `LearnedLimits.observe` reads of an acknowledged setpoint."""

    @property
    def power_kw(self) -> float:
        """Signed setpoint (kW)."""

    @property
    def since(self) -> datetime:
        """When it was acknowledged."""

    @property
    def expires_at(self) -> datetime | None:
        """When its order lapses."""


@dataclass(slots=True)
class _Streak:
    """Short samples in a row on one setpoint."""

    setpoint: tuple[float, datetime]
    count: int = 0
    best_kw: float = 0.0


def _announced_kw(vehicle: Vehicle, discharge: bool) -> float:
    return vehicle.max_power_kw if discharge else vehicle.effective_charge_rate_kw


def _tapering(vehicle: Vehicle, discharge: bool) -> bool:
    if discharge:
        return vehicle.soc <= TAPER_EMPTY_SOC
    return vehicle.soc >= TAPER_FULL_SOC


class LearnedLimits:
    """The learned limits of a fleet's vehicles, and the samples toward new ones."""

    def __init__(self) -> None:
        """Start with nothing learned."""
        self._limits: dict[str, PowerLimits] = {}
        self._streaks: dict[str, _Streak] = {}
        self._sampled_at: dict[str, datetime] = {}

    @property
    def limits(self) -> Mapping[str, PowerLimits]:
        """Vehicle id -> its learned limits (only vehicles with one)."""
        return self._limits

    def get(self, vehicle_id: str) -> PowerLimits | None:
        """The learned limits of one vehicle, if any."""
        return self._limits.get(vehicle_id)

    def observe(
        self,
        vehicle: Vehicle,
        measured_kw: float,
        setpoint: HeldSetpoint | None,
        at: datetime,
        tolerance: DeliveryTolerance,
    ) -> bool:
        """Learn from one power measurement taken at `at`; True if a limit changed.

        A sample not newer than the vehicle's previous one is ignored (the same
        reading seen twice).
        """
        vehicle_id = vehicle.vehicle_id
        previous = self._sampled_at.get(vehicle_id)
        if previous is not None and at <= previous:
            return False
        self._sampled_at[vehicle_id] = at
        changed = self._raise(vehicle, measured_kw)
        ordered = 0.0 if setpoint is None else setpoint.power_kw
        if (
            setpoint is None
            or ordered == 0.0
            or (setpoint.expires_at is not None and setpoint.expires_at <= at)
            or (at - setpoint.since).total_seconds() < LIMIT_SETTLE_S
        ):
            self._streaks.pop(vehicle_id, None)
            return changed
        discharge = ordered > 0.0
        along = measured_kw if discharge else -measured_kw
        if along >= abs(ordered) - tolerance.band_kw(ordered) or _tapering(
            vehicle, discharge
        ):
            self._streaks.pop(vehicle_id, None)
            return changed
        key = (ordered, setpoint.since)
        streak = self._streaks.get(vehicle_id)
        if streak is None or streak.setpoint != key:
            streak = self._streaks[vehicle_id] = _Streak(key)
        streak.count += 1
        streak.best_kw = max(streak.best_kw, along)
        if streak.count < LIMIT_SAMPLES:
            return changed
        del self._streaks[vehicle_id]
        if streak.best_kw >= MOVING_KW:
            learned = self._set(vehicle, discharge, round(streak.best_kw, _DECIMALS))
        else:
            learned = self._step_down(vehicle, discharge, abs(ordered))
        return learned or changed

    def learn_rejection(
        self, vehicle: Vehicle, ordered_kw: float, reason: str | None
    ) -> bool:
        """Learn from a rejected order; True if a limit changed."""
        if ordered_kw == 0.0 or reason is None:
            return False
        if reason.strip().lower() not in LIMIT_REASONS:
            return False
        return self._step_down(vehicle, ordered_kw > 0.0, abs(ordered_kw))

    def forget(self, vehicle_id: str) -> None:
        """Drop what was learned about a vehicle."""
        for table in (self._limits, self._streaks, self._sampled_at):
            table.pop(vehicle_id, None)

    def as_dict(self) -> dict[str, dict[str, float | None]]:
        """Return a JSON-safe dict of the learned limits (samples are not kept)."""
        return {vid: limits.as_dict() for vid, limits in self._limits.items()}

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], known: Mapping[str, object]
    ) -> LearnedLimits:
        """Inverse of `as_dict`, for the `known` vehicles only.

        Raises:
            ValueError, TypeError, AttributeError: the data is malformed.
        """
        learned = cls()
        for vehicle_id, item in data.items():
            limits = PowerLimits.from_dict(item)
            if vehicle_id in known and limits != PowerLimits():
                learned._limits[vehicle_id] = limits
        return learned

    # --- rules ------------------------------------------------------------------

    def _raise(self, vehicle: Vehicle, measured_kw: float) -> bool:
        """A measurement at or above a learned limit raises it (or drops it)."""
        if measured_kw == 0.0:
            return False
        limits = self._limits.get(vehicle.vehicle_id)
        discharge = measured_kw > 0.0
        current = None if limits is None else limits.in_direction(discharge)
        magnitude = abs(measured_kw)
        if current is None or magnitude <= current:
            return False
        if magnitude >= _announced_kw(vehicle, discharge):
            return self._set(vehicle, discharge, None)
        return self._set(vehicle, discharge, max(current, round(magnitude, _DECIMALS)))

    def _step_down(self, vehicle: Vehicle, discharge: bool, ordered_kw: float) -> bool:
        """The limit is below `ordered_kw`: 90 % of it, unless already lower."""
        limits = self._limits.get(vehicle.vehicle_id)
        current = None if limits is None else limits.in_direction(discharge)
        stepped = round(REJECTION_STEP * ordered_kw, _DECIMALS)
        if current is not None and current <= stepped:
            return False
        return self._set(vehicle, discharge, max(stepped, MOVING_KW))

    def _set(self, vehicle: Vehicle, discharge: bool, value: float | None) -> bool:
        """Store one direction's limit (None: none); True if it changed.

        A limit at or above what the vehicle announces restricts nothing: dropped.
        """
        if value is not None and value >= _announced_kw(vehicle, discharge):
            value = None
        vehicle_id = vehicle.vehicle_id
        limits = self._limits.get(vehicle_id, PowerLimits())
        if limits.in_direction(discharge) == value:
            return False
        field = "discharge_kw" if discharge else "charge_kw"
        updated = replace(limits, **{field: value})
        if updated == PowerLimits():
            del self._limits[vehicle_id]
        else:
            self._limits[vehicle_id] = updated
        return True
