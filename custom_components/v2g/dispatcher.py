"""Runs a fleet's dispatches to the end and records them.

A dispatch is validated (dispatching.py), waits until the broker confirmed the
answer subscriptions, is marked in flight before its first order leaves, runs in
the engine, and is then accounted in the metrics, appended to the dispatch log
and announced on the bus (`v2g_dispatch_completed`, docs/actions.md#dispatch-completed-event);
its delivery is verified later (verification.py), and when its orders end the
vehicles still holding them are released (releases.py). Dispatches still running
when the entry unloads, or left by a stop of Home Assistant, are recorded as
``interrupted``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from homeassistant.config_entries import ConfigEntry
from homeassistant.const import ATTR_CONFIG_ENTRY_ID
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.util import dt as dt_util

from .const import DOMAIN, EVENT_DISPATCH_COMPLETED, LOGGER
from .dispatching import build_request, invalid_value, warn_shortfall
from .engine import (
    DispatchEngine,
    DispatchResult,
    InvalidValueError,
    SignalType,
    Strategy,
    parse_utc_time,
    starting_record,
)
from .engine.metrics import DispatchMetrics
from .intake import MqttIntake
from .persistence import FleetPersistence
from .releases import SetpointReleases
from .vehicle_updates import VehicleUpdates
from .verification import DeliveryVerifier

SUBSCRIBE_CONFIRM_TIMEOUT_S = 10.0


class FleetDispatcher:
    """The dispatches of one fleet."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: ConfigEntry,
        engine: DispatchEngine,
        *,
        persistence: FleetPersistence,
        metrics: DispatchMetrics,
        intake: MqttIntake,
        vehicle_updates: VehicleUpdates,
        connected: Callable[[], bool],
        refresh: Callable[[], Awaitable[None]],
        releases_itself: Callable[[str], bool],
        release_at_end: bool,
    ) -> None:
        """Bind the dispatcher to the fleet's parts.

        `releases_itself` tells the vehicles whose channel returns them to idle
        at the end of an order; `release_at_end` turns the releases on.
        """
        self._hass = hass
        self._entry = entry
        self._engine = engine
        self._persistence = persistence
        self._metrics = metrics
        self._intake = intake
        self._vehicle_updates = vehicle_updates
        self._connected = connected
        self._refresh = refresh
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        # Set by the coordinator once the fleet input exists (it polls).
        self.verifier: DeliveryVerifier | None = None
        self.releases = SetpointReleases(
            hass,
            entry,
            engine,
            dispatch_log=persistence.dispatch_log,
            ready=self.async_ready_to_publish,
            releases_itself=releases_itself,
            on_released=refresh,
        )
        self._release_at_end = release_at_end

    @callback
    def async_start(self) -> CALLBACK_TYPE | None:
        """Follow the ends of dispatches (release at the end, when on)."""
        return self.releases.async_start() if self._release_at_end else None

    async def async_dispatch(
        self,
        signal_type: SignalType | str,
        power_kw: float,
        duration_s: float,
        *,
        vehicle_ids: Sequence[str] | None = None,
        strategy: Strategy | str | None = None,
        dry_run: bool = False,
    ) -> DispatchResult:
        """Run one dispatch to the end and record it (docs/actions.md#dispatch).

        Raises:
            ServiceValidationError: bad values or unknown vehicle ids.
            HomeAssistantError: MQTT is not connected / the ack subscription is not
                confirmed (nothing was published), or the fleet was unloaded.
        """
        engine = self._engine
        request = build_request(
            signal_type,
            power_kw,
            duration_s,
            vehicle_ids=vehicle_ids,
            strategy=strategy,
            dry_run=dry_run,
            known=engine.fleet.vehicles,
        )
        if not dry_run:
            await self.async_ready_to_publish()
            self._persistence.async_mark_started(
                starting_record(
                    request,
                    request.strategy
                    or engine.settings.strategy_for(request.signal.signal_type),
                )
            )
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            result = await engine.dispatch(request)
        except asyncio.CancelledError:
            if not self._stopping or task is None:
                raise
            task.uncancel()
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="dispatch_interrupted",
                translation_placeholders={"dispatch_id": request.dispatch_id},
            ) from None
        except InvalidValueError as err:
            self._persistence.async_clear(request.dispatch_id)
            raise invalid_value(err) from err
        finally:
            if task is not None:
                self._tasks.discard(task)
        self._persistence.async_clear(request.dispatch_id)
        await asyncio.sleep(0)  # the engine's last step learnt from every order
        response = result.as_response()
        warn_shortfall(self._entry.title, response)
        self.record_finished(response)
        if self.verifier is not None:
            self.verifier.async_schedule(result, response)
        if self._release_at_end:
            self.releases.async_schedule()
        await asyncio.sleep(0)  # 10,000 orders: two steps of ~15 ms
        self._vehicle_updates.stage_outcomes(result)
        # The new snapshot in steps of their own: recording and publishing
        # 10,000 vehicles at once would block the loop for > 100 ms.
        await asyncio.sleep(0)
        await self._refresh()
        return result

    async def async_ready_to_publish(self) -> None:
        """Wait until orders may leave: connected, answer subscriptions confirmed.

        Raises:
            HomeAssistantError: not connected, or not confirmed in time.
        """
        if not self._connected():
            raise HomeAssistantError(
                translation_domain=DOMAIN, translation_key="mqtt_not_connected"
            )
        try:
            async with asyncio.timeout(SUBSCRIBE_CONFIRM_TIMEOUT_S):
                await self._intake.gate.async_wait()
        except TimeoutError as err:
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="subscription_not_confirmed",
            ) from err

    def record_finished(self, response: dict[str, Any]) -> None:
        """Account, log and announce a finished dispatch."""
        self._metrics.record(response, dt_util.utcnow())
        self._persistence.dispatch_log.append(response)
        self._persistence.async_schedule_save()  # the metrics live in the fleet store
        self._hass.bus.async_fire(
            EVENT_DISPATCH_COMPLETED,
            {**response, ATTR_CONFIG_ENTRY_ID: self._entry.entry_id},
        )

    def record_interrupted(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Record the dispatches a stop of Home Assistant left unfinished."""
        for record in records:
            completed = parse_utc_time(record.get("updated_at")) or dt_util.utcnow()
            response = self._engine.record_interrupted(record, completed)
            LOGGER.warning(
                "Dispatch %s was interrupted by a stop of Home Assistant; "
                "recorded as interrupted",
                response.get("dispatch_id"),
            )
            self.record_finished(response)

    async def async_stop(self) -> None:
        """Cancel the running dispatches (recorded as interrupted) and verifications."""
        self._stopping = True
        running = self._engine.pending_dispatches()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        now = dt_util.utcnow()
        for record in running:
            self.record_finished(self._engine.record_interrupted(record, now))
            self._persistence.async_clear(str(record.get("dispatch_id")))
        if self.verifier is not None:  # after the dispatches that may schedule one
            await self.verifier.async_stop()
