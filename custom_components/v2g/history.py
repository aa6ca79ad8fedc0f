"""The "history" prediction engine's source: plugged-in states from the recorder.

`HistoryLearner` reads, for each vehicle, the recorder's history of its
plugged-in state over the lookback window (option ``prediction_lookback_days``)
and teaches the engine's `HistoryPrediction` (engine/availability.py) from it.
The source entity is the vehicle's configured plugged-in entity when it was
added by hand (a config subentry), otherwise this integration's own "plugged in"
binary sensor (found in the entity registry by unique id). The first refresh
runs in the background after setup, then every 6 hours. The recorder (and
SQLAlchemy) are imported only when the history engine is on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Final

from homeassistant.config_entries import ConfigEntry
from homeassistant.const import Platform
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, State, callback
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers.event import async_track_time_interval
from homeassistant.util import dt as dt_util

from .const import DOMAIN, LOGGER
from .engine.availability import HistoryPrediction, StateChange, learn_profiles

RECORDER_DOMAIN: Final = "recorder"
REFRESH_INTERVAL: Final = timedelta(hours=6)
REFRESH_NAME: Final = f"{DOMAIN} history prediction refresh"
MAX_LOOKBACK_DAYS: Final = 366
PLUGGED_IN_KEY: Final = "plugged_in"


class HistoryLearner:
    """Refreshes one fleet's `HistoryPrediction` from the recorder."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: ConfigEntry,
        prediction: HistoryPrediction,
        *,
        lookback_days: float,
        vehicle_ids: Callable[[], Iterable[str]],
        configured_entities: Callable[[], Mapping[str, str | None]],
        on_learned: Callable[[], Awaitable[None]],
    ) -> None:
        """Bind to the fleet.

        Args:
            hass: Home Assistant.
            entry: the fleet's config entry.
            prediction: the prediction the learnt profiles go to.
            lookback_days: how much history to read (1 to 366 days).
            vehicle_ids: the fleet's vehicles now.
            configured_entities: hand-added vehicle id -> its plugged-in entity.
            on_learned: publishes a new snapshot once something was learnt.
        """
        self._hass = hass
        self._entry = entry
        self._prediction = prediction
        self._lookback = timedelta(days=min(max(lookback_days, 1.0), MAX_LOOKBACK_DAYS))
        self._vehicle_ids = vehicle_ids
        self._configured = configured_entities
        self._on_learned = on_learned

    @callback
    def async_start(self) -> CALLBACK_TYPE | None:
        """Learn in the background now, then every 6 hours; None: no recorder."""
        if RECORDER_DOMAIN not in self._hass.config.components:
            LOGGER.warning(
                "The history prediction of %s needs the recorder, which is not "
                "loaded; it uses the static availability profile instead",
                self._entry.title,
            )
            return None

        @callback
        def _schedule_refresh(now: datetime | None = None) -> None:
            self._entry.async_create_background_task(
                self._hass, self.async_refresh(), REFRESH_NAME
            )

        _schedule_refresh()
        return async_track_time_interval(
            self._hass, _schedule_refresh, REFRESH_INTERVAL, name=REFRESH_NAME
        )

    def sources(self) -> dict[str, str]:
        """Return vehicle id -> the entity whose history tells when it was plugged in."""
        registry = er.async_get(self._hass)
        configured = self._configured()
        entry_id = self._entry.entry_id
        sources: dict[str, str] = {}
        for vehicle_id in dict.fromkeys([*self._vehicle_ids(), *configured]):
            entity_id = configured.get(vehicle_id) or registry.async_get_entity_id(
                Platform.BINARY_SENSOR,
                DOMAIN,
                f"{entry_id}_{vehicle_id}_{PLUGGED_IN_KEY}",
            )
            if entity_id:
                sources[vehicle_id] = entity_id
        return sources

    async def async_refresh(self) -> bool:
        """Learn the profiles again from the recorder; False if it could not be read."""
        from homeassistant.helpers.recorder import get_instance
        from sqlalchemy.exc import SQLAlchemyError

        instance = get_instance(self._hass)
        if not await instance.async_db_ready:
            LOGGER.warning(
                "The recorder database is not available; %s uses the static "
                "availability profile",
                self._entry.title,
            )
            return False
        now = dt_util.utcnow()
        sources = self.sources()
        histories: dict[str, list[StateChange]] = {}
        if sources:
            try:
                found = await instance.async_add_executor_job(
                    _fetch_states,
                    self._hass,
                    now - self._lookback,
                    now,
                    sorted(set(sources.values())),
                )
            except SQLAlchemyError as err:
                LOGGER.warning(
                    "Could not read the plugged-in history of %s (keeping the "
                    "previous availability profiles): %s",
                    self._entry.title,
                    err,
                )
                return False
            for vehicle_id, entity_id in sources.items():
                histories[vehicle_id] = [
                    (item.last_updated, item.state)
                    for item in found.get(entity_id, ())
                    if isinstance(item, State)
                ]
        profiles = learn_profiles(histories, now, self._lookback, self._prediction.tz)
        self._prediction.update(profiles, now)
        LOGGER.debug(
            "Learnt the availability of %d of %d vehicles of %s from %s of history",
            len(profiles),
            len(sources),
            self._entry.title,
            self._lookback,
        )
        await self._on_learned()
        return True


def _fetch_states(
    hass: HomeAssistant, start: datetime, end: datetime, entity_ids: list[str]
) -> dict[str, list[State | dict[str, Any]]]:
    """Read the states (recorder executor)."""
    from homeassistant.components.recorder import history

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
