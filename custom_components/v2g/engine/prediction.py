"""Availability prediction and SoC forecasts (seed §4).

A `PredictionEngine` gives the probability that a vehicle is still plugged in at
a time, and optionally a SoC forecast. The dispatcher uses the probability as the
vehicle's `availability_prob` (score term, probabilistic fallback).

* `StaticProfile` — one probability per hour of the day, the same for all
  vehicles (the "static profile" option);
* `HourOfWeekProfile` — 168 probabilities per vehicle, e.g. learnt from Home
  Assistant history with `learn_hour_of_week_profile`, which smooths sparse hours
  toward a prior (a Beta prior, i.e. Bayesian smoothing).

Both can forecast SoC when given the fleet state: the vehicle's SoC driven by its
acknowledged setpoint (`soc_forecast`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
import math
from typing import Protocol

from .fleet import FleetState
from .models import InvalidValueError

HOURS_PER_WEEK = 168
DEFAULT_FORECAST_STEP_S = 900.0
# Forecast horizons beyond a week are not forecasts any more.
MAX_FORECAST_HORIZON_S = 7 * 86_400.0


class PredictionEngine(Protocol):
    """What the dispatcher asks a predictor."""

    def availability(self, vehicle_id: str, at: datetime) -> float:
        """Probability (0..1) that the vehicle is available at `at`."""

    def soc_forecast(self, vehicle_id: str, horizon_s: float) -> list[float]:
        """SoC forecasts up to `horizon_s` ahead (fixed steps); may be empty."""


def _validated_probabilities(
    values: Sequence[float], count: int, field: str
) -> list[float]:
    if len(values) != count:
        raise InvalidValueError(field, f"needs exactly {count} values")
    out: list[float] = []
    for value in values:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0.0 <= value <= 1.0
        ):
            raise InvalidValueError(field, "values must be probabilities in 0..1")
        out.append(float(value))
    return out


def parse_hourly_profile(text: str) -> list[float]:
    """Parse 24 comma-separated percentages ("10, 10, …, 90") into fractions.

    Raises:
        InvalidValueError: not 24 numbers in 0..100.
    """
    parts = [part.strip() for part in text.split(",")]
    try:
        values = [float(part) / 100.0 for part in parts]
    except ValueError:
        raise InvalidValueError("profile", "values must be numbers") from None
    if any(not math.isfinite(v) for v in values):
        raise InvalidValueError("profile", "values must be finite")
    return _validated_probabilities(values, 24, "profile")


def soc_forecast(
    soc: float,
    power_kw: float,
    battery_kwh: float,
    horizon_s: float,
    step_s: float = DEFAULT_FORECAST_STEP_S,
) -> list[float]:
    """SoC every `step_s` up to `horizon_s` holding `power_kw` (> 0 discharges).

    The last value is at the horizon itself; values are clamped to 0..1.

    Raises:
        InvalidValueError: a non-positive battery or step, or a bad horizon.
    """
    if not battery_kwh > 0.0:
        raise InvalidValueError("battery_kwh", "must be positive")
    if not step_s > 0.0 or not math.isfinite(step_s):
        raise InvalidValueError("step_s", "must be positive")
    if not 0.0 <= horizon_s <= MAX_FORECAST_HORIZON_S:
        raise InvalidValueError("horizon_s", "must be within a week")
    steps = math.ceil(horizon_s / step_s)
    rate_per_s = power_kw / 3600.0 / battery_kwh
    forecast: list[float] = []
    for index in range(1, steps + 1):
        elapsed = min(index * step_s, horizon_s)
        forecast.append(min(max(soc - rate_per_s * elapsed, 0.0), 1.0))
    return forecast


def _fleet_soc_forecast(
    fleet: FleetState | None, vehicle_id: str, horizon_s: float
) -> list[float]:
    if fleet is None:
        return []
    vehicle = fleet.vehicles.get(vehicle_id)
    if vehicle is None:
        return []
    power = fleet.setpoints.get(vehicle_id, 0.0)
    return soc_forecast(vehicle.soc, power, vehicle.battery_kwh, horizon_s)


class StaticProfile:
    """The same 24 hourly availability probabilities for every vehicle."""

    def __init__(
        self,
        hourly: Sequence[float],
        *,
        tz: tzinfo = UTC,
        fleet: FleetState | None = None,
    ) -> None:
        """Use `hourly[h]` for local hour h (in `tz`).

        Args:
            hourly: 24 probabilities, hour 0 first.
            tz: the time zone the hours are in (the user's).
            fleet: when given, SoC forecasts follow each vehicle's setpoint.

        Raises:
            InvalidValueError: not 24 probabilities.
        """
        self.hourly = _validated_probabilities(hourly, 24, "hourly")
        self.tz = tz
        self.fleet = fleet

    def availability(self, vehicle_id: str, at: datetime) -> float:
        """Probability for the local hour of `at`."""
        return self.hourly[at.astimezone(self.tz).hour]

    def soc_forecast(self, vehicle_id: str, horizon_s: float) -> list[float]:
        """SoC projected from the fleet state (empty without one)."""
        return _fleet_soc_forecast(self.fleet, vehicle_id, horizon_s)


def hour_of_week(at: datetime, tz: tzinfo = UTC) -> int:
    """Index 0..167 of `at`'s local hour of the week (Monday 00:00 is 0)."""
    local = at.astimezone(tz)
    return local.weekday() * 24 + local.hour


class HourOfWeekProfile:
    """Per-vehicle 168-hour availability profiles, with a fleet-wide default."""

    def __init__(
        self,
        profiles: dict[str, Sequence[float]],
        default: Sequence[float] | None = None,
        *,
        tz: tzinfo = UTC,
        fleet: FleetState | None = None,
    ) -> None:
        """Store validated profiles.

        Args:
            profiles: vehicle id -> 168 probabilities (Monday 00:00 first).
            default: profile of vehicles without one (None: probability 1.0, as
                the Go mock predictor answers for unknown vehicles).
            tz: time zone of the hours.
            fleet: when given, SoC forecasts follow each vehicle's setpoint.

        Raises:
            InvalidValueError: a profile is not 168 probabilities.
        """
        self.profiles = {
            vid: _validated_probabilities(values, HOURS_PER_WEEK, f"profiles.{vid}")
            for vid, values in profiles.items()
        }
        self.default = (
            None
            if default is None
            else _validated_probabilities(default, HOURS_PER_WEEK, "default")
        )
        self.tz = tz
        self.fleet = fleet

    def availability(self, vehicle_id: str, at: datetime) -> float:
        """Probability for the vehicle at the local hour of week of `at`."""
        profile = self.profiles.get(vehicle_id, self.default)
        if profile is None:
            return 1.0
        return profile[hour_of_week(at, self.tz)]

    def soc_forecast(self, vehicle_id: str, horizon_s: float) -> list[float]:
        """SoC projected from the fleet state (empty without one)."""
        return _fleet_soc_forecast(self.fleet, vehicle_id, horizon_s)


def _merge(
    intervals: Iterable[tuple[datetime, datetime]], start: datetime, end: datetime
) -> list[tuple[datetime, datetime]]:
    """Clip to [start, end), drop empty ones, and merge overlaps (no double count)."""
    clipped = sorted(
        (max(s, start), min(e, end))
        for s, e in intervals
        if min(e, end) > max(s, start)
    )
    merged: list[tuple[datetime, datetime]] = []
    for s, e in clipped:
        if merged and s <= merged[-1][1]:
            if e > merged[-1][1]:
                merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged


def _add_hours(totals: list[float], start: datetime, end: datetime, tz: tzinfo) -> None:
    """Add the hours of [start, end) to their hour-of-week buckets.

    Pieces are cut at whole UTC hours and filed under the local hour of their
    midpoint (exact for every zone whose offset is a whole number of hours).
    """
    cursor = start
    while cursor < end:
        next_hour = (cursor.astimezone(UTC) + timedelta(hours=1)).replace(
            minute=0, second=0, microsecond=0
        )
        piece_end = min(next_hour, end)
        midpoint = cursor + (piece_end - cursor) / 2
        totals[hour_of_week(midpoint, tz)] += (
            piece_end - cursor
        ).total_seconds() / 3600.0
        cursor = piece_end


def learn_hour_of_week_profile(
    intervals: Iterable[tuple[datetime, datetime]],
    now: datetime,
    lookback: timedelta,
    prior: float = 0.5,
    prior_weight: float = 1.0,
    *,
    tz: tzinfo = UTC,
) -> list[float]:
    """Learn 168 availability probabilities from observed availability intervals.

    For each hour of the week b: p_b = (A_b + prior * w) / (O_b + w), where O_b is
    how many hours of the lookback window fall in b, A_b how many of them the
    vehicle was available, and w = `prior_weight` (in hours). Hours seldom
    observed stay near `prior`; well observed hours follow the data.

    Args:
        intervals: (start, end) times the vehicle was available (aware).
        now: end of the lookback window.
        lookback: how far back to look (e.g. 4 weeks).
        prior: probability assumed without data.
        prior_weight: strength of the prior, in observed hours.
        tz: time zone of the hours (the user's).

    Raises:
        InvalidValueError: bad prior, weight or lookback.
    """
    if not 0.0 <= prior <= 1.0:
        raise InvalidValueError("prior", "must be between 0 and 1")
    if not prior_weight > 0.0 or not math.isfinite(prior_weight):
        raise InvalidValueError("prior_weight", "must be positive")
    if lookback <= timedelta(0) or lookback > timedelta(days=366):
        raise InvalidValueError("lookback", "must be between 0 and 366 days")
    window_start = now - lookback
    observed = [0.0] * HOURS_PER_WEEK
    available = [0.0] * HOURS_PER_WEEK
    _add_hours(observed, window_start, now, tz)
    for start, end in _merge(intervals, window_start, now):
        _add_hours(available, start, end, tz)
    return [
        min(max((a + prior * prior_weight) / (o + prior_weight), 0.0), 1.0)
        for a, o in zip(available, observed, strict=True)
    ]
