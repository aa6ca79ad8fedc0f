"""Day-ahead planner (seed §6.1)."""

from __future__ import annotations

import csv
from datetime import UTC, date, datetime, timedelta
import io
import itertools
import json
from zoneinfo import ZoneInfo

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


PARIS = ZoneInfo("Europe/Paris")


def test_days_are_calendar_days_of_the_time_zone() -> None:
    """A Paris day starts at local midnight; slots carry the local offset."""
    plan = plan_day_ahead(
        [make_vehicle("v1", max_power_kw=5.0)], None, 24.0, 60, DAY, PARIS
    )
    assert plan.entries[0].timeslot == datetime(2025, 7, 7, tzinfo=PARIS)
    assert plan.entries[0].as_dict()["timeslot"] == "2025-07-07T00:00:00+02:00"
    assert plan.to_csv().splitlines()[1] == "v1,2025-07-07T00:00:00+02:00,1"
    assert len(plan.entries) == 24
    # Windows are instants: 22:00 UTC is midnight in Paris, the day's end.
    windows = {"v1": [(MIDNIGHT + timedelta(hours=20), MIDNIGHT + timedelta(hours=22))]}
    late = plan_day_ahead(
        [make_vehicle("v1", max_power_kw=5.0)], windows, 2.0, 60, DAY, PARIS
    )
    assert [e.as_dict()["timeslot"] for e in late.entries] == [
        "2025-07-07T22:00:00+02:00",
        "2025-07-07T23:00:00+02:00",
    ]


@pytest.mark.parametrize(
    ("day", "hours", "offsets"),
    [
        (date(2026, 3, 29), 23, ["+01:00"] * 2 + ["+02:00"] * 21),
        (date(2026, 10, 25), 25, ["+02:00"] * 3 + ["+01:00"] * 22),
    ],
    ids=["23-hour day", "25-hour day"],
)
def test_days_when_the_clocks_change(day: date, hours: int, offsets: list[str]) -> None:
    """Slots follow real time: no hour is skipped twice or planned twice."""
    plan = plan_day_ahead(
        [make_vehicle("v1", max_power_kw=5.0)], None, float(hours), 60, day, PARIS
    )
    stamps = [entry.as_dict()["timeslot"] for entry in plan.entries]
    assert len(stamps) == len(set(stamps)) == hours
    assert [stamp[-6:] for stamp in stamps] == offsets
    assert {entry.power_kw for entry in plan.entries} == {1.0}
    assert plan.total_kwh == pytest.approx(hours)
    # Consecutive slots are one hour apart in real time.
    instants = [entry.timeslot.astimezone(UTC) for entry in plan.entries]
    assert {b - a for a, b in itertools.pairwise(instants)} == {timedelta(hours=1)}


def test_infeasible_plan_says_what_can_be_delivered() -> None:
    with pytest.raises(InfeasiblePlanError) as info:
        plan_day_ahead([make_vehicle("v1", max_power_kw=2.5)], None, 100.0, 60, DAY)
    assert info.value.deliverable_kwh == pytest.approx(60.0)


def test_exported_powers_carry_no_float_noise() -> None:
    """0.7 kWh an hour over 0.2 + 1 kW: 0.5 kW exported, not 0.49999999999999983."""
    vehicles = [
        make_vehicle("v1", max_power_kw=0.2),
        make_vehicle("v2", max_power_kw=1.0),
    ]
    plan = plan_day_ahead(vehicles, None, 0.7 * 24, 60, DAY)
    assert {entry["power_kw"] for entry in plan.as_dicts()} == {0.2, 0.5}
    assert {row.split(",")[2] for row in plan.to_csv().splitlines()[1:]} == {
        "0.2",
        "0.5",
    }
