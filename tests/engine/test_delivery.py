"""Delivery verification in the engine: targets, freshness, judgement, metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
import json

import pytest

from custom_components.v2g.engine import (
    DispatchResult,
    DispatchStatus,
    FlexibilitySignal,
    OrderOutcome,
    OrderRound,
    OrderStatus,
    SignalType,
    Strategy,
)
from custom_components.v2g.engine.delivery import (
    EVENT_ID_LIMIT,
    DeliveryTolerance,
    PowerReadings,
    PowerSample,
    delivery_targets,
    fresh_power,
    judge_delivery,
    verification_start,
)
from custom_components.v2g.engine.fleet import FleetState
from custom_components.v2g.engine.metrics import DispatchMetrics
from custom_components.v2g.engine.models import Vehicle

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _outcome(
    vehicle_id: str,
    power_kw: float,
    status: OrderStatus = OrderStatus.ACKNOWLEDGED,
    *,
    resolved: float | None = 0.1,
    applied_kw: float | None = None,
    fallback: bool = False,
) -> OrderOutcome:
    delivered = 0.0
    if status is OrderStatus.ACKNOWLEDGED:
        delivered = power_kw if applied_kw is None else applied_kw
    return OrderOutcome(
        vehicle_id=vehicle_id,
        power_kw=power_kw,
        status=status,
        command_id=f"c-{vehicle_id}-{int(fallback)}",
        delivered_kw=delivered,
        round=OrderRound.FALLBACK if fallback else OrderRound.INITIAL,
        resolved_at=None if resolved is None else _at(resolved),
    )


def _result(
    *outcomes: OrderOutcome,
    power_kw: float = 30.0,
    acknowledged_kw: float | None = None,
) -> DispatchResult:
    initial = {o.vehicle_id: o for o in outcomes if o.round is OrderRound.INITIAL}
    fallback = {o.vehicle_id: o for o in outcomes if o.round is OrderRound.FALLBACK}
    final: dict[str, float] = {}
    for outcome in outcomes:
        if outcome.status is OrderStatus.ACKNOWLEDGED:
            final[outcome.vehicle_id] = outcome.delivered_kw
    return DispatchResult(
        dispatch_id="d1",
        signal=FlexibilitySignal(
            signal_type=SignalType.AFRR, power_kw=power_kw, duration_s=900, start=T0
        ),
        strategy=Strategy.EQUAL,
        status=DispatchStatus.COMPLETED,
        requested_kw=power_kw,
        assigned_kw=sum(o.power_kw for o in initial.values()),
        acknowledged_kw=sum(final.values())
        if acknowledged_kw is None
        else acknowledged_kw,
        ack_rate=1.0,
        vehicles=initial,
        fallback=fallback,
        excluded={},
        started_at=T0,
        completed_at=_at(5.0),
    )


def test_tolerance_is_the_larger_of_share_and_floor() -> None:
    tolerance = DeliveryTolerance(fraction=0.1, kw=1.0)
    assert tolerance.band_kw(30.0) == pytest.approx(3.0)
    assert tolerance.band_kw(-4.0) == 1.0
    assert tolerance.band_kw(0.0) == 1.0
    assert tolerance.follows(27.0, 30.0)
    assert not tolerance.follows(26.9, 30.0)
    assert tolerance.follows(-9.0, -10.0)  # exactly on the band
    assert not tolerance.follows(7.0, -10.0)
    assert tolerance.follows(0.5, 0.0)
    assert not tolerance.follows(10.0, 0.0)


def test_targets_take_the_latest_acknowledged_setpoint_of_both_rounds() -> None:
    result = _result(
        _outcome("a", 10.0, resolved=0.2),
        _outcome("a", 12.0, resolved=5.3, fallback=True),
        _outcome("b", 10.0, OrderStatus.TIMEOUT, resolved=5.0),
        _outcome("c", 10.0, resolved=0.3),
        _outcome("c", 14.0, OrderStatus.REJECTED, resolved=5.2, fallback=True),
        _outcome("d", 10.0, OrderStatus.PUBLISH_FAILED, resolved=None),
        _outcome("e", 10.0, OrderStatus.SUPERSEDED, resolved=1.0),
        _outcome("f", 10.0, applied_kw=7.0, resolved=0.4),
    )
    targets = delivery_targets(result)
    # Orders that never reached their vehicle are not judged.
    assert set(targets) == {"a", "b", "c", "f"}
    assert targets["a"].setpoint_kw == 12.0
    assert targets["a"].resolved_at == _at(5.3)
    assert targets["b"].setpoint_kw == 0.0  # not acknowledged: 0
    assert targets["c"].setpoint_kw == 10.0  # the rejected fallback changed nothing
    assert targets["c"].resolved_at == _at(5.2)
    assert targets["f"].setpoint_kw == 7.0  # the applied power
    # The window starts at the last ack.
    assert verification_start(result) == _at(5.3)


def test_window_starts_at_completion_when_nothing_was_acknowledged() -> None:
    result = _result(_outcome("a", 10.0, OrderStatus.TIMEOUT, resolved=5.0))
    assert verification_start(result) == _at(5.0)
    result = _result(_outcome("a", 10.0, OrderStatus.REJECTED, resolved=None))
    assert delivery_targets(result)["a"].resolved_at == _at(5.0)


def test_only_readings_received_after_the_orders_resolved_count() -> None:
    readings = PowerReadings()
    heard: list[str] = []
    stop = readings.listen(heard.append)
    targets = delivery_targets(_result(_outcome("a", 10.0, resolved=1.0)))
    readings.record("a", 9.5, _at(0.5))
    assert fresh_power(readings.latest("a"), targets["a"]) is None
    readings.record("a", 9.8, _at(1.0))
    assert fresh_power(readings.latest("a"), targets["a"]) == 9.8
    readings.record("a", float("nan"), _at(2.0))  # ignored
    assert readings.latest("a") == PowerSample(9.8, _at(1.0))
    stop()
    stop()
    readings.record("b", 1.0, _at(2.0))
    assert heard == ["a", "a"]
    readings.forget("b")
    assert readings.latest("b") is None
    assert fresh_power(None, targets["a"]) is None


def test_judgement_sums_measured_power_and_flags_who_does_not_follow() -> None:
    result = _result(
        _outcome("follows", 10.0),
        _outcome("refuses", 10.0),  # acked, kept injecting its old power
        _outcome("dropped", 10.0, OrderStatus.TIMEOUT),  # ack lost, applied anyway
        _outcome("silent", 10.0),
    )
    targets = delivery_targets(result)
    report = judge_delivery(
        result,
        targets,
        {"follows": 9.6, "refuses": -7.0, "dropped": 10.0},
        DeliveryTolerance(),
        _at(15.0),
    )
    assert report.delivered_kw == pytest.approx(12.6)
    assert report.acknowledged_kw == 30.0
    assert report.delivery_ratio == pytest.approx(0.42)
    assert report.following == ["follows"]
    assert report.not_following == ["dropped", "refuses"]
    assert report.unmeasured == ["silent"]
    assert report.response_fields() == {
        "delivered_kw": 12.6,
        "delivery_ratio": 0.42,
        "verified_at": _at(15.0).isoformat(),
        "unmeasured": ["silent"],
    }
    assert report.event_data() == {
        "dispatch_id": "d1",
        "signal_type": "aFRR",
        "requested_kw": 30.0,
        "acknowledged_kw": 30.0,
        "delivered_kw": 12.6,
        "delivery_ratio": 0.42,
        "following": 1,
        "not_following": ["dropped", "refuses"],
        "not_following_count": 2,
        "unmeasured": 1,
    }


def test_verified_response_copies_and_adds_the_fields() -> None:
    result = _result(
        _outcome("a", 10.0),
        _outcome("b", 10.0, OrderStatus.TIMEOUT, resolved=5.0),
        _outcome("a", 20.0, resolved=5.2, fallback=True),
        _outcome("x", 10.0, OrderStatus.SUPERSEDED),
    )
    response = result.as_response()
    before = json.dumps(response, sort_keys=True)
    report = judge_delivery(
        result, delivery_targets(result), {"a": 19.9}, DeliveryTolerance(), _at(15.2)
    )
    verified = report.verified_response(response)
    assert json.dumps(response, sort_keys=True) == before  # never mutated
    assert verified["delivered_kw"] == 19.9
    assert verified["delivery_ratio"] == pytest.approx(0.995)
    assert verified["unmeasured"] == ["b"]
    assert verified["vehicles"]["a"] == {
        **response["vehicles"]["a"],
        "measured_kw": 19.9,
        "following": True,
    }
    assert verified["fallback"]["a"]["measured_kw"] == 19.9
    assert verified["vehicles"]["b"]["measured_kw"] is None
    assert verified["vehicles"]["b"]["following"] is None
    assert verified["vehicles"]["x"]["following"] is None  # not judged here


def test_ratio_is_null_without_acknowledged_power_and_the_event_list_is_capped() -> (
    None
):
    outcomes = [
        _outcome(f"v{i:02d}", 1.0, OrderStatus.TIMEOUT, resolved=5.0) for i in range(30)
    ]
    result = _result(*outcomes)
    report = judge_delivery(
        result,
        delivery_targets(result),
        {f"v{i:02d}": 1.5 for i in range(30)},
        DeliveryTolerance(),
        _at(15.0),
    )
    assert report.delivery_ratio is None
    assert report.delivered_kw == pytest.approx(45.0)
    data = report.event_data()
    assert data["not_following"] == [f"v{i:02d}" for i in range(EVENT_ID_LIMIT)]
    assert data["not_following_count"] == 30
    assert len(report.not_following) == 30


def test_metrics_keep_the_last_delivery_and_a_24_hour_ratio() -> None:
    metrics = DispatchMetrics()
    assert metrics.delivery_ratio_24h(T0) is None
    metrics.record_delivery(
        {"dispatch_id": "d1", "delivered_kw": 28.5, "acknowledged_kw": 30.0}, T0
    )
    metrics.record_delivery(
        {"dispatch_id": "d2", "delivered_kw": -5.0, "acknowledged_kw": -10.0},
        _at(3600),
    )
    # No acknowledged power: the last delivery changes, the ratio does not.
    metrics.record_delivery(
        {"dispatch_id": "d3", "delivered_kw": 2.0, "acknowledged_kw": 0.0},
        _at(7200),
    )
    assert metrics.last_delivery is not None
    assert metrics.last_delivery["dispatch_id"] == "d3"
    assert metrics.delivery_ratio_24h(_at(7200)) == pytest.approx(33.5 / 40.0)
    restored = DispatchMetrics.from_dict(json.loads(json.dumps(metrics.as_dict())))
    assert restored.last_delivery == metrics.last_delivery
    assert restored.delivery_ratio_24h(_at(7200)) == pytest.approx(33.5 / 40.0)
    # A day later only the second dispatch is left.
    assert restored.delivery_ratio_24h(T0 + timedelta(hours=24, seconds=1)) == 0.5
    assert restored.delivery_ratio_24h(T0 + timedelta(hours=26)) is None
    # Stored before verification existed, or damaged: read as empty.
    assert DispatchMetrics.from_dict({"dispatches": 3}).last_delivery is None
    assert not DispatchMetrics.from_dict(
        {"delivery_window": [[1, "x"]]}
    ).delivery_window


def test_a_vehicle_not_following_loses_reliability() -> None:
    fleet = FleetState()
    fleet.upsert(Vehicle(vehicle_id="a"), 0.0)
    fleet.upsert(Vehicle(vehicle_id="b"), 0.0)
    fleet.record_delivery("a", False, T0)
    fleet.record_delivery("b", True, T0)
    fleet.record_delivery("unknown", False, T0)
    assert fleet.reliability("a") == pytest.approx(0.8)
    assert fleet.reliability("b") == 1.0
    for _ in range(30):
        fleet.record_delivery("a", False, _at(1))
    assert fleet.reliability("a") == pytest.approx(0.1)  # bounded
    fleet.record_delivery("a", True, _at(2))
    assert fleet.reliability("a") == pytest.approx(0.28)
    stats = fleet.stats["a"]
    assert (stats.verified, stats.not_following) == (32, 31)
    assert stats.last_verified_at == _at(2)
    restored = FleetState.from_dict(json.loads(json.dumps(fleet.as_dict())))
    assert restored.stats["a"].verified == 32
    assert restored.stats["a"].last_verified_at == _at(2)
    assert restored.reliability("a") == pytest.approx(0.28)
