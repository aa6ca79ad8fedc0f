"""Actions: v2g.dispatch, v2g.discover, v2g.get_dispatch_log, v2g.plan_day_ahead.

Times without an offset given to an action are Home Assistant's local time; the
engine gets UTC. Refusals name the field as the action form labels it
(action_fields.py). Vehicles may be picked as devices or named by vehicle id.
See docs/actions.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import Any, Final, cast

from homeassistant.config_entries import ConfigEntryState
from homeassistant.const import ATTR_CONFIG_ENTRY_ID
from homeassistant.core import (
    HomeAssistant,
    ServiceCall,
    ServiceResponse,
    SupportsResponse,
    callback,
)
from homeassistant.helpers import config_validation as cv, selector
from homeassistant.util import dt as dt_util
import voluptuous as vol

from . import action_fields as fields
from .action_fields import field_error, labelled_schema
from .const import (
    DOMAIN,
    SERVICE_DISCOVER,
    SERVICE_DISPATCH,
    SERVICE_GET_DISPATCH_LOG,
    SERVICE_PLAN_DAY_AHEAD,
)
from .coordinator import V2GConfigEntry, V2GFleetCoordinator
from .day_ahead import plan_fleet_day_ahead, window_time
from .engine import SignalType

ATTR_SIGNAL_TYPE: Final = "signal_type"
ATTR_POWER_KW: Final = "power_kw"
ATTR_DURATION: Final = "duration"
ATTR_VEHICLES: Final = "vehicles"
ATTR_STRATEGY: Final = "strategy"
ATTR_DRY_RUN: Final = "dry_run"
ATTR_VERIFY: Final = "verify"
ATTR_START: Final = "start"
ATTR_END: Final = "end"
ATTR_VEHICLE_ID: Final = "vehicle_id"
ATTR_LIMIT: Final = "limit"
ATTR_TARGET_KWH: Final = "target_kwh"
ATTR_SLOT_MINUTES: Final = "slot_minutes"
ATTR_DATE: Final = "date"
ATTR_WINDOWS: Final = "windows"

DEFAULT_DURATION: Final = timedelta(minutes=15)

_ENTRY = selector.ConfigEntrySelector({"integration": DOMAIN})
_ID_LIST = vol.All(cv.ensure_list, [cv.string])

DISPATCH_SCHEMA: Final = labelled_schema(
    SERVICE_DISPATCH,
    {
        vol.Required(ATTR_CONFIG_ENTRY_ID): _ENTRY,
        vol.Required(ATTR_SIGNAL_TYPE): fields.signal_type,
        vol.Required(ATTR_POWER_KW): fields.power_kw,
        vol.Optional(ATTR_DURATION, default=DEFAULT_DURATION): fields.duration,
        vol.Optional(ATTR_VEHICLES): _ID_LIST,
        vol.Optional(ATTR_STRATEGY): fields.strategy,
        vol.Optional(ATTR_DRY_RUN, default=False): cv.boolean,
        vol.Optional(ATTR_VERIFY, default=False): cv.boolean,
    },
)
DISCOVER_SCHEMA: Final = labelled_schema(
    SERVICE_DISCOVER, {vol.Required(ATTR_CONFIG_ENTRY_ID): _ENTRY}
)
GET_DISPATCH_LOG_SCHEMA: Final = labelled_schema(
    SERVICE_GET_DISPATCH_LOG,
    {
        vol.Required(ATTR_CONFIG_ENTRY_ID): _ENTRY,
        vol.Optional(ATTR_START): cv.datetime,
        vol.Optional(ATTR_END): cv.datetime,
        vol.Optional(ATTR_VEHICLE_ID): cv.string,
        vol.Optional(ATTR_SIGNAL_TYPE): fields.signal_type,
        vol.Optional(ATTR_LIMIT): fields.limit,
    },
)
PLAN_DAY_AHEAD_SCHEMA: Final = labelled_schema(
    SERVICE_PLAN_DAY_AHEAD,
    {
        vol.Required(ATTR_CONFIG_ENTRY_ID): _ENTRY,
        vol.Required(ATTR_TARGET_KWH): fields.target_kwh,
        vol.Optional(ATTR_SLOT_MINUTES, default=60): fields.slot_minutes,
        vol.Optional(ATTR_DATE): cv.date,
        vol.Optional(ATTR_VEHICLES): _ID_LIST,
        vol.Optional(ATTR_WINDOWS): fields.windows,
    },
)


def _get_coordinator(call: ServiceCall) -> V2GFleetCoordinator:
    """Return the coordinator of the entry an action names (loaded, ours)."""
    entry_id: str = call.data[ATTR_CONFIG_ENTRY_ID]
    entry: V2GConfigEntry | None = call.hass.config_entries.async_get_entry(entry_id)
    if entry is None or entry.domain != DOMAIN:
        raise field_error("invalid_config_entry", config_entry=entry_id)
    if entry.state is not ConfigEntryState.LOADED:
        raise field_error("unloaded_config_entry", config_entry=entry.title)
    return entry.runtime_data


def _picked(
    call: ServiceCall, coordinator: V2GFleetCoordinator, field: str, ids: Iterable[str]
) -> list[str]:
    """Vehicle ids of what a vehicle field gave (devices from the picker, or ids)."""
    return fields.vehicle_ids(
        call.hass,
        coordinator.config_entry.entry_id,
        ids,
        coordinator.fleet.vehicles,
        service=call.service,
        field=field,
    )


async def async_handle_dispatch(call: ServiceCall) -> ServiceResponse:
    """Handle v2g.dispatch (with ``verify``: wait for the verification too)."""
    coordinator = _get_coordinator(call)
    duration: timedelta = call.data[ATTR_DURATION]
    vehicles = call.data.get(ATTR_VEHICLES)
    if vehicles is not None:
        vehicles = _picked(call, coordinator, ATTR_VEHICLES, vehicles)
    result = await coordinator.dispatcher.async_dispatch(
        call.data[ATTR_SIGNAL_TYPE],
        call.data[ATTR_POWER_KW],
        duration.total_seconds(),
        vehicle_ids=None if vehicles is None else tuple(vehicles),
        strategy=call.data.get(ATTR_STRATEGY),
        dry_run=call.data[ATTR_DRY_RUN],
    )
    report = None
    if call.data[ATTR_VERIFY]:  # docs/actions.md#verification
        report = await coordinator.verifier.async_report(result.dispatch_id)
    if not call.return_response:
        return None
    response = result.as_response()
    return response if report is None else report.verified_response(response)


@callback
def async_setup_services(hass: HomeAssistant) -> None:
    """Register the actions of the integration."""

    async def async_discover(call: ServiceCall) -> ServiceResponse:
        coordinator = _get_coordinator(call)
        found = await coordinator.async_discover()
        if not call.return_response:
            return None
        return {
            "count": len(found),
            "vehicles": [vehicle.as_dict() for vehicle in found],
        }

    async def async_get_dispatch_log(call: ServiceCall) -> ServiceResponse:
        coordinator = _get_coordinator(call)
        start = call.data.get(ATTR_START)
        end = call.data.get(ATTR_END)
        # A naive time (the UI's datetime selector) is local time.
        start = None if start is None else dt_util.as_utc(start)
        end = None if end is None else dt_util.as_utc(end)
        if start is not None and end is not None and start > end:
            raise field_error("invalid_time_range")
        signal_type: SignalType | None = call.data.get(ATTR_SIGNAL_TYPE)
        vehicle_id = call.data.get(ATTR_VEHICLE_ID)
        if vehicle_id is not None:
            # A vehicle no longer in the fleet may still be in the log.
            [vehicle_id] = _picked(call, coordinator, ATTR_VEHICLE_ID, [vehicle_id])
        entries = coordinator.dispatch_log.query(
            start=start,
            end=end,
            vehicle_id=vehicle_id,
            signal_type=None if signal_type is None else signal_type.value,
        )
        if (limit := call.data.get(ATTR_LIMIT)) is not None:
            entries = entries[-limit:]
        return cast("ServiceResponse", {"count": len(entries), "entries": entries})

    async def async_plan_day_ahead(call: ServiceCall) -> ServiceResponse:
        coordinator = _get_coordinator(call)
        time_zone = dt_util.get_default_time_zone()
        # Day ahead: tomorrow in Home Assistant's time zone.
        day: date = call.data.get(ATTR_DATE) or (
            dt_util.now(time_zone).date() + timedelta(days=1)
        )
        given: dict[str, Any] = call.data.get(ATTR_WINDOWS, {})
        windows: dict[str, list[tuple[datetime, datetime]]] = {}
        for vehicle_id, items in zip(
            _picked(call, coordinator, ATTR_WINDOWS, given), given.values(), strict=True
        ):
            windows[vehicle_id] = [
                (
                    window_time(day, item["start"], vehicle_id, time_zone),
                    window_time(day, item["end"], vehicle_id, time_zone),
                )
                for item in items
            ]
        vehicles = call.data.get(ATTR_VEHICLES)
        if vehicles is not None:
            vehicles = _picked(call, coordinator, ATTR_VEHICLES, vehicles)
        return plan_fleet_day_ahead(
            coordinator.fleet.vehicles,
            target_kwh=call.data[ATTR_TARGET_KWH],
            slot_minutes=call.data[ATTR_SLOT_MINUTES],
            day=day,
            time_zone=time_zone,
            vehicle_ids=None if vehicles is None else tuple(vehicles),
            windows=windows,
        )

    hass.services.async_register(
        DOMAIN,
        SERVICE_DISPATCH,
        async_handle_dispatch,
        schema=DISPATCH_SCHEMA,
        supports_response=SupportsResponse.OPTIONAL,
    )
    hass.services.async_register(
        DOMAIN,
        SERVICE_DISCOVER,
        async_discover,
        schema=DISCOVER_SCHEMA,
        supports_response=SupportsResponse.OPTIONAL,
    )
    hass.services.async_register(
        DOMAIN,
        SERVICE_GET_DISPATCH_LOG,
        async_get_dispatch_log,
        schema=GET_DISPATCH_LOG_SCHEMA,
        supports_response=SupportsResponse.ONLY,
    )
    hass.services.async_register(
        DOMAIN,
        SERVICE_PLAN_DAY_AHEAD,
        async_plan_day_ahead,
        schema=PLAN_DAY_AHEAD_SCHEMA,
        supports_response=SupportsResponse.ONLY,
    )
