"""Dispatch end to end with a fake transport and a virtual-time runtime."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
import itertools
import json

import pytest

from custom_components.v2g.engine import (
    ZERO_WEIGHTS,
    AckDisposition,
    DispatchEngine,
    DispatchRequest,
    DispatchResult,
    DispatchSettings,
    DispatchStatus,
    ExclusionReason,
    FallbackMode,
    FleetState,
    HourOfWeekProfile,
    InvalidValueError,
    Order,
    OrderOutcome,
    OrderStatus,
    PowerLimits,
    SafetySettings,
    SignalType,
    Strategy,
    Vehicle,
    interrupted_response,
    starting_record,
)

from .fakes import (
    NEVER,
    START,
    FakeRuntime,
    FakeTransport,
    Rule,
    make_signal,
    make_vehicle,
)

TOP_KEYS = {
    "dispatch_id",
    "status",
    "signal",
    "strategy",
    "requested_kw",
    "assigned_kw",
    "shortfall_kw",
    "acknowledged_kw",
    "ack_rate",
    "vehicles",
    "fallback",
    "excluded",
    "started_at",
    "completed_at",
}
SIGNAL_KEYS = {"type", "power_kw", "duration_s", "start"}
VEHICLE_KEYS = {"power_kw", "status", "latency_ms", "command_id", "reason", "score"}
FALLBACK_KEYS = {"power_kw", "status", "latency_ms", "command_id"}


def assert_design_shape(response: dict[str, object]) -> None:
    """The response has exactly the keys of docs/actions.md#dispatch-response and is JSON-safe."""
    assert set(response) - {"revoked"} == TOP_KEYS
    for item in dict(response.get("revoked", {})).values():  # type: ignore[call-overload]
        assert set(item) == {"status", "latency_ms", "command_id"}
    signal = response["signal"]
    assert isinstance(signal, dict)
    assert set(signal) == SIGNAL_KEYS
    vehicles = response["vehicles"]
    fallback = response["fallback"]
    assert isinstance(vehicles, dict)
    assert isinstance(fallback, dict)
    for item in vehicles.values():
        assert set(item) == VEHICLE_KEYS
    for item in fallback.values():
        assert set(item) == FALLBACK_KEYS
    json.dumps(response, allow_nan=False)


class Harness:
    """An engine wired to a fake transport, fake runtime and a fleet."""

    def __init__(
        self,
        vehicles: Sequence[Vehicle],
        rules: dict[str, Rule] | None = None,
        settings: DispatchSettings | None = None,
        **engine_kwargs: object,
    ) -> None:
        self.runtime = FakeRuntime()
        self.transport = FakeTransport(self.runtime, rules or {})
        self.fleet = FleetState()
        for vehicle in vehicles:
            self.fleet.upsert(vehicle, 0.0)
        counter = itertools.count(1)
        self.engine = DispatchEngine(
            self.transport,
            self.runtime,
            settings or DispatchSettings(),
            self.fleet,
            id_factory=lambda: f"cmd-{next(counter)}",
            **engine_kwargs,  # type: ignore[arg-type]
        )
        self.transport.engine = self.engine

    def when_fleet_learns(self, callback: Callable[[], None]) -> None:
        """Call `callback` as the fleet counts who took part in a dispatch.

        That is the last thing the fleet learns from a dispatch (or from a closed
        in-flight record); the dispatch is then still listed in flight.
        """
        add_participation = self.fleet.add_participation

        def counted(vehicle_ids: Iterable[str]) -> None:
            callback()
            add_participation(vehicle_ids)

        self.fleet.add_participation = counted  # type: ignore[method-assign]

    async def dispatch(self, power_kw: float, **kwargs: object) -> DispatchResult:
        signal_type = kwargs.pop("signal_type", SignalType.FCR)
        duration_s = kwargs.pop("duration_s", 900.0)
        request = DispatchRequest(
            signal=make_signal(power_kw, signal_type, duration_s),  # type: ignore[arg-type]
            **kwargs,  # type: ignore[arg-type]
        )
        return await self.runtime.drive(self.engine.dispatch(request))


def two_vehicles(**changes: object) -> list[Vehicle]:
    return [make_vehicle("v1", **changes), make_vehicle("v2", **changes)]


async def test_all_acknowledged() -> None:
    """Go manager test: FCR 80 kW, 2 vehicles -> 2 orders, both acknowledged."""
    harness = Harness(two_vehicles())
    result = await harness.dispatch(20.0, dispatch_id="d-1")
    assert result.status is DispatchStatus.COMPLETED
    assert result.strategy is Strategy.OPTIMAL  # the FCR default
    assert result.ack_rate == 1.0
    assert result.assigned_kw == pytest.approx(20.0)
    assert result.acknowledged_kw == pytest.approx(20.0)
    assert result.orders_published == result.orders_acknowledged == 2
    assert harness.transport.published_vehicles == [["v1", "v2"]]
    order = harness.transport.calls[0][0]
    assert order.dispatch_id == "d-1"
    assert order.timestamp_ms == int(START.timestamp() * 1000)
    assert order.expires_at_ms == order.timestamp_ms + 900_000
    assert order.signal_type is SignalType.FCR
    response = result.as_response()
    assert_design_shape(response)
    assert response["status"] == "completed"
    assert response["started_at"] == "2025-07-07T10:00:00+00:00"
    assert response["vehicles"]["v1"] == {
        "power_kw": 10.0,
        "status": "acknowledged",
        "latency_ms": 10.0,
        "command_id": "cmd-1",
        "reason": None,
        "score": pytest.approx(0.7 * 0.7 + 0.1 * 0),
    }
    assert response["fallback"] == {}
    # The fleet learned the setpoints, participation and counters.
    assert harness.fleet.setpoints == {"v1": 10.0, "v2": 10.0}
    assert harness.fleet.participation == {"v1": 1, "v2": 1}
    assert harness.fleet.stats["v1"].acknowledged == 1
    assert harness.fleet.stats["v1"].last_latency_ms == pytest.approx(10.0)
    assert harness.engine.pending_dispatches() == []
    assert harness.runtime.pending_timers == 0


async def test_fallback_round_is_sent_and_acknowledged() -> None:
    """Fixed: Go only computed the fallback; now it is a second round of orders."""
    vehicles = [
        make_vehicle("v1", max_power_kw=20.0),
        make_vehicle("v2", max_power_kw=20.0),
        make_vehicle("v3", max_power_kw=20.0),
    ]
    harness = Harness(
        vehicles,
        {"v2": Rule(action="silent")},
        DispatchSettings(ack_timeout_s=2.0),
    )
    result = await harness.dispatch(30.0, strategy=Strategy.EQUAL)
    # v2's order timed out: it is revoked (0 kW) before its power is re-allocated.
    assert [len(call) for call in harness.transport.calls] == [3, 1, 2]
    (revoke,) = harness.transport.calls[1]
    assert (revoke.vehicle_id, revoke.power_kw) == ("v2", 0.0)
    assert revoke.dispatch_id == result.dispatch_id
    assert result.as_response()["revoked"] == {
        "v2": {"status": "pending", "latency_ms": None, "command_id": revoke.command_id}
    }
    fallback_orders = harness.transport.calls[2]
    assert {o.vehicle_id for o in fallback_orders} == {"v1", "v3"}
    # v1 and v3 have 10 kW of headroom and the same weight (SoC 0.7): 5 kW each.
    assert {o.vehicle_id: o.power_kw for o in fallback_orders} == {
        "v1": pytest.approx(15.0),
        "v3": pytest.approx(15.0),
    }
    assert result.vehicles["v2"].status is OrderStatus.TIMEOUT
    assert result.vehicles["v2"].latency_ms is None
    assert {vid: o.status for vid, o in result.fallback.items()} == {
        "v1": OrderStatus.ACKNOWLEDGED,
        "v3": OrderStatus.ACKNOWLEDGED,
    }
    assert result.status is DispatchStatus.COMPLETED
    assert result.acknowledged_kw == pytest.approx(30.0)
    assert result.ack_rate == pytest.approx(4 / 5)
    response = result.as_response()
    assert_design_shape(response)
    assert response["fallback"]["v1"]["power_kw"] == pytest.approx(15.0)
    assert result.fallback["v1"].round.value == "fallback"
    assert [o.vehicle_id for o in result.outcomes] == ["v1", "v2", "v3", "v1", "v3"]
    assert harness.fleet.setpoints == {"v1": 15.0, "v3": 15.0}
    assert harness.fleet.participation == {"v1": 1, "v3": 1}
    assert harness.fleet.reliability("v2") < 1.0


async def test_partial_when_donors_cannot_cover_the_residual() -> None:
    vehicles = [
        make_vehicle("v1", max_power_kw=10.0),
        make_vehicle("v2", max_power_kw=10.0),
    ]
    harness = Harness(vehicles, {"v2": Rule(action="reject", reason="busy")})
    result = await harness.dispatch(20.0)
    assert result.vehicles["v2"].status is OrderStatus.REJECTED
    assert result.vehicles["v2"].reason == "busy"
    assert result.as_response()["vehicles"]["v2"]["reason"] == "busy"
    # v1 is full: no donor, no fallback round.
    assert len(harness.transport.calls) == 1
    assert result.status is DispatchStatus.PARTIAL
    assert result.acknowledged_kw == pytest.approx(10.0)
    assert result.ack_rate == 0.5


async def test_rejected_everywhere_is_failed() -> None:
    harness = Harness(two_vehicles(), {}, DispatchSettings())
    harness.transport.default = Rule(action="reject", reason="no")
    result = await harness.dispatch(10.0)
    assert result.status is DispatchStatus.FAILED
    assert result.ack_rate == 0.0
    assert harness.fleet.setpoints == {}


async def test_timeout_uses_one_deadline_per_round() -> None:
    harness = Harness(
        two_vehicles(),
        {"v1": Rule(action="silent"), "v2": Rule(action="late", delay=9)},
    )
    result = await harness.dispatch(10.0)
    assert {vid: o.status for vid, o in result.vehicles.items()} == {
        "v1": OrderStatus.TIMEOUT,
        "v2": OrderStatus.TIMEOUT,
    }
    assert result.status is DispatchStatus.FAILED
    assert harness.runtime.clock == pytest.approx(5.0)
    assert result.completed_at == START + timedelta(seconds=5)
    # Both timed-out orders were revoked; nobody waits for the revokes' acks.
    assert set(result.revoked) == {"v1", "v2"}
    # The late acks arrive after the dispatch: counted as late, result unchanged
    # (v2 answers its revoke late as well).
    harness.runtime.run_all()
    assert harness.engine.tracker.counters["late"] == 2
    assert harness.fleet.stats["v2"].late == 2
    assert harness.fleet.stats["v2"].timeouts == 1
    assert harness.fleet.last_seen["v2"] == pytest.approx(14.0)  # its revoke's ack


async def test_publish_failure_after_retries() -> None:
    harness = Harness([make_vehicle("v1")], {"v1": Rule(publish_failures=NEVER)})
    result = await harness.dispatch(10.0)
    assert len(harness.transport.calls) == 4  # 1 attempt + 3 retries
    assert harness.transport.attempts == {"cmd-1": 4}
    assert harness.runtime.sleeps == pytest.approx([0.1, 0.2, 0.4])
    outcome = result.vehicles["v1"]
    assert outcome.status is OrderStatus.PUBLISH_FAILED
    assert outcome.reason == "ConnectionError: publish failed"
    assert result.status is DispatchStatus.FAILED
    assert result.ack_rate is None  # nothing was published (docs/actions.md#ack-rate)
    assert harness.fleet.stats["v1"].publish_failed == 1
    assert harness.fleet.reliability("v1") == 1.0  # not the vehicle's fault


async def test_only_failed_orders_are_retried() -> None:
    harness = Harness(
        two_vehicles(),
        {"v2": Rule(publish_failures=2)},
        DispatchSettings(retry_backoff_s=0.5),
    )
    result = await harness.dispatch(10.0)
    assert harness.transport.published_vehicles == [["v1", "v2"], ["v2"], ["v2"]]
    assert harness.runtime.sleeps == [0.5, 1.0]
    assert result.status is DispatchStatus.COMPLETED


async def test_transport_errors_fail_every_order_of_the_call() -> None:
    harness = Harness(two_vehicles(), settings=DispatchSettings(publish_retries=0))
    harness.transport.raise_on_call = 1
    result = await harness.dispatch(10.0)
    assert {o.status for o in result.vehicles.values()} == {OrderStatus.PUBLISH_FAILED}
    assert result.vehicles["v1"].reason == "ConnectionError: broker gone"
    short = Harness(two_vehicles(), settings=DispatchSettings(publish_retries=0))
    short.transport.short_result = True
    result = await short.dispatch(10.0)
    assert {o.status for o in result.vehicles.values()} == {OrderStatus.PUBLISH_FAILED}
    assert "results for 2 orders" in (result.vehicles["v1"].reason or "")


async def test_ack_before_the_publish_call_returns_is_not_lost() -> None:
    """Fixed Go race: the pending entry exists before the order is published."""
    harness = Harness(two_vehicles(), {"v1": Rule(action="instant")})
    result = await harness.dispatch(10.0)
    assert result.vehicles["v1"].status is OrderStatus.ACKNOWLEDGED
    assert result.vehicles["v1"].latency_ms == 0.0
    assert result.status is DispatchStatus.COMPLETED


async def test_an_ack_racing_a_publish_error_counts() -> None:
    """An ack that races a publish error wins.

    The publish call reports an error but the vehicle got the order and acked:
    the order is acknowledged and not retried.
    """
    harness = Harness([make_vehicle("v1")], {"v1": Rule(action="instant")})

    original = harness.transport.publish

    async def flaky(orders: Sequence[Order]) -> list[Exception | None]:
        await original(orders)
        return [TimeoutError("no PUBACK")] * len(orders)

    harness.transport.publish = flaky  # type: ignore[method-assign]
    result = await harness.dispatch(10.0)
    assert result.vehicles["v1"].status is OrderStatus.ACKNOWLEDGED
    assert len(harness.transport.calls) == 1


async def test_dry_run_publishes_nothing() -> None:
    harness = Harness([*two_vehicles(), make_vehicle("v3", is_v2g=False)])
    result = await harness.dispatch(20.0, dry_run=True)
    assert harness.transport.calls == []
    assert result.status is DispatchStatus.PLANNED
    assert result.ack_rate is None
    assert result.acknowledged_kw == 0.0
    assert result.assigned_kw == pytest.approx(20.0)
    assert {o.status for o in result.vehicles.values()} == {OrderStatus.PLANNED}
    assert result.excluded == {"v3": ExclusionReason.NOT_V2G}
    response = result.as_response()
    assert_design_shape(response)
    assert response["vehicles"]["v1"]["command_id"] is None
    assert response["status"] == "planned"
    assert harness.fleet.setpoints == {}
    assert harness.engine.tracker.pending_count == 0


async def test_zero_power_returns_only_busy_vehicles_to_idle() -> None:
    """Fixed Go quirk: a 0 kW signal sent 0 kW to every vehicle."""
    harness = Harness([*two_vehicles(), make_vehicle("v3")])
    await harness.dispatch(10.0, vehicle_ids=("v1",))
    assert harness.fleet.setpoints == {"v1": 10.0}
    result = await harness.dispatch(0.0)
    assert harness.transport.published_vehicles[-1] == ["v1"]
    assert harness.transport.calls[-1][0].power_kw == 0.0
    assert result.status is DispatchStatus.COMPLETED
    assert result.ack_rate == 1.0
    assert result.requested_kw == 0.0
    assert result.vehicles["v1"].score is None
    assert harness.fleet.setpoints == {}
    assert_design_shape(result.as_response())
    # Nothing left to return to idle: completed, no orders.
    calls = len(harness.transport.calls)
    idle = await harness.dispatch(0.0)
    assert idle.status is DispatchStatus.COMPLETED
    assert idle.vehicles == {}
    assert idle.ack_rate is None
    assert len(harness.transport.calls) == calls


async def test_zero_power_partial_and_failed() -> None:
    harness = Harness(two_vehicles())
    await harness.dispatch(20.0)
    harness.transport.rules["v2"] = Rule(action="silent")
    partial = await harness.dispatch(0.0)
    assert partial.status is DispatchStatus.PARTIAL
    assert partial.ack_rate == 0.5
    assert harness.fleet.setpoints == {"v2": 10.0}
    failed = await harness.dispatch(0.0)
    assert failed.status is DispatchStatus.FAILED
    assert len(harness.transport.calls[-1]) == 1
    # A zero-power dry run plans the same orders.
    planned = await harness.dispatch(0.0, dry_run=True)
    assert planned.status is DispatchStatus.PLANNED
    assert list(planned.vehicles) == ["v2"]


async def test_no_eligible_vehicle() -> None:
    harness = Harness([make_vehicle("v1", is_v2g=False), make_vehicle("v2", soc=0.5)])
    result = await harness.dispatch(10.0)
    assert result.status is DispatchStatus.FAILED
    assert harness.transport.calls == []
    assert result.excluded == {
        "v1": ExclusionReason.NOT_V2G,
        "v2": ExclusionReason.SOC_BELOW_MIN,
    }
    assert result.ack_rate is None
    assert result.shortfall_kw == 10.0
    assert_design_shape(result.as_response())


async def test_vehicle_selection() -> None:
    harness = Harness([*two_vehicles(), make_vehicle("v3")])
    result = await harness.dispatch(10.0, vehicle_ids=("v3", "v3"))
    assert list(result.vehicles) == ["v3"]
    with pytest.raises(InvalidValueError) as info:
        await harness.dispatch(10.0, vehicle_ids=("v1", "x", "y"))
    assert info.value.field == "vehicles"
    assert "x, y" in info.value.reason
    many = tuple(f"ghost{i}" for i in range(12))
    with pytest.raises(InvalidValueError, match="…"):
        await harness.dispatch(10.0, vehicle_ids=many)
    empty = await harness.dispatch(10.0, vehicle_ids=())
    assert empty.status is DispatchStatus.FAILED


async def test_concurrent_dispatches_supersede_and_never_mix_acks() -> None:
    harness = Harness(
        [make_vehicle("v1"), make_vehicle("v2")],
        {"v2": Rule(delay=0.5)},
        DispatchSettings(fallback=FallbackMode.NONE),
    )
    runtime = harness.runtime
    first = DispatchRequest(
        signal=make_signal(20.0), strategy=Strategy.EQUAL, dispatch_id="first"
    )
    second = DispatchRequest(
        signal=make_signal(6.0, SignalType.AFRR),
        vehicle_ids=("v2",),
        dispatch_id="second",
    )

    async def later() -> DispatchResult:
        await runtime.sleep(0.1)
        assert [r["dispatch_id"] for r in harness.engine.pending_dispatches()] == [
            "first"
        ]
        return await harness.engine.dispatch(second)

    one, two = await runtime.drive(
        asyncio.gather(harness.engine.dispatch(first), later())
    )
    assert one.vehicles["v1"].status is OrderStatus.ACKNOWLEDGED
    assert one.vehicles["v2"].status is OrderStatus.SUPERSEDED
    assert one.status is DispatchStatus.PARTIAL
    assert one.ack_rate == 1.0  # superseded orders do not count against it
    assert two.vehicles["v2"].status is OrderStatus.ACKNOWLEDGED
    assert two.vehicles["v2"].power_kw == 6.0
    assert two.status is DispatchStatus.COMPLETED
    assert harness.fleet.setpoints == {"v1": 10.0, "v2": 6.0}
    # The ack of the superseded order arrived too: late, nothing changed.
    assert harness.engine.tracker.counters["late"] == 1
    assert harness.fleet.stats["v2"].superseded == 1


async def test_fallback_skips_vehicles_busy_in_another_dispatch() -> None:
    """A vehicle with an order of another dispatch in flight is no donor.

    Main leaves v3 unused (optimal), v1 times out at t=5 s. v3 would be a donor
    (see the test above) but has a pending order of another dispatch then.
    """
    harness = Harness(
        [
            make_vehicle("v1", soc=0.95, max_power_kw=10.0),
            make_vehicle("v3", soc=0.65, max_power_kw=10.0),
        ],
        {"v1": Rule(action="silent"), "v3": Rule(delay=4.5)},
    )
    runtime = harness.runtime

    async def other() -> DispatchResult:
        await runtime.sleep(1.0)
        return await harness.engine.dispatch(
            DispatchRequest(
                signal=make_signal(5.0, SignalType.AFRR),
                vehicle_ids=("v3",),
                dispatch_id="other",
            )
        )

    main = DispatchRequest(signal=make_signal(10.0), dispatch_id="main")
    one, two = await runtime.drive(
        asyncio.gather(harness.engine.dispatch(main), other())
    )
    assert list(one.vehicles) == ["v1"]
    assert one.vehicles["v1"].status is OrderStatus.TIMEOUT
    assert one.fallback == {}
    assert one.status is DispatchStatus.FAILED
    assert two.vehicles["v3"].status is OrderStatus.ACKNOWLEDGED


async def test_duplicate_dispatch_id_in_flight() -> None:
    harness = Harness(two_vehicles(), {"v1": Rule(delay=1.0)})
    request = DispatchRequest(signal=make_signal(10.0), dispatch_id="same")

    async def again() -> None:
        await harness.runtime.sleep(0.1)
        with pytest.raises(InvalidValueError) as info:
            await harness.engine.dispatch(request)
        assert info.value.field == "dispatch_id"

    await harness.runtime.drive(
        asyncio.gather(harness.engine.dispatch(request), again())
    )


async def test_gateway_vehicles_are_acked_through_their_gateway() -> None:
    harness = Harness(
        [make_vehicle("g1", gateway="depot"), make_vehicle("g2", gateway="depot")]
    )
    result = await harness.dispatch(10.0)
    assert {o.gateway for o in harness.transport.calls[0]} == {"depot"}
    assert result.status is DispatchStatus.COMPLETED
    assert harness.engine.tracker.counters["accepted"] == 2


def test_handle_gateway_acks_summary_and_malformed() -> None:
    harness = Harness([make_vehicle("g1", gateway="depot")])
    engine = harness.engine
    assert engine.handle_gateway_acks(b"{}") is None
    assert engine.tracker.counters["malformed"] == 1
    summary = engine.handle_gateway_acks(
        json.dumps(
            {"acks": [{"command_id": "x", "vehicle_id": "g1"}, {"command_id": "y"}]}
        ).encode()
    )
    assert summary == {AckDisposition.UNKNOWN: 1}
    assert engine.tracker.counters["invalid_items"] == 1


def test_handle_ack_counts_malformed_payloads() -> None:
    harness = Harness([make_vehicle("v1")])
    assert harness.engine.handle_ack("v1", b"\xff") is None
    assert harness.engine.handle_ack("v1", b'{"command_id":"zzz"}') is (
        AckDisposition.UNKNOWN
    )
    assert harness.engine.tracker.counters["malformed"] == 1


async def test_applied_power_below_the_order_goes_to_fallback() -> None:
    harness = Harness(
        [make_vehicle("v1", max_power_kw=20.0), make_vehicle("v2", max_power_kw=20.0)],
        {"v1": Rule(applied_power_kw=4.0)},
    )
    result = await harness.dispatch(20.0, strategy=Strategy.EQUAL)
    assert result.vehicles["v1"].status is OrderStatus.ACKNOWLEDGED
    assert result.vehicles["v1"].delivered_kw == 4.0
    # Residual 6 kW; only v2 (fully applied) is a donor: (20 - 10) x 0.7 = 7.
    assert list(result.fallback) == ["v2"]
    assert result.fallback["v2"].power_kw == pytest.approx(16.0)
    assert result.acknowledged_kw == pytest.approx(20.0)
    assert harness.fleet.setpoints == {"v1": 4.0, "v2": pytest.approx(16.0)}


async def test_fallback_donors_include_unused_eligible_vehicles() -> None:
    """Optimal leaves the low scores unused; they are donors for the residual."""
    harness = Harness(
        [
            make_vehicle("hi", soc=0.95, max_power_kw=10.0),
            make_vehicle("lo", soc=0.65, max_power_kw=10.0),
        ],
        {"hi": Rule(action="silent")},
    )
    result = await harness.dispatch(10.0)
    assert list(result.vehicles) == ["hi"]
    # Filled to its safe headroom (Go: 10 x SoC 0.65 = 6.5 kW, a partial dispatch).
    assert result.fallback["lo"].power_kw == pytest.approx(10.0)
    assert result.fallback["lo"].status is OrderStatus.ACKNOWLEDGED
    assert result.acknowledged_kw == pytest.approx(10.0)
    assert result.status is DispatchStatus.COMPLETED


async def test_no_fallback_mode_leaves_the_residual() -> None:
    """Fallback `none` re-allocates and sends nothing.

    Go test "failing publish -> FallbackAssignments non-nil even with Noop",
    fixed: with fallback `none` nothing is re-allocated or sent.
    """
    harness = Harness(
        two_vehicles(),
        {"v1": Rule(publish_failures=NEVER)},
        DispatchSettings(fallback=FallbackMode.NONE, publish_retries=0),
    )
    result = await harness.dispatch(20.0, strategy=Strategy.EQUAL)
    assert result.fallback == {}
    assert len(harness.transport.calls) == 1
    assert result.status is DispatchStatus.PARTIAL


async def test_balanced_manager_case_fills_the_headroom() -> None:
    """Go: Equal 80 kW over 2 x (50 kW, SoC 0.8), v1 fails -> v2 48, v1 0.

    v2's 10 kW of headroom are safe, so it now goes to 50 kW (Go: 40 + 10 x 0.8),
    *sent* to v2 as its new total setpoint.
    """
    vehicles = [
        make_vehicle("v1", soc=0.8, max_power_kw=50.0, battery_kwh=100.0),
        make_vehicle("v2", soc=0.8, max_power_kw=50.0, battery_kwh=100.0),
    ]
    harness = Harness(
        vehicles,
        {"v1": Rule(publish_failures=NEVER)},
        DispatchSettings(publish_retries=0),
    )
    result = await harness.dispatch(80.0, strategy=Strategy.EQUAL)
    assert result.fallback["v2"].power_kw == pytest.approx(50.0)
    assert harness.transport.calls[-1][0].power_kw == pytest.approx(50.0)
    assert harness.fleet.setpoints == {"v2": pytest.approx(50.0)}


async def test_a_timeout_on_fcr_is_covered_by_the_safe_headroom() -> None:
    """Issue #14: 20 kW FCR over two 22 kW vehicles at SoC 0.7, one times out.

    Go gave the other 10 + 12 x 0.7 = 18.4 kW (partial); its 12 kW of headroom
    are safe, so it takes the whole 10 kW residual and the dispatch completes.
    """
    harness = Harness(two_vehicles(), {"v1": Rule(action="silent")}, DispatchSettings())
    result = await harness.dispatch(20.0, strategy=Strategy.EQUAL)
    assert result.vehicles["v1"].status is OrderStatus.TIMEOUT
    assert result.fallback["v2"].power_kw == pytest.approx(20.0)
    assert result.acknowledged_kw == pytest.approx(20.0)
    assert result.status is DispatchStatus.COMPLETED


async def test_a_rejection_over_the_limit_lowers_the_next_order() -> None:
    """Rejected for exceeding its power: the next dispatch asks 90 % of it."""
    harness = Harness(
        [make_vehicle("v", max_power_kw=10.0)],
        {"v": Rule(action="reject", reason="exceeds_max_power")},
    )
    first = await harness.dispatch(-10.0, signal_type=SignalType.AFRR)
    assert first.vehicles["v"].status is OrderStatus.REJECTED
    assert harness.fleet.learned_limits.get("v") == PowerLimits(charge_kw=9.0)
    harness.transport.rules["v"] = Rule()
    second = await harness.dispatch(-10.0, signal_type=SignalType.AFRR)
    assert second.vehicles["v"].power_kw == pytest.approx(-9.0)
    assert second.shortfall_kw == pytest.approx(1.0)
    # Discharging is not affected.
    third = await harness.dispatch(10.0, signal_type=SignalType.AFRR)
    assert third.vehicles["v"].power_kw == pytest.approx(10.0)


async def test_prediction_hook_sets_availability() -> None:
    """Go test: availability {v1: 1, v2: 0.1} with default Smart -> v1 > v2."""
    profiles = {"v1": [1.0] * 168, "v2": [0.1] * 168}
    harness = Harness(
        two_vehicles(),
        settings=DispatchSettings(strategies={SignalType.FCR: Strategy.SMART}),
        prediction=HourOfWeekProfile(profiles),
    )
    result = await harness.dispatch(10.0)
    assert result.vehicles["v1"].power_kw > result.vehicles["v2"].power_kw
    assert result.assigned_kw == pytest.approx(10.0)
    assert result.scores["v1"] - result.scores["v2"] == pytest.approx(0.09)


async def test_reliability_learned_from_acks_shifts_power() -> None:
    """The Go AckBasedTuner idea per vehicle: timeouts lower a vehicle's score."""
    harness = Harness(
        two_vehicles(),
        {"v2": Rule(action="silent")},
        DispatchSettings(fallback=FallbackMode.NONE),
    )
    for _ in range(3):
        await harness.dispatch(10.0, strategy=Strategy.SMART)
    assert harness.fleet.reliability("v2") == pytest.approx(0.8**3)
    harness.transport.rules.clear()
    result = await harness.dispatch(10.0, strategy=Strategy.SMART)
    # v1 pays the fairness penalty of the busiest vehicle (0.1) and still wins.
    assert result.scores["v1"] == pytest.approx(0.49 - 0.1)
    assert result.scores["v2"] == pytest.approx(0.49 * 0.8**3)
    assert result.vehicles["v1"].power_kw > result.vehicles["v2"].power_kw


async def test_order_ttl_setting() -> None:
    harness = Harness([make_vehicle("v1")], settings=DispatchSettings(order_ttl_s=30))
    await harness.dispatch(5.0)
    order = harness.transport.calls[0][0]
    assert order.expires_at_ms - order.timestamp_ms == 30_000
    setpoint = harness.fleet.setpoint("v1")
    assert setpoint is not None
    assert setpoint.expires_at == START + timedelta(seconds=30)


async def test_interrupted_record_and_response() -> None:
    harness = Harness(two_vehicles(), {"v2": Rule(action="silent")})
    seen: list[list[dict[str, object]]] = []
    original = harness.transport.publish

    async def spy(orders: Sequence[Order]) -> list[Exception | None]:
        seen.append(harness.engine.pending_dispatches())
        return await original(orders)

    harness.transport.publish = spy  # type: ignore[method-assign]
    request = DispatchRequest(signal=make_signal(20.0), dispatch_id="d-int")
    task = asyncio.ensure_future(harness.engine.dispatch(request))
    for _ in range(20):
        await asyncio.sleep(0)
    harness.runtime.fire_next()  # v1's ack arrives
    for _ in range(20):
        await asyncio.sleep(0)
    # Listed from before the first publish call: the starting record, with orders.
    starting = starting_record(request, Strategy.OPTIMAL)
    assert starting["phase"] == "starting"
    assert (starting["assigned_kw"], starting["vehicles"]) == (0.0, {})
    first = seen[0][0]
    orders = first["vehicles"]
    assert isinstance(orders, dict)
    assert first == {
        **starting,
        "phase": "publishing",
        "assigned_kw": 20.0,
        "vehicles": orders,
    }
    assert {order["status"] for order in orders.values()} == {"pending"}
    # A stop before any order was registered: nothing to report.
    closed = interrupted_response(starting, START)
    assert_design_shape(closed)
    assert (closed["vehicles"], closed["ack_rate"]) == ({}, None)
    records = harness.engine.pending_dispatches()
    assert len(records) == 1
    record = json.loads(json.dumps(records[0]))
    assert record["phase"] == "waiting"
    assert record["vehicles"]["v2"]["status"] == "pending"
    assert record["vehicles"]["v1"]["status"] == "acknowledged"
    response = interrupted_response(record, START + timedelta(seconds=1))
    assert_design_shape(response)
    assert response["status"] == "interrupted"
    assert response["vehicles"]["v2"]["status"] == "timeout"
    assert response["acknowledged_kw"] == pytest.approx(10.0)
    assert response["ack_rate"] == 0.5
    assert response["completed_at"] == "2025-07-07T10:00:01+00:00"
    # Home Assistant stops: the dispatch task is cancelled.
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert harness.engine.pending_dispatches() == []
    assert harness.engine.tracker.pending_count == 0


async def test_strategy_override_and_settings_validation() -> None:
    harness = Harness(two_vehicles())
    result = await harness.dispatch(10.0, strategy=Strategy.SEGMENTED)
    assert result.strategy is Strategy.SEGMENTED
    assert DispatchSettings().strategy_for(SignalType.MA) is Strategy.SMART
    assert DispatchSettings(strategies={}).strategy_for(SignalType.FCR) is (
        Strategy.SMART
    )
    for bad in (
        {"ack_timeout_s": 0},
        {"publish_retries": -1},
        {"retry_backoff_s": -1.0},
        {"order_ttl_s": 0.0},
    ):
        with pytest.raises(InvalidValueError):
            DispatchSettings(**bad)  # type: ignore[arg-type]


async def test_zero_weights_smart_with_constraints_off() -> None:
    harness = Harness(
        [make_vehicle("v1", soc=0.05)],
        settings=DispatchSettings(
            weights=ZERO_WEIGHTS, safety=SafetySettings(soc_constraints=False)
        ),
    )
    result = await harness.dispatch(5.0, signal_type=SignalType.MA)
    assert result.status is DispatchStatus.COMPLETED


async def test_large_fleet_dispatch() -> None:
    """2,000 vehicles in one round trip: one publish call, one deadline."""
    vehicles = [make_vehicle(f"v{i:05}") for i in range(2_000)]
    harness = Harness(vehicles, settings=DispatchSettings())
    result = await harness.dispatch(5_000.0, strategy=Strategy.SMART)
    assert len(harness.transport.calls) == 1
    assert len(harness.transport.calls[0]) == 2_000
    assert result.status is DispatchStatus.COMPLETED
    assert result.acknowledged_kw == pytest.approx(5_000.0)


async def test_silent_vehicles_are_excluded_as_unavailable() -> None:
    """A vehicle not heard from within the stale timeout is not ordered."""
    harness = Harness(two_vehicles(), settings=DispatchSettings(stale_timeout_s=60.0))
    harness.fleet.touch("v2", 100.0)
    harness.runtime.clock = 120.0  # v1 last seen at 0 s, v2 at 100 s
    result = await harness.dispatch(10.0)
    assert result.excluded == {"v1": ExclusionReason.UNAVAILABLE}
    assert list(result.vehicles) == ["v2"]
    # The vehicle itself is untouched: it is live again as soon as it speaks.
    assert harness.fleet.vehicles["v1"].available
    with pytest.raises(InvalidValueError, match="stale_timeout_s"):
        DispatchSettings(stale_timeout_s=0.0)


async def test_listed_in_flight_until_the_fleet_has_learned() -> None:
    """A stop while the result is being recorded loses no acknowledged order."""
    harness = Harness(two_vehicles())
    at_learning: list[list[dict[str, object]]] = []
    harness.when_fleet_learns(
        lambda: at_learning.append(harness.engine.pending_dispatches())
    )
    result = await harness.dispatch(20.0)
    assert result.status is DispatchStatus.COMPLETED
    [records] = at_learning
    assert [r["dispatch_id"] for r in records] == [result.dispatch_id]
    statuses = {vid: o["status"] for vid, o in records[0]["vehicles"].items()}
    assert statuses == {"v1": "acknowledged", "v2": "acknowledged"}
    assert harness.engine.pending_dispatches() == []


async def test_chunked_walks_give_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Orders and outcomes built a chunk at a time: same dispatch, loop in between."""
    fleet = [make_vehicle(f"v{i}") for i in range(7)]
    rules = {"v3": Rule(action="reject", reason="busy")}

    async def run(step_size: int) -> tuple[dict[str, object], int, list[Order]]:
        monkeypatch.setattr("custom_components.v2g.engine.steps.STEP_SIZE", step_size)
        harness = Harness(fleet, rules)
        iterations = 0
        running = True

        def tick() -> None:
            nonlocal iterations
            iterations += 1
            if running:
                asyncio.get_running_loop().call_soon(tick)

        asyncio.get_running_loop().call_soon(tick)
        result = await harness.dispatch(50.0, dispatch_id="d-chunks")
        running = False
        orders = [order for call in harness.transport.calls for order in call]
        return result.as_response(), iterations, orders

    whole, whole_iterations, whole_orders = await run(1_000)
    chunked, chunked_iterations, chunked_orders = await run(2)
    for response in (whole, chunked):
        response.pop("started_at")
        response.pop("completed_at")
    assert chunked == whole
    assert chunked_orders == whole_orders
    # One shared timestamp and expiry for the orders of a round.
    assert len({(o.timestamp_ms, o.expires_at_ms) for o in chunked_orders[:7]}) == 1
    assert chunked_iterations > whole_iterations


async def test_kw_are_rounded_to_the_watt_and_scores_to_4_decimals() -> None:
    """10 kW over 3 vehicles: 3.333 kW each, yet 10.0 kW in total.

    Totals are summed exactly, then rounded once (3 x 3.333 would be 9.999).
    """
    harness = Harness([make_vehicle(f"v{i}", soc=0.712345) for i in range(3)])
    records: list[dict[str, object]] = []
    harness.when_fleet_learns(
        lambda: records.extend(harness.engine.pending_dispatches())
    )
    result = await harness.dispatch(
        10.0, strategy=Strategy.EQUAL, signal_type=SignalType.MA
    )
    response = result.as_response()
    [record] = records
    assert result.vehicles["v0"].power_kw != 3.333  # the result keeps exact values
    for vehicle_id, outcome in result.vehicles.items():
        assert outcome.score is not None
        assert outcome.score != round(outcome.score, 4)
        item = response["vehicles"][vehicle_id]
        assert item["power_kw"] == 3.333
        assert item["score"] == round(outcome.score, 4)
        assert item["latency_ms"] == 10.0
        in_flight = record["vehicles"][vehicle_id]  # type: ignore[index]
        assert in_flight["power_kw"] == in_flight["delivered_kw"] == 3.333
        assert in_flight["score"] == item["score"]
    for totals in (response, record):
        assert totals["requested_kw"] == 10.0
        assert totals["assigned_kw"] == 10.0
    assert response["acknowledged_kw"] == 10.0
    # A charge below half a watt is reported as 0.0, not -0.0.
    tiny = OrderOutcome("v0", -0.0004, OrderStatus.ACKNOWLEDGED, command_id=None)
    assert json.dumps(tiny.as_fallback_response()["power_kw"]) == "0.0"
