"""Measured delivery after each dispatch (docs/dispatch.md#verification).

`verify_window` seconds after the last ack of a dispatch (or its completion when
nothing was acknowledged), every vehicle that answered one of its orders or let
it time out is judged on its measured power (engine/delivery.py):

* an MQTT vehicle by the latest telemetry ``power_kw`` received once its orders
  resolved (fleet_input.py keeps them); in the ``pull`` and ``hybrid`` telemetry
  modes the fleet is polled once first and the answers of the vehicles concerned
  are awaited for up to the ack timeout;
* a vehicle controlled through Home Assistant entities by the state of its power
  sensor, if it has one.

The result amends the dispatch's log entry, fires `v2g_dispatch_verified`, feeds
the fleet sensors (metrics) and each measured vehicle's reliability. Dry runs and
returns to idle are not verified. A verification still pending when the entry
unloads is cancelled; one pending when Home Assistant stops is lost.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from homeassistant.config_entries import ConfigEntry
from homeassistant.const import ATTR_CONFIG_ENTRY_ID
from homeassistant.core import CALLBACK_TYPE, HassJob, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.event import async_call_later
from homeassistant.util import dt as dt_util

from .const import DOMAIN, EVENT_DISPATCH_VERIFIED, LOGGER, TELEMETRY_PUSH
from .controlled_vehicles import controlled_specs
from .engine import (
    DispatchResult,
    DispatchStatus,
    FleetState,
    async_chunks,
    async_run_steps,
)
from .engine.delivery import (
    VERIFICATION_KEYS,
    DeliveryReport,
    DeliveryTarget,
    delivery_targets_steps,
    fresh_power,
    judge_delivery_steps,
    verification_start,
)
from .engine.metrics import DispatchMetrics
from .fleet_input import FleetInput
from .home_control import power_kw
from .intake import InputLog
from .options import FleetOptions
from .persistence import FleetPersistence

# Finished verifications kept for `async_report` (a `verify: true` caller reads
# its own right after the dispatch returned).
KEPT_REPORTS = 32


class DeliveryVerifier:
    """Verifies the delivery of a fleet's dispatches, one timer each."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: ConfigEntry,
        options: FleetOptions,
        *,
        fleet: FleetState,
        fleet_input: FleetInput,
        input_log: InputLog,
        persistence: FleetPersistence,
        metrics: DispatchMetrics,
        connected: Callable[[], bool],
        refresh: Callable[[], Awaitable[None]],
    ) -> None:
        """Bind to the fleet's parts (nothing is scheduled yet)."""
        self._hass = hass
        self._entry = entry
        self._options = options
        self._fleet = fleet
        self._fleet_input = fleet_input
        self._input_log = input_log
        self._persistence = persistence
        self._metrics = metrics
        self._connected = connected
        self._refresh = refresh
        self._reports: OrderedDict[str, asyncio.Future[DeliveryReport]] = OrderedDict()
        self._timers: dict[str, CALLBACK_TYPE] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False

    @callback
    def async_schedule(
        self, result: DispatchResult, response: Mapping[str, Any]
    ) -> None:
        """Verify a finished dispatch once its window is over (not dry runs or idle).

        ``response`` is the response that was logged; it is never changed.
        """
        if (
            self._stopped
            or result.status is DispatchStatus.PLANNED
            or result.requested_kw == 0.0
        ):
            return
        dispatch_id = result.dispatch_id
        self._reports[dispatch_id] = self._hass.loop.create_future()
        self._forget_old_reports()
        due = verification_start(result) + timedelta(
            seconds=self._options.verify_window
        )
        delay = max((due - dt_util.utcnow()).total_seconds(), 0.0)
        self._timers[dispatch_id] = async_call_later(
            self._hass,
            delay,
            HassJob(
                partial(self._start, result, response),
                f"{DOMAIN} verify {dispatch_id}",
                cancel_on_shutdown=True,
            ),
        )

    def _forget_old_reports(self) -> None:
        """Keep the pending verifications and the newest finished ones."""
        finished = [key for key, future in self._reports.items() if future.done()]
        for key in finished[: max(len(finished) - KEPT_REPORTS, 0)]:
            del self._reports[key]

    @callback
    def _start(
        self, result: DispatchResult, response: Mapping[str, Any], _now: datetime
    ) -> None:
        self._timers.pop(result.dispatch_id, None)
        task = self._entry.async_create_task(
            self._hass,
            self._async_verify(result, response),
            f"{DOMAIN} verify {result.dispatch_id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def async_report(self, dispatch_id: str) -> DeliveryReport | None:
        """Wait for the verification of a dispatch (None: it is not verified).

        Raises:
            HomeAssistantError: the entry unloaded before it finished.
        """
        future = self._reports.get(dispatch_id)
        if future is None:
            return None
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if not future.cancelled():
                raise  # the caller was cancelled
        raise HomeAssistantError(
            translation_domain=DOMAIN,
            translation_key="verification_interrupted",
            translation_placeholders={"dispatch_id": dispatch_id},
        )

    async def async_stop(self) -> None:
        """Cancel the pending verifications (unload): nothing is recorded."""
        self._stopped = True
        while self._timers:
            self._timers.popitem()[1]()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for future in self._reports.values():
            future.cancel()

    # --- one verification ----------------------------------------------------------

    async def _async_verify(
        self, result: DispatchResult, response: Mapping[str, Any]
    ) -> None:
        targets = await async_run_steps(delivery_targets_steps(result))
        controlled = controlled_specs(self._entry)
        polled = [vid for vid in targets if vid not in controlled]
        if (
            polled
            and self._options.telemetry_mode != TELEMETRY_PUSH
            and self._connected()
        ):
            await self._async_poll(set(polled))
        measured = await self._async_measured(targets, controlled)
        report = await async_run_steps(
            judge_delivery_steps(
                result,
                targets,
                measured,
                self._options.delivery_tolerance,
                dt_util.utcnow(),
            )
        )
        await self._async_record(report, response)
        future = self._reports.get(result.dispatch_id)
        if future is not None and not future.done():
            future.set_result(report)

    async def _async_poll(self, vehicle_ids: set[str]) -> None:
        """Ask for telemetry; wait (up to the ack timeout) for these vehicles."""
        waiting = set(vehicle_ids)
        answered = self._hass.loop.create_future()

        def heard(vehicle_id: str) -> None:
            waiting.discard(vehicle_id)
            if not waiting and not answered.done():
                answered.set_result(None)

        stop_listening = self._fleet.power.listen(heard)
        try:
            await self._fleet_input.async_poll_telemetry(self._input_log)
            async with asyncio.timeout(self._options.settings.ack_timeout_s):
                await answered
        except TimeoutError:
            LOGGER.debug(
                "Delivery verification: %d vehicles did not answer the poll",
                len(waiting),
            )
        finally:
            stop_listening()

    async def _async_measured(
        self, targets: Mapping[str, DeliveryTarget], controlled: Mapping[str, Any]
    ) -> dict[str, float]:
        """The fresh measured power of each target vehicle that has one."""
        readings = self._fleet.power
        states = self._hass.states
        measured: dict[str, float] = {}
        async for chunk in async_chunks(list(targets.items())):
            for vehicle_id, target in chunk:
                spec = controlled.get(vehicle_id)
                if spec is None:
                    power = fresh_power(readings.latest(vehicle_id), target)
                elif spec.power_entity:
                    power = power_kw(
                        states.get(spec.power_entity), spec.power_positive_charging
                    )
                else:
                    power = None
                if power is not None:
                    measured[vehicle_id] = power
        return measured

    async def _async_record(
        self, report: DeliveryReport, response: Mapping[str, Any]
    ) -> None:
        """Log, announce and learn from a verification; refresh the sensors."""
        verified = await async_run_steps(report.verified_response_steps(response))
        self._persistence.dispatch_log.amend(
            report.dispatch_id,
            {
                key: verified[key]
                for key in (*VERIFICATION_KEYS, "vehicles", "fallback")
                if key in verified
            },
        )
        data = report.event_data()
        self._metrics.record_delivery(data, report.verified_at)
        async for chunk in async_chunks(list(report.vehicles.items())):
            for vehicle_id, delivery in chunk:
                if delivery.following is not None:
                    self._fleet.record_delivery(
                        vehicle_id, delivery.following, report.verified_at
                    )
        self._persistence.async_schedule_save()
        self._hass.bus.async_fire(
            EVENT_DISPATCH_VERIFIED,
            {**data, ATTR_CONFIG_ENTRY_ID: self._entry.entry_id},
        )
        LOGGER.debug(
            "Dispatch %s delivered %s of %s kW (%d vehicles not following)",
            report.dispatch_id,
            data["delivered_kw"],
            data["acknowledged_kw"],
            data["not_following_count"],
        )
        await self._refresh()
