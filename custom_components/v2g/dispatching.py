"""A dispatch request from an action or the webhook, and its errors.

Error mapping happens here, at one boundary: the engine's validation errors
become translated ``ServiceValidationError`` that name the field as the action
form labels it; a fleet that cannot publish raises a translated
``HomeAssistantError`` (docs/actions.md#errors). The checks here hold for every
caller: the action, the webhook and code calling the dispatcher.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
import math
from typing import Any

from homeassistant.exceptions import ServiceValidationError
from homeassistant.util import dt as dt_util, ulid as ulid_util

from .action_fields import check_power, field_label
from .const import DOMAIN, LOGGER, SERVICE_DISPATCH
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
# The engine's names of the request's values -> the action's fields.
_DISPATCH_FIELDS = {"power_kw": "power_kw", "duration_s": "duration"}


def invalid_value(err: InvalidValueError) -> ServiceValidationError:
    """The translated error of a value the engine refused (the field is named)."""
    LOGGER.debug("Refused %s: %s", err.field, err.reason)
    field = _DISPATCH_FIELDS.get(err.field, err.field)
    return ServiceValidationError(
        translation_domain=DOMAIN,
        translation_key="invalid_value",
        translation_placeholders={"field": field_label(SERVICE_DISPATCH, field)},
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
    check_power(power)
    duration = float(duration_s)
    if not 0 < duration <= MAX_SIGNAL_DURATION_S:
        # The message says "24 hours": the bound is fixed (engine/models.py).
        raise _error("invalid_duration", value=f"{duration:g}")
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


def warn_shortfall(fleet: str, response: Mapping[str, Any]) -> None:
    """Warn when a dispatch asked more than its fleet could take (not a dry run).

    The response says it too (`shortfall_kw`, docs/actions.md#dispatch-response),
    and so does the logbook line.
    """
    short = response.get("shortfall_kw")
    if not short or response.get("status") == "planned":
        return
    signal = response.get("signal") or {}
    LOGGER.warning(
        "%s: dispatch %s asked for %g kW %s; the fleet could place %g kW of it "
        "(%g kW short)",
        fleet,
        response.get("dispatch_id"),
        response.get("requested_kw") or 0.0,
        signal.get("type", "?"),
        response.get("assigned_kw") or 0.0,
        short,
    )
