"""Flexibility signals received through a Home Assistant webhook (seed §6.5).

When the ``webhook_enabled`` option is on (and the options flow has generated a
``webhook_id``), ``POST /api/webhook/<webhook_id>`` accepts the RTE signal JSON of
the Go mock server::

    {"signal_type": "FCR", "start_time": "2025-07-07T10:00:00Z",
     "end_time": "2025-07-07T10:15:00Z", "power": 50, "meta": {"k": "v"}}

and runs one dispatch through ``FleetDispatcher.async_dispatch`` to the end
before answering (the Go mock server was synchronous too): 200 with the dispatch
response of the ``v2g.dispatch`` action (docs/actions.md#dispatch-response), 400 ``{"error": reason}`` for
bad input, 413 for a body over 64 KiB, 503 when MQTT cannot take the orders.

Decisions (differences from the Go server):

* Signal types: ``FCR``; ``aFRR``, ``aFRR_UP``, ``aFRR_DOWN`` → aFRR; ``MA``;
  ``NEBEF``, ``DELESTAGE`` → NEBEF, as in Go, **plus ``EcoWatt``** (a signal type of
  this integration, docs/actions.md#dispatch, that Go's RTE model rejected). Names are matched
  ignoring case, like the action's ``signal_type``.
* ``power`` is the requested power in kW with the sign of docs/protocol.md#sign-convention (> 0: the
  vehicles discharge into the grid); Go's RTE power is positive for injection, so
  it is passed through unchanged. Like the action, more than 100 MW either way is
  refused (400 ``power must be at most 100000 kW either way (100 MW)``); a power
  the fleet cannot take in full is dispatched, and the answer's ``shortfall_kw``
  says how much could not be placed.
* Times must be RFC 3339 with a time zone (``Z`` or an offset).
* The block is dispatched **now** (Home Assistant has no scheduler for future
  orders): a block that starts in the future is dispatched at once with the
  block's duration (end - start); a block already running is dispatched for what
  is left of it (end - now), so the orders expire when the block ends; a block
  that has already ended is refused (400 ``signal already ended``).
* ``meta`` is accepted (an object) and ignored, as in Go.
* ``verify`` (optional boolean, not in Go): answer only once the dispatch's
  delivery is verified, with the measurements (docs/actions.md#verification).

Unknown webhook ids never reach this module: Home Assistant answers them itself
(200 with an empty body, so the existence of a webhook is not given away).
Bad input never raises: every refused request is counted in
``coordinator.input_log.counters`` (``webhook_rejected`` plus ``webhook_<reason>``) and
logged once at warning level, then at debug level.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from http import HTTPStatus
import math
import re
from typing import TYPE_CHECKING, Any, Final

from aiohttp import hdrs
from aiohttp.web import Request, Response
from homeassistant.components import webhook
from homeassistant.const import CONTENT_TYPE_JSON
from homeassistant.core import HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers.json import json_bytes
from homeassistant.util import dt as dt_util
from homeassistant.util.json import JSON_DECODE_EXCEPTIONS, json_loads

from .action_fields import MAX_POWER_KW
from .const import CONF_WEBHOOK_ENABLED, CONF_WEBHOOK_ID, DOMAIN, LOGGER
from .engine import SignalType

if TYPE_CHECKING:
    from .coordinator import V2GConfigEntry, V2GFleetCoordinator

MAX_BODY_BYTES: Final = 64 * 1024
REJECTED_COUNTER: Final = "webhook_rejected"
# Longest piece of the caller's input echoed back in an error message.
_ECHO_CHARS: Final = 64

# RTE signal type names (Go rte.Signal) -> our signal types; EcoWatt added.
RTE_SIGNAL_TYPES: Final[dict[str, SignalType]] = {
    "fcr": SignalType.FCR,
    "afrr": SignalType.AFRR,
    "afrr_up": SignalType.AFRR,
    "afrr_down": SignalType.AFRR,
    "ma": SignalType.MA,
    "nebef": SignalType.NEBEF,
    "delestage": SignalType.NEBEF,
    "ecowatt": SignalType.ECOWATT,
}

_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})"
)


class SignalRejectedError(Exception):
    """A request refused with an HTTP status, a counter key and a message."""

    def __init__(self, status: HTTPStatus, code: str, message: str) -> None:
        """Store what the caller and the counters get."""
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class RteSignal:
    """A validated RTE signal, ready to dispatch now."""

    signal_type: SignalType
    power_kw: float
    start: datetime
    end: datetime
    duration_s: float
    verify: bool = False


def _invalid(message: str, code: str = "invalid") -> SignalRejectedError:
    return SignalRejectedError(HTTPStatus.BAD_REQUEST, code, message)


def _parse_time(value: Any, name: str) -> datetime:
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise _invalid(f"{name} must be an RFC 3339 time with a time zone")
    try:
        return dt_util.as_utc(datetime.fromisoformat(value.upper()))
    except (ValueError, OverflowError):  # 2025-02-30, 0001-01-01T00:00:00+01:00
        raise _invalid(f"{name} must be an RFC 3339 time with a time zone") from None


def _parse_signal_type(data: Mapping[str, Any]) -> SignalType:
    raw_type = data.get("signal_type")
    if not isinstance(raw_type, str):
        raise _invalid("signal_type must be a string")
    signal_type = RTE_SIGNAL_TYPES.get(raw_type.strip().lower())
    if signal_type is None:
        raise _invalid(f"unknown signal type: {raw_type[:_ECHO_CHARS]}", "unknown_type")
    return signal_type


def _parse_power(data: Mapping[str, Any]) -> float:
    # Missing power is 0 in Go, hence "must be non-zero".
    power = data.get("power", 0)
    if isinstance(power, bool) or not isinstance(power, int | float):
        raise _invalid("power must be a number")
    try:
        power_kw = float(power)
    except OverflowError:
        power_kw = math.inf
    if not math.isfinite(power_kw):
        raise _invalid("power must be finite")
    if power_kw == 0.0:
        raise _invalid("power must be non-zero")
    if abs(power_kw) > MAX_POWER_KW:
        raise _invalid(
            f"power must be at most {MAX_POWER_KW:.0f} kW either way (100 MW)",
            "power_out_of_range",
        )
    return power_kw


def parse_rte_signal(data: Any, now: datetime) -> RteSignal:
    """Validate the RTE signal JSON (seed §6.5) and compute what to dispatch now.

    Raises:
        SignalRejectedError: the reason, in Go's words where Go had one.
    """
    if not isinstance(data, Mapping):
        raise _invalid("the body must be a JSON object", "malformed")
    signal_type = _parse_signal_type(data)
    raw_start, raw_end = data.get("start_time"), data.get("end_time")
    if raw_start in (None, "") or raw_end in (None, ""):
        raise _invalid("start_time and end_time required")
    start = _parse_time(raw_start, "start_time")
    end = _parse_time(raw_end, "end_time")
    if end <= start:
        raise _invalid("end_time must be after start_time")
    power_kw = _parse_power(data)
    meta = data.get("meta")
    if meta is not None and not isinstance(meta, Mapping):
        raise _invalid("meta must be an object")
    verify = data.get("verify", False)
    if not isinstance(verify, bool):
        raise _invalid("verify must be true or false")
    if end <= now:
        raise _invalid("signal already ended", "ended")
    # Dispatched now: a future block keeps its length, a running one what is left.
    duration_s = (end - max(start, now)).total_seconds()
    return RteSignal(signal_type, power_kw, start, end, duration_s, verify)


async def _read_body(request: Request) -> bytes:
    """Read at most ``MAX_BODY_BYTES``; refuse larger bodies (413)."""
    too_large = SignalRejectedError(
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        "oversize",
        f"request body larger than {MAX_BODY_BYTES} bytes",
    )
    declared = request.headers.get(hdrs.CONTENT_LENGTH)
    if (
        declared is not None
        and declared.strip().isdigit()
        and int(declared) > MAX_BODY_BYTES
    ):
        raise too_large
    stream = request.content  # a new reader per access on a relayed MockRequest
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_BODY_BYTES:
        chunk = await stream.read(MAX_BODY_BYTES + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > MAX_BODY_BYTES:
        raise too_large
    return b"".join(chunks)


def _json_response(data: Mapping[str, Any], status: HTTPStatus) -> Response:
    return Response(
        body=json_bytes(data), status=status, content_type=CONTENT_TYPE_JSON
    )


def _reject(coordinator: V2GFleetCoordinator, error: SignalRejectedError) -> Response:
    """Count and log (once per reason) a refused request; answer its status."""
    counters = coordinator.input_log.counters
    counters[REJECTED_COUNTER] = counters.get(REJECTED_COUNTER, 0) + 1
    coordinator.input_log.drop("webhook", error.code, "the signal webhook")
    LOGGER.debug("Webhook signal refused (%s): %s", int(error.status), error.message)
    return _json_response({"error": error.message}, error.status)


async def async_handle_signal(
    coordinator: V2GFleetCoordinator, request: Request
) -> Response:
    """Validate one webhook request and dispatch it; never raises."""
    try:
        body = await _read_body(request)
        try:
            data = json_loads(body)
        except JSON_DECODE_EXCEPTIONS:
            raise _invalid("invalid JSON", "malformed") from None
        signal = parse_rte_signal(data, dt_util.utcnow())
        try:
            result = await coordinator.dispatcher.async_dispatch(
                signal.signal_type, signal.power_kw, signal.duration_s
            )
            report = None
            if signal.verify:
                report = await coordinator.verifier.async_report(result.dispatch_id)
        except ServiceValidationError as err:
            raise _invalid(str(err), "invalid_value") from err
        except HomeAssistantError as err:
            raise SignalRejectedError(
                HTTPStatus.SERVICE_UNAVAILABLE, "unavailable", str(err)
            ) from err
    except SignalRejectedError as err:
        return _reject(coordinator, err)
    except Exception:  # noqa: BLE001 - answer (and count) instead of a bare 200
        LOGGER.exception("Unexpected error while handling a webhook signal")
        return _reject(
            coordinator,
            SignalRejectedError(
                HTTPStatus.INTERNAL_SERVER_ERROR, "error", "internal error"
            ),
        )
    response = result.as_response()
    if report is not None:
        response = report.verified_response(response)
    return _json_response(response, HTTPStatus.OK)


@callback
def async_setup_webhook(hass: HomeAssistant, entry: V2GConfigEntry) -> None:
    """Register the entry's signal webhook (if enabled); unregister on unload."""
    options = entry.runtime_data.options
    webhook_id = options.get(CONF_WEBHOOK_ID)
    if not options.get(CONF_WEBHOOK_ENABLED) or not webhook_id:
        return

    async def _handle(
        hass: HomeAssistant, webhook_id: str, request: Request
    ) -> Response:
        return await async_handle_signal(entry.runtime_data, request)

    try:
        webhook.async_register(
            hass,
            DOMAIN,
            f"{entry.title} flexibility signals",
            str(webhook_id),
            _handle,
            local_only=True,
            allowed_methods=[hdrs.METH_POST],
        )
    except ValueError:
        LOGGER.error(
            "The signal webhook of %s is not registered: its ID is already used by "
            "another webhook",
            entry.title,
        )
        return
    entry.async_on_unload(partial(webhook.async_unregister, hass, str(webhook_id)))
