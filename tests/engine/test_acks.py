"""Ack tracker: matching, late, duplicate, mismatch, supersede, unknown, memory."""

from __future__ import annotations

from custom_components.v2g.engine import (
    Ack,
    AckDisposition,
    AckTracker,
    Order,
    OrderStatus,
    PendingOrder,
    SignalType,
)


def order(command_id: str, vehicle_id: str = "v1", **changes: object) -> Order:
    values: dict[str, object] = {
        "command_id": command_id,
        "vehicle_id": vehicle_id,
        "power_kw": 5.0,
        "timestamp_ms": 0,
        "dispatch_id": "d",
        "signal_type": SignalType.FCR,
        "duration_s": 60.0,
        "expires_at_ms": 60_000,
        "gateway": None,
    }
    values.update(changes)
    return Order(**values)  # type: ignore[arg-type]


class Listener:
    def __init__(self) -> None:
        self.resolved: list[tuple[str, OrderStatus]] = []

    def order_resolved(self, entry: PendingOrder) -> None:
        self.resolved.append((entry.order.command_id, entry.status))


def test_accept_reports_latency_and_notifies() -> None:
    tracker = AckTracker()
    listener = Listener()
    assert tracker.register(order("c1"), 10.0, listener) is None
    assert tracker.pending_count == 1
    entry = tracker.pending("c1")
    assert entry is not None
    assert entry.status is OrderStatus.PENDING
    assert entry.latency_ms is None
    assert tracker.handle_ack("v1", Ack("c1"), 10.25) is AckDisposition.ACCEPTED
    assert entry.status is OrderStatus.ACKNOWLEDGED
    assert entry.latency_ms == 250.0
    assert entry.delivered_kw == 5.0
    assert listener.resolved == [("c1", OrderStatus.ACKNOWLEDGED)]
    assert tracker.pending_count == 0
    assert tracker.counters["accepted"] == 1
    # The resolved order is remembered as answered: a repeat is a duplicate.
    assert tracker.handle_ack("v1", Ack("c1"), 10.5) is AckDisposition.DUPLICATE


def test_reject_keeps_the_reason() -> None:
    tracker = AckTracker()
    tracker.register(order("c1"), 0.0)
    entry = tracker.pending("c1")
    assert entry is not None
    disposition = tracker.handle_ack("v1", Ack("c1", False, "SoC too low"), 0.1)
    assert disposition is AckDisposition.REJECTED
    assert entry.status is OrderStatus.REJECTED
    assert entry.reason == "SoC too low"
    assert entry.delivered_kw == 0.0
    assert entry.latency_ms is not None
    assert tracker.counters["rejected"] == 1


def test_applied_power_lowers_the_delivered_power() -> None:
    tracker = AckTracker()
    for command_id, applied in (("a", 3.0), ("b", 9.0), ("c", -1.0)):
        tracker.register(order(command_id, vehicle_id=command_id), 0.0)
        entry = tracker.pending(command_id)
        assert entry is not None
        tracker.handle_ack(command_id, Ack(command_id, applied_power_kw=applied), 1.0)
        assert entry.delivered_kw == {"a": 3.0, "b": 5.0, "c": 0.0}[command_id]
    tracker.register(order("z", vehicle_id="z", power_kw=0.0), 0.0)
    entry = tracker.pending("z")
    assert entry is not None
    tracker.handle_ack("z", Ack("z", applied_power_kw=2.0), 1.0)
    assert entry.delivered_kw == 0.0


def test_vehicle_mismatch_is_not_counted_as_an_ack() -> None:
    tracker = AckTracker()
    tracker.register(order("c1", "v1"), 0.0)
    assert tracker.handle_ack("v2", Ack("c1"), 0.1) is AckDisposition.VEHICLE_MISMATCH
    # A payload naming another vehicle is refused too.
    assert (
        tracker.handle_ack("v1", Ack("c1", vehicle_id="v9"), 0.1)
        is AckDisposition.VEHICLE_MISMATCH
    )
    entry = tracker.pending("c1")
    assert entry is not None
    assert entry.status is OrderStatus.PENDING
    assert tracker.counters["vehicle_mismatch"] == 2
    rejected = tracker.recent_rejections[-1]
    assert (rejected.vehicle_id, rejected.expected_vehicle_id) == ("v1", "v1")
    assert tracker.recent_rejections[0].vehicle_id == "v2"
    # The right vehicle still gets through.
    assert tracker.handle_ack("v1", Ack("c1"), 0.2) is AckDisposition.ACCEPTED


def test_gateway_acks_must_come_from_the_orders_gateway() -> None:
    tracker = AckTracker()
    tracker.register(order("c1", "v1", gateway="depot-a"), 0.0)
    assert (
        tracker.handle_ack("v1", Ack("c1", vehicle_id="v1"), 0.1, gateway_id="depot-b")
        is AckDisposition.VEHICLE_MISMATCH
    )
    assert (
        tracker.handle_ack("v1", Ack("c1", vehicle_id="v1"), 0.1, gateway_id="depot-a")
        is AckDisposition.ACCEPTED
    )
    # A replay from the wrong gateway is still a mismatch after resolution.
    assert (
        tracker.handle_ack("v1", Ack("c1"), 0.2, gateway_id="depot-b")
        is AckDisposition.VEHICLE_MISMATCH
    )


def test_duplicates_and_unknown_ids() -> None:
    tracker = AckTracker()
    tracker.register(order("c1"), 0.0)
    tracker.handle_ack("v1", Ack("c1"), 0.1)
    assert tracker.handle_ack("v1", Ack("c1"), 0.2) is AckDisposition.DUPLICATE
    assert tracker.handle_ack("v2", Ack("c1"), 0.2) is AckDisposition.VEHICLE_MISMATCH
    assert tracker.handle_ack("v1", Ack("nope"), 0.3) is AckDisposition.UNKNOWN
    assert tracker.counters["duplicate"] == 1
    assert tracker.counters["unknown"] == 1
    assert [r.disposition for r in tracker.recent_rejections] == [
        AckDisposition.DUPLICATE,
        AckDisposition.VEHICLE_MISMATCH,
        AckDisposition.UNKNOWN,
    ]


def test_late_ack_after_timeout_keeps_the_result() -> None:
    tracker = AckTracker()
    listener = Listener()
    tracker.register(order("c1"), 0.0, listener)
    tracker.register(order("c2", "v2"), 0.0, listener)
    assert tracker.expire(["c1", "c2", "gone"], 5.0) == 2
    assert tracker.handle_ack("v1", Ack("c1"), 6.0) is AckDisposition.LATE
    # It stays timed out: another ack is late again, not a duplicate.
    assert tracker.handle_ack("v1", Ack("c1"), 7.0) is AckDisposition.LATE
    assert tracker.late_by_vehicle == {"v1": 2}
    assert tracker.counters["late"] == 2
    assert listener.resolved == [
        ("c1", OrderStatus.TIMEOUT),
        ("c2", OrderStatus.TIMEOUT),
    ]
    assert tracker.expire(["c1"], 7.0) == 0


def test_newer_order_supersedes_the_pending_one() -> None:
    tracker = AckTracker()
    first, second = Listener(), Listener()
    tracker.register(order("old"), 0.0, first)
    assert tracker.register(order("new"), 1.0, second) == "old"
    assert first.resolved == [("old", OrderStatus.SUPERSEDED)]
    assert tracker.pending_for_vehicle("v1") is tracker.pending("new")
    # An ack for the superseded order is late; the new one still waits.
    assert tracker.handle_ack("v1", Ack("old"), 1.5) is AckDisposition.LATE
    assert tracker.handle_ack("v1", Ack("new"), 1.6) is AckDisposition.ACCEPTED
    assert tracker.pending_for_vehicle("v1") is None
    # Once answered, a new order supersedes nothing.
    assert tracker.register(order("third"), 2.0) is None


def test_resolve_and_forget() -> None:
    tracker = AckTracker()
    tracker.register(order("c1"), 0.0)
    assert tracker.resolve("c1", OrderStatus.PUBLISH_FAILED, 0.5, "broker down")
    assert not tracker.resolve("c1", OrderStatus.PUBLISH_FAILED, 0.5)
    assert tracker.handle_ack("v1", Ack("c1"), 1.0) is AckDisposition.LATE
    listener = Listener()
    tracker.register(order("c2"), 0.0, listener)
    tracker.register(order("c3", "v3"), 0.0, listener)
    tracker.forget(["c2", "c3", "missing"])
    assert tracker.pending_count == 0
    assert listener.resolved == []
    assert tracker.pending_for_vehicle("v1") is None
    assert tracker.handle_ack("v1", Ack("c2"), 1.0) is AckDisposition.LATE


def test_forget_keeps_a_newer_pending_order_of_the_vehicle() -> None:
    tracker = AckTracker()
    tracker.register(order("a"), 0.0)
    tracker.register(order("b"), 0.0)  # supersedes "a"
    tracker.forget(["a"])
    assert tracker.pending_for_vehicle("v1") is tracker.pending("b")


def test_resolved_memory_is_bounded() -> None:
    tracker = AckTracker(recent_capacity=100)
    for index in range(250):
        tracker.register(order(f"c{index}", f"v{index}"), 0.0)
        tracker.handle_ack(f"v{index}", Ack(f"c{index}"), 0.1)
    assert len(tracker._recent) == 100
    assert tracker.handle_ack("v0", Ack("c0"), 1.0) is AckDisposition.UNKNOWN
    assert tracker.handle_ack("v249", Ack("c249"), 1.0) is AckDisposition.DUPLICATE
    assert len(tracker.recent_rejections) == 2


def test_malformed_counters() -> None:
    tracker = AckTracker()
    tracker.count_malformed()
    tracker.count_malformed(invalid_items=3)
    assert tracker.counters["malformed"] == 1
    assert tracker.counters["invalid_items"] == 3


def test_ten_thousand_pending_orders() -> None:
    tracker = AckTracker()
    for index in range(10_000):
        tracker.register(order(f"c{index}", f"v{index}"), 0.0)
    for index in range(0, 10_000, 2):
        tracker.handle_ack(f"v{index}", Ack(f"c{index}"), 0.5)
    assert tracker.expire((f"c{i}" for i in range(10_000)), 5.0) == 5_000
    assert tracker.counters["accepted"] == 5_000
    assert tracker.pending_count == 0
