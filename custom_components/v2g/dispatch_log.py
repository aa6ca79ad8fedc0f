"""The dispatch log: the responses of finished dispatches, bounded and persisted.

Stored as ``v2g.<entry_id>.dispatch_log`` (docs/actions.md#dispatch-log). It is
bounded by entries and by the orders they hold, and always keeps the newest
entry. `v2g.get_dispatch_log`, diagnostics and the fleet's device diagnostics
read it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.storage import Store

from .const import DISPATCH_LOG_MAX_ENTRIES
from .engine import Steps, parse_utc_time
from .storage import LOG_SAVE_DELAY_S, DelayedWriter, store_key

DISPATCH_LOG_STORAGE_VERSION = 1
DISPATCH_LOG_STORAGE_MINOR_VERSION = 2
# The log is also bounded by the orders it holds in total: a 200-vehicle dispatch
# is ~55 kB of JSON (~120 kB in memory), so 1,000 of them would hold ~120 MB and
# rewrite a 55 MB file after every dispatch. The newest entry is always kept.
LOG_MAX_ORDERS = 50_000


class _DispatchLogFile(Store[dict[str, Any]]):
    """The dispatch log file, migrated from older formats when loaded."""

    async def _async_migrate_func(
        self, old_major_version: int, old_minor_version: int, old_data: Any
    ) -> dict[str, Any]:
        if old_major_version != DISPATCH_LOG_STORAGE_VERSION:
            raise NotImplementedError
        # 1.1 to 1.2: the same data (only the minor version is written now).
        return old_data if isinstance(old_data, dict) else {}


class DispatchLogStore:
    """Bounded, persisted log of finished dispatches (docs/actions.md responses).

    An entry is never changed in place: the Store's writer thread encodes the
    entries (a 10,000-vehicle dispatch is ~2.6 MB of JSON, ~6 ms to encode), so
    `amend` replaces an entry with a new one.
    """

    def __init__(
        self,
        hass: HomeAssistant,
        entry_id: str,
        max_entries: int = DISPATCH_LOG_MAX_ENTRIES,
        max_orders: int = LOG_MAX_ORDERS,
    ) -> None:
        """Create the log of one config entry."""
        self._store = _DispatchLogFile(
            hass,
            DISPATCH_LOG_STORAGE_VERSION,
            store_key(entry_id, "dispatch_log"),
            atomic_writes=True,
            minor_version=DISPATCH_LOG_STORAGE_MINOR_VERSION,
            serialize_in_event_loop=False,
        )
        self._writer = DelayedWriter(hass, self._store, LOG_SAVE_DELAY_S)
        self._entries: deque[dict[str, Any]] = deque()
        self._max_entries = max_entries
        self._max_orders = max_orders
        self._orders = 0  # orders (both rounds) of the entries held

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

    def _data_steps(self) -> Steps[dict[str, Any]]:
        """The data to write: a copy of the list of entries, taken on the loop."""
        data = {"entries": list(self._entries)}
        yield
        return data

    @callback
    def append(self, entry: Mapping[str, Any]) -> None:
        """Add a finished dispatch (the oldest ones drop out when full).

        Written at most `LOG_SAVE_DELAY_S` later (and by Home Assistant's final
        write).
        """
        self._add(dict(entry))
        self._writer.async_schedule(self._data_steps)

    @callback
    def amend(
        self,
        dispatch_id: str,
        fields: Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any]],
    ) -> bool:
        """Replace a logged dispatch with a copy that has ``fields`` merged in.

        Top-level keys are replaced (a section such as ``vehicles`` is replaced
        whole); ``fields`` may be a function of the logged entry, to merge with
        what it holds. Returns False when the dispatch is no longer (or never
        was) in the log.
        """
        entries = self._entries
        for index in range(len(entries) - 1, -1, -1):  # the newest are amended
            entry = entries[index]
            if entry.get("dispatch_id") != dispatch_id:
                continue
            amended = {**entry, **(fields(entry) if callable(fields) else fields)}
            self._orders += _order_count(amended) - _order_count(entry)
            entries[index] = amended
            self._writer.async_schedule(self._data_steps)
            return True
        return False

    async def async_flush(self) -> None:
        """Write pending entries now (on unload)."""
        await self._writer.async_flush()

    async def async_remove(self) -> None:
        """Delete the file (entry removed)."""
        await self._writer.async_remove()

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
                started = parse_utc_time(entry.get("started_at"))
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
