"""Allocation strategies: how |P| is split over the eligible candidates.

All strategies share one contract (docs/dispatch.md#strategies):

* each candidate gets 0 <= p <= its capacity, in the signal's direction;
* the total is min(|P|, total capacity): power is never silently dropped while
  some candidate still has room, and `shortfall_kw` reports what is missing;
* the result does not depend on the order of the candidates.

Strategies:

* **equal** — the Go `EqualDispatcher` (seed §3.5), i.e. the same share for all,
  capped by each candidate's capacity (in both directions; Go did not cap charge)
  with the excess water-filled onto the others;
* **smart** — the Go weighted score (seed §3.6) with per-signal boosts, scaled by
  each vehicle's reliability, the power split *proportionally* to the score with
  capacity water-filling (Go's greedy pass was order-dependent and left a
  remainder). When the positive-score vehicles are full, zero-score vehicles take
  the rest equally; if every score is 0 the split is equal;
* **optimal** — maximises sum(score * p) under 0 <= p <= cap, sum(p) = |P|: fill by
  descending score; equal scores share equally (water-filling within the tie);
* **segmented** — per-segment weights and strategy (seed §3.8), with |P| split over
  segments in proportion to their capacity. Go gave every segment an equal share,
  which stranded power whenever a small segment could not absorb its share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
import math
from types import MappingProxyType

from .eligibility import Candidate
from .models import FlexibilitySignal, InvalidValueError, SignalType, Strategy

# Departure urgency decays with this time constant (minutes), as in Go.
_DEPARTURE_DECAY_MINUTES = 30.0
# Scores closer than this (relative) are a tie for the optimal strategy.
_TIE_REL_TOL = 1e-12


@dataclass(frozen=True, slots=True)
class ScoreWeights:
    """Weights of the smart score (Go `NewSmartDispatcher` defaults).

    `market_price` is the price level fed to the price term (Go `MarketPrice`).
    """

    soc: float = 0.5
    time: float = 0.3
    priority: float = 0.1
    price: float = 0.05
    wear: float = 0.05
    fairness: float = 0.05
    availability: float = 0.1
    market_price: float = 0.0

    def __post_init__(self) -> None:
        """Validate that every weight is a finite number.

        Raises:
            InvalidValueError: a weight is not a finite number.
        """
        for item in fields(self):
            value = getattr(self, item.name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise InvalidValueError(
                    f"weights.{item.name}", "must be a finite number"
                )

    def with_signal_boost(self, signal_type: SignalType) -> ScoreWeights:
        """Return the weights plus the Go per-signal boost.

        FCR: soc +0.2, priority +0.1. NEBEF: soc +0.1, time +0.2. MA and EcoWatt:
        soc +0.1. aFRR: none.
        """
        boost = _SIGNAL_BOOSTS[signal_type]
        if not boost:
            return self
        return replace(
            self, **{name: getattr(self, name) + add for name, add in boost.items()}
        )


ZERO_WEIGHTS = ScoreWeights(
    soc=0.0,
    time=0.0,
    priority=0.0,
    price=0.0,
    wear=0.0,
    fairness=0.0,
    availability=0.0,
    market_price=0.0,
)

_SIGNAL_BOOSTS: dict[SignalType, dict[str, float]] = {
    SignalType.FCR: {"soc": 0.2, "priority": 0.1},
    SignalType.AFRR: {},
    SignalType.MA: {"soc": 0.1},
    SignalType.NEBEF: {"soc": 0.1, "time": 0.2},
    SignalType.ECOWATT: {"soc": 0.1},
}


@dataclass(frozen=True, slots=True)
class SegmentConfig:
    """Weights and strategy of one vehicle segment (seed §3.8)."""

    weights: ScoreWeights = field(default_factory=ScoreWeights)
    strategy: Strategy = Strategy.SMART

    def __post_init__(self) -> None:
        """Reject a nested segmented strategy.

        Raises:
            InvalidValueError: strategy is `segmented`.
        """
        if self.strategy is Strategy.SEGMENTED:
            raise InvalidValueError("strategy", "a segment cannot be segmented")


# Go `DefaultSegmentConfigs`: unspecified weights keep the smart defaults;
# Go's "lp" dispatcher type is our optimal strategy, "heuristic" is smart.
DEFAULT_SEGMENTS: Mapping[str, SegmentConfig] = MappingProxyType(
    {
        "commuter": SegmentConfig(
            ScoreWeights(soc=0.6, time=0.3, priority=0.1), Strategy.SMART
        ),
        "captive_fleet": SegmentConfig(
            ScoreWeights(soc=0.4, time=0.2, availability=0.4), Strategy.OPTIMAL
        ),
        "opportunistic_charger": SegmentConfig(
            ScoreWeights(soc=0.2, time=0.1, price=0.4, availability=0.2, wear=0.1),
            Strategy.SMART,
        ),
    }
)


@dataclass(frozen=True, slots=True)
class Allocation:
    """Result of `allocate`.

    Attributes:
        assignments: signed kW per vehicle, only vehicles with non-zero power.
        scores: the score of every candidate (the smart score for every strategy,
            so reports can show it).
        shortfall_kw: |P| minus the assigned total (>= 0).
    """

    assignments: dict[str, float]
    scores: dict[str, float]
    shortfall_kw: float

    @property
    def assigned_kw(self) -> float:
        """Signed sum of the assignments."""
        return math.fsum(self.assignments.values())


def vehicle_score(
    candidate: Candidate,
    weights: ScoreWeights,
    now: datetime,
    participation: float = 0.0,
    reliability: float = 1.0,
) -> float:
    """Return the smart score of one candidate (seed §3.6), times its reliability.

    `weights` must already include the signal boost. Negative scores become 0.
    """
    return _scores(
        [candidate],
        weights,
        now,
        {candidate.vehicle.vehicle_id: participation},
        {candidate.vehicle.vehicle_id: reliability},
    )[0]


def _scores(
    candidates: Sequence[Candidate],
    weights: ScoreWeights,
    now: datetime,
    participation: Mapping[str, float],
    reliability: Mapping[str, float],
) -> list[float]:
    # One tight loop: this runs for every vehicle of every dispatch.
    soc_w = weights.soc
    time_w = weights.time
    priority_w = weights.priority
    price_term = weights.market_price * weights.price
    availability_w = weights.availability
    usage_w = weights.wear + weights.fairness
    get_participation = participation.get
    get_reliability = reliability.get
    exp = math.exp
    decay_s = _DEPARTURE_DECAY_MINUTES * 60.0
    out: list[float] = []
    append = out.append
    for candidate in candidates:
        vehicle = candidate.vehicle
        min_soc = vehicle.min_soc
        if min_soc < 1.0:
            energy = (vehicle.soc - min_soc) / (1.0 - min_soc)
            energy = 0.0 if energy < 0.0 else min(energy, 1.0)
        else:
            energy = 0.0
        score = (
            energy * (soc_w + price_term) + vehicle.availability_prob * availability_w
        )
        if vehicle.priority:
            score += priority_w
        departure = vehicle.departure
        if departure is not None and time_w:
            seconds = (departure - now).total_seconds()
            if seconds > 0.0:
                score += exp(-seconds / decay_s) * time_w
        vehicle_id = vehicle.vehicle_id
        if usage_w:
            score -= get_participation(vehicle_id, 0.0) * usage_w
        if score <= 0.0:
            append(0.0)
        else:
            append(score * get_reliability(vehicle_id, 1.0))
    return out


# --- water-filling primitives ---------------------------------------------------


def _equal_fill(caps: Sequence[float], target: float) -> list[float]:
    """Give everyone the same level, capped by `caps`, summing to min(target, Σcaps)."""
    count = len(caps)
    if target >= math.fsum(caps):
        return list(caps)
    result = [0.0] * count
    remaining = target
    left = count
    order = sorted(range(count), key=caps.__getitem__)
    for position, index in enumerate(order):
        share = max(remaining, 0.0) / left
        cap = caps[index]
        if cap <= share:
            result[index] = cap
            remaining -= cap
            left -= 1
        else:
            for other in order[position:]:
                result[other] = share
            break
    return result


def _weighted_fill(
    caps: Sequence[float], weights: Sequence[float], target: float
) -> list[float]:
    """p_i = min(cap_i, λ·w_i) with Σp = min(target, Σcaps); all weights > 0."""
    count = len(caps)
    if target >= math.fsum(caps):
        return list(caps)
    ratios = [cap / weight for cap, weight in zip(caps, weights, strict=True)]
    order = sorted(range(count), key=ratios.__getitem__)
    # weight_left[k] = total weight of order[k:], so λ never drifts.
    weight_left = [0.0] * (count + 1)
    for position in range(count - 1, -1, -1):
        weight_left[position] = weight_left[position + 1] + weights[order[position]]
    result = [0.0] * count
    remaining = target
    for position, index in enumerate(order):
        level = max(remaining, 0.0) / weight_left[position]
        cap = caps[index]
        if cap <= level * weights[index]:
            result[index] = cap
            remaining -= cap
        else:
            rest = order[position:]
            if len(rest) == 1:
                result[index] = max(remaining, 0.0)  # exact, no λ·w rounding
            else:
                for other in rest:
                    result[other] = level * weights[other]
            break
    return result


def _smart_fill(
    caps: Sequence[float], scores: Sequence[float], target: float
) -> list[float]:
    positive = [i for i, score in enumerate(scores) if score > 0.0]
    if not positive:
        return _equal_fill(caps, target)
    zero = [i for i, score in enumerate(scores) if score <= 0.0]
    positive_caps = [caps[i] for i in positive]
    result = [0.0] * len(caps)
    positive_total = math.fsum(positive_caps)
    if target <= positive_total or not zero:
        filled = _weighted_fill(positive_caps, [scores[i] for i in positive], target)
        for index, power in zip(positive, filled, strict=True):
            result[index] = power
        return result
    # Positive-score vehicles are full; zero-score ones take the rest equally.
    for index in positive:
        result[index] = caps[index]
    rest = _equal_fill([caps[i] for i in zero], target - positive_total)
    for index, power in zip(zero, rest, strict=True):
        result[index] = power
    return result


def _optimal_fill(
    caps: Sequence[float], scores: Sequence[float], target: float
) -> list[float]:
    result = [0.0] * len(caps)
    order = sorted(range(len(caps)), key=scores.__getitem__, reverse=True)
    remaining = target
    start = 0
    count = len(order)
    while start < count and remaining > 0.0:
        top = scores[order[start]]
        end = start + 1
        while end < count and math.isclose(
            scores[order[end]], top, rel_tol=_TIE_REL_TOL, abs_tol=1e-300
        ):
            end += 1
        group = order[start:end]
        group_caps = [caps[i] for i in group]
        group_total = math.fsum(group_caps)
        if group_total <= remaining:
            for index in group:
                result[index] = caps[index]
            remaining -= group_total
        else:
            for index, power in zip(
                group, _equal_fill(group_caps, remaining), strict=True
            ):
                result[index] = power
            remaining = 0.0
        start = end
    return result


def _fill(
    strategy: Strategy, caps: Sequence[float], scores: Sequence[float], target: float
) -> list[float]:
    if strategy is Strategy.EQUAL:
        return _equal_fill(caps, target)
    if strategy is Strategy.SMART:
        return _smart_fill(caps, scores, target)
    return _optimal_fill(caps, scores, target)


def _segment_fill(
    candidates: Sequence[Candidate],
    caps: Sequence[float],
    signal: FlexibilitySignal,
    now: datetime,
    segments: Mapping[str, SegmentConfig],
    participation: Mapping[str, float],
    reliability: Mapping[str, float],
    target: float,
) -> tuple[list[float], list[float]]:
    groups: dict[str, list[int]] = {}
    for index, candidate in enumerate(candidates):
        segment = candidate.vehicle.segment
        members = groups.get(segment)
        if members is None:
            groups[segment] = [index]
        else:
            members.append(index)
    total = math.fsum(caps)
    powers = [0.0] * len(candidates)
    scores = [0.0] * len(candidates)
    default = SegmentConfig()
    for segment, members in groups.items():
        config = segments.get(segment, default)
        weights = config.weights.with_signal_boost(signal.signal_type)
        member_caps = [caps[i] for i in members]
        member_scores = _scores(
            [candidates[i] for i in members], weights, now, participation, reliability
        )
        segment_total = math.fsum(member_caps)
        # Proportional to capacity: a share never exceeds what the segment can take.
        share = segment_total if target >= total else target * segment_total / total
        filled = _fill(config.strategy, member_caps, member_scores, share)
        for index, power, score in zip(members, filled, member_scores, strict=True):
            powers[index] = power
            scores[index] = score
    return powers, scores


def allocate(
    strategy: Strategy,
    candidates: Sequence[Candidate],
    signal: FlexibilitySignal,
    *,
    now: datetime,
    weights: ScoreWeights | None = None,
    participation: Mapping[str, float] | None = None,
    reliability: Mapping[str, float] | None = None,
    segments: Mapping[str, SegmentConfig] = DEFAULT_SEGMENTS,
) -> Allocation:
    """Split |signal.power_kw| over `candidates` with `strategy`.

    Args:
        strategy: the allocation strategy.
        candidates: eligible vehicles with their capacities (unique ids).
        signal: the signal; its sign is carried to every assignment and its type
            selects the score boost.
        now: reference time of the departure term of the score.
        weights: base score weights (default `ScoreWeights()`); the signal boost
            is added here.
        participation: per-vehicle participation (wear/fairness terms), e.g. the
            share `FleetState.participation_share()`.
        reliability: per-vehicle factor in [0, 1] on the score (default 1).
        segments: segment configuration for the segmented strategy.

    Raises:
        InvalidValueError: duplicate vehicle ids or a bad capacity.
    """
    participation = participation or {}
    reliability = reliability or {}
    base_weights = weights if weights is not None else ScoreWeights()
    ids = [c.vehicle.vehicle_id for c in candidates]
    caps = [c.capacity_kw for c in candidates]
    # One C-speed pass each: NaN/inf make the sum non-finite.
    if caps and (not math.isfinite(math.fsum(caps)) or min(caps) < 0.0):
        bad = next(
            vid
            for vid, cap in zip(ids, caps, strict=True)
            if not (0.0 <= cap < math.inf)
        )
        raise InvalidValueError("capacity_kw", f"{bad}: must be finite, >= 0")
    if len(set(ids)) != len(ids):
        raise InvalidValueError("candidates", "duplicate vehicle ids")
    target = abs(signal.power_kw)
    if strategy is Strategy.SEGMENTED:
        powers, scores = _segment_fill(
            candidates,
            caps,
            signal,
            now,
            segments,
            participation,
            reliability,
            target,
        )
    else:
        scores = _scores(
            candidates,
            base_weights.with_signal_boost(signal.signal_type),
            now,
            participation,
            reliability,
        )
        powers = _fill(strategy, caps, scores, target) if target > 0.0 else []
    sign = 1.0 if signal.power_kw > 0.0 else -1.0
    assignments = {
        vid: sign * power
        for vid, power in zip(ids, powers, strict=False)
        if power > 0.0
    }
    shortfall = max(target - math.fsum(powers), 0.0)
    return Allocation(assignments, dict(zip(ids, scores, strict=True)), shortfall)
