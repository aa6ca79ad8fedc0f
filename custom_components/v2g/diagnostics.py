"""Diagnostics of a fleet and of one vehicle, bounded for depots.

A fleet's file holds a summary (counts, counters, metrics with their latencies
summarised, the newest log entries) and a sample of `VEHICLE_SAMPLE` vehicles,
not the whole fleet: a 10,000-vehicle depot's state would be megabytes. A
vehicle device's file holds that vehicle only. Numbers are rounded for reading
(`rounded`): what a vehicle reported (SoC 0.6206423999999999) is shown as 0.6206.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import islice
from typing import Any

from homeassistant.components.diagnostics import async_redact_data
from homeassistant.core import HomeAssistant
from homeassistant.helpers.device_registry import DeviceEntry

from .broker_health import broker_health
from .const import CONF_WEBHOOK_ID, DOMAIN
from .coordinator import V2GConfigEntry, V2GFleetCoordinator

TO_REDACT = {CONF_WEBHOOK_ID}
LOG_ENTRIES = 5
VEHICLE_SAMPLE = 20
NAMED_IDS = 50
# Decimals shown: kW, kWh and ms to the watt, watt-hour and microsecond (as in
# the dispatch response); anything else (SoC, scores, ratios) to 4 decimals.
_UNIT_DECIMALS = 3
_DECIMALS = 4
_UNIT_SUFFIXES = ("_kw", "_kwh", "_ms")


def rounded(value: Any, key: str = "") -> Any:
    """``value`` with its floats rounded for reading, by the key that holds them."""
    if isinstance(value, float):
        return round(
            value, _UNIT_DECIMALS if key.endswith(_UNIT_SUFFIXES) else _DECIMALS
        )
    if isinstance(value, Mapping):
        return _rounded(value)
    if isinstance(value, list | tuple):
        return [rounded(item, key) for item in value]
    return value


def _rounded(data: Mapping[Any, Any]) -> dict[str, Any]:
    return {str(name): rounded(item, str(name)) for name, item in data.items()}


async def async_get_config_entry_diagnostics(
    hass: HomeAssistant, entry: V2GConfigEntry
) -> dict[str, Any]:
    """Return the diagnostics of a fleet (webhook id redacted)."""
    coordinator = entry.runtime_data
    fleet = coordinator.fleet
    tracker = coordinator.engine.tracker
    stale = coordinator.stale_ids()
    sample = sorted(fleet.vehicles)[:VEHICLE_SAMPLE]
    health = broker_health(hass, entry.entry_id)
    diagnostics = {
        "entry": {
            "title": entry.title,
            "data": async_redact_data(dict(entry.data), TO_REDACT),
            "options": async_redact_data(dict(entry.options), TO_REDACT),
            "subentries": [
                {
                    "type": subentry.subentry_type,
                    "title": subentry.title,
                    "data": async_redact_data(dict(subentry.data), TO_REDACT),
                }
                for subentry in entry.subentries.values()
            ],
        },
        "effective_options": async_redact_data(coordinator.options, TO_REDACT),
        "topics": coordinator.topics,
        "connected": coordinator.connected,
        "subscriptions_confirmed": coordinator.gate_open,
        "fleet": {
            "vehicles": len(fleet.vehicles),
            "stale": len(stale),
            "stale_ids": sorted(stale)[:NAMED_IDS],
            "manual": sorted(coordinator.manual.subentry_ids)[:NAMED_IDS],
            "gateways": sorted(
                {v.gateway for v in fleet.vehicles.values() if v.gateway}
            )[:NAMED_IDS],
            "holding_setpoint": sum(1 for kw in fleet.setpoints.values() if kw),
            "sample": {vid: vehicle_state(coordinator, vid) for vid in sample},
        },
        "dropped_input": dict(
            sorted(
                (
                    coordinator.input_log.counters
                    | coordinator.manual.controlled.input_log.counters
                ).items()
            )
        ),
        "ack_tracker": {
            "counters": dict(tracker.counters),
            "pending": tracker.pending_count,
            "late_by_vehicle": dict(
                islice(
                    sorted(tracker.late_by_vehicle.items(), key=lambda kv: -kv[1]),
                    NAMED_IDS,
                )
            ),
            "recent_rejections": [
                {
                    "disposition": item.disposition.value,
                    "command_id": item.command_id,
                    "vehicle_id": item.vehicle_id,
                    "expected_vehicle_id": item.expected_vehicle_id,
                }
                for item in tracker.recent_rejections
            ],
        },
        "transport": {
            "published": coordinator.router.published,
            "failed": coordinator.router.failed,
        },
        "broker_health": None if health is None else health.as_dict(),
        "metrics": _metrics(coordinator),
        "in_flight": [
            _in_flight(record) for record in coordinator.engine.pending_dispatches()
        ],
        "dispatch_log": {
            "entries": len(coordinator.dispatch_log),
            "latest": coordinator.dispatch_log.latest(LOG_ENTRIES),
        },
    }
    return _rounded(diagnostics)


async def async_get_device_diagnostics(
    hass: HomeAssistant, entry: V2GConfigEntry, device: DeviceEntry
) -> dict[str, Any]:
    """Return the diagnostics of one vehicle (or of the fleet's summary)."""
    coordinator = entry.runtime_data
    prefix = f"{entry.entry_id}_"
    for domain, identifier in device.identifiers:
        if domain == DOMAIN and identifier.startswith(prefix):
            vehicle_id = identifier.removeprefix(prefix)
            return _rounded(
                {
                    "vehicle_id": vehicle_id,
                    **vehicle_state(coordinator, vehicle_id),
                    "recent_dispatches": [
                        _vehicle_entry(entry_data, vehicle_id)
                        for entry_data in coordinator.dispatch_log.query(
                            vehicle_id=vehicle_id
                        )[-LOG_ENTRIES:]
                    ],
                }
            )
    return _rounded({"metrics": _metrics(coordinator)})


def vehicle_state(coordinator: V2GFleetCoordinator, vehicle_id: str) -> dict[str, Any]:
    """What the fleet knows of one vehicle."""
    fleet = coordinator.fleet
    vehicle = fleet.vehicles.get(vehicle_id)
    stats = fleet.stats.get(vehicle_id)
    limits = fleet.learned_limits.get(vehicle_id)
    return {
        "known": vehicle is not None,
        "vehicle": None if vehicle is None else vehicle.as_dict(),
        "stale": coordinator.is_stale(vehicle_id),
        "manual": coordinator.manual.is_manual(vehicle_id),
        "setpoint_kw": round(fleet.setpoints.get(vehicle_id, 0.0), 3),
        "measured_power_kw": fleet.power.power_kw(vehicle_id),
        "learned_limits": None if limits is None else limits.as_dict(),
        "stats": None if stats is None else stats.as_dict(),
        "reliability": round(fleet.reliability(vehicle_id), 4),
        "participation": fleet.participation.get(vehicle_id, 0),
        "late_acks": coordinator.engine.tracker.late_by_vehicle.get(vehicle_id, 0),
    }


def _vehicle_entry(entry: dict[str, Any], vehicle_id: str) -> dict[str, Any]:
    """One dispatch log entry reduced to what concerns a vehicle."""
    return {
        "dispatch_id": entry.get("dispatch_id"),
        "signal": entry.get("signal"),
        "status": entry.get("status"),
        "started_at": entry.get("started_at"),
        "initial": (entry.get("vehicles") or {}).get(vehicle_id),
        "fallback": (entry.get("fallback") or {}).get(vehicle_id),
    }


def _in_flight(record: dict[str, Any]) -> dict[str, Any]:
    """A running dispatch: its phase, order counts and a sample of its orders."""
    summary = {
        key: record.get(key) for key in ("dispatch_id", "phase", "started_at", "signal")
    }
    for round_name in ("vehicles", "fallback"):
        orders = record.get(round_name) or {}
        summary[f"{round_name}_count"] = len(orders)
        summary[round_name] = dict(islice(orders.items(), NAMED_IDS))
    return summary


def _metrics(coordinator: V2GFleetCoordinator) -> dict[str, Any]:
    metrics = coordinator.metrics
    return {
        "dispatches": metrics.dispatches,
        "orders_sent": metrics.orders_sent,
        "orders_acknowledged": metrics.orders_acknowledged,
        "publish_failures": metrics.publish_failures,
        "dispatches_24h": len(metrics.window),
        "latency_ms": metrics.latency_summary(),
        "last": metrics.last,
    }
