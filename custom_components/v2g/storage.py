"""Persistence of a fleet: known vehicles and metrics, dispatch log, in-flight marker.

Three Home Assistant ``Store`` files per config entry:

* ``v2g.<entry_id>.fleet`` — the fleet state and the metric totals, saved with a
  delay (telemetry changes it often; the final write on shutdown flushes it);
* ``v2g.<entry_id>.dispatch_log`` — the bounded dispatch log (the responses of
  docs/actions.md);
* ``v2g.<entry_id>.in_flight`` — one record per dispatch that has started and not
  ended, written with its orders *before* the first order is published and removed
  with the dispatch log's delay once it ended. A record still present when the
  entry starts again means Home Assistant stopped (or crashed) in the middle of a
  dispatch: it becomes an ``interrupted`` log entry.

Each file carries a version and a minor version; an older file is migrated when
it is loaded (Home Assistant then writes it again in the current format), a file
of an unknown major version is refused (`NotImplementedError`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from homeassistant.const import EVENT_HOMEASSISTANT_FINAL_WRITE
from homeassistant.core import CALLBACK_TYPE, Event, HomeAssistant, callback
from homeassistant.helpers.storage import Store

from .const import DOMAIN
from .engine import Steps, async_run_steps, run_steps

# Format versions of the three files. Minor 2 of the fleet file: the metrics no
# longer carry their own "version" key (the file's version governs them). Minor 2
# of the two others changes nothing in their data (their migrations exist, and are
# tested, before a change needs them).
FLEET_STORAGE_VERSION = 1
FLEET_STORAGE_MINOR_VERSION = 2
IN_FLIGHT_STORAGE_VERSION = 1
IN_FLIGHT_STORAGE_MINOR_VERSION = 2

FLEET_SAVE_DELAY_S = 10.0
LOG_SAVE_DELAY_S = 1.0


def store_key(entry_id: str, name: str) -> str:
    """The storage key of one of an entry's files."""
    return f"{DOMAIN}.{entry_id}.{name}"


# --- file formats -------------------------------------------------------------------
# Home Assistant calls `_async_migrate_func` when a file's version or minor version
# differs from the store's, then saves what it returns. A newer minor version of the
# same major version is readable as it is (returned unchanged); another major
# version raises `NotImplementedError`, and Home Assistant refuses to load the file.


class _FleetFile(Store[dict[str, Any]]):
    """The fleet file, migrated from older formats when loaded."""

    async def _async_migrate_func(
        self, old_major_version: int, old_minor_version: int, old_data: Any
    ) -> dict[str, Any]:
        if old_major_version != FLEET_STORAGE_VERSION:
            raise NotImplementedError
        if not isinstance(old_data, dict):
            return {}  # unreadable: what the loader makes of it anyway
        data = dict(old_data)
        metrics = data.get("metrics")
        if old_minor_version < 2 and isinstance(metrics, dict):
            # 1.2: the metrics are read whatever their own (now dropped) version.
            data["metrics"] = {k: v for k, v in metrics.items() if k != "version"}
        return data


class _InFlightFile(Store[dict[str, Any]]):
    """The in-flight file, migrated from older formats when loaded."""

    async def _async_migrate_func(
        self, old_major_version: int, old_minor_version: int, old_data: Any
    ) -> dict[str, Any]:
        if old_major_version != IN_FLIGHT_STORAGE_VERSION:
            raise NotImplementedError
        # 1.1 to 1.2: the same data (only the minor version is written now).
        return old_data if isinstance(old_data, dict) else {}


# --- delayed writes -----------------------------------------------------------------


class DelayedWriter:
    """Writes a store at most ``delay`` seconds after its first unsaved change.

    When the delay is over, the data is built in steps on the event loop (the
    loop runs between two steps), in a background task, and handed finished to
    the Store, whose writer thread only encodes and writes it
    (``serialize_in_event_loop=False``): no thread ever waits on the loop.
    Home Assistant's final write builds the latest data at once (nothing else
    runs then) and writes it.
    """

    def __init__(
        self, hass: HomeAssistant, store: Store[dict[str, Any]], delay: float
    ) -> None:
        """Write ``store`` at most ``delay`` seconds after the first change."""
        self._hass = hass
        self._store = store
        self._delay = delay
        self._steps_fn: Callable[[], Steps[dict[str, Any]]] | None = None
        # Each scheduled save is a change; a write holds the changes counted when
        # its build began, so one begun earlier never replaces a newer one.
        self._changes = 0
        self._written = 0
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._unsub_final_write: CALLBACK_TYPE | None = None

    @callback
    def async_schedule(self, steps_fn: Callable[[], Steps[dict[str, Any]]]) -> None:
        """Write what ``steps_fn`` builds once the delay is over."""
        self._steps_fn = steps_fn
        self._changes += 1
        if self._unsub_final_write is None:
            self._unsub_final_write = self._hass.bus.async_listen_once(
                EVENT_HOMEASSISTANT_FINAL_WRITE, self._async_final_write
            )
        if self._timer is None:
            self._timer = self._hass.loop.call_later(self._delay, self._start_write)

    @callback
    def _start_write(self) -> None:
        self._timer = None
        if self._task is not None:  # a write is still building: the next one waits
            self._timer = self._hass.loop.call_later(self._delay, self._start_write)
            return
        task = self._hass.async_create_background_task(
            self._async_write(), f"{DOMAIN} save {self._store.key}"
        )
        self._task = task
        task.add_done_callback(self._write_done)

    @callback
    def _write_done(self, task: asyncio.Task[None]) -> None:
        if self._task is task:
            self._task = None

    def _pending(self) -> tuple[Callable[[], Steps[dict[str, Any]]], int] | None:
        """The build of the unsaved changes and their count, if any."""
        if self._steps_fn is None or self._changes <= self._written:
            return None
        return self._steps_fn, self._changes

    async def _async_hand_over(self, changes: int, data: dict[str, Any]) -> None:
        if changes <= self._written:  # a build begun later was written already
            return
        self._written = changes
        await self._store.async_save(data)

    async def _async_write(self) -> None:
        if (pending := self._pending()) is not None:
            steps_fn, changes = pending
            await self._async_hand_over(changes, await async_run_steps(steps_fn()))

    async def _async_final_write(self, _event: Event) -> None:
        self._unsub_final_write = None
        self._cancel_timer()
        if (pending := self._pending()) is not None:
            steps_fn, changes = pending
            # Nothing else has to run now: build at once (10,000 vehicles: ~60 ms).
            await self._async_hand_over(changes, run_steps(steps_fn()))

    @callback
    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @callback
    def _stop_listening(self) -> None:
        self._cancel_timer()
        if self._unsub_final_write is not None:
            self._unsub_final_write()
            self._unsub_final_write = None

    async def _async_wait_for_write(self) -> None:
        if self._task is not None:
            await asyncio.wait([self._task])

    async def async_flush(self) -> None:
        """Write the pending changes now; leave no timer or listener behind."""
        self._stop_listening()
        await self._async_wait_for_write()
        await self._async_write()

    async def async_remove(self) -> None:
        """Forget the pending changes and delete the file."""
        self._stop_listening()
        await self._async_wait_for_write()  # so no write lands after the removal
        self._written = self._changes
        await self._store.async_remove()


class FleetStore:
    """Known vehicles and metric totals, saved with a delay.

    The data of a 10,000-vehicle fleet takes ~60 ms to build and ~10 ms to
    encode. It is built in steps on the event loop (the loop runs between two
    steps) and encoded by the Store's writer thread.
    """

    def __init__(self, hass: HomeAssistant, entry_id: str) -> None:
        """Create the store of one config entry."""
        self._store = _FleetFile(
            hass,
            FLEET_STORAGE_VERSION,
            store_key(entry_id, "fleet"),
            atomic_writes=True,
            minor_version=FLEET_STORAGE_MINOR_VERSION,
            serialize_in_event_loop=False,
        )
        self._writer = DelayedWriter(hass, self._store, FLEET_SAVE_DELAY_S)

    async def async_load(self) -> dict[str, Any] | None:
        """Return what was saved (in the current format), or None."""
        data = await self._store.async_load()
        return data if isinstance(data, dict) else None

    @callback
    def async_schedule_save(
        self, steps_fn: Callable[[], Steps[dict[str, Any]]]
    ) -> None:
        """Save soon: at most `FLEET_SAVE_DELAY_S` after the first unsaved change.

        ``steps_fn`` builds the data in steps (`engine.steps`) when it is written;
        the data it returns must not change afterwards (another thread encodes it).
        Home Assistant's final write saves the latest data.
        """
        self._writer.async_schedule(steps_fn)

    async def async_flush(self) -> None:
        """Write a pending save now (on unload) and cancel its timer."""
        await self._writer.async_flush()

    async def async_remove(self) -> None:
        """Delete the file (entry removed)."""
        await self._writer.async_remove()


class InFlightStore:
    """Records of dispatches that started and have not ended yet."""

    def __init__(self, hass: HomeAssistant, entry_id: str) -> None:
        """Create the marker store of one config entry."""
        self._store = _InFlightFile(
            hass,
            IN_FLIGHT_STORAGE_VERSION,
            store_key(entry_id, "in_flight"),
            atomic_writes=True,
            minor_version=IN_FLIGHT_STORAGE_MINOR_VERSION,
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
