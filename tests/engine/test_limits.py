"""Learned limits, the delivery tolerance and what telemetry power means."""

from __future__ import annotations

from datetime import datetime, timedelta
import json

import pytest

from custom_components.v2g.engine import (
    DeliveryTolerance,
    ExclusionReason,
    FleetState,
    InvalidValueError,
    OrderStatus,
    PowerLimits,
    SafetySettings,
    SignalType,
    Telemetry,
    evaluate_eligibility,
    vehicle_capacity,
)
from custom_components.v2g.engine.snapshot import flexibility_steps
from custom_components.v2g.engine.steps import run_steps

from .fakes import START, make_signal, make_vehicle

SAFE = SafetySettings()
HOUR = timedelta(hours=1)


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def fleet_holding(power_kw: float, **vehicle: object) -> FleetState:
    """A fleet whose vehicle `v` acknowledged `power_kw` at START."""
    fleet = FleetState()
    fleet.upsert(make_vehicle("v", **vehicle), 0.0)
    fleet.record_outcome(
        "v", OrderStatus.ACKNOWLEDGED, power_kw, 5.0, START, expires_at=START + HOUR
    )
    return fleet


def measure(fleet: FleetState, *samples: tuple[float, float]) -> list[bool]:
    """Feed (seconds after START, kW) telemetry samples; return what changed."""
    changed = []
    for seconds, power_kw in samples:
        before = fleet.learned_limits.get("v")
        fleet.apply_telemetry(Telemetry("v", power_kw=power_kw), seconds, at(seconds))
        changed.append(fleet.learned_limits.get("v") != before)
    return changed


def test_saturation_teaches_the_largest_measured_power() -> None:
    """Finding 1: 22 kW announced, no charge rate, the charger stops at ~7 kW."""
    fleet = fleet_holding(-10.0)
    assert measure(fleet, (4, -6.9), (6, -7.04), (8, -6.95)) == [False, False, True]
    assert fleet.learned_limits.get("v") == PowerLimits(charge_kw=7.0)
    # The allocator and the flexibility sensors only see 7 kW of charge now.
    assert vehicle_capacity(
        fleet.vehicles["v"],
        make_signal(-20.0),
        SAFE,
        START,
        fleet.learned_limits.limits,
    ) == pytest.approx(7.0)
    # Discharging is not limited by what was learned about charging.
    assert vehicle_capacity(
        fleet.vehicles["v"], make_signal(20.0), SAFE, START, fleet.learned_limits.limits
    ) == pytest.approx(22.0)


def test_samples_right_after_the_ack_or_after_expiry_teach_nothing() -> None:
    fleet = fleet_holding(-10.0)
    # Within the 3 s the vehicle has to ramp.
    assert measure(fleet, (0.5, -2.0), (1.5, -4.0), (2.5, -6.0)) == [False] * 3
    # After the order expired there is no setpoint to fall short of.
    late = 3600 + 10
    measure(fleet, (late, -2.0), (late + 2, -2.0), (late + 4, -2.0))
    assert fleet.learned_limits.get("v") is None


def test_a_sample_that_follows_breaks_the_streak() -> None:
    fleet = fleet_holding(10.0)
    # 9.2 kW of 10 is within the tolerance (max(10 %, 1 kW)).
    measure(fleet, (4, 7.0), (6, 7.0), (8, 9.2), (10, 7.0), (12, 7.0))
    assert fleet.learned_limits.get("v") is None
    measure(fleet, (14, 7.0))
    assert fleet.learned_limits.get("v") == PowerLimits(discharge_kw=7.0)


def test_a_new_setpoint_starts_a_new_streak() -> None:
    fleet = fleet_holding(10.0)
    measure(fleet, (4, 6.0), (6, 6.0))
    fleet.record_outcome(
        "v", OrderStatus.ACKNOWLEDGED, 12.0, 5.0, at(7), expires_at=START + HOUR
    )
    measure(fleet, (11, 6.0), (13, 6.0))
    assert fleet.learned_limits.get("v") is None
    measure(fleet, (15, 6.0))
    assert fleet.learned_limits.get("v") == PowerLimits(discharge_kw=6.0)


def test_an_order_acknowledged_and_not_followed_steps_the_limit_down() -> None:
    """The Go vehicle logs the refusal, acks, and keeps what it was doing."""
    fleet = fleet_holding(-10.0)
    measure(fleet, (4, 3.0), (6, 3.0), (8, 0.0))
    assert fleet.learned_limits.get("v") == PowerLimits(charge_kw=9.0)
    # The same order not followed again teaches nothing new.
    measure(fleet, (10, 0.0), (12, 0.0), (14, 0.0))
    assert fleet.learned_limits.get("v") == PowerLimits(charge_kw=9.0)


def test_rejections_over_the_limit_step_down_by_ten_percent() -> None:
    fleet = FleetState()
    fleet.upsert(make_vehicle("v", max_power_kw=10.0), 0.0)
    learned = fleet.learned_limits
    vehicle = fleet.vehicles["v"]
    assert learned.learn_rejection(vehicle, -10.0, "exceeds_max_power") is True
    assert learned.get("v") == PowerLimits(charge_kw=9.0)
    assert learned.learn_rejection(vehicle, -9.0, " Exceeds_Charge_Rate") is True
    assert learned.get("v") == PowerLimits(charge_kw=8.1)
    # A rejected larger order keeps the lower limit; other reasons teach nothing.
    assert learned.learn_rejection(vehicle, -10.0, "exceeds_max_power") is False
    assert learned.learn_rejection(vehicle, 8.0, "battery_empty") is False
    assert learned.learn_rejection(vehicle, 8.0, None) is False
    assert learned.learn_rejection(vehicle, 0.0, "exceeds_max_power") is False
    assert learned.learn_rejection(vehicle, 8.0, "exceeds_discharge_rate") is True
    assert learned.get("v") == PowerLimits(charge_kw=8.1, discharge_kw=7.2)
    # 90 % of an order far beyond what the vehicle announces restricts nothing.
    small = make_vehicle("small", max_power_kw=5.0)
    assert learned.learn_rejection(small, 20.0, "exceeds_max_power") is False
    assert learned.get("small") is None


def test_a_measurement_above_the_limit_raises_it_and_at_the_announced_drops_it() -> (
    None
):
    fleet = fleet_holding(-10.0)
    measure(fleet, (4, -7.0), (6, -7.0), (8, -7.0))
    # Charging on its own (no setpoint involved) faster than learned.
    assert measure(fleet, (10, -7.0), (12, -8.26)) == [False, True]
    assert fleet.learned_limits.get("v") == PowerLimits(charge_kw=8.3)
    assert measure(fleet, (14, -22.0)) == [True]
    assert fleet.learned_limits.get("v") is None


def test_the_same_reading_twice_is_one_sample() -> None:
    fleet = fleet_holding(10.0)
    for _ in range(3):
        fleet.apply_telemetry(Telemetry("v", power_kw=5.0), 4.0, at(4))
    assert fleet.learned_limits.get("v") is None
    assert fleet.power.power_kw("v") == 5.0
    assert fleet.observe_power("ghost", 1.0, at(6)) is False
    assert fleet.power.latest("ghost") is None
    fleet.remove("v")
    assert fleet.power.latest("v") is None


@pytest.mark.parametrize(("power_kw", "soc"), [(-10.0, 0.97), (10.0, 0.04)])
def test_a_tapering_battery_teaches_nothing(power_kw: float, soc: float) -> None:
    fleet = fleet_holding(power_kw, soc=soc)
    measure(fleet, (4, power_kw / 5), (6, power_kw / 5), (8, power_kw / 5))
    assert fleet.learned_limits.get("v") is None


def test_charging_follows_the_sign_of_the_measured_power() -> None:
    """Finding 4: Go vehicles publish `charging: power_kw > 0`; the sign wins."""
    fleet = FleetState()

    def report(vehicle_id: str, **fields: object) -> bool:
        telemetry = Telemetry(vehicle_id, **fields)  # type: ignore[arg-type]
        return fleet.apply_telemetry(telemetry, 1.0, at(1)).charging

    assert report("v", charging=True, power_kw=6.0) is False
    assert report("v", charging=False, power_kw=-6.0) is True
    assert report("v", power_kw=0.0) is False
    # Without power the flag is all there is.
    assert report("v", charging=True) is True
    # A NEBEF plan keeps the vehicles really charging, whatever their flag says.
    assert report("charging", charging=False, power_kw=-3.0) is True
    assert report("idle", charging=True, power_kw=0.0) is False
    nebef = make_signal(-5.0, signal_type=SignalType.NEBEF)
    result = evaluate_eligibility(
        [fleet.vehicles["charging"], fleet.vehicles["idle"]], nebef, SAFE, START
    )
    assert [c.vehicle.vehicle_id for c in result.candidates] == ["charging"]
    assert result.excluded == {"idle": ExclusionReason.NOT_CHARGING}


def test_eligibility_caps_both_directions_and_the_recharge() -> None:
    vehicle = make_vehicle(
        "v",
        max_power_kw=10.0,
        charge_rate_kw=8.0,
        soc=0.5,
        min_soc=0.45,
        departure=START + timedelta(hours=2),
        battery_kwh=40.0,
    )
    limits = {"v": PowerLimits(charge_kw=2.0, discharge_kw=6.0)}
    charge = make_signal(-20.0, SignalType.AFRR, 3600)
    assert vehicle_capacity(vehicle, charge, SAFE, START, limits) == 2.0
    assert vehicle_capacity(vehicle, charge, SAFE, START, {}) == 8.0
    # Departure protection: recharging at 8 kW for the hour between the signal's
    # end and the departure gives 0.2 of SoC back: floor 0.25, 10 kWh free, 10 kW
    # for the hour. At the learned 2 kW only 0.05 comes back: floor 0.4, 4 kW.
    discharge = make_signal(20.0, SignalType.AFRR, 3600)
    assert vehicle_capacity(vehicle, discharge, SAFE, START) == pytest.approx(10.0)
    assert vehicle_capacity(vehicle, discharge, SAFE, START, limits) == pytest.approx(
        4.0
    )


def test_flexibility_follows_the_learned_limits() -> None:
    vehicles = [make_vehicle("a", max_power_kw=10.0), make_vehicle("b")]
    limits = {"a": PowerLimits(charge_kw=7.0)}
    down = run_steps(flexibility_steps(vehicles, -1.0, SAFE, START, limits))
    assert down == pytest.approx(7.0 + 22.0)
    up = run_steps(flexibility_steps(vehicles, 1.0, SAFE, START, limits))
    assert up == pytest.approx(10.0 + 22.0)


def test_learned_limits_survive_a_restart_and_old_data_loads() -> None:
    fleet = fleet_holding(-10.0)
    fleet.upsert(make_vehicle("other"), 0.0)
    measure(fleet, (4, -7.0), (6, -7.0), (8, -7.0))
    data = json.loads(json.dumps(fleet.as_dict()))
    assert data["learned_limits"] == {"v": {"charge_kw": 7.0, "discharge_kw": None}}
    restored = FleetState.from_dict(data)
    assert restored.learned_limits.limits == {"v": PowerLimits(charge_kw=7.0)}
    del data["learned_limits"]
    assert FleetState.from_dict(data).learned_limits.limits == {}
    data["learned_limits"] = {"ghost": {"charge_kw": 3.0}, "other": {}}
    assert FleetState.from_dict(data).learned_limits.limits == {}
    restored.remove("v")
    assert restored.learned_limits.limits == {}


@pytest.mark.parametrize(
    "bad", [{"v": {"charge_kw": -1.0}}, {"v": {"charge_kw": "x"}}, {"v": 3}]
)
def test_malformed_learned_limits_are_refused(bad: object) -> None:
    data = fleet_holding(1.0).as_dict()
    data["learned_limits"] = bad
    with pytest.raises(InvalidValueError):
        FleetState.from_dict(data)


def test_delivery_tolerance() -> None:
    tolerance = DeliveryTolerance()
    assert tolerance.band_kw(-30.0) == pytest.approx(3.0)
    assert tolerance.band_kw(4.0) == 1.0
    assert tolerance.follows(9.0, 10.0)
    assert not tolerance.follows(8.9, 10.0)
    assert tolerance.follows(-0.9, 0.0)
    with pytest.raises(InvalidValueError):
        DeliveryTolerance(fraction=-0.1)
    with pytest.raises(InvalidValueError):
        DeliveryTolerance(kw=float("nan"))
