"""A dispatch request from an action or the webhook, and its errors.

Error mapping happens here, at one boundary: the engine's validation errors
become translated ``ServiceValidationError``; a fleet that cannot publish
raises a translated ``HomeAssistantError`` (docs/actions.md#errors).
"""

from __future__ import annotations

from collections.abc import Container, Sequence
import math

from homeassistant.exceptions import ServiceValidationError
from homeassistant.util import dt as dt_util, ulid as ulid_util

from .const import DOMAIN, LOGGER
from .engine import (
    DispatchRequest,
    FlexibilitySignal,
    InvalidValueError,
    SignalType,
    Strategy,
)
from .engine.models import MAX_SIGNAL_DURATION_S

# Unknown vehicle ids named in an error message.
MAX_NAMED_VEHICLES = 10


def invalid_value(err: InvalidValueError) -> ServiceValidationError:
    """The translated error of a value the engine refused (the field is named)."""
    LOGGER.debug("Refused %s: %s", err.field, err.reason)
    return ServiceValidationError(
        translation_domain=DOMAIN,
        translation_key="invalid_value",
        translation_placeholders={"field": err.field},
    )


def _error(key: str, **placeholders: str) -> ServiceValidationError:
    return ServiceValidationError(
        translation_domain=DOMAIN,
        translation_key=key,
        translation_placeholders=placeholders,
    )


def check_known_vehicles(
    vehicle_ids: Sequence[str], known: Container[str]
) -> tuple[str, ...]:
    """The ids without repeats.

    Raises:
        ServiceValidationError: some vehicles are not in the fleet.
    """
    ids = tuple(dict.fromkeys(vehicle_ids))
    unknown = [vid for vid in ids if vid not in known]
    if unknown:
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="unknown_vehicles",
            translation_placeholders={
                "vehicles": ", ".join(unknown[:MAX_NAMED_VEHICLES])
            },
        )
    return ids


def build_request(
    signal_type: SignalType | str,
    power_kw: float,
    duration_s: float,
    *,
    vehicle_ids: Sequence[str] | None,
    strategy: Strategy | str | None,
    dry_run: bool,
    known: Container[str],
) -> DispatchRequest:
    """Validate a dispatch request (translated errors).

    Raises:
        ServiceValidationError: bad values or unknown vehicle ids.
    """
    try:
        kind = (
            signal_type
            if isinstance(signal_type, SignalType)
            else SignalType.parse(signal_type)
        )
    except InvalidValueError as err:
        raise _error(
            "invalid_signal_type",
            value=str(signal_type),
            allowed=", ".join(t.value for t in SignalType),
        ) from err
    try:
        chosen = (
            strategy
            if strategy is None or isinstance(strategy, Strategy)
            else Strategy.parse(strategy)
        )
    except InvalidValueError as err:
        raise _error(
            "invalid_strategy",
            value=str(strategy),
            allowed=", ".join(s.value for s in Strategy),
        ) from err
    power = float(power_kw)
    if not math.isfinite(power):
        raise _error("invalid_power", value=str(power_kw))
    duration = float(duration_s)
    if not 0 < duration <= MAX_SIGNAL_DURATION_S:
        raise _error(
            "invalid_duration",
            value=f"{duration:g}",
            max_s=f"{MAX_SIGNAL_DURATION_S:g}",
        )
    try:
        signal = FlexibilitySignal(
            signal_type=kind,
            power_kw=power,
            duration_s=duration,
            start=dt_util.utcnow(),
        )
    except InvalidValueError as err:
        raise invalid_value(err) from err
    return DispatchRequest(
        signal=signal,
        vehicle_ids=None
        if vehicle_ids is None
        else check_known_vehicles(vehicle_ids, known),
        strategy=chosen,
        dry_run=dry_run,
        dispatch_id=ulid_util.ulid_now(),
    )
