"""Persistence of a fleet: known vehicles and metrics, dispatch log, in-flight marker.

Three Home Assistant ``Store`` files per config entry:

* ``v2g.<entry_id>.fleet`` — the fleet state and the metric totals, saved with a
  debounce (telemetry changes it often; the final write on shutdown flushes it);
* ``v2g.<entry_id>.dispatch_log`` — the bounded dispatch log (DESIGN §4 responses);
* ``v2g.<entry_id>.in_flight`` — one record per dispatch that has started and not
  ended, written with its orders *before* the first order is published and removed
  with the dispatch log's delay once it ended. A record still present when the
  entry starts again means Home Assistant stopped (or crashed) in the middle of a
  dispatch: it becomes an ``interrupted`` log entry.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
import threading
from typing import Any

from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.storage import Store
from homeassistant.util import dt as dt_util

from .const import DISPATCH_LOG_MAX_ENTRIES, DOMAIN, STORAGE_VERSION
from .engine import Steps, async_run_steps, run_steps

FLEET_SAVE_DELAY_S = 10.0
# The writer thread waits this long at most for the loop to build the data.
FLEET_BUILD_TIMEOUT_S = 60.0
LOG_SAVE_DELAY_S = 1.0
# The log is also bounded by the orders it holds in total: a 200-vehicle dispatch
# is ~55 kB of JSON (~120 kB in memory), so 1,000 of them would hold ~120 MB and
# rewrite a 55 MB file after every dispatch. The newest entry is always kept.
LOG_MAX_ORDERS = 50_000


def _key(entry_id: str, name: str) -> str:
    return f"{DOMAIN}.{entry_id}.{name}"


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt_util.UTC)
    if isinstance(value, str):
        parsed = dt_util.parse_datetime(value)
        if parsed is not None and parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt_util.UTC)
        return parsed
    return None


class FleetStore:
    """Known vehicles and metric totals, saved with a debounce.

    The data of a 10,000-vehicle fleet takes ~60 ms to build and ~10 ms to
    encode. It is built in steps on the event loop (the loop runs between two
    steps) and encoded by the Store's writer thread.
    """

    def __init__(self, hass: HomeAssistant, entry_id: str) -> None:
        """Create the store of one config entry."""
        self._hass = hass
        self._store: Store[dict[str, Any]] = Store(
            hass,
            STORAGE_VERSION,
            _key(entry_id, "fleet"),
            atomic_writes=True,
            serialize_in_event_loop=False,
        )
        self._steps_fn: Callable[[], Steps[dict[str, Any]]] | None = None
        self._dirty = False

    async def async_load(self) -> dict[str, Any] | None:
        """Return what was saved, or None."""
        data = await self._store.async_load()
        return data if isinstance(data, dict) else None

    @callback
    def async_schedule_save(
        self, steps_fn: Callable[[], Steps[dict[str, Any]]]
    ) -> None:
        """Save soon (coalesced); flushed by Home Assistant's final write.

        ``steps_fn`` builds the data in steps (`engine.steps`) when it is written.
        """
        self._steps_fn = steps_fn
        self._dirty = True
        self._store.async_delay_save(self._data, FLEET_SAVE_DELAY_S)

    def _data(self) -> dict[str, Any]:
        """The data to write, built on the event loop (called by the writer)."""
        steps_fn = self._steps_fn
        assert steps_fn is not None  # set before any save is scheduled
        self._dirty = False
        if self._hass.loop_thread_id == threading.get_ident():
            return run_steps(steps_fn())
        return asyncio.run_coroutine_threadsafe(
            async_run_steps(steps_fn()), self._hass.loop
        ).result(timeout=FLEET_BUILD_TIMEOUT_S)

    async def async_flush(self) -> None:
        """Write a pending save now (on unload) and cancel its timer."""
        if self._dirty and self._steps_fn is not None:
            self._dirty = False
            await self._store.async_save(await async_run_steps(self._steps_fn()))

    async def async_remove(self) -> None:
        """Delete the file (entry removed)."""
        await self._store.async_remove()


class DispatchLogStore:
    """Bounded, persisted log of finished dispatches (DESIGN §4 responses)."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry_id: str,
        max_entries: int = DISPATCH_LOG_MAX_ENTRIES,
        max_orders: int = LOG_MAX_ORDERS,
    ) -> None:
        """Create the log of one config entry."""
        self._store: Store[dict[str, Any]] = Store(
            hass, STORAGE_VERSION, _key(entry_id, "dispatch_log"), atomic_writes=True
        )
        self._entries: deque[dict[str, Any]] = deque()
        self._max_entries = max_entries
        self._max_orders = max_orders
        self._orders = 0  # orders (both rounds) of the entries held
        self._dirty = False

    async def async_load(self) -> None:
        """Read the saved entries."""
        data = await self._store.async_load()
        if isinstance(data, dict) and isinstance(data.get("entries"), list):
            for entry in data["entries"]:
                if isinstance(entry, dict):
                    self._add(entry)

    def _add(self, entry: dict[str, Any]) -> None:
        """Append; drop the oldest entries beyond either bound (keep the newest)."""
        self._entries.append(entry)
        self._orders += _order_count(entry)
        entries = self._entries
        while len(entries) > 1 and (
            len(entries) > self._max_entries or self._orders > self._max_orders
        ):
            self._orders -= _order_count(entries.popleft())

    def _data(self) -> dict[str, Any]:
        self._dirty = False
        return {"entries": list(self._entries)}

    @callback
    def append(self, entry: Mapping[str, Any]) -> None:
        """Add a finished dispatch (the oldest ones drop out when full)."""
        self._add(dict(entry))
        self._dirty = True
        self._store.async_delay_save(self._data, LOG_SAVE_DELAY_S)

    async def async_flush(self) -> None:
        """Write pending entries now (on unload)."""
        if self._dirty:
            await self._store.async_save(self._data())

    async def async_remove(self) -> None:
        """Delete the file (entry removed)."""
        await self._store.async_remove()

    def __len__(self) -> int:
        """Return the number of entries."""
        return len(self._entries)

    def latest(self, count: int) -> list[dict[str, Any]]:
        """Return the newest ``count`` entries, oldest first."""
        if count <= 0:
            return []
        return list(self._entries)[-count:]

    def query(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        vehicle_id: str | None = None,
        signal_type: str | None = None,
    ) -> list[dict[str, Any]]:
        """Return the entries matching every given filter, oldest first.

        ``start``/``end`` are inclusive bounds on the dispatch start time; a vehicle
        matches when it received an order in either round; every signal type can be
        filtered (compared case-insensitively).
        """
        wanted_type = signal_type.casefold() if signal_type else None
        matches: list[dict[str, Any]] = []
        for entry in self._entries:
            if start is not None or end is not None:
                started = _parse_time(entry.get("started_at"))
                if started is None:
                    continue
                if start is not None and started < start:
                    continue
                if end is not None and started > end:
                    continue
            if wanted_type is not None:
                signal = entry.get("signal")
                kind = signal.get("type") if isinstance(signal, dict) else None
                if not isinstance(kind, str) or kind.casefold() != wanted_type:
                    continue
            if vehicle_id is not None and not _involves(entry, vehicle_id):
                continue
            matches.append(entry)
        return matches


def _order_count(entry: Mapping[str, Any]) -> int:
    count = 0
    for section in ("vehicles", "fallback"):
        value = entry.get(section)
        if isinstance(value, dict):
            count += len(value)
    return count


def _involves(entry: Mapping[str, Any], vehicle_id: str) -> bool:
    for section in ("vehicles", "fallback"):
        value = entry.get(section)
        if isinstance(value, dict) and vehicle_id in value:
            return True
    return False


class InFlightStore:
    """Records of dispatches that started and have not ended yet."""

    def __init__(self, hass: HomeAssistant, entry_id: str) -> None:
        """Create the marker store of one config entry."""
        self._store: Store[dict[str, Any]] = Store(
            hass, STORAGE_VERSION, _key(entry_id, "in_flight"), atomic_writes=True
        )
        self._records: dict[str, dict[str, Any]] = {}
        self._dirty = False

    def _data(self) -> dict[str, Any]:
        self._dirty = False  # every write writes every record
        return {"dispatches": dict(self._records)}

    async def async_take(self) -> list[dict[str, Any]]:
        """Return the records left by a previous run and forget them."""
        data = await self._store.async_load()
        left: list[dict[str, Any]] = []
        if isinstance(data, dict) and isinstance(data.get("dispatches"), dict):
            left = [r for r in data["dispatches"].values() if isinstance(r, dict)]
        if left:
            await self._store.async_save(self._data())
        return left

    @callback
    def mark(self, dispatch_id: str, record: Mapping[str, Any]) -> None:
        """Hold the marker of a starting dispatch.

        It is written with its orders before the first publish (`async_save`): a
        dispatch that stops before publishing anything leaves nothing to recover.
        """
        self._records[dispatch_id] = dict(record)

    def _merge(self, records: Iterable[Mapping[str, Any]]) -> None:
        for record in records:
            dispatch_id = record.get("dispatch_id")
            if isinstance(dispatch_id, str) and dispatch_id in self._records:
                self._records[dispatch_id] = {**self._records[dispatch_id], **record}

    @callback
    def async_update(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Refresh what is known of the running dispatches (flushed at stop)."""
        self._merge(records)
        self._store.async_delay_save(self._data, 0)

    async def async_save(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Refresh what is known of the running dispatches and write it now."""
        self._merge(records)
        await self._store.async_save(self._data())

    @callback
    def clear(self, dispatch_id: str) -> None:
        """Drop the marker of a dispatch that ended.

        Written with the dispatch log's delay, not awaited: the dispatch returns
        without one more disk write. Until it is written, a crash leaves the
        marker, and the dispatch is recorded as interrupted on the next start.
        """
        if self._records.pop(dispatch_id, None) is not None:
            self._dirty = True
            self._store.async_delay_save(self._data, LOG_SAVE_DELAY_S)

    async def async_flush(self) -> None:
        """Write a pending clear now (on unload)."""
        if self._dirty:
            await self._store.async_save(self._data())

    @property
    def running(self) -> list[dict[str, Any]]:
        """Return the records of the dispatches in flight."""
        return list(self._records.values())

    async def async_remove(self) -> None:
        """Delete the file (entry removed)."""
        await self._store.async_remove()
