"""The day-ahead plan of a fleet (v2g.plan_day_ahead), in Home Assistant's time zone.

Days are calendar days of Home Assistant's time zone (23 or 25 hours when the
clocks change); window bounds without an offset are local times; the plan's
slots are given in local time with their offset (docs/actions.md#plan-day-ahead).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

from homeassistant.exceptions import ServiceValidationError
from homeassistant.util import dt as dt_util

from .action_fields import field_error
from .const import DOMAIN
from .dispatching import MAX_NAMED_VEHICLES
from .engine import InfeasiblePlanError, Vehicle, plan_day_ahead


def window_time(day: date, text: str, vehicle_id: str, time_zone: tzinfo) -> datetime:
    """Parse a window bound to UTC: a time of day on ``day`` or an ISO datetime.

    Both are in ``time_zone`` unless the datetime has an offset; ``24:00`` is
    the midnight that ends ``day``.

    Raises:
        ServiceValidationError: the bound is neither.
    """
    if (parsed_time := dt_util.parse_time(text)) is not None:
        return dt_util.as_utc(datetime.combine(day, parsed_time, tzinfo=time_zone))
    if text in ("24:00", "24:00:00"):
        return dt_util.as_utc(
            datetime.combine(day + timedelta(days=1), time(), time_zone)
        )
    if (parsed := dt_util.parse_datetime(text)) is not None:
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=time_zone)
        return dt_util.as_utc(parsed)
    raise field_error("invalid_window_time", vehicle_id=vehicle_id, time=text)


def _local_text(value: datetime, time_zone: tzinfo) -> str:
    """Format a UTC time for a message: local, to the second."""
    return value.astimezone(time_zone).replace(tzinfo=None).isoformat(sep=" ")


def _kwh(value: float) -> str:
    return f"{round(value, 3):g}"


def plan_fleet_day_ahead(
    fleet_vehicles: Mapping[str, Vehicle],
    *,
    target_kwh: float,
    slot_minutes: int,
    day: date,
    time_zone: tzinfo,
    vehicle_ids: Sequence[str] | None = None,
    windows: Mapping[str, Sequence[tuple[datetime, datetime]]] | None = None,
) -> dict[str, Any]:
    """Plan an energy target over a local day (NEBEF-style) with a fleet's vehicles.

    Args:
        fleet_vehicles: the fleet's vehicles by id (``coordinator.fleet.vehicles``).
        target_kwh: energy to deliver over the day.
        slot_minutes: slot length, 1 to 1440.
        day: the calendar day to plan, in ``time_zone``.
        time_zone: Home Assistant's time zone.
        vehicle_ids: the vehicles to plan with; None: every V2G vehicle.
        windows: availability windows (UTC) per vehicle id; a vehicle without
            windows is available all day.

    Returns:
        The action response: the plan's entries and the same plan as CSV.

    Raises:
        ServiceValidationError: unknown vehicles, no vehicle, a target that is
            not positive, a window that ends before it starts, or a target the
            vehicles cannot deliver in their windows.
    """
    if vehicle_ids is None:
        vehicles = [v for v in fleet_vehicles.values() if v.is_v2g]
    else:
        if unknown := [vid for vid in vehicle_ids if vid not in fleet_vehicles]:
            raise field_error(
                "unknown_vehicles", vehicles=", ".join(unknown[:MAX_NAMED_VEHICLES])
            )
        vehicles = [fleet_vehicles[vid] for vid in dict.fromkeys(vehicle_ids)]
    if not vehicles:
        raise field_error("plan_no_vehicles")
    if not target_kwh > 0.0:
        raise field_error("plan_target_not_positive", target_kwh=f"{target_kwh:g}")
    windows = windows or {}
    for vehicle_id, spans in windows.items():
        for start, end in spans:
            if end <= start:
                raise field_error(
                    "invalid_window_order",
                    vehicle_id=vehicle_id,
                    start=_local_text(start, time_zone),
                    end=_local_text(end, time_zone),
                )
    try:
        plan = plan_day_ahead(
            vehicles, windows, target_kwh, slot_minutes, day, time_zone
        )
    except InfeasiblePlanError as err:
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="plan_insufficient_capacity",
            translation_placeholders={
                "target_kwh": f"{target_kwh:g}",
                "deliverable_kwh": _kwh(err.deliverable_kwh),
            },
        ) from err
    return {
        "date": plan.day.isoformat(),
        "time_zone": str(time_zone),
        "slot_minutes": plan.slot_minutes,
        "target_kwh": plan.target_kwh,
        "total_kwh": round(plan.total_kwh, 6),
        "vehicles": [v.vehicle_id for v in vehicles],
        "entries": plan.as_dicts(),
        "csv": plan.to_csv(),
    }
