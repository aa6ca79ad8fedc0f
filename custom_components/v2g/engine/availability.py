"""Availability learnt from a plugged-in history (the "history" prediction engine).

For each vehicle, the history of its plugged-in state over the lookback window
gives the intervals it was plugged in; `learn_hour_of_week_profile` turns them
into 168 probabilities, one per local hour of the week. Reading a history:

* ``on`` counts as plugged in; anything else (``off``, ``unavailable``,
  ``unknown``) as not: a vehicle the fleet cannot reach cannot take orders.
* The window starts at the first known (on/off) state inside the lookback, not
  at the start of the lookback: hours before an entity existed, or already
  purged, are not counted as "not plugged in".
* Vehicles without history use the fallback (the static profile).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, tzinfo

from .fleet import FleetState
from .prediction import (
    HourOfWeekProfile,
    PredictionEngine,
    learn_hour_of_week_profile,
    soc_forecast,
)

STATE_ON = "on"
UNKNOWN_STATES = frozenset({"unavailable", "unknown"})

type Interval = tuple[datetime, datetime]
# One recorded state: when it began and its value.
type StateChange = tuple[datetime, str]


class HistoryPrediction:
    """Learnt per-vehicle availability, the fallback for everything else.

    Implements the engine's ``PredictionEngine`` protocol. The learnt table is
    replaced in place (`update`), so the dispatcher and the entities see new
    probabilities without being rebuilt.
    """

    def __init__(
        self, fallback: PredictionEngine | None, *, tz: tzinfo, fleet: FleetState
    ) -> None:
        """Answer with ``fallback`` (None: probability 1) until something is learnt.

        Args:
            fallback: the static profile of the options, if valid.
            tz: the user's time zone (hours of the week are local).
            fleet: the fleet whose setpoints drive the SoC forecasts.
        """
        self.fallback = fallback
        self.tz = tz
        self._fleet = fleet
        self.profile: HourOfWeekProfile | None = None
        self.learned_at: datetime | None = None

    def update(self, profiles: Mapping[str, list[float]], at: datetime) -> None:
        """Replace the learnt profiles (vehicle id -> 168 probabilities)."""
        self.profile = HourOfWeekProfile(dict(profiles), tz=self.tz)
        self.learned_at = at

    def availability(self, vehicle_id: str, at: datetime) -> float:
        """The learnt probability of the vehicle at ``at``, else the fallback's."""
        profile = self.profile
        if profile is not None and vehicle_id in profile.profiles:
            return profile.availability(vehicle_id, at)
        if self.fallback is not None:
            return self.fallback.availability(vehicle_id, at)
        return 1.0

    def soc_forecast(self, vehicle_id: str, horizon_s: float) -> list[float]:
        """SoC projected from the vehicle's current setpoint (empty if unknown)."""
        fleet = self._fleet
        vehicle = fleet.vehicles.get(vehicle_id)
        if vehicle is None:
            return []
        power = fleet.setpoints.get(vehicle_id, 0.0)
        return soc_forecast(vehicle.soc, power, vehicle.battery_kwh, horizon_s)


def plugged_intervals(
    changes: Iterable[StateChange], now: datetime
) -> tuple[list[Interval], datetime | None]:
    """Return the "on" intervals of a state history and when it became known.

    ``changes`` are in time order (the first may be the state at the window
    start). The second value is the time of the first on/off state (None:
    never known).
    """
    intervals: list[Interval] = []
    known_since: datetime | None = None
    on_since: datetime | None = None
    for at, state in changes:
        if known_since is None and state not in UNKNOWN_STATES:
            known_since = at
        if state == STATE_ON:
            if on_since is None:
                on_since = at
        elif on_since is not None:
            intervals.append((on_since, at))
            on_since = None
    if on_since is not None:
        intervals.append((on_since, now))
    return intervals, known_since


def learn_profiles(
    histories: Mapping[str, Iterable[StateChange]],
    now: datetime,
    lookback: timedelta,
    tz: tzinfo,
) -> dict[str, list[float]]:
    """Learn 168 probabilities per vehicle id from its plugged-in state history."""
    profiles: dict[str, list[float]] = {}
    window_start = now - lookback
    for vehicle_id, changes in histories.items():
        intervals, known_since = plugged_intervals(changes, now)
        if known_since is None:
            continue
        start = max(known_since, window_start)
        if start >= now:
            continue
        profiles[vehicle_id] = learn_hour_of_week_profile(
            intervals, now, now - start, tz=tz
        )
    return profiles
