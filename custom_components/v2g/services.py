"""Actions: v2g.dispatch, v2g.discover, v2g.get_dispatch_log, v2g.plan_day_ahead.

Times without an offset given to an action are Home Assistant's local time; the
engine gets UTC. See docs/actions.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, time, timedelta
import math
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
from homeassistant.exceptions import ServiceValidationError
from homeassistant.helpers import config_validation as cv, selector
from homeassistant.helpers.typing import VolSchemaType
from homeassistant.util import dt as dt_util
import voluptuous as vol

from .const import (
    DOMAIN,
    SERVICE_DISCOVER,
    SERVICE_DISPATCH,
    SERVICE_GET_DISPATCH_LOG,
    SERVICE_PLAN_DAY_AHEAD,
)
from .coordinator import V2GConfigEntry, V2GFleetCoordinator
from .engine import (
    InfeasiblePlanError,
    InvalidValueError,
    SignalType,
    Strategy,
    Vehicle,
    plan_day_ahead,
)

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


def _signal_type(value: Any) -> SignalType:
    try:
        return SignalType.parse(value)
    except InvalidValueError as err:
        raise vol.Invalid(err.reason) from err


def _strategy(value: Any) -> Strategy:
    try:
        return Strategy.parse(value)
    except InvalidValueError as err:
        raise vol.Invalid(err.reason) from err


def _finite_float(value: Any) -> float:
    number = float(vol.Coerce(float)(value))
    if not math.isfinite(number):
        raise vol.Invalid("must be a finite number")
    return number


def _action_schema(fields: Mapping[Any, Any]) -> VolSchemaType:
    """Return the schema of an action, typed as Home Assistant registers it.

    Home Assistant 2026.11 validates with probatio, installed under the
    ``voluptuous`` name, and types ``async_register(schema=)`` with probatio's
    classes, while mypy sees the real voluptuous package installed beside it. At run
    time ``vol.Schema`` is the class Home Assistant validates with on every version;
    the cast only tells mypy so.
    """
    return cast("VolSchemaType", vol.Schema(fields))


_ID_LIST = vol.All(cv.ensure_list, [cv.string])

DISPATCH_SCHEMA: Final = _action_schema(
    {
        vol.Required(ATTR_CONFIG_ENTRY_ID): _ENTRY,
        vol.Required(ATTR_SIGNAL_TYPE): _signal_type,
        vol.Required(ATTR_POWER_KW): _finite_float,
        vol.Optional(ATTR_DURATION, default=DEFAULT_DURATION): cv.positive_time_period,
        vol.Optional(ATTR_VEHICLES): _ID_LIST,
        vol.Optional(ATTR_STRATEGY): _strategy,
        vol.Optional(ATTR_DRY_RUN, default=False): cv.boolean,
        vol.Optional(ATTR_VERIFY, default=False): cv.boolean,
    }
)
DISCOVER_SCHEMA: Final = _action_schema({vol.Required(ATTR_CONFIG_ENTRY_ID): _ENTRY})
GET_DISPATCH_LOG_SCHEMA: Final = _action_schema(
    {
        vol.Required(ATTR_CONFIG_ENTRY_ID): _ENTRY,
        vol.Optional(ATTR_START): cv.datetime,
        vol.Optional(ATTR_END): cv.datetime,
        vol.Optional(ATTR_VEHICLE_ID): cv.string,
        vol.Optional(ATTR_SIGNAL_TYPE): _signal_type,
        vol.Optional(ATTR_LIMIT): vol.All(vol.Coerce(int), vol.Range(min=1)),
    }
)
_WINDOW = vol.Schema({vol.Required("start"): cv.string, vol.Required("end"): cv.string})
PLAN_DAY_AHEAD_SCHEMA: Final = _action_schema(
    {
        vol.Required(ATTR_CONFIG_ENTRY_ID): _ENTRY,
        vol.Required(ATTR_TARGET_KWH): _finite_float,
        vol.Optional(ATTR_SLOT_MINUTES, default=60): vol.All(
            vol.Coerce(int), vol.Range(min=1, max=1440)
        ),
        vol.Optional(ATTR_DATE): cv.date,
        vol.Optional(ATTR_VEHICLES): _ID_LIST,
        vol.Optional(ATTR_WINDOWS): vol.Schema({cv.string: [_WINDOW]}),
    }
)


def _get_coordinator(call: ServiceCall) -> V2GFleetCoordinator:
    """Return the coordinator of the entry an action names (loaded, ours)."""
    entry_id: str = call.data[ATTR_CONFIG_ENTRY_ID]
    entry: V2GConfigEntry | None = call.hass.config_entries.async_get_entry(entry_id)
    if entry is None or entry.domain != DOMAIN:
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="invalid_config_entry",
            translation_placeholders={"config_entry": entry_id},
        )
    if entry.state is not ConfigEntryState.LOADED:
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="unloaded_config_entry",
            translation_placeholders={"config_entry": entry.title},
        )
    return entry.runtime_data


def _window_time(day: date, text: str, vehicle_id: str) -> datetime:
    """Parse a window bound to UTC: a time of day on ``day`` or an ISO datetime.

    Both are Home Assistant's local time unless the datetime has an offset;
    ``24:00`` is the midnight that ends ``day``.
    """
    local = dt_util.get_default_time_zone()
    if (parsed_time := dt_util.parse_time(text)) is not None:
        return dt_util.as_utc(datetime.combine(day, parsed_time, tzinfo=local))
    if text in ("24:00", "24:00:00"):
        return dt_util.as_utc(datetime.combine(day + timedelta(days=1), time(), local))
    if (parsed := dt_util.parse_datetime(text)) is not None:
        return dt_util.as_utc(parsed)  # naive: local time
    raise ServiceValidationError(
        translation_domain=DOMAIN,
        translation_key="invalid_window_time",
        translation_placeholders={"vehicle_id": vehicle_id, "time": text},
    )


def _local_text(value: datetime) -> str:
    """Format a UTC time for a message: local, to the second."""
    return dt_util.as_local(value).replace(tzinfo=None).isoformat(sep=" ")


def plan_fleet_day_ahead(
    fleet_vehicles: Mapping[str, Vehicle],
    *,
    target_kwh: float,
    slot_minutes: int,
    day: date,
    vehicle_ids: Sequence[str] | None = None,
    windows: Mapping[str, Sequence[tuple[datetime, datetime]]] | None = None,
) -> dict[str, Any]:
    """Plan an energy target over a day (NEBEF-style) with a fleet's vehicles.

    Args:
        fleet_vehicles: the fleet's vehicles by id (``coordinator.fleet.vehicles``).
        target_kwh: energy to deliver over the day.
        slot_minutes: slot length, 1 to 1440.
        day: the day to plan.
        vehicle_ids: the vehicles to plan with; None: every V2G vehicle.
        windows: availability windows (UTC) per vehicle id; a vehicle without
            windows is available all day.

    Returns:
        The action response: the plan's entries and the same plan as CSV.

    Raises:
        ServiceValidationError: unknown vehicles, no vehicle, a target that is
            not positive, a window that ends before it starts, or a target the
            vehicles cannot deliver in their windows.
    """
    if vehicle_ids is None:
        vehicles = [v for v in fleet_vehicles.values() if v.is_v2g]
    else:
        if unknown := [vid for vid in vehicle_ids if vid not in fleet_vehicles]:
            raise ServiceValidationError(
                translation_domain=DOMAIN,
                translation_key="unknown_vehicles",
                translation_placeholders={"vehicles": ", ".join(unknown[:10])},
            )
        vehicles = [fleet_vehicles[vid] for vid in dict.fromkeys(vehicle_ids)]
    if not vehicles:
        raise ServiceValidationError(
            translation_domain=DOMAIN, translation_key="plan_no_vehicles"
        )
    if not target_kwh > 0.0:
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="plan_target_not_positive",
            translation_placeholders={"target_kwh": f"{target_kwh:g}"},
        )
    windows = windows or {}
    for vehicle_id, spans in windows.items():
        for start, end in spans:
            if end <= start:
                raise ServiceValidationError(
                    translation_domain=DOMAIN,
                    translation_key="invalid_window_order",
                    translation_placeholders={
                        "vehicle_id": vehicle_id,
                        "start": _local_text(start),
                        "end": _local_text(end),
                    },
                )
    try:
        plan = plan_day_ahead(vehicles, windows, target_kwh, slot_minutes, day)
    except InfeasiblePlanError as err:
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="plan_insufficient_capacity",
            translation_placeholders={"target_kwh": f"{target_kwh:g}"},
        ) from err
    return {
        "date": plan.day.isoformat(),
        "slot_minutes": plan.slot_minutes,
        "target_kwh": plan.target_kwh,
        "total_kwh": round(plan.total_kwh, 6),
        "vehicles": [v.vehicle_id for v in vehicles],
        "entries": plan.as_dicts(),
        "csv": plan.to_csv(),
    }


async def async_handle_dispatch(call: ServiceCall) -> ServiceResponse:
    """Handle v2g.dispatch (with ``verify``: wait for the verification too)."""
    coordinator = _get_coordinator(call)
    duration: timedelta = call.data[ATTR_DURATION]
    vehicles = call.data.get(ATTR_VEHICLES)
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
            raise ServiceValidationError(
                translation_domain=DOMAIN, translation_key="invalid_time_range"
            )
        signal_type: SignalType | None = call.data.get(ATTR_SIGNAL_TYPE)
        entries = coordinator.dispatch_log.query(
            start=start,
            end=end,
            vehicle_id=call.data.get(ATTR_VEHICLE_ID),
            signal_type=None if signal_type is None else signal_type.value,
        )
        if (limit := call.data.get(ATTR_LIMIT)) is not None:
            entries = entries[-limit:]
        return cast("ServiceResponse", {"count": len(entries), "entries": entries})

    async def async_plan_day_ahead(call: ServiceCall) -> ServiceResponse:
        coordinator = _get_coordinator(call)
        # Day ahead: tomorrow in Home Assistant's time zone.
        day: date = call.data.get(ATTR_DATE) or (
            dt_util.now().date() + timedelta(days=1)
        )
        windows: dict[str, list[tuple[datetime, datetime]]] = {}
        for vehicle_id, items in call.data.get(ATTR_WINDOWS, {}).items():
            windows[vehicle_id] = [
                (
                    _window_time(day, item["start"], vehicle_id),
                    _window_time(day, item["end"], vehicle_id),
                )
                for item in items
            ]
        vehicles = call.data.get(ATTR_VEHICLES)
        return plan_fleet_day_ahead(
            coordinator.fleet.vehicles,
            target_kwh=call.data[ATTR_TARGET_KWH],
            slot_minutes=call.data[ATTR_SLOT_MINUTES],
            day=day,
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
