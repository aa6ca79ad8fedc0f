"""An interrupted dispatch keeps what its vehicles answered (issue 6, restart).

`DispatchEngine.record_interrupted` closes a stored in-flight record after a stop
of Home Assistant: acknowledged orders keep their setpoints, ack statistics and
participation in the fleet; rejections count; orders that were still waiting are
reported as `timeout` but teach the fleet nothing (the stop cut them short).
"""

from __future__ import annotations

import asyncio
import copy
from datetime import timedelta
import json
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st
import pytest

from custom_components.v2g.engine import (
    DispatchRequest,
    DispatchSettings,
    ExclusionReason,
    FleetState,
    OrderStatus,
    interrupted_response,
    parse_utc_time,
)

from .fakes import START, Rule, make_signal, make_vehicle
from .test_dispatch import Harness, assert_design_shape

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
COMPLETED = START + timedelta(seconds=3)
FINAL_STATUSES = {
    s.value for s in OrderStatus if s not in (OrderStatus.PENDING, OrderStatus.PLANNED)
}
EXCLUSION_REASONS = {r.value for r in ExclusionReason}


async def _record_in_flight() -> dict[str, object]:
    """A dispatch cut short: v1 acknowledged, v2 rejected, v3 still waiting."""
    harness = Harness(
        [make_vehicle("v1"), make_vehicle("v2"), make_vehicle("v3")],
        {
            "v2": Rule(action="reject", reason="too hot"),
            "v3": Rule(action="silent"),
        },
    )
    request = DispatchRequest(signal=make_signal(-15.0), dispatch_id="d-cut")
    task = asyncio.ensure_future(harness.engine.dispatch(request))
    for _ in range(20):
        await asyncio.sleep(0)
    harness.runtime.fire_next()  # the v1 and v2 answers arrive
    for _ in range(20):
        await asyncio.sleep(0)
    [record] = harness.engine.pending_dispatches()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Stored as JSON, read back after the restart.
    return dict(json.loads(json.dumps(record)))


async def test_restart_keeps_the_acknowledged_setpoints() -> None:
    record = await _record_in_flight()
    assert {k: v["status"] for k, v in record["vehicles"].items()} == {  # type: ignore[attr-defined]
        "v1": "acknowledged",
        "v2": "rejected",
        "v3": "pending",
    }
    # A new process: a fleet restored with an older setpoint for v1.
    restarted = Harness(
        [make_vehicle("v1"), make_vehicle("v2"), make_vehicle("v3")],
        settings=DispatchSettings(),
    )
    fleet: FleetState = restarted.fleet
    fleet.record_outcome(
        "v1", OrderStatus.ACKNOWLEDGED, 4.0, 5.0, START - timedelta(hours=1)
    )
    completed = START + timedelta(seconds=3)

    response = restarted.engine.record_interrupted(record, completed)

    assert_design_shape(response)
    assert response["status"] == "interrupted"
    statuses = {k: v["status"] for k, v in response["vehicles"].items()}
    assert statuses == {"v1": "acknowledged", "v2": "rejected", "v3": "timeout"}
    assert response["acknowledged_kw"] == pytest.approx(-5.0)
    # The acknowledged setpoint replaces the older one, until the order expires.
    assert fleet.setpoints == {"v1": pytest.approx(-5.0)}
    setpoint = fleet.setpoint("v1")
    assert setpoint is not None
    assert setpoint.expires_at == START + timedelta(seconds=900)
    assert fleet.stats["v1"].acknowledged == 2
    assert fleet.stats["v1"].last_latency_ms == response["vehicles"]["v1"]["latency_ms"]
    assert fleet.participation["v1"] == 1
    # The rejection is learnt; the order cut short is not held against v3.
    assert fleet.stats["v2"].rejected == 1
    assert "v3" not in fleet.stats
    assert fleet.reliability("v3") == 1.0


async def test_order_ttl_option_sets_the_kept_setpoints_expiry() -> None:
    record = await _record_in_flight()
    restarted = Harness([make_vehicle("v1")], settings=DispatchSettings(order_ttl_s=60))
    restarted.engine.record_interrupted(record, START + timedelta(seconds=3))
    setpoint = restarted.fleet.setpoint("v1")
    assert setpoint is not None
    assert setpoint.expires_at == START + timedelta(seconds=60)
    # Vehicles the fleet no longer knows are skipped.
    assert set(restarted.fleet.stats) == {"v1"}


async def test_malformed_records_are_closed_and_what_is_readable_is_learnt() -> None:
    """v1's answer is readable and learnt; the rest is reported, never raised on."""
    harness = Harness([make_vehicle("v1"), make_vehicle("v2"), make_vehicle("v3")])
    record = {
        "dispatch_id": "d-bad",
        "signal": {"type": "fcr", "power_kw": 20, "duration_s": 900, "start": 5},
        "strategy": "Optimal",
        "started_at": START.isoformat(),
        "vehicles": {
            "v1": {"power_kw": 10.0, "status": "acknowledged", "latency_ms": 12.0},
            "v2": {"power_kw": "10", "status": "acknowledged"},
            "v3": {"power_kw": 5.0, "status": "exploded", "latency_ms": -1},
            "v4": "garbage",
        },
        "fallback": ["not", "a", "mapping"],
        "excluded": {"v9": "not_v2g", "v8": "bored", "v7": 3},
    }

    response = harness.engine.record_interrupted(record, COMPLETED)

    assert_valid_interrupted(response)
    assert response["dispatch_id"] == "d-bad"
    assert response["signal"] == {
        "type": "FCR",
        "power_kw": 20.0,
        "duration_s": 900.0,
        "start": None,
    }
    assert response["strategy"] == "optimal"
    assert response["requested_kw"] == 20.0
    assert {vid: o["status"] for vid, o in response["vehicles"].items()} == {
        "v1": "acknowledged",
        "v2": "acknowledged",
        "v3": "timeout",
        "v4": "timeout",
    }
    # An unreadable power counts as 0 kW.
    assert response["vehicles"]["v2"]["power_kw"] == 0.0
    assert response["vehicles"]["v3"]["latency_ms"] is None
    assert response["assigned_kw"] == 15.0
    assert response["acknowledged_kw"] == 10.0
    assert response["ack_rate"] == 2 / 4
    assert response["fallback"] == {}
    assert response["excluded"] == {"v9": "not_v2g"}
    assert response["started_at"] == "2025-07-07T10:00:00+00:00"
    assert response["completed_at"] == "2025-07-07T10:00:03+00:00"
    # Learnt: v1's setpoint for the signal's duration; v2's unreadable order and
    # v3's order that was never answered teach nothing.
    assert harness.fleet.setpoints == {"v1": 10.0}
    setpoint = harness.fleet.setpoint("v1")
    assert setpoint is not None
    assert setpoint.since == START + timedelta(milliseconds=12)
    assert setpoint.expires_at == START + timedelta(seconds=900)
    assert set(harness.fleet.stats) == {"v1"}


def test_ack_rate_counts_published_orders_of_both_rounds() -> None:
    """publish_failed and superseded orders were not published; pending ones were."""
    record = {
        "dispatch_id": "d1",
        "signal": {"type": "FCR", "power_kw": 20.0, "duration_s": 900},
        "strategy": "optimal",
        "vehicles": {
            "v1": {"power_kw": 10.0, "status": "acknowledged"},
            "v2": {"power_kw": 10.0, "status": "pending"},
            "v3": {"power_kw": 0.0, "status": "publish_failed"},
            "v4": {"power_kw": 3.0, "status": "superseded"},
        },
        "fallback": {"v1": {"power_kw": 15.0}, "v5": {"status": "acknowledged"}},
        "started_at": START.isoformat(),
    }
    response = interrupted_response(record, COMPLETED)
    assert_valid_interrupted(response)
    # v1, v2 (timeout), v1 and v5 in the fallback round were published.
    assert response["ack_rate"] == 2 / 4
    assert response["fallback"]["v1"]["status"] == "timeout"
    # v1's latest acknowledged order is its initial one; v5's power is unreadable.
    assert response["acknowledged_kw"] == 10.0
    assert response["assigned_kw"] == 23.0
    nothing_published = {
        "vehicles": {"v1": {"power_kw": 1.0, "status": "publish_failed"}},
    }
    assert interrupted_response(nothing_published, COMPLETED)["ack_rate"] is None
    assert interrupted_response({}, COMPLETED)["ack_rate"] is None


@pytest.mark.parametrize(
    "record",
    [
        None,
        [],
        "record",
        42,
        {},
        {"dispatch_id": 7, "signal": [], "vehicles": {"v1": None}},
        {"signal": {"type": None, "power_kw": True, "duration_s": "900"}},
        {"signal": {"power_kw": float("nan"), "duration_s": 10**400}},
        {"requested_kw": 12.5, "strategy": 3, "started_at": "yesterday"},
        {"started_at": "0001-01-01T00:00:00+01:00", "excluded": ["v1"]},
        {"vehicles": {"v1": {"power_kw": float("inf"), "status": ["acknowledged"]}}},
        {"vehicles": {1: {"power_kw": 1.0, "status": "acknowledged"}}},
        {
            "vehicles": {
                "v1": {"power_kw": 10**400, "status": "rejected", "latency_ms": 1e300}
            }
        },
    ],
)
def test_any_record_gives_a_valid_response(record: object) -> None:
    harness = Harness([make_vehicle("v1")])
    response = harness.engine.record_interrupted(record, COMPLETED)
    assert_valid_interrupted(response)
    assert harness.fleet.setpoints == {}


def test_unknown_values_are_reported_as_none() -> None:
    response = interrupted_response(
        {"requested_kw": 12.5, "strategy": "greedy", "signal": {"type": "XYZ"}},
        COMPLETED,
    )
    assert response["dispatch_id"] == ""
    assert response["strategy"] is None
    assert response["signal"] == {
        "type": None,
        "power_kw": None,
        "duration_s": None,
        "start": None,
    }
    assert response["requested_kw"] == 12.5  # the record's own, the signal's unknown
    assert response["started_at"] is None
    assert interrupted_response({}, COMPLETED)["requested_kw"] is None


async def test_answers_that_cannot_be_placed_in_time_teach_nothing() -> None:
    record = await _record_in_flight()
    for broken in (
        {**record, "started_at": None},
        {**record, "signal": {**record["signal"], "duration_s": 0}},  # type: ignore[dict-item]
        {**record, "started_at": "9999-12-31T23:59:59+00:00"},
    ):
        restarted = Harness([make_vehicle("v1"), make_vehicle("v2")])
        response = restarted.engine.record_interrupted(broken, COMPLETED)
        assert_valid_interrupted(response)
        assert response["acknowledged_kw"] == -5.0
        assert restarted.fleet.setpoints == {}
        assert restarted.fleet.stats == {}
    # With the order lifetime option the duration is not needed.
    restarted = Harness([make_vehicle("v1")], settings=DispatchSettings(order_ttl_s=60))
    no_duration = {**record, "signal": {**record["signal"], "duration_s": 0}}  # type: ignore[dict-item]
    restarted.engine.record_interrupted(no_duration, COMPLETED)
    assert restarted.fleet.setpoints == {"v1": -5.0}


async def test_a_closed_record_agrees_with_the_live_response() -> None:
    """Closing the last record of a dispatch gives the live response's figures."""
    harness = Harness(
        [make_vehicle(f"v{i}", max_power_kw=7.3) for i in range(4)],
        {"v1": Rule(action="reject"), "v2": Rule(applied_power_kw=1.1)},
    )
    at_learning: list[dict[str, Any]] = []

    def keep_record() -> None:
        [record] = harness.engine.pending_dispatches()
        at_learning.append(json.loads(json.dumps(record)))

    harness.when_fleet_learns(keep_record)
    result = await harness.dispatch(20.0, dispatch_id="d-same")
    assert result.fallback  # both rounds ran
    live = result.as_response()
    closed = interrupted_response(at_learning[0], result.completed_at)
    assert closed["status"] == "interrupted"
    for response in (live, closed):
        del response["status"]
    assert closed == live


# --- property: anything read back from disk ---------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(
        [
            "acknowledged",
            "pending",
            "rejected",
            "FCR",
            "smart",
            "not_v2g",
            START.isoformat(),
            "2025-07-07T10:00:00Z",
            "2025-07-07T10:00:00",
        ]
    ),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)
ORDER_KEYS = ["power_kw", "status", "latency_ms", "command_id", "reason", "score"]
PATHS = [
    ("dispatch_id",),
    ("signal",),
    ("signal", "type"),
    ("signal", "power_kw"),
    ("signal", "duration_s"),
    ("signal", "start"),
    ("strategy",),
    ("requested_kw",),
    ("started_at",),
    ("excluded",),
    ("excluded", "v9"),
    ("vehicles",),
    ("vehicles", "v1"),
    ("vehicles", "v3"),
    ("fallback",),
    ("fallback", "v2"),
    *[("vehicles", "v1", key) for key in [*ORDER_KEYS, "delivered_kw"]],
    *[("fallback", "v2", key) for key in [*ORDER_KEYS, "delivered_kw"]],
]
DELETE = object()


def _valid_record() -> dict[str, Any]:
    order = {
        "power_kw": 10.0,
        "status": "acknowledged",
        "latency_ms": 12.0,
        "command_id": "c1",
        "reason": None,
        "score": 0.5,
        "delivered_kw": 10.0,
    }
    return {
        "dispatch_id": "d1",
        "signal": {
            "type": "FCR",
            "power_kw": 20.0,
            "duration_s": 900.0,
            "start": START.isoformat(),
        },
        "strategy": "optimal",
        "phase": "fallback",
        "requested_kw": 20.0,
        "assigned_kw": 20.0,
        "vehicles": {"v1": order, "v3": {**order, "status": "pending"}},
        "fallback": {"v2": {**order, "command_id": "c2", "score": None}},
        "excluded": {"v9": "not_v2g"},
        "started_at": START.isoformat(),
    }


def _mutate(record: dict[str, Any], path: tuple[str, ...], value: object) -> None:
    parent: Any = record
    for key in path[:-1]:
        parent = parent.get(key) if isinstance(parent, dict) else None
    if not isinstance(parent, dict):
        return
    if value is DELETE:
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = copy.deepcopy(value)


@PROPERTY
@given(
    st.lists(
        st.tuples(st.sampled_from(PATHS), JSON_VALUES | st.just(DELETE)), max_size=6
    )
)
def test_property_a_damaged_record_never_raises(
    changes: list[tuple[tuple[str, ...], object]],
) -> None:
    record = _valid_record()
    for path, value in changes:
        _mutate(record, path, value)
    harness = Harness([make_vehicle("v1"), make_vehicle("v2"), make_vehicle("v3")])
    response = harness.engine.record_interrupted(record, COMPLETED)
    assert_valid_interrupted(response)
    # Whatever was learnt is a valid fleet state.
    json.dumps(harness.fleet.as_dict(), allow_nan=False)
    FleetState.from_dict(harness.fleet.as_dict())


@PROPERTY
@given(JSON_VALUES)
def test_property_any_json_value_never_raises(record: object) -> None:
    assert_valid_interrupted(interrupted_response(record, COMPLETED))


def assert_valid_interrupted(response: dict[str, Any]) -> None:
    """Every documented key, with the documented types, JSON-safe."""
    assert_design_shape(response)
    assert response["status"] == "interrupted"
    assert isinstance(response["dispatch_id"], str)
    signal = response["signal"]
    assert signal["type"] is None or isinstance(signal["type"], str)
    assert response["strategy"] is None or isinstance(response["strategy"], str)
    for key in ("assigned_kw", "acknowledged_kw"):
        assert isinstance(response[key], float)
    assert response["requested_kw"] is None or isinstance(
        response["requested_kw"], float
    )
    rate = response["ack_rate"]
    assert rate is None or 0.0 <= rate <= 1.0
    for section in ("vehicles", "fallback"):
        for vehicle_id, order in response[section].items():
            assert isinstance(vehicle_id, str)
            assert order["status"] in FINAL_STATUSES
            assert isinstance(order["power_kw"], float)
            latency = order["latency_ms"]
            assert latency is None or latency >= 0.0
    assert set(response["excluded"].values()) <= EXCLUSION_REASONS
    for key in ("started_at", "completed_at"):
        value = response[key]
        assert value is None or parse_utc_time(value) is not None
    assert response["completed_at"] == COMPLETED.isoformat()
