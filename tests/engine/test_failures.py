"""Which vehicles failed a dispatch; the last dispatches; vehicles not responding."""

from __future__ import annotations

from datetime import timedelta
import json
from typing import Any

from custom_components.v2g.engine import FleetState, OrderStatus
from custom_components.v2g.engine.failures import (
    VehicleFailure,
    dispatch_failures,
    failure_from_dict,
)
from custom_components.v2g.engine.fleet import NOT_RESPONDING_TIMEOUTS
from custom_components.v2g.engine.metrics import (
    FAILURES_LISTED,
    RECENT_DISPATCHES,
    DispatchMetrics,
)

from .fakes import START, make_vehicle


def _response(dispatch_id: str, **orders: str) -> dict[str, Any]:
    """A finished dispatch whose vehicles ended with the given statuses."""
    return {
        "dispatch_id": dispatch_id,
        "status": "partial",
        "signal": {"type": "aFRR", "power_kw": 10.0},
        "requested_kw": 10.0,
        "acknowledged_kw": 5.0,
        "ack_rate": 0.5,
        "vehicles": {
            vehicle_id: {"status": status, "reason": None}
            for vehicle_id, status in orders.items()
        },
        "fallback": {},
        "started_at": START.isoformat(),
        "completed_at": (START + timedelta(seconds=5)).isoformat(),
    }


def test_the_latest_order_of_each_vehicle_decides() -> None:
    response = _response(
        "d1", a="acknowledged", b="timeout", c="superseded", d="rejected"
    )
    response["vehicles"]["d"]["reason"] = "battery_full"
    # a refused its fallback top-up; b took none (it timed out).
    response["fallback"] = {"a": {"status": "rejected"}}
    assert dispatch_failures(response) == [
        VehicleFailure("a", "rejected", None, "fallback"),
        VehicleFailure("b", "timeout", None, "initial"),
        VehicleFailure("d", "rejected", "battery_full", "initial"),
    ]
    # A vehicle whose first order failed and whose fallback order went through.
    response["fallback"] = {"b": {"status": "acknowledged"}}
    assert [f.vehicle_id for f in dispatch_failures(response)] == ["d"]
    assert dispatch_failures({"vehicles": "junk", "fallback": None}) == []
    assert dispatch_failures({"status": "planned"}) == []


def test_failures_read_back_from_storage() -> None:
    failure = VehicleFailure("v1", "publish_failed", "OSError: gone", "initial")
    assert failure_from_dict(json.loads(json.dumps(failure.as_dict()))) == failure
    assert failure_from_dict({"vehicle_id": "v1", "status": "timeout"}) == (
        VehicleFailure("v1", "timeout", None, "initial")
    )
    for damaged in ("junk", {"vehicle_id": 3, "status": "timeout"}, {"status": "x"}):
        assert failure_from_dict(damaged) is None


def test_metrics_keep_the_last_dispatches_with_their_failures() -> None:
    metrics = DispatchMetrics()
    many = {f"v{i:02d}": "timeout" for i in range(FAILURES_LISTED + 3)}
    metrics.record(_response("d0", **many), START)
    summary = metrics.recent[-1]
    assert summary["failure_count"] == FAILURES_LISTED + 3
    assert len(summary["failures"]) == FAILURES_LISTED
    assert summary["signal_type"] == "aFRR"
    # A dry run sent nothing: not one of the dispatches listed.
    metrics.record({**_response("dry"), "status": "planned"}, START)
    assert [s["dispatch_id"] for s in metrics.recent] == ["d0"]
    for index in range(1, RECENT_DISPATCHES + 1):
        metrics.record(_response(f"d{index}", a="rejected"), START)
    assert [s["dispatch_id"] for s in metrics.recent] == [
        f"d{i}" for i in range(1, RECENT_DISPATCHES + 1)
    ]

    restored = DispatchMetrics.from_dict(json.loads(json.dumps(metrics.as_dict())))
    assert list(restored.recent) == list(metrics.recent)
    # Stored before the list existed, or damaged: what can be read.
    assert not DispatchMetrics.from_dict({"dispatches": 3}).recent
    damaged = DispatchMetrics.from_dict(
        {"recent": ["junk", {"dispatch_id": "x", "failures": [{"status": "?"}]}]}
    )
    assert list(damaged.recent) == [
        {"dispatch_id": "x", "failure_count": 0, "failures": []}
    ]
    kept = DispatchMetrics.from_dict(
        {"recent": [{"failure_count": 40, "failures": "junk"}]}
    )
    assert kept.recent[0]["failure_count"] == 40


def test_timeouts_in_a_row_make_a_vehicle_not_responding() -> None:
    fleet = FleetState()
    fleet.upsert(make_vehicle("v1"), 0.0)

    def order(status: OrderStatus) -> None:
        fleet.record_outcome("v1", status, 0.0, None, START)

    for _ in range(NOT_RESPONDING_TIMEOUTS - 1):
        order(OrderStatus.TIMEOUT)
    # Neither a failed publish nor a superseded order is the vehicle's silence.
    order(OrderStatus.PUBLISH_FAILED)
    order(OrderStatus.SUPERSEDED)
    assert not fleet.stats["v1"].not_responding
    order(OrderStatus.TIMEOUT)
    assert fleet.stats["v1"].not_responding
    restored = FleetState.from_dict(json.loads(json.dumps(fleet.as_dict())))
    assert restored.stats["v1"].timeouts_in_a_row == NOT_RESPONDING_TIMEOUTS

    # Any answer ends it: a rejection, a late ack, an acknowledged revoke.
    order(OrderStatus.REJECTED)
    assert fleet.stats["v1"].timeouts_in_a_row == 0
    for answer in (
        lambda: fleet.record_late("v1"),
        lambda: fleet.hold_idle("v1", START),
    ):
        for _ in range(NOT_RESPONDING_TIMEOUTS):
            order(OrderStatus.TIMEOUT)
        answer()
        assert not fleet.stats["v1"].not_responding
    # Stored before the count existed.
    data = fleet.as_dict()
    del data["stats"]["v1"]["timeouts_in_a_row"]
    assert FleetState.from_dict(data).stats["v1"].timeouts_in_a_row == 0
