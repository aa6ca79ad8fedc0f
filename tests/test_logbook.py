"""Logbook descriptions of the dispatch completion and verification events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from homeassistant.components.logbook.const import (
    LOGBOOK_ENTRY_MESSAGE,
    LOGBOOK_ENTRY_NAME,
)
from homeassistant.core import Event, HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.v2g.const import (
    DOMAIN,
    EVENT_DISPATCH_COMPLETED,
    EVENT_DISPATCH_VERIFIED,
)
from custom_components.v2g.logbook import (
    async_describe_events,
    describe_dispatch,
    describe_verification,
)


def _describer(
    hass: HomeAssistant, event_type: str = EVENT_DISPATCH_COMPLETED
) -> Callable[[Event], dict[str, str]]:
    found: dict[tuple[str, str], Callable[[Event], dict[str, str]]] = {}

    def register(domain: str, event_type: str, describe: Any) -> None:
        found[(domain, event_type)] = describe

    async_describe_events(hass, register)
    return found[(DOMAIN, event_type)]


async def test_describe_dispatch_event(hass: HomeAssistant) -> None:
    entry = MockConfigEntry(domain=DOMAIN, title="Depot")
    entry.add_to_hass(hass)
    describe = _describer(hass)
    data = {
        "config_entry_id": entry.entry_id,
        "status": "completed",
        "signal": {"type": "FCR", "power_kw": 20.0},
        "requested_kw": 20.0,
        "ack_rate": 1.0,
    }
    assert describe(Event(EVENT_DISPATCH_COMPLETED, data)) == {
        LOGBOOK_ENTRY_NAME: "Depot",
        LOGBOOK_ENTRY_MESSAGE: "dispatched 20 kW FCR: completed, 100 % acknowledged",
    }
    unknown = describe(
        Event(EVENT_DISPATCH_COMPLETED, {**data, "config_entry_id": "gone"})
    )
    assert unknown[LOGBOOK_ENTRY_NAME] == "V2G fleet"


def test_describe_dispatch_texts() -> None:
    assert (
        describe_dispatch(
            {
                "status": "partial",
                "signal": {"type": "aFRR", "power_kw": -7.5},
                "requested_kw": -7.5,
                "ack_rate": 2 / 3,
            }
        )
        == "dispatched -7.5 kW aFRR: partial, 67 % acknowledged"
    )
    assert (
        describe_dispatch(
            {"status": "planned", "signal": {"type": "MA", "power_kw": 3.0}}
        )
        == "planned 3 kW MA (dry run)"
    )
    assert (
        describe_dispatch({"status": "failed", "signal": "junk"})
        == "dispatched ? kW ?: failed, ? % acknowledged"
    )


def test_describe_dispatch_names_the_failed_vehicles() -> None:
    orders = {
        "v1": {"status": "acknowledged", "reason": None},
        "v2": {"status": "rejected", "reason": "exceeds_max_power"},
        "v3": {"status": "timeout", "reason": None},
        "v4": {"status": "superseded", "reason": None},  # a newer dispatch's
        "v5": {"status": "rejected", "reason": None},
    }
    data = {
        "status": "partial",
        "signal": {"type": "aFRR", "power_kw": 30.0},
        "requested_kw": 30.0,
        "ack_rate": 0.25,
        "vehicles": orders,
        # v1 refused the fallback round's top-up; v3 was not asked again.
        "fallback": {"v1": {"status": "rejected"}},
        "excluded": {"v9": "soc_below_min"},
    }
    assert describe_dispatch(data) == (
        "dispatched 30 kW aFRR: partial, 25 % acknowledged; 4 vehicles failed: "
        "v1 (rejected), v2 (rejected: exceeds_max_power), v3 (timeout), "
        "v5 (rejected)"
    )
    # At most 5 named, all counted.
    many = {f"v{i:02d}": {"status": "timeout"} for i in range(1, 8)}
    assert describe_dispatch({**data, "vehicles": many, "fallback": {}}) == (
        "dispatched 30 kW aFRR: partial, 25 % acknowledged; 7 vehicles failed: "
        "v01 (timeout), v02 (timeout), v03 (timeout), v04 (timeout), "
        "v05 (timeout), …"
    )
    # Nothing eligible: no order sent (ack rate null), nothing failed.
    nothing = {
        "status": "failed",
        "signal": {"type": "NEBEF", "power_kw": 20.0},
        "requested_kw": 20.0,
        "ack_rate": None,
        "vehicles": {},
        "fallback": {},
        "excluded": {"v1": "not_v2g", "v2": "unavailable"},
    }
    assert describe_dispatch(nothing) == (
        "dispatched 20 kW NEBEF: failed, no order sent (2 vehicles excluded)"
    )
    # Every publish failed: named with the error.
    failed = {
        **nothing,
        "excluded": {},
        "vehicles": {"v1": {"status": "publish_failed", "reason": "OSError: gone"}},
    }
    assert describe_dispatch(failed) == (
        "dispatched 20 kW NEBEF: failed, no order sent; "
        "1 vehicle failed: v1 (publish failed: OSError: gone)"
    )
    # Damaged orders are skipped, never raised on.
    assert describe_dispatch(
        {**data, "vehicles": {"v1": "junk", "v2": {"status": 3}}, "fallback": []}
    ) == ("dispatched 30 kW aFRR: partial, 25 % acknowledged")


async def test_describe_verification_event(hass: HomeAssistant) -> None:
    entry = MockConfigEntry(domain=DOMAIN, title="V2G fleet")
    entry.add_to_hass(hass)
    describe = _describer(hass, EVENT_DISPATCH_VERIFIED)
    data = {
        "config_entry_id": entry.entry_id,
        "dispatch_id": "d1",
        "signal_type": "aFRR",
        "requested_kw": 30.0,
        "acknowledged_kw": 30.0,
        "delivered_kw": 28.5,
        "delivery_ratio": 0.95,
        "following": 8,
        "not_following": ["veh003", "veh007"],
        "not_following_count": 2,
        "unmeasured": 0,
    }
    assert describe(Event(EVENT_DISPATCH_VERIFIED, data)) == {
        LOGBOOK_ENTRY_NAME: "V2G fleet",
        LOGBOOK_ENTRY_MESSAGE: "delivered 28.5 of 30 kW aFRR (95 %), "
        "2 vehicles not following: veh003, veh007",
    }


def test_describe_verification_texts() -> None:
    assert (
        describe_verification(
            {
                "signal_type": "FCR",
                "acknowledged_kw": 20.0,
                "delivered_kw": 19.6,
                "delivery_ratio": 0.98,
                "not_following": [],
                "not_following_count": 0,
                "unmeasured": 0,
            }
        )
        == "delivered 19.6 of 20 kW FCR (98 %)"
    )
    ids = [f"v{i:02d}" for i in range(20)]
    assert describe_verification(
        {
            "signal_type": "MA",
            "acknowledged_kw": -10.0,
            "delivered_kw": 2.0,
            "delivery_ratio": -0.2,
            "not_following": ids,
            "not_following_count": 25,
            "unmeasured": 1,
        }
    ) == (
        "delivered 2 of -10 kW MA (-20 %), 25 vehicles not following: "
        "v00, v01, v02, v03, v04, …, 1 vehicle unmeasured"
    )
    # Nothing acknowledged: no ratio; damaged data does not raise.
    assert (
        describe_verification(
            {"signal_type": "NEBEF", "acknowledged_kw": 0.0, "delivered_kw": 0.0}
        )
        == "delivered 0 of 0 kW NEBEF"
    )
    assert (
        describe_verification({"not_following": "junk", "unmeasured": "x"})
        == "delivered ? of ? kW ?"
    )
