"""Re-allocation of power that was not acknowledged (docs/dispatch.md#fallback-round).

Each donor has a **safe headroom**: its candidate capacity minus |current
setpoint| (Go used the signed current, which over-estimated the room of charging
vehicles). The candidate capacity already includes the (1 - degradation)
derating, the energy limits and the departure protection of `eligibility`, so a
donor filled to its headroom is never pushed past what is safe.

Each donor also has a **weight** that decides its share of the residual:

    balanced      : SoC (1 - SoC for a charge residual) x reliability
    probabilistic : availability_prob (0 = unset -> 1) x reliability

The residual is water-filled: shared in proportion to the weights, each donor
capped at its headroom, what a full donor cannot take going to the others, until
the residual is placed or every donor is full (the rest is left over: the caller
sees it as unacknowledged power). When the residual is a discharge, donors whose
SoC is below max(their min SoC, 0.3) are skipped (Go's conservative 30 % reserve);
for a charge that reserve protects nothing.

The Go system multiplied headroom x weight into an "effective capacity" and
capped each donor at it: one vehicle timing out on a 20 kW FCR left the other,
with 12 kW of safe headroom, 8.4 kW (12 x SoC 0.7) and the dispatch partial.
Here the weights only share the residual out; they never keep safe room unused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

from .eligibility import Candidate
from .models import FallbackMode

# Go's `EffectiveCapacity` treats SoC below 30 % as off-limits for fallback.
FALLBACK_MIN_SOC = 0.3


def donor_headroom(
    candidate: Candidate, current_kw: float, *, discharge: bool
) -> float:
    """Extra power (kW, >= 0) a donor may safely take on top of `current_kw`."""
    vehicle = candidate.vehicle
    if discharge and vehicle.soc < max(vehicle.min_soc, FALLBACK_MIN_SOC):
        return 0.0
    return max(candidate.capacity_kw - abs(current_kw), 0.0)


def donor_weight(
    mode: FallbackMode,
    candidate: Candidate,
    *,
    discharge: bool,
    reliability: float = 1.0,
) -> float:
    """How large a share of the residual a donor gets (>= 0; 0 for mode `none`)."""
    vehicle = candidate.vehicle
    if mode is FallbackMode.BALANCED:
        weight = vehicle.soc if discharge else 1.0 - vehicle.soc
    elif mode is FallbackMode.PROBABILISTIC:
        weight = vehicle.availability_prob or 1.0
    else:
        return 0.0
    return weight * min(max(reliability, 0.0), 1.0)


@dataclass(slots=True)
class _Offer:
    vehicle_id: str
    current_kw: float
    headroom: float
    weight: float
    extra: float = 0.0


def _water_fill(offers: Sequence[_Offer], needed: float) -> None:
    """Set each offer's `extra`: min(headroom, level x weight), summing to `needed`.

    Donors fill up in the order of the level at which they are full
    (headroom / weight); once the rest fits below the next such level, every
    donor not yet full gets the common level times its weight.
    """
    by_level = sorted(offers, key=lambda o: o.headroom / o.weight)
    # weights_from[i]: the weight of the donors not full below level i.
    weights_from = list(accumulate(o.weight for o in reversed(by_level)))[::-1]
    placed = 0.0
    for index, offer in enumerate(by_level):
        weight_left = weights_from[index]
        if placed + offer.headroom / offer.weight * weight_left >= needed:
            common = (needed - placed) / weight_left
            for rest in by_level[index:]:
                rest.extra = min(rest.headroom, common * rest.weight)
            return
        offer.extra = offer.headroom
        placed += offer.headroom


def reallocate(
    mode: FallbackMode,
    residual_kw: float,
    donors: Sequence[Candidate],
    current: Mapping[str, float],
    reliability: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Spread an unacknowledged residual over donors (water-filling, see module).

    Args:
        mode: fallback mode; `none` re-allocates nothing.
        residual_kw: the power to place, signed like the signal (> 0 discharge).
        donors: candidates that may take more power (eligible for the signal).
        current: each donor's acknowledged first-round setpoint (signed kW);
            donors absent from it are at 0.
        reliability: per-vehicle reliability (default 1).

    Returns:
        The new total signed setpoint of each donor that receives extra power,
        in the order of `donors`.
    """
    if mode is FallbackMode.NONE or residual_kw == 0.0 or not donors:
        return {}
    reliability = reliability or {}
    discharge = residual_kw > 0.0
    sign = 1.0 if discharge else -1.0
    offers: list[_Offer] = []
    for donor in donors:
        vehicle_id = donor.vehicle.vehicle_id
        now_kw = current.get(vehicle_id, 0.0)
        headroom = donor_headroom(donor, now_kw, discharge=discharge)
        weight = donor_weight(
            mode,
            donor,
            discharge=discharge,
            reliability=reliability.get(vehicle_id, 1.0),
        )
        if headroom > 0.0 and weight > 0.0:
            offers.append(_Offer(vehicle_id, now_kw, headroom, weight))
    if not offers:
        return {}
    _water_fill(offers, abs(residual_kw))
    return {
        offer.vehicle_id: offer.current_kw + sign * offer.extra
        for offer in offers
        if offer.extra > 0.0
    }
