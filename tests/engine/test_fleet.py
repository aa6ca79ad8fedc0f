"""Fleet state: vehicles, learning from orders, setpoints and energy, persistence."""

from __future__ import annotations

from datetime import timedelta
import json

import pytest

from custom_components.v2g.engine import (
    STEP_SIZE,
    FleetState,
    InvalidValueError,
    OrderStatus,
    Telemetry,
    run_steps,
)
from custom_components.v2g.engine.delivery import PowerSample
from custom_components.v2g.engine.fleet import RELIABILITY_MIN

from .fakes import START, make_vehicle


def fleet_with(*ids: str) -> FleetState:
    fleet = FleetState()
    for vehicle_id in ids:
        fleet.upsert(make_vehicle(vehicle_id), 0.0)
    return fleet


def test_upsert_telemetry_touch_and_remove() -> None:
    fleet = FleetState()
    assert fleet.upsert(make_vehicle("v1"), 1.0) is True
    assert fleet.upsert(make_vehicle("v1", soc=0.9), 2.0) is False
    assert fleet.vehicles["v1"].soc == 0.9
    updated = fleet.apply_telemetry(
        Telemetry("v1", soc=0.4, available=False, charging=True, power_kw=-3.0),
        3.0,
        START,
    )
    assert (updated.soc, updated.available, updated.charging) == (0.4, False, True)
    assert updated.max_power_kw == 22.0  # untouched fields stay
    assert fleet.power.latest("v1") == PowerSample(-3.0, START)
    unchanged = fleet.apply_telemetry(Telemetry("v1"), 4.0, START)
    assert unchanged is fleet.vehicles["v1"]
    created = fleet.apply_telemetry(Telemetry("new", soc=0.3), 5.0, START)
    assert created.soc == 0.3
    assert fleet.last_seen == {"v1": 4.0, "new": 5.0}
    fleet.touch("v1", 9.0)
    fleet.touch("ghost", 9.0)
    assert fleet.last_seen["v1"] == 9.0
    assert "ghost" not in fleet.last_seen
    assert fleet.remove("v1") is True
    assert fleet.remove("v1") is False
    assert "v1" not in fleet.last_seen


def test_stale_ids() -> None:
    fleet = FleetState()
    fleet.upsert(make_vehicle("fresh"), 100.0)
    fleet.upsert(make_vehicle("old"), 10.0)
    restored = FleetState.from_dict(fleet.as_dict())
    assert fleet.stale_ids(120.0, 60.0) == ["old"]
    # Restored without a grace period: stale until they talk.
    assert sorted(restored.stale_ids(0.0, 60.0)) == ["fresh", "old"]
    graced = FleetState.from_dict(fleet.as_dict(), seen_at=500.0)
    assert graced.stale_ids(550.0, 60.0) == []


def test_reliability_learns_from_acks_and_stays_bounded() -> None:
    fleet = fleet_with("v1")
    assert fleet.reliability("v1") == 1.0
    fleet.record_outcome("v1", OrderStatus.TIMEOUT, 0.0, None, START)
    assert fleet.reliability("v1") == pytest.approx(0.8)
    fleet.record_outcome("v1", OrderStatus.ACKNOWLEDGED, 5.0, 12.0, START)
    assert fleet.reliability("v1") == pytest.approx(0.84)
    # Publish failures and superseded orders are not the vehicle's fault.
    fleet.record_outcome("v1", OrderStatus.PUBLISH_FAILED, 0.0, None, START)
    fleet.record_outcome("v1", OrderStatus.SUPERSEDED, 0.0, None, START)
    assert fleet.reliability("v1") == pytest.approx(0.84)
    for _ in range(50):
        fleet.record_outcome("v1", OrderStatus.REJECTED, 0.0, 3.0, START)
    assert fleet.reliability("v1") == RELIABILITY_MIN
    assert fleet.reliability_map() == {"v1": RELIABILITY_MIN}
    stats = fleet.stats["v1"]
    assert (stats.sent, stats.acknowledged, stats.rejected, stats.timeouts) == (
        52,
        1,
        50,
        1,
    )
    assert (stats.publish_failed, stats.superseded) == (1, 1)
    assert stats.ack_rate == pytest.approx(1 / 52)
    assert stats.last_latency_ms == 3.0
    assert stats.last_status is OrderStatus.REJECTED
    fleet.record_late("v1")
    fleet.record_late("ghost")
    assert fleet.stats["v1"].late == 1
    # Unknown vehicles are not resurrected.
    fleet.record_outcome("ghost", OrderStatus.ACKNOWLEDGED, 1.0, 1.0, START)
    assert "ghost" not in fleet.stats


def test_participation_share() -> None:
    fleet = fleet_with("a", "b", "c")
    assert fleet.participation_share() == {}
    fleet.add_participation(["a", "b", "ghost"])
    fleet.add_participation(["a"])
    assert fleet.participation == {"a": 2, "b": 1}
    assert fleet.participation_share() == {"a": 1.0, "b": 0.5}
    fleet.participation["a"] = 0
    fleet.participation["b"] = 0
    assert fleet.participation_share() == {}


def test_energy_is_integrated_from_acknowledged_setpoints() -> None:
    fleet = fleet_with("v1", "v2")
    fleet.record_outcome(
        "v1",
        OrderStatus.ACKNOWLEDGED,
        10.0,
        5.0,
        START,
        expires_at=START + timedelta(hours=2),
    )
    fleet.record_outcome("v2", OrderStatus.ACKNOWLEDGED, -4.0, 5.0, START)
    assert fleet.setpoints == {"v1": 10.0, "v2": -4.0}
    fleet.accrue(START + timedelta(minutes=30))
    assert fleet.energy_discharged_kwh == {"v1": pytest.approx(5.0)}
    assert fleet.energy_charged_kwh == {"v2": pytest.approx(2.0)}
    # Replacing the setpoint integrates the old one first.
    fleet.record_outcome(
        "v1", OrderStatus.ACKNOWLEDGED, 0.0, 5.0, START + timedelta(hours=1)
    )
    assert fleet.energy_discharged_kwh["v1"] == pytest.approx(10.0)
    assert "v1" not in fleet.setpoints
    fleet.accrue(START + timedelta(hours=1))
    assert fleet.energy_charged_kwh == {"v2": pytest.approx(4.0)}
    assert fleet.energy_discharged_kwh == {"v1": pytest.approx(10.0)}


def test_setpoint_stops_at_its_expiry() -> None:
    fleet = fleet_with("v1")
    fleet.record_outcome(
        "v1",
        OrderStatus.ACKNOWLEDGED,
        6.0,
        1.0,
        START,
        expires_at=START + timedelta(minutes=15),
    )
    fleet.accrue(START + timedelta(hours=3))
    assert fleet.energy_discharged_kwh["v1"] == pytest.approx(1.5)
    assert fleet.setpoints == {}
    fleet.accrue(START + timedelta(hours=4))
    assert fleet.energy_discharged_kwh["v1"] == pytest.approx(1.5)


def test_an_older_outcome_does_not_replace_a_newer_setpoint() -> None:
    fleet = fleet_with("v1")
    later = START + timedelta(seconds=10)
    fleet.record_outcome("v1", OrderStatus.ACKNOWLEDGED, 7.0, 1.0, later)
    fleet.record_outcome("v1", OrderStatus.ACKNOWLEDGED, 3.0, 1.0, START)
    assert fleet.setpoints == {"v1": 7.0}
    record = fleet.setpoint("v1")
    assert record is not None
    assert record.since == later


def test_round_trip_is_json_safe() -> None:
    fleet = fleet_with("v1", "v2")
    fleet.upsert(
        make_vehicle("v3", departure=START, gateway="depot", segment="commuter"), 0.0
    )
    fleet.record_outcome(
        "v1",
        OrderStatus.ACKNOWLEDGED,
        5.0,
        12.5,
        START,
        expires_at=START + timedelta(hours=1),
    )
    fleet.record_outcome("v2", OrderStatus.TIMEOUT, 0.0, None, START)
    fleet.add_participation(["v1"])
    fleet.accrue(START + timedelta(minutes=6))
    data = json.loads(json.dumps(fleet.as_dict()))
    restored = FleetState.from_dict(data, seen_at=1.0)
    assert restored.vehicles == fleet.vehicles
    assert restored.setpoints == fleet.setpoints
    assert restored.participation == fleet.participation
    assert restored.reliability_map() == fleet.reliability_map()
    assert restored.stats == fleet.stats
    assert restored.energy_discharged_kwh == fleet.energy_discharged_kwh
    restored.accrue(START + timedelta(minutes=12))
    assert restored.energy_discharged_kwh["v1"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "data",
    [
        {"version": 99},
        {"version": 1, "vehicles": [{"vehicle_id": "v1", "soc": 7}]},
        {"version": 1, "vehicles": "nope"},
        {
            "version": 1,
            "vehicles": [{"vehicle_id": "v1"}],
            "setpoints": {"v1": {"power_kw": 1}},
        },
        {
            "version": 1,
            "vehicles": [{"vehicle_id": "v1"}],
            "participation": {"v1": "x"},
        },
        {
            "version": 1,
            "vehicles": [{"vehicle_id": "v1"}],
            "setpoints": {
                "v1": {
                    "power_kw": 1,
                    "since": "2025-07-07T10:00:00",
                    "expires_at": None,
                    "accrued_until": "2025-07-07T10:00:00",
                }
            },
        },
    ],
)
def test_from_dict_refuses_malformed_state(data: dict[str, object]) -> None:
    with pytest.raises(InvalidValueError) as info:
        FleetState.from_dict(data)
    assert info.value.field == "fleet"


def test_from_dict_drops_data_of_unknown_vehicles() -> None:
    restored = FleetState.from_dict(
        {
            "version": 1,
            "vehicles": [{"vehicle_id": "v1"}],
            "participation": {"gone": 3},
            "reliability": {"v1": 5.0},
        }
    )
    assert restored.participation == {}
    assert restored.reliability("v1") == 1.0


def test_as_dict_steps_yield_per_chunk_and_tolerate_changes() -> None:
    """The saved form is built a chunk of vehicles at a time (`steps.STEP_SIZE`)."""
    ids = [f"v{i:04}" for i in range(2 * STEP_SIZE + 1)]
    fleet = fleet_with(*ids)
    for vehicle_id in ids[:STEP_SIZE]:
        fleet.record_outcome(vehicle_id, OrderStatus.ACKNOWLEDGED, 2.0, 5.0, START)
    steps = fleet.as_dict_steps()
    next(steps)  # the first chunk of vehicles is done
    # The fleet changes between two steps: no error, the listed vehicles are saved.
    fleet.upsert(make_vehicle("late"), 0.0)
    fleet.remove(ids[-1])
    yields = 1
    while True:
        try:
            next(steps)
        except StopIteration as done:
            data = done.value
            break
        yields += 1
    # 3 chunks of vehicles, 1 of setpoints, 1 of stats.
    assert yields == 5
    assert [v["vehicle_id"] for v in data["vehicles"]] == ids
    assert len(data["setpoints"]) == len(data["stats"]) == STEP_SIZE
    assert run_steps(fleet.as_dict_steps()) == fleet.as_dict()
    assert "late" in {v["vehicle_id"] for v in fleet.as_dict()["vehicles"]}
