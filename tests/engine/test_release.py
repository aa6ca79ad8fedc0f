"""Revoke before re-allocating, and release at the end of a dispatch."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from custom_components.v2g.engine import (
    DispatchSettings,
    FleetState,
    OrderStatus,
    Strategy,
)

from .fakes import START, Rule, make_vehicle
from .test_dispatch import Harness


def two_vehicles(**changes: object) -> list:  # type: ignore[type-arg]
    return [
        make_vehicle("v1", max_power_kw=20.0, **changes),
        make_vehicle("v2", max_power_kw=20.0, **changes),
    ]


async def test_revoke_ack_ends_the_previous_setpoint() -> None:
    """A vehicle that answers only its revoke is idle, not at its old setpoint."""
    harness = Harness(two_vehicles(), {}, DispatchSettings(ack_timeout_s=2.0))
    await harness.dispatch(10.0)
    assert harness.fleet.setpoints == {"v1": 5.0, "v2": 5.0}
    harness.transport.rules["v2"] = Rule(action="late", delay=3.0)
    harness.transport.idle_rules["v2"] = Rule(delay=1.0)
    result = await harness.dispatch(30.0)
    assert result.vehicles["v2"].status is OrderStatus.TIMEOUT
    assert result.revoked["v2"].status is OrderStatus.PENDING
    # The late answers: to the timed-out order (late), then to the revoke.
    harness.runtime.run_all()
    assert "v2" not in harness.fleet.setpoints
    assert harness.fleet.stats["v2"].late == 1


async def test_no_revoke_for_rejected_or_idle_orders() -> None:
    harness = Harness(
        two_vehicles(), {"v2": Rule(action="reject", reason="busy")}, DispatchSettings()
    )
    result = await harness.dispatch(10.0)
    assert result.revoked == {}
    assert "revoked" not in result.as_response()
    assert [len(call) for call in harness.transport.calls] == [2, 1]  # + fallback


async def test_release_sends_zero_to_setpoints_that_ended() -> None:
    harness = Harness(two_vehicles(), {}, DispatchSettings())
    result = await harness.dispatch(10.0, duration_s=10.0)
    assert await harness.engine.release_ended() == {}  # nothing ended yet
    harness.runtime.clock += 11.0
    released = await harness.runtime.drive(harness.engine.release_ended())
    assert list(released) == [result.dispatch_id]
    assert {o.vehicle_id: o.status for o in released[result.dispatch_id]} == {
        "v1": OrderStatus.ACKNOWLEDGED,
        "v2": OrderStatus.ACKNOWLEDGED,
    }
    orders = harness.transport.calls[-1]
    assert {(o.vehicle_id, o.power_kw) for o in orders} == {("v1", 0.0), ("v2", 0.0)}
    assert {o.dispatch_id for o in orders} == {result.dispatch_id}
    assert {o.signal_type for o in orders} == {result.signal.signal_type}
    assert harness.fleet.energy.unreleased == {}
    assert await harness.engine.release_ended() == {}  # released once


async def test_release_skips_superseded_pending_and_self_releasing() -> None:
    harness = Harness(
        [*two_vehicles(), make_vehicle("v3", max_power_kw=20.0)],
        {},
        DispatchSettings(),
    )
    first = await harness.dispatch(15.0, duration_s=10.0)
    # A newer order to v1 replaced its setpoint before the end.
    await harness.dispatch(5.0, duration_s=900.0, vehicle_ids=("v1",))
    harness.runtime.clock += 11.0
    harness.transport.rules["v2"] = Rule(action="silent")
    released = await harness.runtime.drive(
        harness.engine.release_ended(skip=lambda vehicle_id: vehicle_id == "v3")
    )
    assert {o.vehicle_id: o.status for o in released[first.dispatch_id]} == {
        "v2": OrderStatus.TIMEOUT
    }
    # v2 did not answer: it is released again next time; v3 released itself.
    assert set(harness.fleet.energy.unreleased) == {"v2"}
    assert harness.fleet.setpoints == {"v1": 5.0}


def test_unreleased_setpoints_survive_a_restart() -> None:
    fleet = FleetState()
    fleet.upsert(make_vehicle("v1"), 0.0)
    fleet.record_outcome(
        "v1",
        OrderStatus.ACKNOWLEDGED,
        5.0,
        10.0,
        START,
        expires_at=START + timedelta(seconds=10),
        dispatch_id="d1",
        signal_type="aFRR",
    )
    assert fleet.energy.next_expiry() == START + timedelta(seconds=10)
    stored = fleet.as_dict()
    restored = FleetState.from_dict(stored)
    restored.accrue(START + timedelta(minutes=5))  # Home Assistant was down
    (setpoint,) = restored.energy.unreleased.values()
    assert (setpoint.dispatch_id, setpoint.signal_type) == ("d1", "aFRR")
    assert restored.setpoints == {}
    assert restored.energy.next_expiry() is None
    again = FleetState.from_dict(restored.as_dict())
    assert set(again.energy.unreleased) == {"v1"}
    # Data stored before releases existed loads: its setpoints name no dispatch.
    del stored["unreleased"]
    for item in stored["setpoints"].values():
        del item["dispatch_id"], item["signal_type"]
    old = FleetState.from_dict(stored)
    old.accrue(START + timedelta(minutes=5))
    assert old.energy.unreleased == {}


@pytest.mark.parametrize("power_kw", [0.0])
async def test_return_to_idle_is_not_released(power_kw: float) -> None:
    harness = Harness(two_vehicles(), {}, DispatchSettings())
    await harness.dispatch(10.0, duration_s=10.0)
    await harness.dispatch(power_kw, duration_s=10.0)
    harness.runtime.clock += 11.0
    assert await harness.engine.release_ended() == {}


async def test_release_leaves_vehicles_of_a_running_dispatch_alone() -> None:
    """A newer order acknowledged but not yet learnt replaces the old setpoint."""
    harness = Harness(
        [*two_vehicles(), make_vehicle("v3", max_power_kw=20.0)],
        {"v3": Rule(action="silent")},
        DispatchSettings(),
    )
    await harness.dispatch(10.0, duration_s=10.0, vehicle_ids=("v1", "v2"))
    harness.runtime.clock += 11.0
    # v1 acknowledges the next dispatch at once; it waits for silent v3.
    running = asyncio.ensure_future(
        harness.dispatch(
            10.0, duration_s=900.0, vehicle_ids=("v1", "v3"), strategy=Strategy.EQUAL
        )
    )
    for _ in range(200):
        await asyncio.sleep(0)
        if len(harness.transport.calls) == 2:
            break
    harness.runtime.fire_next()  # v1's ack
    released = await harness.runtime.drive(harness.engine.release_ended())
    assert [o.vehicle_id for o in released.popitem()[1]] == ["v2"]
    for _ in range(1000):  # the release's driving may have fired its timers
        if running.done():
            break
        harness.runtime.fire_next()
        await asyncio.sleep(0)
    result = running.result()
    assert result.vehicles["v1"].status is OrderStatus.ACKNOWLEDGED
    assert harness.fleet.setpoints["v1"] > 0.0
