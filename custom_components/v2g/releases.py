"""Release at the end: 0 kW to vehicles still holding a dispatch's setpoint.

An order carries `expires_at` (docs/protocol.md#expiry), but a vehicle that
ignores it keeps discharging after the signal ended while Home Assistant shows
0. So when a dispatch's orders end, every vehicle whose acknowledged setpoint
came from it, and that no newer order replaced, is sent a 0 kW order naming the
dispatch (docs/dispatch.md#release-at-the-end). Setpoints that ended while Home
Assistant was down are released at start-up, once orders may leave. Vehicles
controlled through Home Assistant entities return to idle through their own
channel (held_setpoints.py) and are not sent a release.

What became of each release is added to the dispatch's log entry (`released`);
the vehicles' setpoint sensors show 0 once it is acknowledged. A release that
is not acknowledged is tried again, up to `RELEASE_ATTEMPTS` times.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.event import async_track_point_in_utc_time
from homeassistant.util import dt as dt_util

from .const import DOMAIN, LOGGER
from .dispatch_log import DispatchLogStore
from .engine import DispatchEngine, OrderOutcome, OrderStatus

RELEASE_RETRY = timedelta(seconds=30)
RELEASE_ATTEMPTS = 3
# A release that was acknowledged, or that a newer order replaced, is done.
_SETTLED = frozenset({OrderStatus.ACKNOWLEDGED, OrderStatus.SUPERSEDED})


class SetpointReleases:
    """Schedules and sends the releases of one fleet."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: ConfigEntry,
        engine: DispatchEngine,
        *,
        dispatch_log: DispatchLogStore,
        ready: Callable[[], Awaitable[None]],
        releases_itself: Callable[[str], bool],
        on_released: Callable[[], Awaitable[None]],
    ) -> None:
        """Bind the releases to the fleet's engine, log and channels."""
        self._hass = hass
        self._entry = entry
        self._engine = engine
        self._log = dispatch_log
        self._ready = ready
        self._releases_itself = releases_itself
        self._on_released = on_released
        self._attempts: dict[str, int] = {}
        self._timer: CALLBACK_TYPE | None = None
        self._due: datetime | None = None
        self._running = False
        self._stopped = False
        self._retry_at: datetime | None = None

    @callback
    def async_start(self) -> CALLBACK_TYPE:
        """Release what ended while Home Assistant was down; then follow ends."""
        self.async_schedule()
        return self.async_stop

    @callback
    def async_stop(self) -> None:
        """Cancel the timer (the entry unloads)."""
        self._stopped = True
        self._cancel_timer()

    @callback
    def async_schedule(self) -> None:
        """Set the timer to the next end (a dispatch finished, or one was released)."""
        if self._stopped or self._running:
            return
        fleet = self._engine.fleet
        now = dt_util.utcnow()
        fleet.accrue(now)
        due = fleet.energy.next_expiry()
        if fleet.energy.unreleased:
            # Releases left over from a run are tried again later, not at once.
            again = self._retry_at or now
            due = again if due is None else min(due, again)
        self._schedule_at(due)

    def _schedule_at(self, due: datetime | None) -> None:
        if due is not None and self._due is not None and due >= self._due:
            return  # the timer already fires earlier
        self._cancel_timer()
        if due is None:
            return
        self._due = due
        self._timer = async_track_point_in_utc_time(self._hass, self._fire, due)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer()
        self._timer = None
        self._due = None

    @callback
    def _fire(self, _now: datetime) -> None:
        self._timer = None
        self._due = None
        if self._stopped:
            return
        self._entry.async_create_background_task(
            self._hass, self._async_release(), f"{DOMAIN} release at the end"
        )

    async def _async_release(self) -> None:
        """Send the releases that are due; reschedule what is left."""
        self._running = True
        try:
            await self._ready()
            released = await self._engine.release_ended(self._releases_itself)
        except HomeAssistantError as err:
            LOGGER.debug("Releases wait for MQTT: %s", err)
            released = {}
        finally:
            self._running = False
        if released:
            self._account(released)
            await self._on_released()
        if self._stopped:
            return
        self._retry_at = dt_util.utcnow() + RELEASE_RETRY
        self.async_schedule()

    def _account(self, released: Mapping[str, Sequence[OrderOutcome]]) -> None:
        """Log the releases with their dispatches; give up after a few attempts."""
        at = dt_util.utcnow().isoformat()
        fleet = self._engine.fleet
        for dispatch_id, outcomes in released.items():
            vehicles: dict[str, str] = {}
            for outcome in outcomes:
                vehicle_id = outcome.vehicle_id
                vehicles[vehicle_id] = outcome.status.value
                if outcome.status in _SETTLED:
                    self._attempts.pop(vehicle_id, None)
                    continue
                attempts = self._attempts.get(vehicle_id, 0) + 1
                if attempts >= RELEASE_ATTEMPTS:
                    self._attempts.pop(vehicle_id, None)
                    fleet.energy.release_sent(vehicle_id)
                    LOGGER.warning(
                        "Vehicle %s did not acknowledge the end of dispatch %s "
                        "after %d releases; it may still hold its setpoint",
                        vehicle_id,
                        dispatch_id,
                        attempts,
                    )
                else:
                    self._attempts[vehicle_id] = attempts
            self._log.amend(dispatch_id, partial(_with_releases, at, vehicles))
            LOGGER.debug(
                "Dispatch %s ended: released %d vehicles", dispatch_id, len(vehicles)
            )
        # A vehicle a newer order reached has nothing left to release.
        for vehicle_id in [
            v for v in self._attempts if v not in fleet.energy.unreleased
        ]:
            del self._attempts[vehicle_id]


def _with_releases(
    at: str, vehicles: Mapping[str, str], entry: Mapping[str, Any]
) -> dict[str, Any]:
    """A log entry's `released` section with these releases added to it."""
    before = entry.get("released")
    known = before.get("vehicles", {}) if isinstance(before, dict) else {}
    return {"released": {"at": at, "vehicles": {**known, **vehicles}}}
