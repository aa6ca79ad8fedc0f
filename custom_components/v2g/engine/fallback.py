"""Re-allocation of power that was not acknowledged (seed §3.10, fixed).

Each donor offers an *effective* extra capacity, the Go `EffectiveCapacity` idea:

    headroom  = candidate capacity - |current setpoint|      (Go used the signed
                current, which over-estimated the room of charging vehicles)
    balanced      : headroom x SoC x reliability
    probabilistic : headroom x availability_prob (0 = unset -> 1) x reliability

The candidate capacity already includes the (1 - degradation) derating, the energy
limits and the departure protection of `eligibility`, so a donor is never pushed
past what is safe. When the residual is a discharge, donors whose SoC is below
max(their min SoC, 0.3) are skipped (Go's conservative 30 % reserve). For a charge
residual that reserve protects nothing, so no donor is skipped and the balanced
weight is the room left in the battery (1 - SoC) instead of SoC.

The residual is shared in proportion to the effective capacities, each donor
capped at its own: if the residual exceeds their sum every donor is filled and the
rest is left over (the caller sees it as unacknowledged power).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math

from .eligibility import Candidate
from .models import FallbackMode

# Go's `EffectiveCapacity` treats SoC below 30 % as off-limits for fallback.
FALLBACK_MIN_SOC = 0.3


def effective_capacity(
    mode: FallbackMode,
    candidate: Candidate,
    current_kw: float,
    *,
    discharge: bool,
    reliability: float = 1.0,
) -> float:
    """Extra power (kW, >= 0) a donor may take on top of `current_kw`."""
    if mode is FallbackMode.NONE:
        return 0.0
    vehicle = candidate.vehicle
    if discharge and vehicle.soc < max(vehicle.min_soc, FALLBACK_MIN_SOC):
        return 0.0
    headroom = candidate.capacity_kw - abs(current_kw)
    if headroom <= 0.0:
        return 0.0
    if mode is FallbackMode.BALANCED:
        weight = vehicle.soc if discharge else 1.0 - vehicle.soc
    else:
        weight = vehicle.availability_prob or 1.0
    return headroom * weight * min(max(reliability, 0.0), 1.0)


def reallocate(
    mode: FallbackMode,
    residual_kw: float,
    donors: Sequence[Candidate],
    current: Mapping[str, float],
    reliability: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Spread an unacknowledged residual over donors.

    Args:
        mode: fallback mode; `none` re-allocates nothing.
        residual_kw: the power to place, signed like the signal (> 0 discharge).
        donors: candidates that may take more power (eligible for the signal).
        current: each donor's acknowledged first-round setpoint (signed kW);
            donors absent from it are at 0.
        reliability: per-vehicle reliability (default 1).

    Returns:
        The new total signed setpoint of each donor that receives extra power.
    """
    if mode is FallbackMode.NONE or residual_kw == 0.0 or not donors:
        return {}
    reliability = reliability or {}
    discharge = residual_kw > 0.0
    sign = 1.0 if discharge else -1.0
    offers: list[tuple[str, float, float]] = []
    for donor in donors:
        vehicle_id = donor.vehicle.vehicle_id
        now_kw = current.get(vehicle_id, 0.0)
        extra = effective_capacity(
            mode,
            donor,
            now_kw,
            discharge=discharge,
            reliability=reliability.get(vehicle_id, 1.0),
        )
        if extra > 0.0:
            offers.append((vehicle_id, now_kw, extra))
    total = math.fsum(extra for _, _, extra in offers)
    if total <= 0.0:
        return {}
    needed = abs(residual_kw)
    scale = 1.0 if needed >= total else needed / total
    return {
        vehicle_id: now_kw + sign * extra * scale
        for vehicle_id, now_kw, extra in offers
    }
