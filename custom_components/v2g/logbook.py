"""Describe V2G Fleet Dispatch events in the logbook (docs/actions.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from homeassistant.components.logbook.const import (
    LOGBOOK_ENTRY_MESSAGE,
    LOGBOOK_ENTRY_NAME,
)
from homeassistant.core import Event, HomeAssistant, callback

from .const import (
    ATTR_CONFIG_ENTRY_ID,
    DEFAULT_NAME,
    DOMAIN,
    EVENT_DISPATCH_COMPLETED,
    EVENT_DISPATCH_VERIFIED,
)
from .engine.failures import VehicleFailure, dispatch_failures

# Vehicle ids named in a dispatch or verification line; more are counted, not named.
LOGBOOK_ID_LIMIT = 5


def _number(value: Any) -> str:
    if isinstance(value, (int, float)):
        return f"{round(float(value), 3):g}"
    return "?"


def _vehicles(count: int) -> str:
    return f"{count} vehicle" if count == 1 else f"{count} vehicles"


def describe_failure(failure: VehicleFailure) -> str:
    """One failed vehicle and why: `veh007 (rejected: exceeds_max_power)`."""
    status = failure.status.replace("_", " ")
    why = f"{status}: {failure.reason}" if failure.reason else status
    return f"{failure.vehicle_id} ({why})"


def describe_dispatch(data: dict[str, Any]) -> str:
    """Return the one-line summary of a finished dispatch.

    It names the vehicles that failed (the first `LOGBOOK_ID_LIMIT`, then `…`),
    so the per-vehicle outcome events need no logbook lines of their own.
    """
    signal = data.get("signal")
    signal = signal if isinstance(signal, dict) else {}
    power = data.get("requested_kw", signal.get("power_kw"))
    kind = signal.get("type", "?")
    status = data.get("status", "?")
    placed = _placed(data)
    if status == "planned":
        return f"planned {_number(power)} kW {kind}{placed} (dry run)"
    text = f"dispatched {_number(power)} kW {kind}{placed}: {status}, "
    rate = data.get("ack_rate", "?")
    if isinstance(rate, (int, float)):
        text += f"{round(float(rate) * 100):d} % acknowledged"
    elif rate is None:
        # Nothing was published: nothing eligible, or every publish failed.
        text += "no order sent"
        excluded = data.get("excluded")
        if isinstance(excluded, dict) and excluded:
            text += f" ({_vehicles(len(excluded))} excluded)"
    else:  # an event stored without its data
        text += "? % acknowledged"
    failures = dispatch_failures(data)
    if failures:
        named = ", ".join(map(describe_failure, failures[:LOGBOOK_ID_LIMIT]))
        more = ", …" if len(failures) > LOGBOOK_ID_LIMIT else ""
        text += f"; {_vehicles(len(failures))} failed: {named}{more}"
    return text


def _placed(data: dict[str, Any]) -> str:
    """What the fleet could take of a request larger than it (docs/actions.md)."""
    short = data.get("shortfall_kw")
    assigned = data.get("assigned_kw")
    # Nothing placed at all: "no order sent" and the exclusions say it.
    if not isinstance(short, (int, float)) or short <= 0 or not assigned:
        return ""
    placed = _number(data.get("assigned_kw"))
    return f" ({placed} kW placed, {_number(short)} kW short)"


def describe_verification(data: dict[str, Any]) -> str:
    """Return the one-line summary of a dispatch's delivery verification."""
    kind = data.get("signal_type", "?")
    text = (
        f"delivered {_number(data.get('delivered_kw'))} of "
        f"{_number(data.get('acknowledged_kw'))} kW {kind}"
    )
    ratio = data.get("delivery_ratio")
    if isinstance(ratio, (int, float)):
        text += f" ({round(float(ratio) * 100):d} %)"
    ids = data.get("not_following")
    ids = [str(i) for i in ids] if isinstance(ids, list) else []
    count = data.get("not_following_count", len(ids))
    if isinstance(count, int) and count > 0:
        named = ", ".join(ids[:LOGBOOK_ID_LIMIT])
        more = ", …" if count > min(len(ids), LOGBOOK_ID_LIMIT) else ""
        text += f", {_vehicles(count)} not following: {named}{more}"
    unmeasured = data.get("unmeasured")
    if isinstance(unmeasured, int) and unmeasured > 0:
        text += f", {_vehicles(unmeasured)} unmeasured"
    return text


@callback
def async_describe_events(
    hass: HomeAssistant,
    async_describe_event: Callable[[str, str, Callable[[Event], dict[str, str]]], None],
) -> None:
    """Describe the dispatch completion and verification events."""

    def _name(event: Event) -> str:
        entry_id = event.data.get(ATTR_CONFIG_ENTRY_ID)
        if isinstance(entry_id, str) and (
            entry := hass.config_entries.async_get_entry(entry_id)
        ):
            return entry.title
        return DEFAULT_NAME

    @callback
    def async_describe_dispatch(event: Event) -> dict[str, str]:
        return {
            LOGBOOK_ENTRY_NAME: _name(event),
            LOGBOOK_ENTRY_MESSAGE: describe_dispatch(dict(event.data)),
        }

    @callback
    def async_describe_verification(event: Event) -> dict[str, str]:
        return {
            LOGBOOK_ENTRY_NAME: _name(event),
            LOGBOOK_ENTRY_MESSAGE: describe_verification(dict(event.data)),
        }

    async_describe_event(DOMAIN, EVENT_DISPATCH_COMPLETED, async_describe_dispatch)
    async_describe_event(DOMAIN, EVENT_DISPATCH_VERIFIED, async_describe_verification)
