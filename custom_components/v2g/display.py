"""How a sensor value is displayed: what a state write is compared on (entity.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from homeassistant.components.sensor import DOMAIN as SENSOR_DOMAIN, SensorEntity


def _display_precision(sensor: SensorEntity) -> int | None:
    """The decimals the frontend shows (the user's choice, else ours).

    None when Home Assistant converts the value to a unit the user chose: the
    precision then applies to the converted value, so none is assumed.
    """
    entry = sensor.registry_entry
    options = entry.options.get(SENSOR_DOMAIN) if entry is not None else None
    if options:
        unit = options.get("unit_of_measurement")
        if unit is not None and unit != sensor.native_unit_of_measurement:
            return None
        for key in ("display_precision", "suggested_display_precision"):
            if (precision := options.get(key)) is not None:
                return int(precision)
    return sensor.suggested_display_precision


def displayed_value(sensor: SensorEntity, value: Any) -> Any:
    """A sensor value as it is displayed: numbers rounded to the precision.

    A state write is skipped while this stays the same (entity.py).
    """
    if isinstance(value, datetime):
        # Timestamps are stated to the second (SensorEntity.state).
        return value.astimezone(UTC).isoformat(timespec="seconds")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    precision = _display_precision(sensor)
    return value if precision is None else round(value, precision)
