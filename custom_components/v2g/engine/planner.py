"""Day-ahead NEBEF-style plan: an energy target spread over the slots of a day.

Go `scheduler.GeneratePlan` (seed §6.1):

* the day is cut into ceil(day length / slot) slots; each slot asks for an equal
  share of the target;
* a vehicle counts for a slot only if one of its availability windows contains
  the slot entirely;
* a slot nobody can serve carries its energy over to the next slots (backlog);
* inside a slot, power is water-filled over the available vehicles up to their
  max power.

One deliberate improvement: Go gave up when the backlog was still there after
the last slot, even if earlier slots had spare capacity. Here the leftover is
spread back over the earlier slots (latest first), so a target fails only when
the day truly cannot hold it; the error says how much could be delivered.

Go planned UTC days. Here the day is a calendar day of a time zone (Home
Assistant's, from the action): it starts at local midnight and lasts 23, 24 or
25 hours; slots follow each other in real time (a slot never repeats or skips
an hour when the clocks change) and carry their local time and offset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import csv
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
import io
import math
from typing import Any

from .models import EngineError, InvalidValueError, Vehicle

# Energy below this (kWh) is rounding noise.
_ENERGY_EPSILON = 1e-6
# Decimals of a planned power (kW) in the exports: to the milliwatt, without the
# binary noise of the water filling (0.30000000000000004).
_POWER_DECIMALS = 6


class InfeasiblePlanError(EngineError):
    """The target cannot be planned with these vehicles and windows.

    `deliverable_kwh` is the most the vehicles can deliver in their windows.
    """

    def __init__(self, message: str, deliverable_kwh: float = 0.0) -> None:
        """Keep what could be delivered beside the message."""
        super().__init__(message)
        self.deliverable_kwh = deliverable_kwh


@dataclass(frozen=True, slots=True)
class PlanEntry:
    """Power of one vehicle during one slot."""

    vehicle_id: str
    timeslot: datetime
    power_kw: float

    def as_dict(self) -> dict[str, Any]:
        """JSON object: vehicle_id, timeslot (RFC 3339, local offset), power_kw."""
        return {
            "vehicle_id": self.vehicle_id,
            "timeslot": _rfc3339(self.timeslot),
            "power_kw": round(self.power_kw, _POWER_DECIMALS),
        }


@dataclass(frozen=True, slots=True)
class DayAheadPlan:
    """A day-ahead plan and its exports."""

    day: date
    slot_minutes: int
    target_kwh: float
    entries: list[PlanEntry] = field(default_factory=list)

    @property
    def total_kwh(self) -> float:
        """Energy the plan delivers."""
        hours = self.slot_minutes / 60.0
        return math.fsum(entry.power_kw * hours for entry in self.entries)

    def as_dicts(self) -> list[dict[str, Any]]:
        """Entries as JSON objects (slot order, then vehicle order)."""
        return [entry.as_dict() for entry in self.entries]

    def to_csv(self) -> str:
        """CSV with header `vehicle_id,timeslot,power_kw` (Go `WriteCSV`)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(("vehicle_id", "timeslot", "power_kw"))
        for entry in self.entries:
            writer.writerow(
                (
                    entry.vehicle_id,
                    _rfc3339(entry.timeslot),
                    _short(round(entry.power_kw, _POWER_DECIMALS)),
                )
            )
        return buffer.getvalue()


def _rfc3339(value: datetime) -> str:
    """The time with its own offset; ``Z`` for UTC (as Go wrote it)."""
    text = value.isoformat()
    return text.removesuffix("+00:00") + "Z" if value.tzinfo is UTC else text


def _short(value: float) -> str:
    # Go's strconv.FormatFloat(v, 'f', -1, 64): shortest, no exponent, "5" not "5.0".
    text = repr(value)
    if "e" in text or "E" in text:
        text = f"{value:.17f}".rstrip("0")
    return text.removesuffix(".0").rstrip(".")


def _water_fill(limits: Sequence[float], power: float) -> list[float]:
    """Equal shares capped by `limits`, summing to min(power, Σlimits)."""
    result = [0.0] * len(limits)
    remaining = power
    # Highest limit first, as in Go; the outcome does not depend on it.
    open_ = sorted(range(len(limits)), key=lambda i: -limits[i])
    while remaining > _ENERGY_EPSILON and open_:
        share = remaining / len(open_)
        still_open: list[int] = []
        for index in open_:
            room = limits[index] - result[index]
            add = min(share, room)
            result[index] += add
            remaining -= add
            if limits[index] - result[index] > _ENERGY_EPSILON:
                still_open.append(index)
        if len(still_open) == len(open_):
            break  # everyone took a full share: nothing left to move
        open_ = still_open
    return result


def _available_in_slot(
    vehicles: Sequence[Vehicle],
    windows: Mapping[str, Sequence[tuple[datetime, datetime]]],
    start: datetime,
    end: datetime,
) -> list[Vehicle]:
    """Vehicles with a window containing the whole slot (or no windows at all)."""
    return [
        vehicle
        for vehicle in vehicles
        if vehicle.vehicle_id not in windows
        or any(
            w_start <= start and end <= w_end
            for w_start, w_end in windows[vehicle.vehicle_id]
        )
    ]


def _spread_energy(
    target_kwh: float, served: Sequence[bool], capacity: Sequence[float], count: int
) -> list[float]:
    """Energy per slot: equal shares, backlog forward, then leftover backward."""
    slot_energy = target_kwh / count
    energy = [0.0] * count
    backlog = 0.0
    for index in range(count):
        if not served[index]:
            backlog += slot_energy
            continue
        wanted = slot_energy + backlog
        energy[index] = min(wanted, capacity[index])
        backlog = wanted - energy[index]
    for index in range(count - 1, -1, -1):
        if backlog <= _ENERGY_EPSILON:
            break
        moved = min(max(capacity[index] - energy[index], 0.0), backlog)
        energy[index] += moved
        backlog -= moved
    if backlog > _ENERGY_EPSILON:
        deliverable = math.fsum(capacity)
        raise InfeasiblePlanError(
            f"insufficient capacity for target energy: {target_kwh:g} kWh requested,"
            f" at most {deliverable:g} kWh can be delivered in the"
            " availability windows",
            deliverable,
        )
    return energy


def plan_day_ahead(
    vehicles: Sequence[Vehicle],
    windows: Mapping[str, Sequence[tuple[datetime, datetime]]] | None,
    target_kwh: float,
    slot_minutes: int,
    day: date,
    time_zone: tzinfo = UTC,
) -> DayAheadPlan:
    """Plan `target_kwh` over the calendar `day` of `time_zone` in slots.

    Args:
        vehicles: the vehicles to plan with (their `max_power_kw`).
        windows: availability windows per vehicle id (aware datetimes). A vehicle
            missing from the mapping (or a None mapping) is available all day; an
            empty list means never.
        target_kwh: energy to deliver over the day.
        slot_minutes: slot length, 1..1440.
        day: the calendar day; its first slot starts at midnight in `time_zone`.
        time_zone: the zone of `day` and of the slots' times (default UTC, as Go).

    Raises:
        InvalidValueError: a bad slot length or target.
        InfeasiblePlanError: no vehicles, or not enough capacity in the windows.
    """
    if (
        isinstance(slot_minutes, bool)
        or not isinstance(slot_minutes, int)
        or not (0 < slot_minutes <= 1440)
    ):
        raise InvalidValueError(
            "slot_minutes", "slot_duration_minutes must be between 1 and 1440"
        )
    if not math.isfinite(target_kwh) or target_kwh <= 0.0:
        raise InvalidValueError("target_kwh", "target energy must be positive")
    if not vehicles:
        raise InfeasiblePlanError("no vehicles configured")
    windows = windows or {}
    slot = timedelta(minutes=slot_minutes)
    slot_hours = slot_minutes / 60.0
    # In UTC: arithmetic on zoned datetimes would follow the wall clock.
    day_start = datetime.combine(day, time(0), time_zone).astimezone(UTC)
    day_end = datetime.combine(day + timedelta(days=1), time(0), time_zone)
    slot_count = math.ceil((day_end.astimezone(UTC) - day_start) / slot)

    starts = [day_start + slot * index for index in range(slot_count)]
    available = [
        _available_in_slot(vehicles, windows, start, start + slot) for start in starts
    ]
    capacity = [
        math.fsum(v.max_power_kw for v in slot_vehicles) * slot_hours
        for slot_vehicles in available
    ]
    energy = _spread_energy(
        target_kwh, [bool(a) for a in available], capacity, slot_count
    )
    entries: list[PlanEntry] = []
    for index, start in enumerate(starts):
        if energy[index] <= 0.0:
            continue
        slot_vehicles = available[index]
        powers = _water_fill(
            [v.max_power_kw for v in slot_vehicles], energy[index] / slot_hours
        )
        local_start = start.astimezone(time_zone)
        entries.extend(
            PlanEntry(vehicle.vehicle_id, local_start, power)
            for vehicle, power in zip(slot_vehicles, powers, strict=True)
            if power > 0.0
        )
    return DayAheadPlan(day, slot_minutes, target_kwh, entries)
