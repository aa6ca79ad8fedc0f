"""A dispatch request from an action or the webhook, and its errors.

Error mapping happens here, at one boundary: the engine's validation errors
become translated ``ServiceValidationError``; a fleet that cannot publish
raises a translated ``HomeAssistantError`` (docs/actions.md#errors).
"""

from __future__ import annotations

from collections.abc import Container, Sequence

from homeassistant.exceptions import ServiceValidationError
from homeassistant.util import dt as dt_util, ulid as ulid_util

from .const import DOMAIN
from .engine import (
    DispatchRequest,
    FlexibilitySignal,
    InvalidValueError,
    SignalType,
    Strategy,
)

# Unknown vehicle ids named in an error message.
MAX_NAMED_VEHICLES = 10


def invalid_value(err: InvalidValueError) -> ServiceValidationError:
    """The translated error of a value the engine refused."""
    return ServiceValidationError(
        translation_domain=DOMAIN,
        translation_key="invalid_value",
        translation_placeholders={"field": err.field, "reason": err.reason},
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
        chosen = (
            strategy
            if strategy is None or isinstance(strategy, Strategy)
            else Strategy.parse(strategy)
        )
        signal = FlexibilitySignal(
            signal_type=kind,
            power_kw=float(power_kw),
            duration_s=float(duration_s),
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
