"""Wire format of docs/protocol.md: orders out, acks / vehicles / telemetry in.

Decoders take untrusted bytes from the broker. They raise `DecodeError` (with a
short reason) for every malformed input and nothing else, so callers can count
and drop bad messages with a single `except`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
import json
import math
from typing import Any

from .models import (
    MAX_ID_LENGTH,
    EngineError,
    InvalidValueError,
    SignalType,
    Vehicle,
    validate_vehicle_id,
)

# A per-vehicle message (ack, vehicle, telemetry) is a few hundred bytes; 64 KiB
# leaves room for verbose firmware while bounding the work a hostile client causes.
MAX_PAYLOAD_BYTES = 65_536
# A gateway answers for a whole depot in one message (10,000 acks ~ 700 KB).
MAX_GATEWAY_PAYLOAD_BYTES = 4 * 1024 * 1024
MAX_REASON_LENGTH = 200
# Unix seconds beyond this are almost certainly milliseconds sent by mistake.
_MAX_UNIX_SECONDS = 1e11


class DecodeError(EngineError):
    """An incoming payload is malformed; `reason` says why (short, loggable)."""

    def __init__(self, reason: str) -> None:
        """Store the reason."""
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Order:
    """One setpoint order for one vehicle (docs/protocol.md#order)."""

    command_id: str
    vehicle_id: str
    power_kw: float
    timestamp_ms: int
    dispatch_id: str
    signal_type: SignalType
    duration_s: float
    expires_at_ms: int
    gateway: str | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """A vehicle's answer to an order. A bare `{"command_id"}` means accepted."""

    command_id: str
    accepted: bool = True
    reason: str | None = None
    applied_power_kw: float | None = None
    vehicle_id: str | None = None


class GatewayAcks(list[Ack]):
    """The valid acks of one gateway message, plus how many items were invalid.

    It is a list (iterate it like the `list[Ack]` of the architecture document);
    `invalid` counts the items that were skipped.
    """

    def __init__(self, acks: Iterable[Ack] = (), invalid: int = 0) -> None:
        """Build from the valid acks and the count of skipped items."""
        super().__init__(acks)
        self.invalid = invalid


@dataclass(frozen=True, slots=True)
class Telemetry:
    """A telemetry report; fields absent from the payload are None."""

    vehicle_id: str
    soc: float | None = None
    available: bool | None = None
    charging: bool | None = None
    power_kw: float | None = None
    ts: datetime | None = None


# --- encoding -------------------------------------------------------------------


def order_payload(order: Order) -> dict[str, Any]:
    """Return the JSON object of an order (docs/protocol.md#order)."""
    return {
        "command_id": order.command_id,
        "vehicle_id": order.vehicle_id,
        "power_kw": order.power_kw,
        "timestamp": order.timestamp_ms,
        "dispatch_id": order.dispatch_id,
        "signal_type": order.signal_type.value,
        "duration_s": order.duration_s,
        "expires_at": order.expires_at_ms,
    }


# One encoder and one decoder for every message: `json.dumps` / `json.loads`
# with options build a new one per call, a third of their cost on small payloads.
# Compact separators: orders go over MQTT thousands of times per dispatch.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _dumps(obj: Any) -> bytes:
    return _ENCODER.encode(obj).encode()


def encode_order(order: Order) -> bytes:
    """Serialise one order for `vehicle/{vehicle_id}/command`."""
    return _dumps(order_payload(order))


def encode_gateway_batch(dispatch_id: str, orders: Sequence[Order]) -> bytes:
    """Serialise the orders of one gateway: `{"dispatch_id", "orders": [...]}`."""
    return _dumps(
        {"dispatch_id": dispatch_id, "orders": [order_payload(o) for o in orders]}
    )


# --- decoding helpers -----------------------------------------------------------


def _reject_constant(name: str) -> Any:
    # json accepts NaN / Infinity / -Infinity by default; they are not JSON.
    raise ValueError(f"non-finite number {name}")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _load_json(payload: bytes | str | bytearray, limit: int) -> Any:
    """Parse untrusted JSON text, raising only DecodeError."""
    if isinstance(payload, bytes | bytearray):
        if len(payload) > limit:
            raise DecodeError("payload too large")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("payload is not UTF-8") from None
    elif isinstance(payload, str):
        # A character is at most 4 UTF-8 bytes: only encode when it could matter.
        if len(payload) > limit or (
            len(payload) * 4 > limit and len(payload.encode("utf-8", "replace")) > limit
        ):
            raise DecodeError("payload too large")
        text = payload
    else:
        raise DecodeError("payload must be bytes or str")
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise DecodeError("JSON nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, huge integers, NaN constants
        raise DecodeError(f"invalid JSON: {str(err)[:80]}") from None


def _number(obj: Mapping[str, Any], key: str, field: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if value.__class__ is bool or not isinstance(value, int | float):
        raise DecodeError(f"{field} must be a number")
    number = float(value)
    # Floats like 1e400 parse to inf; reject them like NaN.
    if not math.isfinite(number):
        raise DecodeError(f"{field} must be finite")
    return number


def _flag(obj: Mapping[str, Any], key: str, field: str) -> bool | None:
    value = obj.get(key)
    if value is None or value is True or value is False:
        return value
    raise DecodeError(f"{field} must be true or false")


def _text(obj: Mapping[str, Any], key: str, field: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise DecodeError(f"{field} must be a string")


def _clean_text(value: str) -> str:
    # JSON may carry lone surrogates; they would break every JSON encoder later.
    return value.encode("utf-8", "replace").decode("utf-8")


def _segment(obj: Mapping[str, Any], key: str, field: str) -> str | None:
    value = _text(obj, key, field)
    return None if value is None else _clean_text(value[:MAX_ID_LENGTH])


def _vehicle_id(value: object, field: str = "vehicle_id") -> str:
    try:
        return validate_vehicle_id(value, field)
    except InvalidValueError as err:
        raise DecodeError(str(err)) from None


def _ack_from_object(obj: object, *, need_vehicle_id: bool) -> Ack:
    if not isinstance(obj, dict):
        raise DecodeError("ack must be a JSON object")
    command_id = obj.get("command_id")
    if not isinstance(command_id, str) or not command_id:
        raise DecodeError("command_id must be a non-empty string")
    if len(command_id) > MAX_ID_LENGTH or not command_id.isprintable():
        raise DecodeError("command_id must be at most 128 printable characters")
    status = obj.get("status")
    if status is None:
        accepted = True
    elif not isinstance(status, str):
        raise DecodeError("status must be a string")
    else:
        lowered = status.lower()
        if lowered == "accepted":
            accepted = True
        elif lowered == "rejected":
            accepted = False
        else:
            raise DecodeError("status must be 'accepted' or 'rejected'")
    reason = _text(obj, "reason", "reason")
    if reason is not None:
        reason = _clean_text(reason[:MAX_REASON_LENGTH])
    applied = _number(obj, "applied_power_kw", "applied_power_kw")
    vehicle_id = obj.get("vehicle_id")
    if vehicle_id is not None or need_vehicle_id:
        vehicle_id = _vehicle_id(vehicle_id)
    return Ack(command_id, accepted, reason, applied, vehicle_id)


# --- public decoders ------------------------------------------------------------


def decode_ack(payload: bytes | str) -> Ack:
    """Decode a per-vehicle ack.

    `{"command_id": "…"}` alone is an acceptance (Go-compatible). Optional:
    `status` ("accepted" | "rejected", case-insensitive), `reason` (string,
    truncated to 200 characters), `applied_power_kw` (number), `vehicle_id`.
    Unknown keys are ignored.

    Raises:
        DecodeError: the payload is malformed.
    """
    return _ack_from_object(
        _load_json(payload, MAX_PAYLOAD_BYTES), need_vehicle_id=False
    )


def decode_gateway_acks(payload: bytes | str) -> GatewayAcks:
    """Decode a gateway's `{"acks": [ack + "vehicle_id", …]}`.

    Bad items are skipped and counted in `GatewayAcks.invalid`.

    Raises:
        DecodeError: the envelope itself is malformed.
    """
    envelope = _load_json(payload, MAX_GATEWAY_PAYLOAD_BYTES)
    if not isinstance(envelope, dict):
        raise DecodeError("gateway acks must be a JSON object")
    items = envelope.get("acks")
    if not isinstance(items, list):
        raise DecodeError("'acks' must be a list")
    acks = GatewayAcks()
    invalid = 0
    append = acks.append
    for item in items:
        try:
            append(_ack_from_object(item, need_vehicle_id=True))
        except DecodeError:
            invalid += 1
    acks.invalid = invalid
    return acks


def _parse_departure(value: object) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise DecodeError("departure must be an RFC 3339 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise DecodeError("departure is not RFC 3339") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise DecodeError("departure must carry a UTC offset")
    # Go's zero time.Time ("0001-01-01T00:00:00Z") means "unknown".
    if parsed.year <= 1:
        return None
    return parsed


_Converter = Callable[[Mapping[str, Any], str, str], Any]

# Lower-cased wire key -> (Vehicle field, converter). Both the Go field names
# (matched case-insensitively, like Go's encoding/json) and the snake_case forms.
_VEHICLE_KEYS: dict[str, tuple[str, _Converter]] = {
    "soc": ("soc", _number),
    "isv2g": ("is_v2g", _flag),
    "is_v2g": ("is_v2g", _flag),
    "maxpower": ("max_power_kw", _number),
    "max_power": ("max_power_kw", _number),
    "max_power_kw": ("max_power_kw", _number),
    "batterykwh": ("battery_kwh", _number),
    "battery_kwh": ("battery_kwh", _number),
    "available": ("available", _flag),
    "charging": ("charging", _flag),
    "priority": ("priority", _flag),
    "minsoc": ("min_soc", _number),
    "min_soc": ("min_soc", _number),
    "segment": ("segment", _segment),
    "availabilityprob": ("availability_prob", _number),
    "availability_prob": ("availability_prob", _number),
    "degradationfactor": ("degradation_factor", _number),
    "degradation_factor": ("degradation_factor", _number),
    "chargerate": ("charge_rate_kw", _number),
    "charge_rate_kw": ("charge_rate_kw", _number),
}


def _lowercase_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    # Go's encoding/json matches keys case-insensitively; two spellings of one
    # key with different values are ambiguous, so they are refused.
    lowered: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise DecodeError("keys must be strings")
        low = key.lower()
        if low in lowered and lowered[low] != value:
            raise DecodeError(f"conflicting values for {key!r}")
        lowered[low] = value
    return lowered


def _vehicle_fields(lowered: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, (field, convert) in _VEHICLE_KEYS.items():
        if key not in lowered:
            continue
        value = convert(lowered, key, field)
        if value is None:
            continue
        if field in fields and fields[field] != value:
            raise DecodeError(f"conflicting values for {field}")
        fields[field] = value
    if "departure" in lowered:
        fields["departure"] = _parse_departure(lowered["departure"])
    gateway = lowered.get("gateway")
    if gateway is not None and gateway != "":
        fields["gateway"] = _vehicle_id(gateway, "gateway")
    return fields


def _payload_vehicle_id(
    lowered: Mapping[str, Any], topic_vehicle_id: str | None
) -> str:
    given = [v for k in ("id", "vehicle_id") if (v := lowered.get(k)) is not None]
    if len(given) == 2 and given[0] != given[1]:
        raise DecodeError("conflicting vehicle ids")
    vehicle_id = _vehicle_id(given[0] if given else topic_vehicle_id)
    if topic_vehicle_id is not None and vehicle_id != topic_vehicle_id:
        raise DecodeError("vehicle id does not match the topic")
    return vehicle_id


def vehicle_from_mapping(
    data: Mapping[str, Any], topic_vehicle_id: str | None = None
) -> Vehicle:
    """Build a Vehicle from a decoded JSON object (see `decode_vehicle`).

    Raises:
        DecodeError: a field is missing, of the wrong type or out of range.
    """
    lowered = _lowercase_keys(data)
    vehicle_id = _payload_vehicle_id(lowered, topic_vehicle_id)
    fields = _vehicle_fields(lowered)
    try:
        return Vehicle(vehicle_id=vehicle_id, **fields)
    except InvalidValueError as err:
        raise DecodeError(str(err)) from None


def decode_vehicle(
    payload: bytes | str, topic_vehicle_id: str | None = None
) -> Vehicle:
    """Decode a discovery answer (vehicle JSON).

    Accepts the Go field names case-insensitively (`ID`, `SoC`, `IsV2G`,
    `MaxPower`, `BatteryKWh`, `Available`, `Charging`, `Priority`, `Departure`,
    `MinSoC`, `segment`, `AvailabilityProb`, `DegradationFactor`) and the
    snake_case forms (`id`/`vehicle_id`, `soc`, `is_v2g`, `max_power_kw`, …) plus
    `gateway` and `charge_rate_kw`. Missing fields take the Vehicle defaults. Go's
    zero time for `Departure` means no departure. Out-of-range values are rejected
    (not clamped). The id defaults to the topic's and must match it when both are
    given.

    Raises:
        DecodeError: the payload is malformed.
    """
    data = _load_json(payload, MAX_PAYLOAD_BYTES)
    if not isinstance(data, dict):
        raise DecodeError("vehicle must be a JSON object")
    return vehicle_from_mapping(data, topic_vehicle_id)


class GatewayVehicles(list[Vehicle]):
    """The valid vehicles of one gateway discovery answer, plus the skipped items.

    A list of `Vehicle` (each with its `gateway` set); `invalid` counts the items
    that were skipped; `gateway` is the answering gateway's id.
    """

    def __init__(
        self, gateway: str, vehicles: Iterable[Vehicle] = (), invalid: int = 0
    ) -> None:
        """Build from the gateway id, its valid vehicles and the skipped count."""
        super().__init__(vehicles)
        self.gateway = gateway
        self.invalid = invalid


def _gateway_vehicle(item: object, gateway: str) -> Vehicle:
    if not isinstance(item, dict):
        raise DecodeError("vehicle must be a JSON object")
    lowered = _lowercase_keys(item)
    vehicle_id = _payload_vehicle_id(lowered, None)  # each item names its vehicle
    fields = _vehicle_fields(lowered)
    if fields.setdefault("gateway", gateway) != gateway:
        raise DecodeError("vehicle names another gateway")
    try:
        return Vehicle(vehicle_id=vehicle_id, **fields)
    except InvalidValueError as err:
        raise DecodeError(str(err)) from None


def decode_gateway_vehicles(
    envelope: Mapping[str, Any], topic_gateway_id: str | None
) -> GatewayVehicles:
    """Read a gateway discovery answer: `{"gateway", "vehicles": [vehicle JSON, …]}`.

    `envelope` is the decoded JSON object (see `decode_discovery`). The gateway id
    comes from the topic or the envelope (both given: they must match); each
    item is a vehicle JSON that names its own id, and its `gateway`, when given,
    must be this gateway. Bad items are skipped and counted in `invalid`.

    Raises:
        DecodeError: the envelope itself is malformed.
    """
    items = envelope.get("vehicles")
    if not isinstance(items, list):
        raise DecodeError("'vehicles' must be a list")
    named = envelope.get("gateway")
    if named is not None and topic_gateway_id is not None and named != topic_gateway_id:
        raise DecodeError("gateway id does not match the topic")
    gateway = _vehicle_id(named if named is not None else topic_gateway_id, "gateway")
    vehicles = GatewayVehicles(gateway)
    for item in items:
        try:
            vehicles.append(_gateway_vehicle(item, gateway))
        except DecodeError:
            vehicles.invalid += 1
    return vehicles


def decode_discovery(
    payload: bytes | str, topic_id: str | None
) -> Vehicle | GatewayVehicles:
    """Decode what arrives on the discovery answer topic.

    A vehicle's own answer (its vehicle JSON, at most `MAX_PAYLOAD_BYTES`, see
    `decode_vehicle`) or a gateway's answer for its vehicles (an object with a
    `vehicles` list, at most `MAX_GATEWAY_PAYLOAD_BYTES`, see
    `decode_gateway_vehicles`); `topic_id` is the id the topic carries.

    Raises:
        DecodeError: the payload is malformed.
    """
    data = _load_json(payload, MAX_GATEWAY_PAYLOAD_BYTES)
    if not isinstance(data, dict):
        raise DecodeError("vehicle must be a JSON object")
    if "vehicles" in data:
        return decode_gateway_vehicles(data, topic_id)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise DecodeError("payload too large")
    return vehicle_from_mapping(data, topic_id)


def decode_telemetry(payload: bytes | str, topic_vehicle_id: str | None) -> Telemetry:
    """Decode `{"vehicle_id", "soc", "available", "charging", "power_kw", "ts"}`.

    Every field but the vehicle id is optional; the id defaults to the topic's and
    must match it when both are given. `ts` is unix seconds. SoC outside 0..1 is
    rejected (the Go system clamped it silently).

    Raises:
        DecodeError: the payload is malformed.
    """
    data = _load_json(payload, MAX_PAYLOAD_BYTES)
    if not isinstance(data, dict):
        raise DecodeError("telemetry must be a JSON object")
    vehicle_id = data.get("vehicle_id")
    if vehicle_id is None:
        vehicle_id = topic_vehicle_id
    vehicle_id = _vehicle_id(vehicle_id)
    if topic_vehicle_id is not None and vehicle_id != topic_vehicle_id:
        raise DecodeError("vehicle id does not match the topic")
    soc = _number(data, "soc", "soc")
    if soc is not None and not 0.0 <= soc <= 1.0:
        raise DecodeError("soc must be between 0 and 1")
    seconds = _number(data, "ts", "ts")
    ts: datetime | None = None
    if seconds is not None:
        if not 0.0 <= seconds < _MAX_UNIX_SECONDS:
            raise DecodeError("ts must be unix seconds")
        ts = datetime.fromtimestamp(seconds, UTC)
    return Telemetry(
        vehicle_id=vehicle_id,
        soc=soc,
        available=_flag(data, "available", "available"),
        charging=_flag(data, "charging", "charging"),
        power_kw=_number(data, "power_kw", "power_kw"),
        ts=ts,
    )
