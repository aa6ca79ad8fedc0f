"""Day-ahead planner (seed §6.1)."""

from __future__ import annotations

import csv
from datetime import UTC, date, datetime, timedelta
import io
import json

import pytest

from custom_components.v2g.engine import (
    InfeasiblePlanError,
    InvalidValueError,
    plan_day_ahead,
)
from custom_components.v2g.engine.planner import _short

from .fakes import make_vehicle

DAY = date(2025, 7, 7)
MIDNIGHT = datetime(2025, 7, 7, tzinfo=UTC)


def test_plan_delivers_the_target_within_windows() -> None:
    """Go: 12 kWh, 60-min slots, v1 all day + v2 from 12:00.

    Exactly 12 kWh are planned and v2 is never used before noon.
    """
    vehicles = [
        make_vehicle("v1", max_power_kw=5.0),
        make_vehicle("v2", max_power_kw=5.0),
    ]
    windows = {
        "v1": [(MIDNIGHT, MIDNIGHT + timedelta(days=1))],
        "v2": [(MIDNIGHT + timedelta(hours=12), MIDNIGHT + timedelta(days=1))],
    }
    plan = plan_day_ahead(vehicles, windows, 12.0, 60, DAY)
    assert plan.total_kwh == pytest.approx(12.0)
    assert all(
        e.timeslot >= MIDNIGHT + timedelta(hours=12)
        for e in plan.entries
        if e.vehicle_id == "v2"
    )
    assert plan.entries[0].timeslot == MIDNIGHT


def test_energy_shifts_to_available_hours() -> None:
    """Go: 2 kWh, v1 only available after 12:00 -> all energy after noon."""
    windows = {"v1": [(MIDNIGHT + timedelta(hours=12), MIDNIGHT + timedelta(days=1))]}
    plan = plan_day_ahead([make_vehicle("v1", max_power_kw=5.0)], windows, 2.0, 60, DAY)
    assert plan.total_kwh == pytest.approx(2.0)
    assert min(e.timeslot for e in plan.entries) == MIDNIGHT + timedelta(hours=12)


def test_water_filling_inside_a_slot() -> None:
    """Go: 0.5 kW slot over 0.2 kW + 1 kW vehicles -> 0.2 + 0.3."""
    vehicles = [
        make_vehicle("v1", max_power_kw=0.2),
        make_vehicle("v2", max_power_kw=1.0),
    ]
    plan = plan_day_ahead(vehicles, None, 12.0, 60, DAY)
    first = {e.vehicle_id: e.power_kw for e in plan.entries if e.timeslot == MIDNIGHT}
    assert first == {"v1": pytest.approx(0.2), "v2": pytest.approx(0.3)}


def test_leftover_goes_back_to_earlier_slots() -> None:
    """Improvement: the backlog flows back into earlier slots with spare room.

    Go failed when only morning slots had room for the evening's share.
    """
    windows = {"v1": [(MIDNIGHT, MIDNIGHT + timedelta(hours=6))]}
    plan = plan_day_ahead(
        [make_vehicle("v1", max_power_kw=5.0)], windows, 24.0, 60, DAY
    )
    assert plan.total_kwh == pytest.approx(24.0)
    assert max(e.timeslot for e in plan.entries) < MIDNIGHT + timedelta(hours=6)
    assert all(e.power_kw <= 5.0 + 1e-9 for e in plan.entries)


@pytest.mark.parametrize(
    ("target", "power"), [(1000.0, 5.0), (50.0, 1.0)], ids=["1000kWh-5kW", "50kWh-1kW"]
)
def test_insufficient_capacity(target: float, power: float) -> None:
    with pytest.raises(InfeasiblePlanError, match="insufficient capacity") as info:
        plan_day_ahead([make_vehicle("v1", max_power_kw=power)], None, target, 60, DAY)
    assert f"at most {power * 24:g} kWh" in str(info.value)


def test_input_errors() -> None:
    vehicle = make_vehicle("v1")
    with pytest.raises(InfeasiblePlanError, match="no vehicles"):
        plan_day_ahead([], None, 1.0, 60, DAY)
    for slot in (0, -5, 1441, True):
        with pytest.raises(InvalidValueError) as info:
            plan_day_ahead([vehicle], None, 1.0, slot, DAY)  # type: ignore[arg-type]
        assert info.value.field == "slot_minutes"
    for target in (0.0, -1.0, float("inf")):
        with pytest.raises(InvalidValueError):
            plan_day_ahead([vehicle], None, target, 60, DAY)
    # An empty window list means never available.
    with pytest.raises(InfeasiblePlanError):
        plan_day_ahead([vehicle], {"v1": []}, 1.0, 60, DAY)


def test_exports() -> None:
    """Entries as JSON objects; CSV has the header and one row per entry."""
    vehicles = [make_vehicle("v1", max_power_kw=5.0)]
    plan = plan_day_ahead(vehicles, None, 12.0, 360, DAY)
    assert plan.slot_minutes == 360
    data = plan.as_dicts()
    assert json.loads(json.dumps(data)) == data
    assert data[0] == {
        "vehicle_id": "v1",
        "timeslot": "2025-07-07T00:00:00Z",
        "power_kw": 0.5,
    }
    rows = list(csv.reader(io.StringIO(plan.to_csv())))
    assert rows[0] == ["vehicle_id", "timeslot", "power_kw"]
    assert rows[1] == ["v1", "2025-07-07T00:00:00Z", "0.5"]
    assert len(rows) == 1 + len(plan.entries)
    whole = plan_day_ahead(vehicles, None, 48.0, 1440, DAY)
    assert whole.to_csv().splitlines()[1] == "v1,2025-07-07T00:00:00Z,2"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (5.0, "5"),
        (0.3, "0.3"),
        (2.5, "2.5"),
        (1e-7, "0.0000001"),
        (1e21, "1" + "0" * 21),
    ],
)
def test_csv_numbers_like_go_format_float(value: float, text: str) -> None:
    assert _short(value) == text


def test_slot_count_rounds_up() -> None:
    """Go: ceil(24 h / slot) slots; a 7-minute grid has 206 slots."""
    plan = plan_day_ahead([make_vehicle("v1", max_power_kw=50.0)], None, 20.6, 7, DAY)
    assert len({e.timeslot for e in plan.entries}) == 206
    assert plan.total_kwh == pytest.approx(20.6)
