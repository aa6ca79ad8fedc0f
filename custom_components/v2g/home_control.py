"""How a vehicle controlled through Home Assistant is driven and read.

A "controlled" vehicle subentry (controlled_flow.py) names a control: a
`number` / `input_number` entity in W, kW or A (with voltage times phases), in one
of two sign conventions (positive = charging, as Wallbox; or positive =
discharging, as our orders), or a script called with the order's fields. This
module turns an order's setpoint (docs/protocol.md#sign-convention: > 0
discharges) into the value to set, clamped to the entity's min / max and
rounded to its step, and reads entity states back into kW of our sign.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
import math
from typing import Any

from homeassistant.const import ATTR_UNIT_OF_MEASUREMENT, UnitOfPower
from homeassistant.core import HomeAssistant, State, split_entity_id
from homeassistant.util import dt as dt_util
from homeassistant.util.unit_conversion import PowerConverter

from .const import (
    CONF_BATTERY_KWH,
    CONF_CONFIRMATION,
    CONF_CONTROL_ACTION,
    CONF_CONTROL_ENTITY,
    CONF_CONTROL_UNIT,
    CONF_DEPARTURE_ENTITY,
    CONF_IDLE_MODE,
    CONF_IDLE_VALUE,
    CONF_MAX_CHARGE,
    CONF_MAX_DISCHARGE,
    CONF_PHASES,
    CONF_PLUGGED_ENTITY,
    CONF_POWER_ENTITY,
    CONF_POWER_SIGN,
    CONF_SIGN,
    CONF_SOC_ENTITY,
    CONF_TARGET_SOC,
    CONF_TOLERANCE,
    CONF_VEHICLE_ID,
    CONF_VOLTAGE,
    CONFIRM_POWER,
    DEFAULT_IDLE_VALUE,
    DEFAULT_PHASES,
    DEFAULT_TOLERANCE_KW,
    DEFAULT_VEHICLE_BATTERY_KWH,
    DEFAULT_VEHICLE_MAX_POWER_KW,
    DEFAULT_VOLTAGE,
    IDLE_PREVIOUS,
    SIGN_POSITIVE_CHARGING,
    UNIT_A,
    UNIT_KW,
    UNIT_W,
)

# Float noise of unit conversions (7000 W / 230 V) must not drop a whole step.
_STEP_EPSILON = 1e-9
_NO_STATE = ("unavailable", "unknown")


@dataclass(frozen=True, slots=True)
class Bounds:
    """The min / max / step attributes of a number entity (None: not given)."""

    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None

    @classmethod
    def of(cls, state: State | None) -> Bounds:
        """Read the attributes of ``state``; absent or bad values are None."""
        if state is None:
            return cls()
        attributes = state.attributes
        return cls(
            _finite(attributes.get("min")),
            _finite(attributes.get("max")),
            step if (step := _finite(attributes.get("step"))) and step > 0 else None,
        )

    def clamp(self, value: float) -> float:
        """``value`` within min and max."""
        if self.maximum is not None:
            value = min(value, self.maximum)
        if self.minimum is not None:
            value = max(value, self.minimum)
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlSpec:
    """What one controlled vehicle subentry says (its data keys: controlled_flow.py)."""

    vehicle_id: str
    subentry_id: str
    control_entity: str | None
    control_action: str | None
    unit: str = UNIT_KW
    voltage: float = DEFAULT_VOLTAGE
    phases: int = DEFAULT_PHASES
    positive_charging: bool = True
    power_entity: str | None = None
    power_positive_charging: bool = True
    soc_entity: str | None = None
    plugged_entity: str | None = None
    departure_entity: str | None = None
    target_soc: float | None = None  # percent
    battery_kwh: float = DEFAULT_VEHICLE_BATTERY_KWH
    max_discharge_kw: float = DEFAULT_VEHICLE_MAX_POWER_KW
    max_charge_kw: float = DEFAULT_VEHICLE_MAX_POWER_KW
    confirm_with_power: bool = False
    tolerance_kw: float = DEFAULT_TOLERANCE_KW
    idle_previous: bool = False
    idle_value: float = DEFAULT_IDLE_VALUE

    @classmethod
    def from_subentry(cls, subentry_id: str, data: Mapping[str, Any]) -> ControlSpec:
        """Read a subentry's data (the flow validated it).

        Raises:
            ValueError: a value is missing or not a number.
        """
        vehicle_id = data.get(CONF_VEHICLE_ID)
        if not isinstance(vehicle_id, str) or not vehicle_id:
            raise ValueError("no vehicle id")
        control_entity = _text(data, CONF_CONTROL_ENTITY)
        # A script gets the order's power as it is: kW, > 0 discharge.
        return cls(
            vehicle_id=vehicle_id,
            subentry_id=subentry_id,
            control_entity=control_entity,
            control_action=_text(data, CONF_CONTROL_ACTION),
            unit=str(data.get(CONF_CONTROL_UNIT, UNIT_KW))
            if control_entity
            else UNIT_KW,
            voltage=float(data.get(CONF_VOLTAGE, DEFAULT_VOLTAGE)),
            phases=int(data.get(CONF_PHASES, DEFAULT_PHASES)),
            positive_charging=control_entity is not None
            and data.get(CONF_SIGN) == SIGN_POSITIVE_CHARGING,
            power_entity=_text(data, CONF_POWER_ENTITY),
            power_positive_charging=data.get(CONF_POWER_SIGN) == SIGN_POSITIVE_CHARGING,
            soc_entity=_text(data, CONF_SOC_ENTITY),
            plugged_entity=_text(data, CONF_PLUGGED_ENTITY),
            departure_entity=_text(data, CONF_DEPARTURE_ENTITY),
            target_soc=None
            if data.get(CONF_TARGET_SOC) is None
            else float(data[CONF_TARGET_SOC]),
            battery_kwh=float(data.get(CONF_BATTERY_KWH, DEFAULT_VEHICLE_BATTERY_KWH)),
            max_discharge_kw=float(data.get(CONF_MAX_DISCHARGE, 0.0)),
            max_charge_kw=float(data.get(CONF_MAX_CHARGE, 0.0)),
            confirm_with_power=data.get(CONF_CONFIRMATION) == CONFIRM_POWER,
            tolerance_kw=float(data.get(CONF_TOLERANCE, DEFAULT_TOLERANCE_KW)),
            idle_previous=data.get(CONF_IDLE_MODE) == IDLE_PREVIOUS,
            idle_value=float(data.get(CONF_IDLE_VALUE, DEFAULT_IDLE_VALUE)),
        )

    @property
    def target(self) -> str:
        """The entity (or script) orders go to."""
        return self.control_entity or self.control_action or ""

    @property
    def confirmation_entity(self) -> str | None:
        """The entity whose state confirms an order (None: the action's return)."""
        return self.power_entity if self.confirm_with_power else self.control_entity

    def kw_per_unit(self) -> float:
        """Power of one unit of the control, in kW (1 A: voltage times phases)."""
        return kw_per_unit(self.unit, self.voltage, self.phases)

    def to_kw(self, value: float) -> float:
        """A control value as kW of our sign (> 0 discharge)."""
        kw = value * self.kw_per_unit()
        return -kw if self.positive_charging else kw

    def setpoint(self, power_kw: float, bounds: Bounds) -> tuple[float, float]:
        """The value to set for an order, and the power it stands for (kW, our sign).

        The order is held to the vehicle's limits, converted, rounded to the
        entity's step toward zero (never more power than ordered) and clamped to
        the entity's min / max.
        """
        kw = min(max(power_kw, -self.max_charge_kw), self.max_discharge_kw)
        value = (-kw if self.positive_charging else kw) / self.kw_per_unit()
        if bounds.step is not None:
            steps = math.floor(abs(value) / bounds.step + _STEP_EPSILON)
            value = math.copysign(steps * bounds.step, value)
        value = round(bounds.clamp(value), 9) + 0.0
        return value, self.to_kw(value)

    def can_discharge(self, bounds: Bounds) -> bool:
        """True if the limits and the entity's range allow discharging (V2G)."""
        if self.max_discharge_kw <= 0.0:
            return False
        if self.control_entity is None:
            return True
        if self.positive_charging:
            return bounds.minimum is None or bounds.minimum < 0.0
        return bounds.maximum is None or bounds.maximum > 0.0

    def limits_kw(self, bounds: Bounds) -> tuple[float, float]:
        """(discharge, charge) kW the vehicle can take: limits within the range."""
        discharge, charge = self.max_discharge_kw, self.max_charge_kw
        low, high = bounds.minimum, bounds.maximum
        if self.control_entity is not None:
            per_unit = self.kw_per_unit()
            negated_low = None if low is None else -low
            most_discharge = negated_low if self.positive_charging else high
            most_charge = high if self.positive_charging else negated_low
            if most_discharge is not None:
                discharge = min(discharge, max(most_discharge * per_unit, 0.0))
            if most_charge is not None:
                charge = min(charge, max(most_charge * per_unit, 0.0))
        if not self.can_discharge(bounds):
            discharge = 0.0
        return discharge, charge


def kw_per_unit(unit: str, voltage: float, phases: int) -> float:
    """Power of one unit of a control in ``unit``, in kW."""
    if unit == UNIT_A:
        return voltage * phases / 1000.0
    if unit == UNIT_W:
        return 0.001
    return 1.0


def numeric_state(state: State | None) -> float | None:
    """The state as a finite number; None when missing, unavailable or not a number."""
    if state is None:
        return None
    return _finite(state.state)


def power_kw(state: State | None, positive_charging: bool) -> float | None:
    """A power sensor's state as kW of our sign; None if unreadable or not power."""
    value = numeric_state(state)
    if value is None or state is None:
        return None
    unit = state.attributes.get(ATTR_UNIT_OF_MEASUREMENT) or UnitOfPower.WATT
    if unit not in PowerConverter.VALID_UNITS:
        return None
    kw = PowerConverter.convert(value, unit, UnitOfPower.KILO_WATT)
    return -kw if positive_charging else kw


def has_state(state: State | None) -> bool:
    """True if the entity exists and is neither unavailable nor unknown."""
    return state is not None and state.state not in _NO_STATE


def departure_time(state: State | None, now: datetime) -> datetime | None:
    """The departure an `input_datetime` or timestamp sensor shows (UTC).

    A time without a date is its next occurrence (today or tomorrow, local time).
    """
    if not has_state(state) or state is None:
        return None
    text = state.state
    if (parsed := dt_util.parse_datetime(text)) is not None:
        return dt_util.as_utc(parsed)
    if (clock := dt_util.parse_time(text)) is None:
        return None
    local_now = dt_util.as_local(now)
    candidate = datetime.combine(local_now.date(), clock, local_now.tzinfo)
    if candidate <= local_now:
        candidate += timedelta(days=1)
    return dt_util.as_utc(candidate)


async def async_call_control(
    hass: HomeAssistant, target: str, value: float | None, fields: Mapping[str, Any]
) -> None:
    """Set a number / input_number to ``value``, or run a script with ``fields``.

    Raises:
        HomeAssistantError: the action failed (ServiceValidationError included).
    """
    domain, object_id = split_entity_id(target)
    if domain == "script":
        await hass.services.async_call(domain, object_id, dict(fields), blocking=True)
        return
    await hass.services.async_call(
        domain, "set_value", {"entity_id": target, "value": value}, blocking=True
    )


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None
