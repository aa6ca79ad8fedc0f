"""Energy and CO2 key figures (seed §5.5).

Sign convention of docs/protocol.md#sign-convention: positive power discharges into the grid
(injection), negative power charges the battery (absorption).
"""

from __future__ import annotations

import math

from .models import InvalidValueError


def energy_kwh(power_kw: float, seconds: float) -> tuple[float, float]:
    """Return (discharged kWh, charged kWh) for `power_kw` held for `seconds`.

    Both values are >= 0; at most one is non-zero.

    Raises:
        InvalidValueError: a non-finite value or negative duration.
    """
    if not math.isfinite(power_kw):
        raise InvalidValueError("power_kw", "must be finite")
    if not math.isfinite(seconds) or seconds < 0.0:
        raise InvalidValueError("seconds", "must be finite and >= 0")
    kwh = power_kw * seconds / 3600.0
    if kwh >= 0.0:
        return kwh, 0.0
    return 0.0, -kwh


def co2_avoided_g(discharged_kwh: float, factor_g_per_kwh: float) -> float:
    """Grams of CO2 avoided by injecting `discharged_kwh` (Go `CO2Avoided`).

    Raises:
        InvalidValueError: negative or non-finite inputs.
    """
    if not math.isfinite(discharged_kwh) or discharged_kwh < 0.0:
        raise InvalidValueError("discharged_kwh", "must be finite and >= 0")
    if not math.isfinite(factor_g_per_kwh) or factor_g_per_kwh < 0.0:
        raise InvalidValueError("factor", "must be finite and >= 0")
    return discharged_kwh * factor_g_per_kwh
