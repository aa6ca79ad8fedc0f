"""Fallback re-allocation (seed §3.10, with the |current| fix)."""

from __future__ import annotations

import pytest

from custom_components.v2g.engine import (
    Candidate,
    FallbackMode,
    effective_capacity,
    reallocate,
)

from .fakes import make_vehicle


def donor(vehicle_id: str, capacity: float, **changes: object) -> Candidate:
    return Candidate(make_vehicle(vehicle_id, **changes), capacity)


def test_balanced_moves_the_failed_power() -> None:
    """Go: current {v1: 30, v2: 60}, v2 MaxPower 100 SoC 1, v1 fails -> v2 = 90."""
    result = reallocate(
        FallbackMode.BALANCED,
        30.0,
        [donor("v2", 100.0, soc=1.0)],
        {"v1": 30.0, "v2": 60.0},
    )
    assert result == {"v2": 90.0}


def test_balanced_manager_case_gives_48() -> None:
    """Go: Equal 80 kW over 2 x (50 kW, SoC 0.8), v1 fails -> v2 = 40 + 10 x 0.8."""
    result = reallocate(
        FallbackMode.BALANCED, 40.0, [donor("v2", 50.0, soc=0.8)], {"v2": 40.0}
    )
    assert result == {"v2": pytest.approx(48.0)}


def test_low_soc_and_saturated_donors_are_left_alone() -> None:
    """Go: SoC 0.2 (< 30 %) unchanged; a donor already at its capacity unchanged."""
    donors = [donor("low", 50.0, soc=0.2), donor("full", 50.0, soc=0.9)]
    current = {"low": 10.0, "full": 50.0}
    for mode in (FallbackMode.BALANCED, FallbackMode.PROBABILISTIC):
        assert reallocate(mode, 20.0, donors, current) == {}
    # The vehicle's own min SoC raises the 30 % reserve.
    picky = donor("picky", 50.0, soc=0.4, min_soc=0.5)
    assert reallocate(FallbackMode.BALANCED, 5.0, [picky], {}) == {}


def test_probabilistic_examples() -> None:
    """Go: degradation 0.1 at 60 -> 90; availability 0.5 at 25 -> 37.5.

    v2 has MaxPower 100; its candidate capacity (90) already carries the
    degradation.
    """
    degraded = donor("v2", 90.0, soc=1.0, max_power_kw=100.0, degradation_factor=0.1)
    assert reallocate(
        FallbackMode.PROBABILISTIC, 30.0, [degraded], {"v1": 30.0, "v2": 60.0}
    ) == {"v2": pytest.approx(90.0)}
    half = donor("v2", 50.0, soc=1.0, availability_prob=0.5)
    assert reallocate(FallbackMode.PROBABILISTIC, 25.0, [half], {"v2": 25.0}) == {
        "v2": pytest.approx(37.5)
    }


def test_modes_weigh_differently() -> None:
    """Balanced weighs by SoC, probabilistic by availability x reliability.

    Go multiplied SoC and availability in both modes (identical allocations).
    """
    vehicle = donor("v", 40.0, soc=0.8, availability_prob=0.5)
    assert effective_capacity(
        FallbackMode.BALANCED, vehicle, 10.0, discharge=True
    ) == pytest.approx(24.0)
    assert effective_capacity(
        FallbackMode.PROBABILISTIC, vehicle, 10.0, discharge=True, reliability=0.5
    ) == pytest.approx(7.5)
    assert effective_capacity(FallbackMode.NONE, vehicle, 0.0, discharge=True) == 0.0


def test_negative_current_uses_its_magnitude() -> None:
    """Fixed quirk: Go computed MaxPower - current, over-estimating charge room."""
    vehicle = donor("v", 50.0, soc=0.5)
    # Charging at -30 leaves 20 kW of room, weighted by (1 - SoC) for charging.
    assert effective_capacity(
        FallbackMode.BALANCED, vehicle, -30.0, discharge=False
    ) == pytest.approx(10.0)
    result = reallocate(FallbackMode.BALANCED, -50.0, [vehicle], {"v": -30.0})
    assert result == {"v": pytest.approx(-40.0)}


def test_charging_residual_ignores_the_soc_reserve() -> None:
    low = donor("low", 10.0, soc=0.1)
    assert reallocate(FallbackMode.BALANCED, -5.0, [low], {}) == {
        "low": pytest.approx(-5.0)
    }


def test_residual_shared_in_proportion_to_effective_capacity() -> None:
    donors = [donor("a", 30.0, soc=1.0), donor("b", 10.0, soc=1.0)]
    result = reallocate(FallbackMode.BALANCED, 8.0, donors, {})
    assert result == {"a": pytest.approx(6.0), "b": pytest.approx(2.0)}
    # Reliability lowers a donor's share.
    shaky = reallocate(FallbackMode.BALANCED, 8.0, donors, {}, {"a": 1 / 3})
    assert shaky == {"a": pytest.approx(4.0), "b": pytest.approx(4.0)}


def test_more_residual_than_room_fills_every_donor() -> None:
    donors = [donor("a", 10.0, soc=1.0), donor("b", 5.0, soc=1.0)]
    assert reallocate(FallbackMode.BALANCED, 100.0, donors, {"a": 2.0}) == {
        "a": 10.0,
        "b": 5.0,
    }


def test_nothing_to_do() -> None:
    donors = [donor("a", 10.0)]
    assert reallocate(FallbackMode.NONE, 5.0, donors, {}) == {}
    assert reallocate(FallbackMode.BALANCED, 0.0, donors, {}) == {}
    assert reallocate(FallbackMode.BALANCED, 5.0, [], {}) == {}
