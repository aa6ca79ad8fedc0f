"""Allocation strategies: Go behaviours (fixed where docs/dispatch.md#strategies says) and invariants."""

from __future__ import annotations

from datetime import timedelta
import math
import random

from hypothesis import HealthCheck, given, settings, strategies as st
import pytest

from custom_components.v2g.engine import (
    DEFAULT_SEGMENTS,
    ZERO_WEIGHTS,
    Candidate,
    InvalidValueError,
    SafetySettings,
    ScoreWeights,
    SegmentConfig,
    SignalType,
    Strategy,
    allocate,
    evaluate_eligibility,
    vehicle_score,
)
from custom_components.v2g.engine.strategies import _weighted_fill

from .fakes import START, make_signal, make_vehicle

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def cand(vehicle_id: str, capacity: float, **changes: object) -> Candidate:
    return Candidate(make_vehicle(vehicle_id, **changes), capacity)


# --- score ------------------------------------------------------------------------


def test_score_example_from_the_go_documentation() -> None:
    """The worked score example of seed §3.6.

    Default weights, FCR (soc 0.7, time 0.3), SoC 0.8, MinSoC 0.2, leaving in
    60 min, AvailabilityProb 0 -> 0.75 x 0.7 + e^-2 x 0.3 = 0.5656.
    """
    candidate = cand(
        "v", 10, soc=0.8, min_soc=0.2, departure=START + timedelta(minutes=60)
    )
    weights = ScoreWeights().with_signal_boost(SignalType.FCR)
    assert vehicle_score(candidate, weights, START) == pytest.approx(
        0.75 * 0.7 + math.exp(-2) * 0.3
    )


def test_score_terms() -> None:
    weights = ScoreWeights(
        soc=0, time=0, priority=0, price=0, wear=0, fairness=0, availability=1
    )
    assert vehicle_score(cand("v", 1, availability_prob=0.4), weights, START) == 0.4
    # Reliability scales the score.
    assert vehicle_score(
        cand("v", 1, availability_prob=0.4), weights, START, reliability=0.5
    ) == pytest.approx(0.2)
    # Wear and fairness subtract participation; the score never goes negative.
    usage = ScoreWeights(
        soc=0, time=0, priority=0, price=0, wear=0.5, fairness=0.5, availability=0
    )
    assert vehicle_score(cand("v", 1), usage, START, participation=3) == 0.0
    # Price term: energy x market price x price weight.
    price = ScoreWeights(
        soc=0,
        time=0,
        priority=0,
        price=0.5,
        wear=0,
        fairness=0,
        availability=0,
        market_price=2,
    )
    assert vehicle_score(cand("v", 1, soc=1.0), price, START) == pytest.approx(1.0)
    # A min SoC of 1 leaves no energy term; past departures add nothing.
    full_min = cand("v", 1, soc=1.0, min_soc=1.0, departure=START - timedelta(hours=1))
    assert vehicle_score(full_min, ScoreWeights(), START) == pytest.approx(0.0)


def test_signal_boosts() -> None:
    base = ScoreWeights()
    assert base.with_signal_boost(SignalType.AFRR) is base
    fcr = base.with_signal_boost(SignalType.FCR)
    assert (fcr.soc, fcr.priority) == pytest.approx((0.7, 0.2))
    nebef = base.with_signal_boost(SignalType.NEBEF)
    assert (nebef.soc, nebef.time) == pytest.approx((0.6, 0.5))
    assert base.with_signal_boost(SignalType.MA).soc == pytest.approx(0.6)
    assert base.with_signal_boost(SignalType.ECOWATT).soc == pytest.approx(0.6)


def test_weights_must_be_finite() -> None:
    with pytest.raises(InvalidValueError):
        ScoreWeights(soc=float("nan"))


def test_default_segments_match_go() -> None:
    assert set(DEFAULT_SEGMENTS) == {
        "commuter",
        "captive_fleet",
        "opportunistic_charger",
    }
    captive = DEFAULT_SEGMENTS["captive_fleet"]
    assert captive.strategy is Strategy.OPTIMAL
    assert (captive.weights.soc, captive.weights.availability) == (0.4, 0.4)
    assert captive.weights.priority == 0.1  # unspecified keys keep the defaults
    assert DEFAULT_SEGMENTS["opportunistic_charger"].weights.price == 0.4
    with pytest.raises(InvalidValueError):
        SegmentConfig(strategy=Strategy.SEGMENTED)


# --- equal ------------------------------------------------------------------------


def test_equal_caps_and_redistributes() -> None:
    """Go EqualDispatcher test: 100 kW over MaxPower 40/60 -> exactly 40/60."""
    result = allocate(
        Strategy.EQUAL, [cand("a", 40), cand("b", 60)], make_signal(100), now=START
    )
    assert result.assignments == {"a": 40.0, "b": 60.0}
    assert result.shortfall_kw == 0.0
    assert set(result.scores) == {"a", "b"}


def test_equal_caps_negative_power_too() -> None:
    """Fixed: Go did not cap negative (charge) shares by MaxPower."""
    result = allocate(
        Strategy.EQUAL, [cand("a", 5), cand("b", 60)], make_signal(-40), now=START
    )
    assert result.assignments == {"a": -5.0, "b": -35.0}
    short = allocate(Strategy.EQUAL, [cand("a", 5)], make_signal(-40), now=START)
    assert short.assignments == {"a": -5.0}
    assert short.shortfall_kw == 35.0
    assert short.assigned_kw == -5.0


# --- smart ------------------------------------------------------------------------


def test_smart_equal_scores_split_equally() -> None:
    """Fixed: Go's greedy pass gave 13.33/6.67 for equal scores; now 10/10."""
    result = allocate(
        Strategy.SMART,
        [cand("v1", 22), cand("v2", 22)],
        make_signal(20),
        now=START,
        weights=ZERO_WEIGHTS,
    )
    assert result.assignments == pytest.approx({"v1": 10.0, "v2": 10.0})
    assert result.scores == pytest.approx({"v1": 0.14, "v2": 0.14})


def test_smart_is_proportional_and_fills_everything() -> None:
    """Fixed: Go's MaxRounds left ~P*4^-10 undispatched with equal scores."""
    weights = ScoreWeights(
        soc=1, time=0, priority=0, price=0, wear=0, fairness=0, availability=0
    )
    result = allocate(
        Strategy.SMART,
        [cand("hi", 50, soc=0.8), cand("lo", 50, soc=0.2)],
        make_signal(10, SignalType.AFRR),
        now=START,
        weights=weights,
    )
    assert result.assignments["hi"] == pytest.approx(8.0)
    assert result.assignments["lo"] == pytest.approx(2.0)


def test_smart_caps_5_5_20_at_40_gives_30() -> None:
    """Go test: MaxRounds 1, caps 5/5/20 and 40 kW -> total exactly 30."""
    result = allocate(
        Strategy.SMART,
        [cand("a", 5), cand("b", 5), cand("c", 20)],
        make_signal(40),
        now=START,
    )
    assert sum(result.assignments.values()) == pytest.approx(30.0)
    assert result.shortfall_kw == pytest.approx(10.0)


def test_smart_fairness_lowers_a_busy_vehicle() -> None:
    """Go test: fairness weight 0.5 + participation 10 lowers v1's allocation."""
    weights = ScoreWeights(fairness=0.5)
    plain = allocate(
        Strategy.SMART,
        [cand("v1", 50), cand("v2", 50)],
        make_signal(10),
        now=START,
        weights=weights,
    )
    busy = allocate(
        Strategy.SMART,
        [cand("v1", 50), cand("v2", 50)],
        make_signal(10),
        now=START,
        weights=weights,
        participation={"v1": 10},
    )
    assert busy.assignments.get("v1", 0.0) < plain.assignments["v1"]
    assert busy.assignments["v2"] > plain.assignments["v2"]


@pytest.mark.parametrize(
    ("weights", "favoured", "other"),
    [
        # Higher SoC slack gets more (soc weight 1, time 0).
        (
            ScoreWeights(
                soc=1, time=0, priority=0, price=0, wear=0, fairness=0, availability=0
            ),
            {"soc": 0.9},
            {"soc": 0.6},
        ),
        # Earlier departure gets more (time weight 1).
        (
            ScoreWeights(
                soc=0, time=1, priority=0, price=0, wear=0, fairness=0, availability=0
            ),
            {"departure": START + timedelta(minutes=10)},
            {"departure": START + timedelta(minutes=90)},
        ),
        # A priority vehicle gets more (priority weight 1).
        (
            ScoreWeights(
                soc=0, time=0, priority=1, price=0, wear=0, fairness=0, availability=0
            ),
            {"priority": True},
            {"availability_prob": 0.5},
        ),
    ],
)
def test_smart_favours_the_better_score(
    weights: ScoreWeights, favoured: dict[str, object], other: dict[str, object]
) -> None:
    signal = make_signal(10, SignalType.AFRR)
    result = allocate(
        Strategy.SMART,
        [cand("other", 50, **other), cand("favoured", 50, **favoured)],
        signal,
        now=START,
        weights=weights,
    )
    assert result.assignments["favoured"] > result.assignments.get("other", 0.0)


def test_smart_all_zero_scores_fall_back_to_equal() -> None:
    """Fixed: Go QA "aFRR has all-zero weights -> no assignment"; now equal split."""
    result = allocate(
        Strategy.SMART,
        [cand("a", 10), cand("b", 10)],
        make_signal(8, SignalType.AFRR),
        now=START,
        weights=ZERO_WEIGHTS,
    )
    assert result.assignments == {"a": 4.0, "b": 4.0}
    assert result.scores == {"a": 0.0, "b": 0.0}


def test_smart_zero_score_vehicles_take_what_the_others_cannot() -> None:
    weights = ScoreWeights(
        soc=0, time=0, priority=0, price=0, wear=0, fairness=0, availability=1
    )
    result = allocate(
        Strategy.SMART,
        [cand("scored", 5, availability_prob=1.0), cand("z1", 10), cand("z2", 10)],
        make_signal(15, SignalType.AFRR),
        now=START,
        weights=weights,
    )
    assert result.assignments == {"scored": 5.0, "z1": 5.0, "z2": 5.0}


def test_reliability_scales_the_split() -> None:
    result = allocate(
        Strategy.SMART,
        [cand("good", 50), cand("flaky", 50)],
        make_signal(9),
        now=START,
        reliability={"flaky": 0.5},
    )
    assert result.assignments["good"] == pytest.approx(6.0)
    assert result.assignments["flaky"] == pytest.approx(3.0)


# --- optimal ----------------------------------------------------------------------


def test_optimal_ties_share_equally() -> None:
    """Go LP test: 2 x 70 kW caps, 60 kW -> two entries summing exactly 60."""
    result = allocate(
        Strategy.OPTIMAL, [cand("a", 70), cand("b", 70)], make_signal(60), now=START
    )
    assert result.assignments == {"a": 30.0, "b": 30.0}


def test_optimal_fills_the_best_score_first() -> None:
    """Go LP test: caps 20/40 at 50 -> exactly 50 within caps."""
    result = allocate(
        Strategy.OPTIMAL,
        [cand("small", 20, soc=0.9), cand("big", 40, soc=0.7)],
        make_signal(50),
        now=START,
    )
    assert result.assignments == {"small": 20.0, "big": 30.0}


def test_optimal_reports_shortfall() -> None:
    """Go LP: a single 20 kW vehicle at 50 kW got <= 20; now 20 + shortfall 30."""
    result = allocate(Strategy.OPTIMAL, [cand("a", 20)], make_signal(50), now=START)
    assert result.assignments == {"a": 20.0}
    assert result.shortfall_kw == 30.0
    empty = allocate(Strategy.OPTIMAL, [], make_signal(50), now=START)
    assert empty.assignments == {}
    assert empty.shortfall_kw == 50.0


def test_optimal_leaves_low_scores_unused() -> None:
    result = allocate(
        Strategy.OPTIMAL,
        [cand("lo", 50, soc=0.65), cand("hi", 50, soc=0.95), cand("mid", 50, soc=0.8)],
        make_signal(60),
        now=START,
    )
    assert result.assignments == {"hi": 50.0, "mid": 10.0}
    assert "lo" in result.scores


# --- segmented --------------------------------------------------------------------


def test_segmented_three_default_segments() -> None:
    """Go test: 3 default segments, 9 kW -> 3 assignments."""
    candidates = [
        cand("c", 10, segment="commuter"),
        cand("f", 10, segment="captive_fleet"),
        cand("o", 10, segment="opportunistic_charger"),
    ]
    result = allocate(Strategy.SEGMENTED, candidates, make_signal(9), now=START)
    assert result.assignments == pytest.approx({"c": 3.0, "f": 3.0, "o": 3.0})
    assert set(result.scores) == {"c", "f", "o"}


def test_segmented_splits_by_capacity_so_nothing_is_stranded() -> None:
    """Segment shares follow segment capacity.

    Go gave each segment P / segments: 10 kW over a 1 kW and a 20 kW segment
    left 4 kW unassigned.
    """
    candidates = [
        cand("small", 1, segment="commuter"),
        cand("big1", 10, segment="captive_fleet"),
        cand("big2", 10, segment="captive_fleet"),
    ]
    result = allocate(Strategy.SEGMENTED, candidates, make_signal(10.5), now=START)
    assert sum(result.assignments.values()) == pytest.approx(10.5)
    assert result.assignments["small"] == pytest.approx(0.5)
    assert result.shortfall_kw == pytest.approx(0.0)


def test_segmented_unknown_segment_uses_defaults() -> None:
    """Go test: an unknown segment still allocates (default weights, smart)."""
    result = allocate(
        Strategy.SEGMENTED,
        [cand("x", 10, segment="fleet-of-the-future"), cand("y", 10)],
        make_signal(8),
        now=START,
        segments={"other": SegmentConfig(ScoreWeights(), Strategy.EQUAL)},
    )
    assert result.assignments == pytest.approx({"x": 4.0, "y": 4.0})


def test_segmented_uses_each_segment_strategy() -> None:
    segments = {
        "eq": SegmentConfig(ScoreWeights(), Strategy.EQUAL),
        "opt": SegmentConfig(ScoreWeights(), Strategy.OPTIMAL),
    }
    candidates = [
        cand("e1", 10, segment="eq", soc=0.9),
        cand("e2", 10, segment="eq", soc=0.6),
        cand("o1", 10, segment="opt", soc=0.9),
        cand("o2", 10, segment="opt", soc=0.6),
    ]
    result = allocate(
        Strategy.SEGMENTED, candidates, make_signal(20), now=START, segments=segments
    )
    assert result.assignments == pytest.approx({"e1": 5, "e2": 5, "o1": 10})
    over = allocate(
        Strategy.SEGMENTED, candidates, make_signal(100), now=START, segments=segments
    )
    assert over.shortfall_kw == pytest.approx(60.0)


# --- contract errors --------------------------------------------------------------


def test_duplicate_ids_and_bad_capacities_are_refused() -> None:
    with pytest.raises(InvalidValueError, match="duplicate"):
        allocate(
            Strategy.EQUAL, [cand("a", 1), cand("a", 2)], make_signal(1), now=START
        )
    with pytest.raises(InvalidValueError):
        allocate(Strategy.EQUAL, [cand("a", math.nan)], make_signal(1), now=START)
    with pytest.raises(InvalidValueError):
        allocate(Strategy.EQUAL, [cand("a", -1)], make_signal(1), now=START)


def test_zero_power_assigns_nothing() -> None:
    for strategy in Strategy:
        result = allocate(strategy, [cand("a", 5)], make_signal(0), now=START)
        assert result.assignments == {}
        assert result.shortfall_kw == 0.0


def test_weighted_fill_saturates_everyone_when_target_is_large() -> None:
    assert _weighted_fill([1.0, 2.0], [1.0, 1.0], 10.0) == [1.0, 2.0]


# --- properties -------------------------------------------------------------------

SEGMENT_NAMES = ["", "commuter", "captive_fleet", "opportunistic_charger", "x"]


@st.composite
def fleets(draw: st.DrawFn) -> list[Candidate]:
    count = draw(st.integers(min_value=0, max_value=12))
    candidates: list[Candidate] = []
    for index in range(count):
        departure_minutes = draw(st.none() | st.integers(-60, 600))
        candidates.append(
            Candidate(
                make_vehicle(
                    f"v{index}",
                    soc=draw(st.floats(0.0, 1.0)),
                    min_soc=draw(st.sampled_from([0.0, 0.1, 0.3])),
                    priority=draw(st.booleans()),
                    availability_prob=draw(st.floats(0.0, 1.0)),
                    segment=draw(st.sampled_from(SEGMENT_NAMES)),
                    departure=None
                    if departure_minutes is None
                    else START + timedelta(minutes=departure_minutes),
                ),
                draw(
                    st.sampled_from([0.0, 1.0, 7.4, 11.0])
                    | st.floats(0.001, 150.0, allow_nan=False)
                ),
            )
        )
    return candidates


weights_strategy = st.builds(
    ScoreWeights,
    soc=st.floats(0, 1),
    time=st.floats(0, 1),
    priority=st.floats(0, 1),
    price=st.floats(0, 1),
    wear=st.floats(0, 1),
    fairness=st.floats(0, 1),
    availability=st.floats(0, 1),
    market_price=st.floats(0, 2),
)
powers = st.floats(-400.0, 400.0, allow_nan=False) | st.sampled_from([0.0, 1e-6, 20.0])


def check_contract(
    candidates: list[Candidate], power: float, assignments: dict[str, float]
) -> None:
    caps = {c.vehicle.vehicle_id: c.capacity_kw for c in candidates}
    expected = min(abs(power), sum(caps.values()))
    total = sum(abs(p) for p in assignments.values())
    assert math.isclose(total, expected, rel_tol=1e-6, abs_tol=1e-9)
    for vehicle_id, assigned in assignments.items():
        assert vehicle_id in caps
        assert assigned != 0.0
        assert (assigned > 0) == (power > 0)
        assert abs(assigned) <= caps[vehicle_id] * (1 + 1e-12)


@PROPERTY
@given(
    fleets(),
    powers,
    st.sampled_from(list(Strategy)),
    st.sampled_from(list(SignalType)),
    weights_strategy,
    st.integers(0, 2**32),
)
def test_every_strategy_keeps_the_contract(
    candidates: list[Candidate],
    power: float,
    strategy: Strategy,
    signal_type: SignalType,
    weights: ScoreWeights,
    seed: int,
) -> None:
    rng = random.Random(seed)
    participation = {c.vehicle.vehicle_id: rng.random() for c in candidates}
    reliability = {c.vehicle.vehicle_id: rng.uniform(0.1, 1.0) for c in candidates}
    signal = make_signal(power, signal_type)
    result = allocate(
        strategy,
        candidates,
        signal,
        now=START,
        weights=weights,
        participation=participation,
        reliability=reliability,
    )
    check_contract(candidates, power, result.assignments)
    assert set(result.scores) == {c.vehicle.vehicle_id for c in candidates}
    total = sum(abs(p) for p in result.assignments.values())
    assert result.shortfall_kw == pytest.approx(abs(power) - total, abs=1e-6)
    assert result.shortfall_kw >= 0.0
    # No order dependence.
    shuffled = list(candidates)
    rng.shuffle(shuffled)
    again = allocate(
        strategy,
        shuffled,
        signal,
        now=START,
        weights=weights,
        participation=participation,
        reliability=reliability,
    )
    assert again.assignments.keys() == result.assignments.keys()
    for vehicle_id, assigned in result.assignments.items():
        assert again.assignments[vehicle_id] == pytest.approx(assigned, rel=1e-9)


@PROPERTY
@given(fleets(), powers, weights_strategy)
def test_smart_is_proportional_among_unsaturated(
    candidates: list[Candidate], power: float, weights: ScoreWeights
) -> None:
    result = allocate(
        Strategy.SMART, candidates, make_signal(power), now=START, weights=weights
    )
    caps = {c.vehicle.vehicle_id: c.capacity_kw for c in candidates}
    ratios = [
        abs(result.assignments.get(vid, 0.0)) / score
        for vid, score in result.scores.items()
        if score > 1e-9 and abs(result.assignments.get(vid, 0.0)) < caps[vid] - 1e-9
    ]
    if ratios:
        assert max(ratios) == pytest.approx(min(ratios), rel=1e-6, abs=1e-9)
    # Zero-score vehicles only get power once every scored vehicle is full.
    if any(
        result.assignments.get(vid) for vid, score in result.scores.items() if not score
    ):
        for vid, score in result.scores.items():
            if score > 0:
                assert abs(result.assignments.get(vid, 0.0)) == pytest.approx(caps[vid])


def random_split(caps: list[float], target: float, rng: random.Random) -> list[float]:
    """A random feasible split: random weights, water-filled to the target."""
    weights = [rng.uniform(0.01, 1.0) for _ in caps]
    positive = [i for i, cap in enumerate(caps) if cap > 0]
    split = [0.0] * len(caps)
    filled = _weighted_fill(
        [caps[i] for i in positive], [weights[i] for i in positive], target
    )
    for index, value in zip(positive, filled, strict=True):
        split[index] = value
    return split


@PROPERTY
@given(fleets(), powers, weights_strategy, st.integers(0, 2**32))
def test_optimal_is_never_beaten(
    candidates: list[Candidate], power: float, weights: ScoreWeights, seed: int
) -> None:
    signal = make_signal(power)
    best = allocate(Strategy.OPTIMAL, candidates, signal, now=START, weights=weights)
    scores = best.scores

    def value(assignments: dict[str, float]) -> float:
        return sum(scores[vid] * abs(p) for vid, p in assignments.items())

    optimum = value(best.assignments)
    tolerance = 1e-7 * (1 + optimum)
    for strategy in (Strategy.EQUAL, Strategy.SMART):
        other = allocate(strategy, candidates, signal, now=START, weights=weights)
        assert value(other.assignments) <= optimum + tolerance
    caps = [c.capacity_kw for c in candidates]
    target = min(abs(power), sum(caps))
    split = random_split(caps, target, random.Random(seed))
    assert math.isclose(sum(split), target, rel_tol=1e-6, abs_tol=1e-9)
    assert (
        sum(
            scores[c.vehicle.vehicle_id] * p
            for c, p in zip(candidates, split, strict=True)
        )
        <= optimum + tolerance
    )


@PROPERTY
@given(
    st.lists(
        st.tuples(
            st.floats(0.0, 1.0), st.booleans(), st.booleans(), st.floats(0.0, 30.0)
        ),
        max_size=10,
    ),
    powers,
    st.sampled_from(list(Strategy)),
    st.sampled_from(list(SignalType)),
)
def test_excluded_vehicles_are_never_assigned(
    specs: list[tuple[float, bool, bool, float]],
    power: float,
    strategy: Strategy,
    signal_type: SignalType,
) -> None:
    vehicles = [
        make_vehicle(f"v{i}", soc=soc, is_v2g=v2g, available=available, max_power_kw=kw)
        for i, (soc, v2g, available, kw) in enumerate(specs)
    ]
    signal = make_signal(power, signal_type)
    eligibility = evaluate_eligibility(vehicles, signal, SafetySettings(), START)
    result = allocate(strategy, eligibility.candidates, signal, now=START)
    assert not set(result.assignments) & set(eligibility.excluded)
    assert set(eligibility.excluded) | {
        c.vehicle.vehicle_id for c in eligibility.candidates
    } == {v.vehicle_id for v in vehicles}
    check_contract(eligibility.candidates, power, result.assignments)
