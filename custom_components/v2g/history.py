"""The "history" prediction engine: availability learned from the recorder.

For each vehicle, the recorder's history of its plugged-in state over the lookback
window (option ``prediction_lookback_days``) gives the intervals it was plugged in;
``learn_hour_of_week_profile`` (engine) turns them into 168 probabilities, one per
local hour of the week. The source entity is the vehicle's configured plugged-in
entity when it was added by hand (a config subentry), otherwise this integration's
own "plugged in" binary sensor (found in the entity registry by unique id).

Reading the history:

* ``on`` counts as plugged in; ``off``, ``unavailable`` and ``unknown`` as not
  (a vehicle this fleet cannot reach cannot take orders either).
* The window starts at the vehicle's first known (on/off) state inside the
  lookback, not at the start of the lookback: hours before an entity existed, or
  already purged by the recorder (``purge_keep_days`` defaults to 10 days, the
  lookback to 28), are not counted as "not plugged in".
* Vehicles without history (no entity, nothing recorded) use the static profile of
  the options, as do all vehicles while nothing was learnt yet and when the
  recorder is not loaded.

The coordinator gives the dispatcher one :class:`HistoryPrediction` object for the
life of the entry; refreshing swaps its learnt table in place, so the dispatcher
and the entities see new probabilities without being rebuilt. The first refresh
runs in the background after setup, then every 6 hours.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, Final

from homeassistant.components.recorder import history
from homeassistant.const import STATE_ON, STATE_UNAVAILABLE, STATE_UNKNOWN, Platform
from homeassistant.core import HomeAssistant, State, callback
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers.event import async_track_time_interval
from homeassistant.helpers.recorder import get_instance
from homeassistant.util import dt as dt_util
from sqlalchemy.exc import SQLAlchemyError

from .const import (
    CONF_PLUGGED_ENTITY,
    CONF_PREDICTION_LOOKBACK_DAYS,
    CONF_VEHICLE_ID,
    DEFAULT_PREDICTION_LOOKBACK_DAYS,
    DOMAIN,
    LOGGER,
    SUBENTRY_TYPE_VEHICLE,
)
from .engine import (
    FleetState,
    HourOfWeekProfile,
    PredictionEngine,
    learn_hour_of_week_profile,
    soc_forecast,
)

if TYPE_CHECKING:
    from .coordinator import V2GConfigEntry

RECORDER_DOMAIN: Final = "recorder"
REFRESH_INTERVAL: Final = timedelta(hours=6)
REFRESH_NAME: Final = f"{DOMAIN} history prediction refresh"
MAX_LOOKBACK_DAYS: Final = 366
PLUGGED_IN_KEY: Final = "plugged_in"
_UNKNOWN_STATES: Final = (STATE_UNAVAILABLE, STATE_UNKNOWN)

type Interval = tuple[datetime, datetime]


class HistoryPrediction:
    """Learnt per-vehicle availability, the static profile for everything else.

    Implements the engine's ``PredictionEngine`` protocol.
    """

    def __init__(
        self,
        fallback: PredictionEngine | None,
        *,
        tz: tzinfo,
        fleet: Callable[[], FleetState],
    ) -> None:
        """Answer with ``fallback`` (None: probability 1) until something is learnt.

        Args:
            fallback: the static profile of the options, if valid.
            tz: the user's time zone (hours of the week are local).
            fleet: returns the coordinator's current fleet (SoC forecasts).
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
        fleet = self._fleet()
        vehicle = fleet.vehicles.get(vehicle_id)
        if vehicle is None:
            return []
        power = fleet.setpoints.get(vehicle_id, 0.0)
        return soc_forecast(vehicle.soc, power, vehicle.battery_kwh, horizon_s)


# --- which entities -------------------------------------------------------------------


@callback
def plugged_in_entities(hass: HomeAssistant, entry: V2GConfigEntry) -> dict[str, str]:
    """Return vehicle id -> the entity whose history tells when it was plugged in."""
    registry = er.async_get(hass)
    manual: dict[str, str | None] = {}
    for subentry in entry.subentries.values():
        if subentry.subentry_type != SUBENTRY_TYPE_VEHICLE:
            continue
        vehicle_id = subentry.data.get(CONF_VEHICLE_ID) or subentry.unique_id
        if isinstance(vehicle_id, str) and vehicle_id:
            plugged = subentry.data.get(CONF_PLUGGED_ENTITY)
            manual[vehicle_id] = plugged if isinstance(plugged, str) else None
    sources: dict[str, str] = {}
    for vehicle_id in dict.fromkeys([*entry.runtime_data.fleet.vehicles, *manual]):
        entity_id = manual.get(vehicle_id) or registry.async_get_entity_id(
            Platform.BINARY_SENSOR,
            DOMAIN,
            f"{entry.entry_id}_{vehicle_id}_{PLUGGED_IN_KEY}",
        )
        if entity_id:
            sources[vehicle_id] = entity_id
    return sources


# --- history -> intervals -> profile ----------------------------------------------------


def plugged_intervals(
    states: Iterable[State], now: datetime
) -> tuple[list[Interval], datetime | None]:
    """Return the "on" intervals of a state history and when it became known.

    ``states`` are in time order (the first may be the state at the window start).
    The second value is the time of the first on/off state (None: never known).
    """
    intervals: list[Interval] = []
    known_since: datetime | None = None
    on_since: datetime | None = None
    for state in states:
        at = state.last_updated
        if known_since is None and state.state not in _UNKNOWN_STATES:
            known_since = at
        if state.state == STATE_ON:
            if on_since is None:
                on_since = at
        elif on_since is not None:
            intervals.append((on_since, at))
            on_since = None
    if on_since is not None:
        intervals.append((on_since, now))
    return intervals, known_since


def learn_profiles(
    histories: Mapping[str, Iterable[State]],
    now: datetime,
    lookback: timedelta,
    tz: tzinfo,
) -> dict[str, list[float]]:
    """Learn 168 probabilities per vehicle id from its plugged-in state history."""
    profiles: dict[str, list[float]] = {}
    window_start = now - lookback
    for vehicle_id, states in histories.items():
        intervals, known_since = plugged_intervals(states, now)
        if known_since is None:
            continue
        start = max(known_since, window_start)
        if start >= now:
            continue
        profiles[vehicle_id] = learn_hour_of_week_profile(
            intervals, now, now - start, tz=tz
        )
    return profiles


def _fetch_states(
    hass: HomeAssistant, start: datetime, end: datetime, entity_ids: list[str]
) -> dict[str, list[State | dict[str, Any]]]:
    """Read the states (recorder executor)."""
    return history.get_significant_states(
        hass,
        start,
        end,
        entity_ids,
        include_start_time_state=True,
        significant_changes_only=False,
        minimal_response=False,
        no_attributes=True,
    )


async def async_refresh_history_prediction(
    hass: HomeAssistant, entry: V2GConfigEntry
) -> bool:
    """Learn the profiles again from the recorder; False if it could not be read."""
    coordinator = entry.runtime_data
    prediction = coordinator.prediction
    if not isinstance(prediction, HistoryPrediction):
        return False
    instance = get_instance(hass)
    if not await instance.async_db_ready:
        LOGGER.warning(
            "The recorder database is not available; %s uses the static "
            "availability profile",
            entry.title,
        )
        return False
    now = dt_util.utcnow()
    days = float(
        coordinator.options.get(
            CONF_PREDICTION_LOOKBACK_DAYS, DEFAULT_PREDICTION_LOOKBACK_DAYS
        )
    )
    lookback = timedelta(days=min(max(days, 1.0), MAX_LOOKBACK_DAYS))
    sources = plugged_in_entities(hass, entry)
    histories: dict[str, list[State]] = {}
    if sources:
        try:
            found = await instance.async_add_executor_job(
                _fetch_states, hass, now - lookback, now, sorted(set(sources.values()))
            )
        except SQLAlchemyError as err:
            LOGGER.warning(
                "Could not read the plugged-in history of %s (keeping the previous "
                "availability profiles): %s",
                entry.title,
                err,
            )
            return False
        for vehicle_id, entity_id in sources.items():
            histories[vehicle_id] = [
                item for item in found.get(entity_id, ()) if isinstance(item, State)
            ]
    profiles = learn_profiles(histories, now, lookback, prediction.tz)
    prediction.update(profiles, now)
    LOGGER.debug(
        "Learnt the availability of %d of %d vehicles of %s from %s of history",
        len(profiles),
        len(sources),
        entry.title,
        lookback,
    )
    await coordinator.async_refresh_now()
    return True


@callback
def async_setup_history_prediction(hass: HomeAssistant, entry: V2GConfigEntry) -> None:
    """Learn in the background now, then every 6 hours (history engine only)."""
    if not isinstance(entry.runtime_data.prediction, HistoryPrediction):
        return
    if RECORDER_DOMAIN not in hass.config.components:
        LOGGER.warning(
            "The history prediction of %s needs the recorder, which is not loaded; "
            "it uses the static availability profile instead",
            entry.title,
        )
        return

    @callback
    def _schedule_refresh(now: datetime | None = None) -> None:
        entry.async_create_background_task(
            hass,
            async_refresh_history_prediction(hass, entry),
            REFRESH_NAME,
        )

    _schedule_refresh()
    entry.async_on_unload(
        async_track_time_interval(
            hass,
            _schedule_refresh,
            REFRESH_INTERVAL,
            name=REFRESH_NAME,
        )
    )
