"""Battery model and order acceptance rules (seed §7.3; positive power = discharge)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Rejection reasons sent in acks.
UNAVAILABLE: Final = "unavailable"
EXCEEDS_MAX_POWER: Final = "exceeds_max_power"
EXCEEDS_DISCHARGE_RATE: Final = "exceeds_discharge_rate"
EXCEEDS_CHARGE_RATE: Final = "exceeds_charge_rate"
BATTERY_EMPTY: Final = "battery_empty"
BATTERY_FULL: Final = "battery_full"

_EPS: Final = 1e-9


@dataclass(slots=True)
class Battery:
    """A battery with charge/discharge rate limits and a SoC fraction."""

    capacity_kwh: float
    charge_rate_kw: float
    discharge_rate_kw: float
    soc: float = 0.8

    def apply_power(self, power_kw: float, dt_s: float) -> float:
        """Run `power_kw` for `dt_s` seconds; return the power actually applied.

        Positive power discharges (limited by the discharge rate and the energy
        left), negative power charges (limited by the charge rate and the room
        left). The SoC stays within [0, 1].
        """
        if dt_s <= 0 or power_kw == 0:
            return 0.0
        hours = dt_s / 3600.0
        capacity = self.capacity_kwh
        if power_kw > 0:
            actual = min(power_kw, self.discharge_rate_kw)
            energy = actual * hours
            stored = self.soc * capacity
            if energy > stored:
                energy = stored
                actual = energy / hours
            self.soc -= energy / capacity
        else:
            actual = min(-power_kw, self.charge_rate_kw)
            energy = actual * hours
            room = (1.0 - self.soc) * capacity
            if energy > room:
                energy = room
                actual = energy / hours
            self.soc += energy / capacity
            actual = -actual
        self.soc = min(1.0, max(0.0, self.soc))
        return actual


def refusal_reason(
    battery: Battery, max_power_kw: float, power_kw: float, *, available: bool
) -> str | None:
    """Return why a vehicle refuses `power_kw`, or None if it accepts it.

    Zero (return to idle) is always accepted.
    """
    if power_kw == 0:
        return None
    if not available:
        return UNAVAILABLE
    if power_kw > 0:
        if power_kw > max_power_kw + _EPS:
            return EXCEEDS_MAX_POWER
        if power_kw > battery.discharge_rate_kw + _EPS:
            return EXCEEDS_DISCHARGE_RATE
        if battery.soc <= 0:
            return BATTERY_EMPTY
        return None
    magnitude = -power_kw
    if magnitude > max_power_kw + _EPS:
        return EXCEEDS_MAX_POWER
    if magnitude > battery.charge_rate_kw + _EPS:
        return EXCEEDS_CHARGE_RATE
    if battery.soc >= 1:
        return BATTERY_FULL
    return None
