"""What a fleet keeps across restarts: load, save and the in-flight marker.

The three stores of `storage.py` hold the fleet (vehicles, when each was last
heard from, which SoCs are known, the metrics), the dispatch log and the records
of dispatches in flight. The fleet is loaded before the engine is built, so the
engine, the prediction and the entities share one `FleetState` for the life of
the entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from homeassistant.const import EVENT_HOMEASSISTANT_STOP
from homeassistant.core import CALLBACK_TYPE, Event, HomeAssistant, callback
from homeassistant.util import dt as dt_util

from .const import LOGGER
from .dispatch_log import DispatchLogStore
from .engine import FleetState, InvalidValueError, Steps, chunks, parse_utc_time
from .engine.metrics import DispatchMetrics
from .storage import FleetStore, InFlightStore


@dataclass(slots=True)
class FleetData:
    """The restored (then live) state that the fleet store saves."""

    fleet: FleetState = field(default_factory=FleetState)
    soc_known: set[str] = field(default_factory=set)
    metrics: DispatchMetrics = field(default_factory=DispatchMetrics)


class FleetPersistence:
    """The stores of one config entry."""

    def __init__(self, hass: HomeAssistant, entry_id: str) -> None:
        """Create the stores (nothing is read yet)."""
        self.fleet_store = FleetStore(hass, entry_id)
        self.dispatch_log = DispatchLogStore(hass, entry_id)
        self.in_flight = InFlightStore(hass, entry_id)
        self._hass = hass
        self._data = FleetData()
        self._running: Callable[[], Iterable[Mapping[str, Any]]] = list
        self._monotonic: Callable[[], float] = hass.loop.time

    async def async_load(self) -> FleetData:
        """Read the fleet and the dispatch log; return the fleet's live state."""
        saved = await self.fleet_store.async_load() or {}
        data = self._data
        fleet_data = saved.get("fleet")
        if isinstance(fleet_data, dict):
            try:
                data.fleet = FleetState.from_dict(fleet_data)
            except InvalidValueError as err:
                LOGGER.warning("Ignoring the saved fleet state: %s", err)
        fleet = data.fleet
        now_mono = self._monotonic()
        utcnow = dt_util.utcnow()
        last_seen = saved.get("last_seen")
        if isinstance(last_seen, dict):
            for vehicle_id, when in last_seen.items():
                seen = parse_utc_time(when)
                if seen is not None and vehicle_id in fleet.vehicles:
                    age = max((utcnow - seen).total_seconds(), 0.0)
                    fleet.last_seen[vehicle_id] = now_mono - age
        soc_known = saved.get("soc_known")
        if isinstance(soc_known, list):
            data.soc_known.update(v for v in soc_known if v in fleet.vehicles)
        data.metrics = DispatchMetrics.from_dict(saved.get("metrics"))
        await self.dispatch_log.async_load()
        return data

    def _data_steps(self) -> Steps[dict[str, Any]]:
        """What the fleet store saves, built in steps (10,000 vehicles: ~60 ms)."""
        data = self._data
        fleet_data = yield from data.fleet.as_dict_steps()
        now_mono = self._monotonic()
        utcnow = dt_util.utcnow()
        last_seen: dict[str, str] = {}
        for chunk in chunks(list(data.fleet.last_seen.items())):
            last_seen.update(
                (vehicle_id, (utcnow - timedelta(seconds=now_mono - seen)).isoformat())
                for vehicle_id, seen in chunk
            )
            yield
        return {
            "fleet": fleet_data,
            "last_seen": last_seen,
            "soc_known": sorted(data.soc_known),
            "metrics": data.metrics.as_dict(),
        }

    @callback
    def async_schedule_save(self) -> None:
        """Save the fleet soon (coalesced)."""
        self.fleet_store.async_schedule_save(self._data_steps)

    # --- dispatches in flight -------------------------------------------------------

    async def async_take_interrupted(self) -> list[dict[str, Any]]:
        """The records of dispatches a previous run did not finish."""
        return await self.in_flight.async_take()

    @callback
    def async_mark_started(self, record: Mapping[str, Any]) -> None:
        """Hold the record of a starting dispatch (written before its first send)."""
        self.in_flight.mark(str(record["dispatch_id"]), record)

    @callback
    def async_follow_running(
        self, running: Callable[[], Iterable[Mapping[str, Any]]]
    ) -> CALLBACK_TYPE:
        """Read the running dispatches from ``running``; save them at HA's stop."""
        self._running = running

        @callback
        def _stop(event: Event) -> None:
            self.async_update_running()

        return self._hass.bus.async_listen(EVENT_HOMEASSISTANT_STOP, _stop)

    async def async_save_running(self) -> None:
        """Write what the running dispatches know (their orders) now."""
        await self.in_flight.async_save(_stamped(self._running()))

    @callback
    def async_update_running(self) -> None:
        """Refresh what the running dispatches know (written soon, flushed at stop)."""
        if self.in_flight.running:
            self.in_flight.async_update(_stamped(self._running()))

    @callback
    def async_clear(self, dispatch_id: str) -> None:
        """Drop the record of a dispatch that ended."""
        self.in_flight.clear(dispatch_id)

    async def async_flush(self) -> None:
        """Write everything pending (unload)."""
        await self.in_flight.async_flush()
        await self.fleet_store.async_flush()
        await self.dispatch_log.async_flush()

    async def async_remove(self) -> None:
        """Delete the files of the entry (entry removed)."""
        await self.fleet_store.async_remove()
        await self.dispatch_log.async_remove()
        await self.in_flight.async_remove()


def _stamped(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    stamp = dt_util.utcnow().isoformat()
    return [{**record, "updated_at": stamp} for record in records]
