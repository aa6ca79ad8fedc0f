"""The integration measured end to end: ``v2g.dispatch`` call → response.

A :class:`FleetScenario` is one fleet (per-vehicle or behind gateways) of N
simulated vehicles: it starts the fleet simulator in shared-connection mode (its own
process), creates a V2G entry through the config flow, discovers the fleet through
``v2g.discover`` and waits until the entry knows every vehicle. Then:

* :meth:`FleetScenario.async_dispatch` times ``hass.services.async_call("v2g",
  "dispatch", ..., blocking=True, return_response=True)`` and checks the response
  says every vehicle acknowledged; a 5 ms ticker measures the longest event-loop
  block meanwhile; optionally it counts entity state writes (``state_changed`` and
  ``state_reported``) from the call until the bus is quiet again;
* ``trace_memory=True`` runs the discovery under ``tracemalloc`` (peak and
  retained memory of the Home Assistant process for N known vehicles).
"""

from __future__ import annotations

import asyncio
from collections import Counter
import cProfile
from dataclasses import dataclass, field
import gc
import io
from pathlib import Path
import pstats
import re
import time
import tracemalloc
from typing import Any

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er

from .harness import (
    HarnessError,
    HassHarness,
    LoopBlockMonitor,
    StateWriteCounter,
    simulator_process,
)

DOMAIN = "v2g"
PER_VEHICLE = "per_vehicle"
GATEWAY = "gateway"
MODES = (PER_VEHICLE, GATEWAY)
# Every vehicle receives this much (equal split), far below its 10 kW maximum and
# its energy, so the whole fleet is eligible and every vehicle gets one order.
POWER_PER_VEHICLE_KW = 1.0
SIGNAL_TYPE = "aFRR"
STRATEGY = "equal"
# Long enough that no ack of a 10,000-order per-vehicle dispatch times out even at
# HA's ~1,000 messages/s (the default 5 s would cut it: the figure would then be
# the timeout, not the transport).
BENCH_ACK_TIMEOUT_S = 120.0


@dataclass(slots=True)
class DispatchRun:
    """One measured ``v2g.dispatch`` call."""

    seconds: float
    orders: int
    acknowledged: int
    status: str
    ack_rate: float | None
    max_block_ms: float
    max_gc_ms: float = 0.0
    gc_total_ms: float = 0.0
    problems: list[str] = field(default_factory=list)
    state_writes: int | None = None
    state_writes_in_call: int | None = None
    entities_written: int | None = None
    max_writes_per_entity: int | None = None
    rewritten: dict[str, int] | None = None
    # Writes per kind of entity (the entity id with its digits as #), largest first.
    writes_by_kind: dict[str, int] | None = None

    @property
    def ok(self) -> bool:
        """Every vehicle acknowledged its order."""
        return not self.problems


def check_response(response: Any, expected: int) -> tuple[int, int, str, list[str]]:
    """(orders, acknowledged, status, problems) of a dispatch response (docs/actions.md#dispatch-response)."""
    problems: list[str] = []
    if response is None:
        return 0, 0, "?", []
    if not isinstance(response, dict):
        return 0, 0, "?", [f"response is not a dict: {response!r:.200}"]
    vehicles = response.get("vehicles") or {}
    fallback = response.get("fallback") or {}
    statuses = Counter(
        str(item.get("status")) for item in vehicles.values() if isinstance(item, dict)
    )
    orders = len(vehicles) + len(fallback)
    acknowledged = statuses.get("acknowledged", 0)
    status = str(response.get("status"))
    if status != "completed":
        problems.append(f"status {status}")
    if len(vehicles) != expected:
        problems.append(f"{len(vehicles)} vehicles ordered, expected {expected}")
    if acknowledged != expected:
        others = {
            key: value for key, value in statuses.items() if key != "acknowledged"
        }
        problems.append(f"{acknowledged}/{expected} acknowledged ({dict(others)})")
    if fallback:
        problems.append(f"{len(fallback)} fallback orders")
    if excluded := response.get("excluded"):
        problems.append(f"{len(excluded)} excluded: {Counter(excluded.values())}")
    return orders, acknowledged, status, problems


def writes_by_kind(counter: StateWriteCounter) -> dict[str, int]:
    """State writes per kind of entity: ``sensor.car#_setpoint`` for every car."""
    kinds: Counter[str] = Counter()
    for entity_id, count in counter.per_entity.items():
        kinds[re.sub(r"\d+", "#", entity_id)] += count
    return dict(kinds.most_common())


def known_vehicles(entry: ConfigEntry) -> int | None:
    """How many vehicles the entry's coordinator knows (None if unreadable)."""
    coordinator = getattr(entry, "runtime_data", None)
    fleet = getattr(coordinator, "fleet", None)
    vehicles = getattr(fleet, "vehicles", None)
    if vehicles is None:
        return None
    return len(vehicles)


class FleetScenario:
    """One V2G entry and one simulated fleet of ``size`` vehicles."""

    def __init__(
        self,
        harness: HassHarness,
        broker_port: int,
        mode: str,
        size: int,
        log_dir: Path,
        *,
        gateway_size: int = 500,
        tag: str = "",
    ) -> None:
        """Prepare (start with :meth:`async_start`)."""
        if mode not in MODES:
            raise ValueError(mode)
        self.harness = harness
        self.hass: HomeAssistant = harness.require()
        self.mode = mode
        self.size = size
        self.gateway_size = gateway_size if mode == GATEWAY else 0
        self.prefix = f"{'gw' if mode == GATEWAY else 'pv'}{tag}{size}-"
        self.simulator = simulator_process(
            broker_port,
            size,
            self.prefix,
            log_dir / f"simulator-{mode}-{size}{tag}.log",
            self.gateway_size,
        )
        self.entry: ConfigEntry | None = None
        self.discovery_s = 0.0
        self.discovery_max_block_ms = 0.0
        self.discovery_max_gc_ms = 0.0
        self.gc_objects = 0
        self.entities = 0
        self.memory_peak_bytes: int | None = None
        self.memory_retained_bytes: int | None = None
        self.memory_top: list[dict[str, Any]] = []

    @property
    def gateways(self) -> int:
        """Number of gateways of the fleet."""
        if not self.gateway_size:
            return 0
        return -(-self.size // self.gateway_size)

    async def async_start(
        self, *, trace_memory: bool = False, profile_path: Path | None = None
    ) -> None:
        """Start the fleet, create the entry, discover every vehicle."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.simulator.start)
        try:
            self.entry = await self.harness.create_entry(
                DOMAIN,
                # The topics (collapsed form section) keep their defaults.
                {"name": f"bench {self.mode} {self.size}", "advanced_topics": {}},
                options={"ack_timeout": BENCH_ACK_TIMEOUT_S},
            )
            profiler = cProfile.Profile() if profile_path is not None else None
            if profiler is not None:
                profiler.enable()
            try:
                await self._async_discover(trace_memory=trace_memory)
            finally:
                if profiler is not None:
                    profiler.disable()
            if profiler is not None and profile_path is not None:
                await loop.run_in_executor(None, write_profile, profiler, profile_path)
        except BaseException:
            await self.async_stop()
            raise

    async def _async_discover(self, *, trace_memory: bool) -> None:
        entry = self._require_entry()
        hass = self.hass
        limit = 60.0 + self.size / 100.0
        baseline = 0
        if trace_memory:
            gc.collect()
            tracemalloc.start()
            baseline = tracemalloc.get_traced_memory()[0]
        try:
            async with LoopBlockMonitor() as monitor:
                started = time.perf_counter()
                response = await hass.services.async_call(
                    DOMAIN,
                    "discover",
                    {"config_entry_id": entry.entry_id},
                    blocking=True,
                    return_response=True,
                )
                found = (response or {}).get("count") if response else None
                async with asyncio.timeout(limit):
                    while True:
                        known = known_vehicles(entry)
                        if known is None:
                            known = found if isinstance(found, int) else 0
                            if known < self.size:
                                raise HarnessError(
                                    f"discover found {known}/{self.size} and the"
                                    " coordinator's fleet is not readable"
                                )
                        if known >= self.size:
                            break
                        await asyncio.sleep(0.05)
                known_at = time.perf_counter()
                self.entities, settled_at = await self._async_settle_entities()
                self.discovery_s = max(known_at, settled_at) - started
            self.gc_objects = len(gc.get_objects())
            self.discovery_max_block_ms = monitor.max_block_ms
            self.discovery_max_gc_ms = monitor.max_gc_ms
            if trace_memory:
                await hass.async_block_till_done()
                gc.collect()
                current, peak = tracemalloc.get_traced_memory()
                self.memory_peak_bytes = peak - baseline
                self.memory_retained_bytes = current - baseline
                self.memory_top = _top_allocations(tracemalloc.take_snapshot())
        except TimeoutError as err:
            raise HarnessError(
                f"{self.mode} {self.size}: {known_vehicles(entry)} vehicles known"
                f" after {limit:.0f} s; simulator: {self.simulator.output()[-500:]}"
            ) from err
        finally:
            if trace_memory:
                tracemalloc.stop()

    async def _async_settle_entities(self) -> tuple[int, float]:
        """Wait until the entry's entity count stops growing.

        Returns the count and when (``perf_counter``) it last changed. The quiet
        period grows with the fleet: adding tens of thousands of entities keeps
        the loop busy for seconds between two increments.
        """
        entry = self._require_entry()
        hass = self.hass
        registry = er.async_get(hass)
        quiet_s = 1.0 + self.size / 5000.0
        last = -1
        changed_at = time.perf_counter()
        while True:
            await hass.async_block_till_done()
            count = len(er.async_entries_for_config_entry(registry, entry.entry_id))
            now = time.perf_counter()
            if count != last:
                last = count
                changed_at = now
            elif now - changed_at >= quiet_s:
                return count, changed_at
            await asyncio.sleep(0.1)

    @property
    def dispatch_limit_s(self) -> float:
        """Give up on a dispatch after this long (every ack times out before)."""
        return BENCH_ACK_TIMEOUT_S + 60.0 + self.size / 100.0

    def service_data(self) -> dict[str, Any]:
        """The ``v2g.dispatch`` call: every vehicle 1 kW, equal split."""
        entry = self._require_entry()
        return {
            "config_entry_id": entry.entry_id,
            "signal_type": SIGNAL_TYPE,
            "power_kw": round(self.size * POWER_PER_VEHICLE_KW, 3),
            "duration": {"minutes": 15},
            "strategy": STRATEGY,
        }

    async def async_dispatch(
        self,
        *,
        count_writes: bool = False,
        settle_s: float = 1.0,
        profile_path: Path | None = None,
    ) -> DispatchRun:
        """Call ``v2g.dispatch`` once; time it and check the response.

        With ``count_writes`` the entity state writes are counted from the call
        until ``settle_s`` after the response (debounced updates included).
        """
        hass = self.hass
        counter = StateWriteCounter(hass) if count_writes else None
        profiler = cProfile.Profile() if profile_path is not None else None
        try:
            async with LoopBlockMonitor() as monitor:
                if profiler is not None:
                    profiler.enable()
                started = time.perf_counter()
                response, problems = await self._async_call()
                elapsed = time.perf_counter() - started
                if profiler is not None:
                    profiler.disable()
                writes_in_call = None if counter is None else counter.writes
                if counter is not None:
                    await hass.async_block_till_done()
                    await asyncio.sleep(settle_s)
                    await hass.async_block_till_done()
        finally:
            if counter is not None:
                counter.close()
        if profiler is not None and profile_path is not None:
            await asyncio.get_running_loop().run_in_executor(
                None, write_profile, profiler, profile_path
            )
        orders, acknowledged, status, checked = check_response(response, self.size)
        return DispatchRun(
            seconds=elapsed,
            orders=orders,
            acknowledged=acknowledged,
            status=status,
            ack_rate=response.get("ack_rate") if isinstance(response, dict) else None,
            max_block_ms=monitor.max_block_ms,
            max_gc_ms=monitor.max_gc_ms,
            gc_total_ms=monitor.gc_total_ms,
            problems=problems + checked,
            state_writes=None if counter is None else counter.writes,
            state_writes_in_call=writes_in_call,
            entities_written=None if counter is None else len(counter.per_entity),
            max_writes_per_entity=None
            if counter is None
            else max(counter.per_entity.values(), default=0),
            writes_by_kind=None if counter is None else writes_by_kind(counter),
            rewritten=None
            if counter is None
            else {
                entity_id: count
                for entity_id, count in counter.per_entity.most_common(5)
                if count > 1
            },
        )

    async def _async_call(self) -> tuple[Any, list[str]]:
        """The action call: (response, problems); HarnessError when it hangs."""
        try:
            async with asyncio.timeout(self.dispatch_limit_s):
                response = await self.hass.services.async_call(
                    DOMAIN,
                    "dispatch",
                    self.service_data(),
                    blocking=True,
                    return_response=True,
                )
        except TimeoutError as err:
            raise HarnessError(
                f"{self.mode} {self.size}: no dispatch response after"
                f" {self.dispatch_limit_s:.0f} s"
            ) from err
        except Exception as err:  # noqa: BLE001 - reported, not raised
            return None, [f"{type(err).__name__}: {err}"]
        return response, []

    async def async_stop(self) -> None:
        """Remove the entry and stop the simulator."""
        try:
            if self.entry is not None:
                await self.harness.remove_entry(self.entry.entry_id)
                self.entry = None
        finally:
            await asyncio.get_running_loop().run_in_executor(None, self.simulator.stop)

    def _require_entry(self) -> ConfigEntry:
        if self.entry is None:
            raise HarnessError("scenario not started")
        return self.entry


def _top_allocations(
    snapshot: tracemalloc.Snapshot, limit: int = 12
) -> list[dict[str, Any]]:
    """Where the retained memory was allocated (by source file)."""
    rows = []
    for stat in snapshot.statistics("filename")[:limit]:
        filename = stat.traceback[0].filename
        for marker in ("site-packages/", "custom_components/", "lib/python3"):
            if marker in filename:
                filename = filename[filename.index(marker) :]
                break
        rows.append({"file": filename, "mib": round(stat.size / 2**20, 2)})
    return rows


def write_profile(profiler: cProfile.Profile, path: Path) -> None:
    """Save a profile (``.prof``) and its top functions (``.txt``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(str(path))
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(60)
    path.with_suffix(".txt").write_text(text.getvalue(), encoding="utf-8")
