"""Fallback re-allocation: weights share the residual, safe headroom caps it."""

from __future__ import annotations

import pytest

from custom_components.v2g.engine import (
    Candidate,
    FallbackMode,
    donor_headroom,
    donor_weight,
    reallocate,
)

from .fakes import make_vehicle


def donor(vehicle_id: str, capacity: float, **changes: object) -> Candidate:
    return Candidate(make_vehicle(vehicle_id, **changes), capacity)


def test_a_lone_donor_is_filled_to_its_safe_headroom() -> None:
    """Issue #14: a 20 kW FCR, one vehicle times out, the other has 12 kW of room.

    Go's effective capacity gave it 12 x SoC 0.7 = 8.4 kW and left the dispatch
    partial; its safe headroom is 12 kW, so it takes all of it.
    """
    result = reallocate(
        FallbackMode.BALANCED, 10.0, [donor("b", 22.0, soc=0.7)], {"b": 10.0}
    )
    assert result == {"b": pytest.approx(20.0)}


def test_go_examples_fill_the_headroom() -> None:
    """Go: current {v1: 30, v2: 60}, v2 MaxPower 100 SoC 1, v1 fails -> v2 = 90.

    Go's manager case (2 x 50 kW at SoC 0.8, 80 kW equal, v1 fails) gave v2
    40 + 10 x 0.8 = 48; the 10 kW of headroom are safe, so v2 goes to 50.
    """
    assert reallocate(
        FallbackMode.BALANCED,
        30.0,
        [donor("v2", 100.0, soc=1.0)],
        {"v1": 30.0, "v2": 60.0},
    ) == {"v2": 90.0}
    assert reallocate(
        FallbackMode.BALANCED, 40.0, [donor("v2", 50.0, soc=0.8)], {"v2": 40.0}
    ) == {"v2": pytest.approx(50.0)}


def test_weights_share_the_residual() -> None:
    """Balanced: SoC x reliability; probabilistic: availability x reliability."""
    donors = [donor("a", 30.0, soc=0.8), donor("b", 30.0, soc=0.4)]
    assert reallocate(FallbackMode.BALANCED, 12.0, donors, {}) == {
        "a": pytest.approx(8.0),
        "b": pytest.approx(4.0),
    }
    # Reliability lowers a donor's share.
    assert reallocate(FallbackMode.BALANCED, 12.0, donors, {}, {"a": 0.5}) == {
        "a": pytest.approx(6.0),
        "b": pytest.approx(6.0),
    }
    # A charge residual weighs by the room left in the battery (1 - SoC).
    assert reallocate(FallbackMode.BALANCED, -8.0, donors, {}) == {
        "a": pytest.approx(-8.0 * 0.2 / 0.8),
        "b": pytest.approx(-8.0 * 0.6 / 0.8),
    }
    likely = donor("likely", 30.0, soc=0.5, availability_prob=0.9)
    unset = donor("unset", 30.0, soc=0.5)  # 0 = unset counts as 1
    assert reallocate(
        FallbackMode.PROBABILISTIC, 12.0, [likely, unset], {}, {"unset": 0.3}
    ) == {"likely": pytest.approx(9.0), "unset": pytest.approx(3.0)}


def test_the_share_a_full_donor_cannot_take_goes_to_the_others() -> None:
    """Water-filling: capped donors are full, the rest is shared by weight."""
    donors = [
        donor("small", 2.0, soc=1.0),
        donor("mid", 10.0, soc=1.0),
        donor("big", 50.0, soc=0.5),
    ]
    # Shares 2:2:1 of 25 = 10, 10, 5: small is capped at 2, the 8 left over
    # split 2:1 between mid and big.
    result = reallocate(FallbackMode.BALANCED, 25.0, donors, {})
    assert result == {
        "small": pytest.approx(2.0),
        "mid": pytest.approx(10.0),
        "big": pytest.approx(13.0),
    }
    assert sum(result.values()) == pytest.approx(25.0)


def test_more_residual_than_room_fills_every_donor() -> None:
    donors = [donor("a", 10.0, soc=0.9), donor("b", 5.0, soc=0.1)]
    assert reallocate(FallbackMode.BALANCED, -100.0, donors, {"a": -2.0}) == {
        "a": -10.0,
        "b": -5.0,
    }


def test_the_result_keeps_the_donor_order() -> None:
    donors = [donor(vid, 5.0, soc=soc) for vid, soc in (("z", 0.9), ("a", 0.5))]
    assert list(reallocate(FallbackMode.BALANCED, 6.0, donors, {})) == ["z", "a"]


def test_low_soc_and_saturated_donors_are_left_alone() -> None:
    """Go: SoC 0.2 (< 30 %) unchanged; a donor already at its capacity unchanged."""
    donors = [donor("low", 50.0, soc=0.2), donor("full", 50.0, soc=0.9)]
    current = {"low": 10.0, "full": 50.0}
    for mode in (FallbackMode.BALANCED, FallbackMode.PROBABILISTIC):
        assert reallocate(mode, 20.0, donors, current) == {}
    # The vehicle's own min SoC raises the 30 % reserve.
    picky = donor("picky", 50.0, soc=0.4, min_soc=0.5)
    assert reallocate(FallbackMode.BALANCED, 5.0, [picky], {}) == {}
    # A weight of 0 (a full battery asked to charge) gets no share.
    brimful = donor("brimful", 50.0, soc=1.0)
    assert reallocate(FallbackMode.BALANCED, -5.0, [brimful], {}) == {}


def test_headroom_and_weight() -> None:
    vehicle = donor("v", 40.0, soc=0.8, availability_prob=0.5)
    assert donor_headroom(vehicle, 10.0, discharge=True) == pytest.approx(30.0)
    assert donor_headroom(vehicle, 45.0, discharge=True) == 0.0
    assert donor_weight(
        FallbackMode.BALANCED, vehicle, discharge=True
    ) == pytest.approx(0.8)
    assert donor_weight(
        FallbackMode.PROBABILISTIC, vehicle, discharge=True, reliability=0.5
    ) == pytest.approx(0.25)
    assert donor_weight(FallbackMode.NONE, vehicle, discharge=True) == 0.0


def test_negative_current_uses_its_magnitude() -> None:
    """Fixed quirk: Go computed MaxPower - current, over-estimating charge room."""
    vehicle = donor("v", 50.0, soc=0.5)
    assert donor_headroom(vehicle, -30.0, discharge=False) == pytest.approx(20.0)
    result = reallocate(FallbackMode.BALANCED, -50.0, [vehicle], {"v": -30.0})
    assert result == {"v": pytest.approx(-50.0)}


def test_charging_residual_ignores_the_soc_reserve() -> None:
    low = donor("low", 10.0, soc=0.1)
    assert reallocate(FallbackMode.BALANCED, -5.0, [low], {}) == {
        "low": pytest.approx(-5.0)
    }


def test_probabilistic_example_keeps_the_derated_capacity() -> None:
    """Go: degradation 0.1 at 60 -> 90 (the candidate capacity is derated)."""
    degraded = donor("v2", 90.0, soc=1.0, max_power_kw=100.0, degradation_factor=0.1)
    assert reallocate(
        FallbackMode.PROBABILISTIC, 50.0, [degraded], {"v1": 30.0, "v2": 60.0}
    ) == {"v2": pytest.approx(90.0)}


def test_nothing_to_do() -> None:
    donors = [donor("a", 10.0)]
    assert reallocate(FallbackMode.NONE, 5.0, donors, {}) == {}
    assert reallocate(FallbackMode.BALANCED, 0.0, donors, {}) == {}
    assert reallocate(FallbackMode.BALANCED, 5.0, [], {}) == {}


def test_many_donors_stay_fast_and_exact() -> None:
    """10,000 donors: sorted once (n log n), the residual placed exactly."""
    donors = [
        donor(f"v{i}", 1.0 + i % 7, soc=0.3 + (i % 10) / 20) for i in range(10_000)
    ]
    result = reallocate(FallbackMode.BALANCED, 25_000.0, donors, {})
    assert sum(result.values()) == pytest.approx(25_000.0)
    capacity = {d.vehicle.vehicle_id: d.capacity_kw for d in donors}
    assert all(kw <= capacity[vid] + 1e-9 for vid, kw in result.items())
