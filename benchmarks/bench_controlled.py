"""Vehicles controlled through Home Assistant: a dispatch to N `input_number` chargers.

A :class:`ControlledScenario` is one V2G entry whose vehicles are all "controlled
through Home Assistant" (docs/options.md#vehicles-controlled-through-home-assistant):
N `input_number` helpers shaped like a Wallbox Quasar's current (-32..32 A, 1 A
steps, positive = charging, 230 V x 1 phase), defined in the harness's
configuration.yaml (:func:`controlled_configuration`), each added as a
`controlled_vehicle` subentry through the real subentry flow. Two variants:

* ``immediate``: the order is confirmed by the control entity itself, which an
  `input_number` shows as soon as `input_number.set_value` returns;
* ``delayed``: confirmed by a power sensor that follows its charger's current
  after :data:`ENTITY_DELAY_S` (:class:`DelayedMeters`, a callback of the
  benchmark standing for the charger's own reaction time).

:meth:`ControlledScenario.async_dispatch` times ``v2g.dispatch`` (every vehicle
2.3 kW = 10 A, equal split, alternately discharging and charging so that every
dispatch moves every charger) and reads each vehicle's confirmation latency from
the response (``latency_ms``, registration to ack; docs/actions.md#dispatch-response).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
import math
import time
from typing import Any

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import (
    CALLBACK_TYPE,
    Event,
    EventStateChangedData,
    HomeAssistant,
    callback,
)
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers.event import async_call_later, async_track_state_change_event

from custom_components.v2g.const import SUBENTRY_TYPE_CONTROLLED

from .bench_dispatch import (
    DOMAIN,
    SIGNAL_TYPE,
    STRATEGY,
    check_response,
    known_vehicles,
    writes_by_kind as count_writes_by_kind,
)
from .harness import (
    HarnessError,
    HassHarness,
    LoopBlockMonitor,
    StateWriteCounter,
    median,
)

IMMEDIATE = "immediate"
DELAYED = "delayed"
# The charger's own delay of the delayed variant (its power follows the setpoint).
ENTITY_DELAY_S = 0.5
VARIANTS: tuple[tuple[str, float], ...] = ((IMMEDIATE, 0.0), (DELAYED, ENTITY_DELAY_S))
CONTROLLED_VEHICLES = 50
# Chargers are numbered with two digits.
MAX_CONTROLLED_VEHICLES = 99
# A Wallbox Quasar's "Maximum charging current": minus to plus 32 A, 1 A steps.
MAX_CURRENT_A = 32
VOLTAGE_V = 230.0
PHASES = 1
# 10 A at 230 V: a whole number of steps, so every vehicle applies its full order.
CURRENT_PER_VEHICLE_A = 10
KW_PER_VEHICLE = CURRENT_PER_VEHICLE_A * VOLTAGE_V * PHASES / 1000.0
POWER_ATTRIBUTES = {
    "unit_of_measurement": "kW",
    "device_class": "power",
    "state_class": "measurement",
}


def charger_entity(index: int) -> str:
    """The `input_number` of charger ``index`` (from 1)."""
    return f"input_number.bench_charger_{index:02d}"


def power_entity(index: int) -> str:
    """The power sensor of charger ``index`` (delayed variant)."""
    return f"sensor.bench_charger_{index:02d}_power"


def controlled_configuration(count: int) -> str:
    """YAML of ``count`` Quasar-like `input_number` chargers (configuration.yaml)."""
    lines = ["input_number:"]
    for index in range(1, count + 1):
        lines += [
            f"  bench_charger_{index:02d}:",
            f"    name: Bench charger {index:02d}",
            f"    min: {-MAX_CURRENT_A}",
            f"    max: {MAX_CURRENT_A}",
            "    step: 1",
            "    initial: 0",
            "    mode: box",
            "    unit_of_measurement: A",
        ]
    return "\n".join(lines) + "\n"


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` 0.95 = p95) of a non-empty list."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


class DelayedMeters:
    """Each charger's power sensor shows its current as kW after a delay.

    Stands for a charger that takes the new current at once but whose measured
    power follows later: the power sensor is what confirms the order.
    """

    def __init__(self, hass: HomeAssistant, count: int, delay_s: float) -> None:
        """Meters for chargers 1..``count`` (start with :meth:`start`)."""
        self._hass = hass
        self._delay_s = delay_s
        self._meters = {
            charger_entity(index): power_entity(index) for index in range(1, count + 1)
        }
        self._pending: set[CALLBACK_TYPE] = set()
        self._unsub: CALLBACK_TYPE | None = None

    @callback
    def start(self) -> None:
        """Show 0 kW on every meter and follow the chargers."""
        for meter in self._meters.values():
            self._hass.states.async_set(meter, "0.0", POWER_ATTRIBUTES)
        self._unsub = async_track_state_change_event(
            self._hass, list(self._meters), self._charger_changed
        )

    @callback
    def _charger_changed(self, event: Event[EventStateChangedData]) -> None:
        state = event.data["new_state"]
        if state is None:
            return
        try:
            current = float(state.state)
        except ValueError:
            return
        kw = round(current * VOLTAGE_V * PHASES / 1000.0, 3)  # > 0 charging
        meter = self._meters[event.data["entity_id"]]
        cancel: CALLBACK_TYPE | None = None

        @callback
        def _show(_now: datetime) -> None:
            if cancel is not None:
                self._pending.discard(cancel)
            self._hass.states.async_set(meter, str(kw), POWER_ATTRIBUTES)

        cancel = async_call_later(self._hass, self._delay_s, _show)
        self._pending.add(cancel)

    @callback
    def stop(self) -> None:
        """Stop following; drop the meters' states."""
        if self._unsub is not None:
            self._unsub()
            self._unsub = None
        for cancel in self._pending:
            cancel()
        self._pending.clear()
        for meter in self._meters.values():
            self._hass.states.async_remove(meter)


@dataclass(slots=True)
class ControlledRun:
    """One measured ``v2g.dispatch`` to the controlled vehicles."""

    seconds: float
    latencies_ms: list[float]
    max_block_ms: float
    max_gc_ms: float
    status: str
    problems: list[str] = field(default_factory=list)
    state_writes: int | None = None
    state_writes_in_call: int | None = None
    entities_written: int | None = None
    max_writes_per_entity: int | None = None
    writes_by_kind: dict[str, int] | None = None

    @property
    def ok(self) -> bool:
        """Every vehicle acknowledged its order in full."""
        return not self.problems


class ControlledScenario:
    """One V2G entry of ``count`` vehicles controlled through `input_number` chargers."""

    def __init__(
        self, harness: HassHarness, variant: str, count: int, entity_delay_s: float
    ) -> None:
        """Prepare (start with :meth:`async_start`)."""
        self.harness = harness
        self.hass: HomeAssistant = harness.require()
        self.variant = variant
        self.count = count
        self.entity_delay_s = entity_delay_s
        self.meters = (
            DelayedMeters(self.hass, count, entity_delay_s) if entity_delay_s else None
        )
        self.entry: ConfigEntry | None = None
        self.setup_s = 0.0
        self.setup_max_block_ms = 0.0
        self.entities = 0
        self._dispatches = 0

    async def async_start(self) -> None:
        """Create the entry, add every vehicle through the subentry flow, settle."""
        hass = self.hass
        missing = [
            charger_entity(index)
            for index in range(1, self.count + 1)
            if hass.states.get(charger_entity(index)) is None
        ]
        if missing:
            raise HarnessError(f"chargers missing from the configuration: {missing}")
        if self.meters is not None:
            self.meters.start()
        try:
            self.entry = await self.harness.create_entry(
                DOMAIN,
                {"name": f"bench controlled {self.variant}", "advanced_topics": {}},
            )
            async with LoopBlockMonitor() as monitor:
                started = time.perf_counter()
                for index in range(1, self.count + 1):
                    await self._async_add_vehicle(index)
                    # A flow may finish without suspending: let the loop run
                    # between two vehicles, as between two forms in the UI.
                    await asyncio.sleep(0)
                await self._async_wait_for_fleet()
                self.setup_s = time.perf_counter() - started
            self.setup_max_block_ms = monitor.max_block_ms
        except BaseException:
            await self.async_stop()
            raise

    def _control(self, index: int) -> dict[str, Any]:
        return {
            "vehicle_id": f"home{index:02d}",
            "control_entity": charger_entity(index),
            "control_unit": "A",
            "voltage": VOLTAGE_V,
            "phases": PHASES,
            "sign_convention": "positive_charging",
        }

    def _settings(self, index: int) -> dict[str, Any]:
        if self.meters is None:
            return {}  # confirmed by the control entity (the default)
        return {
            "power_entity": power_entity(index),
            "power_sign": "positive_charging",
            "confirmation": "power",
        }

    async def _async_add_vehicle(self, index: int) -> None:
        """The two steps of *Add vehicle controlled through Home Assistant*."""
        entry = self._require_entry()
        flows = self.hass.config_entries.subentries
        result: Any = await flows.async_init(
            (entry.entry_id, SUBENTRY_TYPE_CONTROLLED), context={"source": "user"}
        )
        for step in (self._control(index), self._settings(index)):
            if result["type"] != "form":
                break
            result = await flows.async_configure(result["flow_id"], step)
        if result["type"] != "create_entry":
            raise HarnessError(f"controlled vehicle flow {index}: {result}")

    async def _async_wait_for_fleet(self, limit_s: float = 60.0) -> None:
        """Until the entry knows every vehicle and its entity count is stable."""
        entry = self._require_entry()
        hass = self.hass
        registry = er.async_get(hass)
        last = -1
        changed_at = time.perf_counter()
        async with asyncio.timeout(limit_s):
            while True:
                await hass.async_block_till_done()
                count = len(er.async_entries_for_config_entry(registry, entry.entry_id))
                now = time.perf_counter()
                if count != last:
                    last, changed_at = count, now
                elif (known_vehicles(entry) or 0) >= self.count and (
                    now - changed_at >= 1.0
                ):
                    self.entities = count
                    return
                await asyncio.sleep(0.1)

    def service_data(self) -> dict[str, Any]:
        """The ``v2g.dispatch`` call: 10 A each, discharging and charging in turn."""
        sign = 1.0 if self._dispatches % 2 == 0 else -1.0
        return {
            "config_entry_id": self._require_entry().entry_id,
            "signal_type": SIGNAL_TYPE,
            "power_kw": round(sign * self.count * KW_PER_VEHICLE, 3),
            "duration": {"minutes": 15},
            "strategy": STRATEGY,
        }

    async def async_dispatch(
        self, *, count_writes: bool = False, settle_s: float = 1.0
    ) -> ControlledRun:
        """Call ``v2g.dispatch`` once; time it, read the latencies, check it."""
        hass = self.hass
        data = self.service_data()
        self._dispatches += 1
        counter = StateWriteCounter(hass) if count_writes else None
        limit_s = 60.0 + self.entity_delay_s
        problems: list[str] = []
        response: Any = None
        try:
            async with LoopBlockMonitor() as monitor:
                started = time.perf_counter()
                try:
                    async with asyncio.timeout(limit_s):
                        response = await hass.services.async_call(
                            DOMAIN,
                            "dispatch",
                            data,
                            blocking=True,
                            return_response=True,
                        )
                except TimeoutError as err:
                    raise HarnessError(
                        f"controlled {self.variant}: no response after {limit_s:.0f} s"
                    ) from err
                except Exception as err:  # noqa: BLE001 - reported, not raised
                    problems.append(f"{type(err).__name__}: {err}")
                elapsed = time.perf_counter() - started
                writes_in_call = None if counter is None else counter.writes
                if counter is not None:
                    await hass.async_block_till_done()
                    await asyncio.sleep(settle_s)
                    await hass.async_block_till_done()
        finally:
            if counter is not None:
                counter.close()
        _orders, _acked, status, checked = check_response(response, self.count)
        return ControlledRun(
            seconds=elapsed,
            latencies_ms=_latencies(response),
            max_block_ms=monitor.max_block_ms,
            max_gc_ms=monitor.max_gc_ms,
            status=status,
            problems=problems + checked,
            state_writes_in_call=writes_in_call,
            **_writes(counter),
        )

    async def async_stop(self) -> None:
        """Stop the meters, remove the entry (its chargers go back to idle)."""
        if self.meters is not None:
            self.meters.stop()
        if self.entry is not None:
            await self.harness.remove_entry(self.entry.entry_id)
            self.entry = None

    def _require_entry(self) -> ConfigEntry:
        if self.entry is None:
            raise HarnessError("scenario not started")
        return self.entry


def _latencies(response: Any) -> list[float]:
    """Every order's ``latency_ms`` of a response (none when it has none)."""
    if not isinstance(response, dict):
        return []
    return [
        float(order["latency_ms"])
        for order in (response.get("vehicles") or {}).values()
        if isinstance(order, dict) and isinstance(order.get("latency_ms"), int | float)
    ]


def _writes(counter: StateWriteCounter | None) -> dict[str, Any]:
    if counter is None:
        return {}
    return {
        "state_writes": counter.writes,
        "entities_written": len(counter.per_entity),
        "max_writes_per_entity": max(counter.per_entity.values(), default=0),
        "writes_by_kind": count_writes_by_kind(counter),
    }


def summarise(
    row: dict[str, Any], runs: list[ControlledRun], entity_delay_s: float
) -> None:
    """Response times, confirmation latencies, loop blocks and checks of a row."""
    seconds = [run.seconds for run in runs]
    latencies = [value for run in runs for value in run.latencies_ms]
    row["response_runs_s"] = [round(value, 4) for value in seconds]
    row["response_p50_s"] = median(seconds)
    row["response_max_s"] = max(seconds)
    if latencies:
        row["confirmations"] = len(latencies)
        row["confirmation_p50_ms"] = median(latencies)
        row["confirmation_p95_ms"] = percentile(latencies, 0.95)
        row["confirmation_max_ms"] = max(latencies)
        # What the integration adds to the entity's own delay.
        row["confirmation_over_delay_max_ms"] = max(latencies) - entity_delay_s * 1000
    row["max_block_ms"] = max(run.max_block_ms for run in runs)
    row["max_gc_ms"] = max(run.max_gc_ms for run in runs)
    row["statuses"] = sorted({run.status for run in runs})
    row["all_acknowledged"] = all(run.ok for run in runs)
    row["problems"] = sorted({problem for run in runs for problem in run.problems})
