"""Eligibility and safety rules (seed §3.4 filter + docs/dispatch.md#safety)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from custom_components.v2g.engine import (
    Candidate,
    ExclusionReason,
    InvalidValueError,
    SafetySettings,
    SignalType,
    evaluate_eligibility,
    vehicle_capacity,
)

from .fakes import START, make_signal, make_vehicle

SAFE = SafetySettings()
OFF = SafetySettings(soc_constraints=False)


def capacities(result: list[Candidate]) -> dict[str, float]:
    return {c.vehicle.vehicle_id: c.capacity_kw for c in result}


def test_fcr_filter_keeps_v2g_with_soc_at_least_0_6() -> None:
    """Go filter test: 0.7 kept, 0.5 dropped, non-V2G dropped."""
    vehicles = [
        make_vehicle("keep", soc=0.7),
        make_vehicle("low", soc=0.5),
        make_vehicle("edge", soc=0.6),
        make_vehicle("plain", soc=0.9, is_v2g=False),
        make_vehicle("away", available=False),
    ]
    result = evaluate_eligibility(vehicles, make_signal(10), SAFE, START)
    assert [c.vehicle.vehicle_id for c in result.candidates] == ["keep", "edge"]
    assert result.excluded == {
        "low": ExclusionReason.SOC_BELOW_MIN,
        "plain": ExclusionReason.NOT_V2G,
        "away": ExclusionReason.UNAVAILABLE,
    }


def test_nebef_needs_a_charging_non_priority_vehicle() -> None:
    vehicles = [
        make_vehicle("charging", charging=True),
        make_vehicle("idle"),
        make_vehicle("vip", charging=True, priority=True),
    ]
    result = evaluate_eligibility(
        vehicles, make_signal(5, SignalType.NEBEF), SAFE, START
    )
    assert list(capacities(result.candidates)) == ["charging"]
    assert result.excluded == {
        "idle": ExclusionReason.NOT_CHARGING,
        "vip": ExclusionReason.NOT_CHARGING,
    }


@pytest.mark.parametrize("signal_type", [SignalType.AFRR, SignalType.MA])
def test_other_signals_only_need_availability(signal_type: SignalType) -> None:
    result = evaluate_eligibility(
        [make_vehicle("v", soc=0.3)], make_signal(5, signal_type), SAFE, START
    )
    assert len(result.candidates) == 1


def test_discharge_needs_v2g_but_charging_does_not() -> None:
    plain = make_vehicle("plain", is_v2g=False)
    discharge = make_signal(5, SignalType.AFRR)
    charge = make_signal(-5, SignalType.AFRR)
    assert vehicle_capacity(plain, discharge, SAFE, START) is ExclusionReason.NOT_V2G
    assert vehicle_capacity(plain, discharge, OFF, START) is ExclusionReason.NOT_V2G
    assert vehicle_capacity(plain, charge, SAFE, START) == 22.0


def test_discharge_floor_is_the_highest_of_the_three() -> None:
    """Capacity = (SoC - floor) x 40 kWh over 0.25 h, the floor being the highest."""
    signal = make_signal(5, SignalType.MA)
    vehicle = make_vehicle("v", soc=0.27, min_soc=0.25)
    assert vehicle_capacity(vehicle, signal, SAFE, START) == pytest.approx(3.2)
    raised = SafetySettings(safe_discharge_floor=0.26)
    assert vehicle_capacity(vehicle, signal, raised, START) == pytest.approx(1.6)
    option = SafetySettings(min_soc=0.265)
    assert vehicle_capacity(vehicle, signal, option, START) == pytest.approx(0.8)
    # With a departure, the own min SoC is a departure target, not a floor: eight
    # hours of recharge leave only the safe floor (0.1).
    leaving = vehicle.with_changes(departure=START + timedelta(hours=8))
    assert vehicle_capacity(leaving, signal, SAFE, START) == pytest.approx(22.0)


def test_soc_at_or_below_floor_cannot_discharge_but_can_charge() -> None:
    """Go test "SoC exactly at min_soc included, below excluded", with our signs (docs/protocol.md#sign-convention).

    At the floor a vehicle has nothing left to give (fixed: Go let it in and
    relied on the caps), but it may always charge.
    """
    at_floor = make_vehicle("v", soc=0.1)
    below = make_vehicle("w", soc=0.05)
    discharge = make_signal(5, SignalType.MA)
    charge = make_signal(-5, SignalType.MA)
    assert vehicle_capacity(at_floor, discharge, SAFE, START) is (
        ExclusionReason.SOC_BELOW_MIN
    )
    assert vehicle_capacity(below, discharge, SAFE, START) is (
        ExclusionReason.SOC_BELOW_MIN
    )
    assert vehicle_capacity(at_floor, charge, SAFE, START) == 22.0
    assert vehicle_capacity(below, charge, SAFE, START) == 22.0


def test_discharge_capacity_limited_by_energy_above_floor() -> None:
    """Go: -5 kW for 2 h with 1 kWh above the floor was *excluded* (single vehicle).

    Fixed: the vehicle keeps the 0.5 kW it can sustain (1 kWh / 2 h); the
    allocator reports the shortfall instead of dropping it.
    """
    vehicle = make_vehicle("v", soc=0.2, battery_kwh=10.0, max_power_kw=7.0)
    signal = make_signal(5, SignalType.MA, duration_s=7200)
    assert vehicle_capacity(vehicle, signal, SAFE, START) == pytest.approx(0.5)


def test_tiny_energy_is_insufficient() -> None:
    vehicle = make_vehicle("v", soc=0.1001, battery_kwh=10.0)
    signal = make_signal(5, SignalType.MA, duration_s=86_400)
    assert vehicle_capacity(vehicle, signal, SAFE, START) is (
        ExclusionReason.INSUFFICIENT_ENERGY
    )
    assert vehicle_capacity(
        make_vehicle("z", max_power_kw=0.0), make_signal(5, SignalType.MA), SAFE, START
    ) is (ExclusionReason.INSUFFICIENT_ENERGY)


def test_charge_capacity_limited_by_battery_room() -> None:
    almost_full = make_vehicle("v", soc=0.95, battery_kwh=40.0)
    signal = make_signal(-20, SignalType.AFRR, duration_s=3600)
    assert vehicle_capacity(almost_full, signal, SAFE, START) == pytest.approx(2.0)
    full = make_vehicle("f", soc=1.0)
    assert vehicle_capacity(full, signal, SAFE, START) is (
        ExclusionReason.INSUFFICIENT_ENERGY
    )
    # Charging follows the vehicle's charge rate.
    slow = make_vehicle("s", soc=0.2, charge_rate_kw=3.6)
    assert vehicle_capacity(slow, signal, SAFE, START) == 3.6


def test_degradation_derates_capacity_both_ways() -> None:
    vehicle = make_vehicle("v", max_power_kw=10.0, degradation_factor=0.25)
    assert vehicle_capacity(
        vehicle, make_signal(5, SignalType.MA), SAFE, START
    ) == pytest.approx(7.5)
    assert vehicle_capacity(
        vehicle, make_signal(-5, SignalType.MA), SAFE, START
    ) == pytest.approx(7.5)
    assert vehicle_capacity(
        vehicle, make_signal(0, SignalType.MA), SAFE, START
    ) == pytest.approx(7.5)


def test_constraints_off_keeps_only_type_rules_and_max_power() -> None:
    """Go test: SoC constraints disabled -> a 0.05 SoC vehicle is still assigned."""
    vehicle = make_vehicle("v", soc=0.05, max_power_kw=11.0)
    assert vehicle_capacity(vehicle, make_signal(5, SignalType.MA), OFF, START) == 11.0
    assert vehicle_capacity(
        make_vehicle("f", soc=1.0), make_signal(-5), OFF, START
    ) == (22.0)


def test_departure_protection_keeps_enough_to_recharge() -> None:
    """Leaves 1 h after a 15 min signal start, needs 80 % of 40 kWh, recharges 7 kW.

    Recharge after the signal: 7 kW x 0.75 h = 5.25 kWh = 13.125 % -> it must
    keep 66.875 % at the end of the signal; at SoC 0.7 it can give
    (0.7 - 0.66875) x 40 kWh over 0.25 h = 5 kW.
    """
    vehicle = make_vehicle(
        "v",
        soc=0.7,
        min_soc=0.8,
        max_power_kw=7.0,
        departure=START + timedelta(hours=1),
    )
    signal = make_signal(20, SignalType.MA)
    assert vehicle_capacity(vehicle, signal, SAFE, START) == pytest.approx(5.0)


def test_plenty_of_time_to_recharge_means_only_the_safe_floor_binds() -> None:
    vehicle = make_vehicle(
        "v",
        soc=0.5,
        min_soc=0.9,
        max_power_kw=10.0,
        departure=START + timedelta(hours=12),
    )
    signal = make_signal(20, SignalType.MA, duration_s=3600)
    # (0.5 - 0.1) x 40 kWh over 1 h = 16 kWh/h, capped by 10 kW.
    assert vehicle_capacity(vehicle, signal, SAFE, START) == 10.0


def test_departure_protected_when_recharge_cannot_cover_a_discharge() -> None:
    vehicle = make_vehicle(
        "v",
        soc=0.6,
        min_soc=0.8,
        max_power_kw=7.0,
        departure=START + timedelta(hours=1),
    )
    # Must keep 0.66875 (see above) but holds only 0.6: nothing to give.
    assert vehicle_capacity(vehicle, make_signal(5, SignalType.MA), SAFE, START) is (
        ExclusionReason.DEPARTURE_PROTECTED
    )
    result = evaluate_eligibility([vehicle], make_signal(5, SignalType.MA), SAFE, START)
    assert result.excluded == {"v": ExclusionReason.DEPARTURE_PROTECTED}
    # It may still charge, which only helps it reach its target.
    assert vehicle_capacity(vehicle, make_signal(-5, SignalType.MA), SAFE, START) == (
        7.0
    )


def test_departure_before_signal_end_keeps_the_requirement() -> None:
    """Leaving mid-signal: it can only give what keeps it above its min SoC."""
    vehicle = make_vehicle(
        "v",
        soc=0.5,
        min_soc=0.45,
        max_power_kw=50.0,
        departure=START + timedelta(minutes=5),
    )
    signal = make_signal(50, SignalType.MA, duration_s=900)
    # (0.5 - 0.45) x 40 kWh = 2 kWh over 0.25 h = 8 kW.
    assert vehicle_capacity(vehicle, signal, SAFE, START) == pytest.approx(8.0)
    at_target = vehicle.with_changes(soc=0.45)
    assert vehicle_capacity(at_target, signal, SAFE, START) is (
        ExclusionReason.DEPARTURE_PROTECTED
    )
    # Departure already passed (stale data): same rule.
    late = vehicle.with_changes(departure=START - timedelta(hours=1))
    assert vehicle_capacity(late, signal, SAFE, START) == pytest.approx(8.0)


def test_tiny_headroom_above_the_departure_floor_is_departure_protected() -> None:
    vehicle = make_vehicle(
        "v",
        soc=0.4501,
        min_soc=0.45,
        departure=START + timedelta(minutes=5),
    )
    signal = make_signal(5, SignalType.MA, duration_s=86_400)
    assert vehicle_capacity(vehicle, signal, SAFE, START) is (
        ExclusionReason.DEPARTURE_PROTECTED
    )


def test_a_departure_without_min_soc_protects_nothing() -> None:
    """Leaving now with no SoC target: only the safe floor binds (0.6 x 40 / 0.25 h)."""
    vehicle = make_vehicle("v", departure=START, min_soc=0.0, max_power_kw=200.0)
    signal = make_signal(500, SignalType.MA)
    assert vehicle_capacity(vehicle, signal, SAFE, START) == pytest.approx(96.0)


def test_safety_settings_validation() -> None:
    with pytest.raises(InvalidValueError):
        SafetySettings(min_soc=1.5)
    with pytest.raises(InvalidValueError):
        SafetySettings(safe_discharge_floor=True)  # type: ignore[arg-type]


def test_total_capacity() -> None:
    result = evaluate_eligibility(
        [make_vehicle("a"), make_vehicle("b", max_power_kw=3.0)],
        make_signal(5, SignalType.AFRR),
        OFF,
        START,
    )
    assert result.total_capacity_kw == 25.0
