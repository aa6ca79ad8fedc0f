"""The fields of the actions, read as the action form sends them.

Every refusal is a translated ``ServiceValidationError`` that names the field as
the form labels it (the field names of ``translations/en.json``), in plain words
(docs/actions.md#errors). The validators of a field raise `FieldInvalid` with
their own translation key; `labelled_schema` turns the first refusal of a schema
into that error, or, for voluptuous's own checks (a missing field, a value of
the wrong type), into ``missing_field`` / ``invalid_field`` with the field's label.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from datetime import timedelta
import math
from typing import Any, Final, cast

from homeassistant.core import HomeAssistant, async_get_hass, callback
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers import (
    config_validation as cv,
    device_registry as dr,
    translation,
)
from homeassistant.helpers.typing import VolSchemaType
import voluptuous as vol

from .const import DOMAIN
from .engine import InvalidValueError, SignalType, Strategy

# Longest piece of a refused value quoted back in a message.
ECHO_CHARS: Final = 64
# Largest power a dispatch may ask for, either way (kW): 100 MW. More is a typo
# (a value in W, a digit too many), never a fleet of this integration.
MAX_POWER_KW: Final = 100_000.0
# Exception messages are English (Home Assistant's rule); so are the labels in them.
_LANGUAGE: Final = "en"


class FieldInvalid(vol.Invalid):
    """A field refused with the translation key of its message."""

    def __init__(self, key: str, **placeholders: str) -> None:
        """Keep the translation key and the values the message quotes."""
        super().__init__(key)
        self.key = key
        # Not `placeholders`: newer voluptuous (probatio, HA 2026.11) owns that name.
        self.message_placeholders = placeholders


def field_error(key: str, **placeholders: str) -> ServiceValidationError:
    """The translated error of a refused field."""
    return ServiceValidationError(
        translation_domain=DOMAIN,
        translation_key=key,
        translation_placeholders=placeholders,
    )


def echo(value: Any) -> str:
    """A refused value as a message quotes it (shortened)."""
    text = str(value)
    return text if len(text) <= ECHO_CHARS else f"{text[: ECHO_CHARS - 1]}…"


@callback
def field_label(service: str, field: str, hass: HomeAssistant | None = None) -> str:
    """The name the action form shows for a field (the field's key if unknown)."""
    try:
        hass = hass or async_get_hass()
    except HomeAssistantError:  # not in Home Assistant's loop: no translations
        return field
    labels = translation.async_get_cached_translations(
        hass, _LANGUAGE, "services", DOMAIN
    )
    return labels.get(
        f"component.{DOMAIN}.services.{service}.fields.{field}.name", field
    )


def labelled_schema(service: str, fields: Mapping[Any, Any]) -> VolSchemaType:
    """The schema of an action whose refusals name the field as the form does."""
    schema = vol.Schema(fields)
    known = {str(key) for key in fields}

    def validate(data: Any) -> Any:
        try:
            return schema(data)
        except vol.MultipleInvalid as err:
            raise _translated(service, known, err.errors[0], data) from err

    # Home Assistant 2026.11 validates with probatio, installed under the
    # ``voluptuous`` name, and types ``async_register(schema=)`` with probatio's
    # classes, while mypy sees the real voluptuous package installed beside it. At
    # run time ``vol.Schema`` is the class Home Assistant validates with on every
    # version; the cast only tells mypy so.
    return cast("VolSchemaType", vol.Schema(validate))


def _translated(
    service: str, known: Container[str], error: vol.Invalid, data: Any
) -> ServiceValidationError:
    if isinstance(error, FieldInvalid):
        return field_error(error.key, **error.message_placeholders)
    field = str(error.path[0]) if error.path else ""
    if field not in known:
        return field_error("unknown_field", field=field)
    label = field_label(service, field)
    if isinstance(error, vol.RequiredFieldInvalid):
        return field_error("missing_field", field=label)
    value = data.get(field) if isinstance(data, Mapping) else data
    return field_error("invalid_field", field=label, value=echo(value))


def _finite(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _whole(value: Any) -> int | None:
    number = _finite(value)
    if number is None or not number.is_integer():
        return None
    return int(number)


def power_kw(value: Any) -> float:
    """Power: a finite number of kW (its bounds are checked with the request)."""
    number = _finite(value)
    if number is None:
        raise FieldInvalid("invalid_power", value=echo(value))
    return number


def check_power(power: float) -> float:
    """Power within ±`MAX_POWER_KW` (the dispatch's own check, for every caller).

    Raises:
        ServiceValidationError: a power beyond 100 MW either way.
    """
    if abs(power) > MAX_POWER_KW:
        raise field_error(
            "power_out_of_range", value=f"{power:g}", max_kw=f"{MAX_POWER_KW:,.0f}"
        )
    return power


def duration(value: Any) -> timedelta:
    """Duration: a time period (its bounds are checked with the request)."""
    try:
        period: timedelta = cv.time_period(value)
    except vol.Invalid:
        raise FieldInvalid("invalid_duration_format", value=echo(value)) from None
    return period


def signal_type(value: Any) -> SignalType:
    """Signal type: one of the five, ignoring case."""
    try:
        return SignalType.parse(value)
    except InvalidValueError:
        raise FieldInvalid(
            "invalid_signal_type",
            value=echo(value),
            allowed=", ".join(t.value for t in SignalType),
        ) from None


def strategy(value: Any) -> Strategy:
    """Strategy: one of the four, ignoring case."""
    try:
        return Strategy.parse(value)
    except InvalidValueError:
        raise FieldInvalid(
            "invalid_strategy",
            value=echo(value),
            allowed=", ".join(s.value for s in Strategy),
        ) from None


def target_kwh(value: Any) -> float:
    """Target energy: a finite number of kWh (> 0 is checked by the plan)."""
    number = _finite(value)
    if number is None:
        raise FieldInvalid("invalid_target_energy", value=echo(value))
    return number


def slot_minutes(value: Any) -> int:
    """Slot length: whole minutes, 1 to 1440."""
    number = _whole(value)
    if number is None or not 1 <= number <= 1440:
        raise FieldInvalid("invalid_slot_length", value=echo(value))
    return number


def limit(value: Any) -> int:
    """Limit: a whole number, at least 1."""
    number = _whole(value)
    if number is None or number < 1:
        raise FieldInvalid("invalid_limit", value=echo(value))
    return number


_WINDOWS: Final = vol.Schema(
    {
        cv.string: vol.All(
            cv.ensure_list,
            [
                vol.Schema(
                    {vol.Required("start"): cv.string, vol.Required("end"): cv.string}
                )
            ],
        )
    }
)


def windows(value: Any) -> dict[str, list[dict[str, str]]]:
    """Availability windows: per vehicle, a list of windows with a start and an end."""
    try:
        return cast("dict[str, list[dict[str, str]]]", _WINDOWS(value))
    except vol.Invalid:
        raise FieldInvalid("invalid_windows") from None


@callback
def vehicle_ids(
    hass: HomeAssistant,
    entry_id: str,
    picked: Iterable[str],
    known: Container[str],
    *,
    service: str,
    field: str,
) -> list[str]:
    """The vehicle ids of what the vehicle picker (or a user) gave.

    The picker gives device ids; a vehicle id is kept as it is (an id the fleet
    knows first: a vehicle may be named like a device id). Ids that are neither
    are kept too, for the caller to refuse as unknown vehicles.

    Raises:
        ServiceValidationError: a device that is not a vehicle of this fleet.
    """
    registry = dr.async_get(hass)
    prefix = f"{entry_id}_"
    found: list[str] = []
    for item in picked:
        if item in known or (device := registry.async_get(item)) is None:
            found.append(item)
            continue
        vehicle_id = next(
            (
                identifier.removeprefix(prefix)
                for domain, identifier in device.identifiers
                if domain == DOMAIN and identifier.startswith(prefix)
            ),
            None,
        )
        if vehicle_id is None:
            raise field_error(
                "not_a_fleet_vehicle",
                field=field_label(service, field, hass),
                device=device.name_by_user or device.name or item,
            )
        found.append(vehicle_id)
    return found
