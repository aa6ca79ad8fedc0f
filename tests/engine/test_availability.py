"""Availability learnt from a plugged-in history (engine/availability.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from custom_components.v2g.engine import FleetState, Vehicle
from custom_components.v2g.engine.availability import (
    HistoryPrediction,
    learn_profiles,
    plugged_intervals,
)

T0 = datetime(2025, 6, 2, tzinfo=UTC)  # a Monday


def test_intervals_start_at_the_first_known_state() -> None:
    changes = [
        (T0, "unavailable"),
        (T0 + timedelta(hours=1), "on"),
        (T0 + timedelta(hours=2), "on"),  # attribute change
        (T0 + timedelta(hours=3), "unknown"),
        (T0 + timedelta(hours=4), "on"),
    ]
    intervals, known = plugged_intervals(changes, T0 + timedelta(hours=5))
    assert known == T0 + timedelta(hours=1)
    assert intervals == [
        (T0 + timedelta(hours=1), T0 + timedelta(hours=3)),
        (T0 + timedelta(hours=4), T0 + timedelta(hours=5)),
    ]


def test_learn_profiles_skips_vehicles_without_known_history() -> None:
    now = T0 + timedelta(days=7)
    profiles = learn_profiles(
        {
            "never": [(T0, "unavailable")],
            "empty": [],
            "just_now": [(now, "on")],
            "week": [(T0, "on")],
            "older": [(T0 - timedelta(days=30), "off")],
        },
        now,
        timedelta(days=7),
        UTC,
    )
    assert set(profiles) == {"week", "older"}
    assert profiles["week"] == [pytest.approx(1.5 / 2)] * 168
    assert profiles["older"] == [pytest.approx(0.5 / 2)] * 168


def test_prediction_without_fallback_and_soc_forecast() -> None:
    fleet = FleetState()
    fleet.upsert(Vehicle(vehicle_id="v1", soc=0.5, battery_kwh=10.0), 0.0)
    prediction = HistoryPrediction(None, tz=UTC, fleet=fleet)

    assert prediction.availability("v1", T0) == 1.0
    prediction.update({"v1": [0.25] * 168}, T0)
    assert prediction.availability("v1", T0) == 0.25
    assert prediction.availability("v2", T0) == 1.0
    assert prediction.soc_forecast("v1", 1800.0) == [0.5, 0.5]
    assert prediction.soc_forecast("nobody", 1800.0) == []
