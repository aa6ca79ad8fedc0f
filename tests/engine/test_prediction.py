"""Availability prediction and SoC forecasts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from custom_components.v2g.engine import (
    FleetState,
    HourOfWeekProfile,
    InvalidValueError,
    OrderStatus,
    StaticProfile,
    hour_of_week,
    learn_hour_of_week_profile,
    parse_hourly_profile,
    soc_forecast,
)

from .fakes import make_vehicle

MONDAY = datetime(2025, 7, 7, tzinfo=UTC)  # a Monday, 00:00 UTC


def test_static_profile_by_local_hour() -> None:
    hourly = [i / 23 for i in range(24)]
    profile = StaticProfile(hourly)
    assert profile.availability("any", MONDAY + timedelta(hours=5)) == 5 / 23
    paris = StaticProfile(hourly, tz=ZoneInfo("Europe/Paris"))
    # 05:00 UTC is 07:00 in Paris in July.
    assert paris.availability("any", MONDAY + timedelta(hours=5)) == 7 / 23
    assert profile.soc_forecast("any", 3600) == []
    with pytest.raises(InvalidValueError):
        StaticProfile([0.5] * 23)
    with pytest.raises(InvalidValueError):
        StaticProfile([1.5] * 24)


def test_parse_hourly_profile() -> None:
    text = ",".join(["10"] * 12 + ["90"] * 12)
    assert parse_hourly_profile(text) == [0.1] * 12 + [0.9] * 12
    for bad in (
        "10,20",
        ",".join(["x"] * 24),
        ",".join(["150"] * 24),
        "nan," * 23 + "1",
    ):
        with pytest.raises(InvalidValueError):
            parse_hourly_profile(bad)


def test_hour_of_week() -> None:
    assert hour_of_week(MONDAY) == 0
    assert hour_of_week(MONDAY + timedelta(days=6, hours=23)) == 167
    assert hour_of_week(MONDAY, ZoneInfo("America/New_York")) == 6 * 24 + 20


def test_hour_of_week_profile_and_default() -> None:
    """Go mock: configured value per vehicle, 1.0 for unknown vehicles."""
    week = [0.0] * 168
    week[1] = 0.75
    profile = HourOfWeekProfile({"v1": week})
    assert profile.availability("v1", MONDAY + timedelta(hours=1)) == 0.75
    assert profile.availability("v2", MONDAY) == 1.0
    with_default = HourOfWeekProfile({}, default=[0.3] * 168)
    assert with_default.availability("v2", MONDAY) == 0.3
    with pytest.raises(InvalidValueError):
        HourOfWeekProfile({"v1": [0.5] * 24})


def test_soc_forecast_physics() -> None:
    # 10 kW out of a 40 kWh battery for 1 h in 15 min steps: -6.25 % per step.
    assert soc_forecast(0.8, 10.0, 40.0, 3600) == pytest.approx(
        [0.7375, 0.675, 0.6125, 0.55]
    )
    # Charging clamps at full; the last value is at the horizon exactly.
    assert soc_forecast(0.95, -20.0, 40.0, 1000, step_s=600) == [1.0, 1.0]
    assert soc_forecast(0.5, 0.0, 40.0, 0) == []
    for kwargs in (
        {"battery_kwh": 0.0},
        {"step_s": 0.0},
        {"horizon_s": -1.0},
        {"horizon_s": 8 * 86_400.0},
    ):
        args = {"soc": 0.5, "power_kw": 1.0, "battery_kwh": 40.0, "horizon_s": 60.0}
        args.update(kwargs)
        with pytest.raises(InvalidValueError):
            soc_forecast(**args)  # type: ignore[arg-type]


def test_profiles_forecast_soc_from_the_fleet() -> None:
    fleet = FleetState()
    fleet.upsert(make_vehicle("v1", soc=0.5, battery_kwh=40.0), 0.0)
    fleet.record_outcome("v1", OrderStatus.ACKNOWLEDGED, -8.0, 1.0, MONDAY)
    static = StaticProfile([1.0] * 24, fleet=fleet)
    assert static.soc_forecast("v1", 1800) == pytest.approx([0.55, 0.6])
    assert static.soc_forecast("ghost", 1800) == []
    weekly = HourOfWeekProfile({}, fleet=fleet)
    assert weekly.soc_forecast("v1", 900) == pytest.approx([0.55])


def test_learning_from_history() -> None:
    """Plugged in every weekday 18:00-08:00 for four weeks."""
    now = MONDAY + timedelta(weeks=4)
    intervals = []
    for day in range(28):
        start = MONDAY + timedelta(days=day, hours=18)
        intervals.append((start, start + timedelta(hours=14)))
    profile = learn_hour_of_week_profile(
        intervals, now, timedelta(weeks=4), prior=0.5, prior_weight=1.0
    )
    assert len(profile) == 168
    # 4 observations, all available: (4 + 0.5) / (4 + 1) = 0.9.
    assert profile[hour_of_week(MONDAY + timedelta(hours=20))] == pytest.approx(0.9)
    # Never available at noon: 0.5 / 5 = 0.1.
    assert profile[hour_of_week(MONDAY + timedelta(hours=12))] == pytest.approx(0.1)


def test_learning_merges_overlaps_and_smooths_sparse_hours() -> None:
    now = MONDAY + timedelta(days=1)
    half = MONDAY + timedelta(hours=3, minutes=30)
    intervals = [
        (MONDAY + timedelta(hours=3), MONDAY + timedelta(hours=4)),
        (half, MONDAY + timedelta(hours=4)),  # overlap: not counted twice
        (half, half + timedelta(minutes=10)),  # contained: not counted twice
        (half + timedelta(minutes=15), half + timedelta(minutes=45)),  # extends
        (MONDAY - timedelta(days=9), MONDAY - timedelta(days=8)),  # outside window
        (now + timedelta(hours=1), now + timedelta(hours=2)),  # future
        (MONDAY + timedelta(hours=5, minutes=30), MONDAY + timedelta(hours=6)),
    ]
    profile = learn_hour_of_week_profile(
        intervals, now, timedelta(days=1), prior=0.2, prior_weight=1.0
    )
    assert profile[3] == pytest.approx((1 + 0.2) / 2)
    assert profile[4] == pytest.approx((0.25 + 0.2) / 2)
    assert profile[5] == pytest.approx((0.5 + 0.2) / 2)
    # Hours of other days were never observed: the prior.
    assert profile[24 * 3] == pytest.approx(0.2)


def test_learning_validation() -> None:
    for kwargs in (
        {"prior": 1.5},
        {"prior_weight": 0.0},
        {"lookback": timedelta(0)},
        {"lookback": timedelta(days=400)},
    ):
        args: dict[str, object] = {
            "intervals": [],
            "now": MONDAY,
            "lookback": timedelta(days=7),
        }
        args.update(kwargs)
        with pytest.raises(InvalidValueError):
            learn_hour_of_week_profile(**args)  # type: ignore[arg-type]
