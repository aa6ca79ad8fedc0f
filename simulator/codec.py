"""The simulator's own wire codec (docs/protocol.md), independent of the integration."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
import json
import math
from typing import Any, Final

MAX_PAYLOAD_BYTES: Final = 64 * 1024
MAX_BATCH_BYTES: Final = 8 * 1024 * 1024
MAX_ID_LENGTH: Final = 256

_dumps = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False
).encode


class DecodeError(ValueError):
    """A payload could not be decoded; `command_id` is set when it was readable."""

    def __init__(self, message: str, command_id: str | None = None) -> None:
        """Initialise with a message and the command id, if known."""
        super().__init__(message)
        self.command_id = command_id


class TopicTemplate:
    """A topic with one `{placeholder}` level: format, wildcard and match."""

    __slots__ = ("_prefix", "_suffix", "template")

    def __init__(self, template: str, placeholder: str) -> None:
        """Split the template around its placeholder."""
        self.template = template
        self._prefix, _, self._suffix = template.partition(placeholder)

    def format(self, value: str) -> str:
        """Return the topic for one id."""
        return f"{self._prefix}{value}{self._suffix}"

    @property
    def wildcard(self) -> str:
        """The subscription filter matching every id (`+` at the placeholder)."""
        return f"{self._prefix}+{self._suffix}"

    def match(self, topic: str) -> str | None:
        """Return the id in `topic`, or None if the topic does not match."""
        prefix, suffix = self._prefix, self._suffix
        if (
            len(topic) > len(prefix) + len(suffix)
            and topic.startswith(prefix)
            and topic.endswith(suffix)
        ):
            value = topic[len(prefix) : len(topic) - len(suffix)]
            if "/" not in value:
                return value
        return None


@dataclass(slots=True)
class Order:
    """A decoded order (power_kw > 0 = discharge into the grid)."""

    command_id: str
    power_kw: float
    vehicle_id: str | None = None
    timestamp_ms: float | None = None
    dispatch_id: str | None = None
    signal_type: str | None = None
    duration_s: float | None = None
    expires_at_ms: float | None = None


def _number(obj: dict[str, Any], key: str, command_id: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError(f"{key} must be a number", command_id)
    if not math.isfinite(value):
        raise DecodeError(f"{key} must be finite", command_id)
    return float(value)


def _text(obj: dict[str, Any], key: str, command_id: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_ID_LENGTH:
        raise DecodeError(f"{key} must be a string", command_id)
    return value


def order_from_obj(obj: Any) -> Order:
    """Validate one order object; raise `DecodeError`."""
    if not isinstance(obj, dict):
        raise DecodeError("order must be a JSON object")
    command_id = obj.get("command_id")
    if (
        not isinstance(command_id, str)
        or not command_id
        or len(command_id) > MAX_ID_LENGTH
    ):
        raise DecodeError("missing or invalid command_id")
    power = _number(obj, "power_kw", command_id)
    if power is None:
        raise DecodeError("missing power_kw", command_id)
    duration = _number(obj, "duration_s", command_id)
    if duration is not None and duration < 0:
        raise DecodeError("duration_s must be >= 0", command_id)
    return Order(
        command_id=command_id,
        power_kw=power,
        vehicle_id=_text(obj, "vehicle_id", command_id),
        timestamp_ms=_number(obj, "timestamp", command_id),
        dispatch_id=_text(obj, "dispatch_id", command_id),
        signal_type=_text(obj, "signal_type", command_id),
        duration_s=duration,
        expires_at_ms=_number(obj, "expires_at", command_id),
    )


def _load(payload: bytes, limit: int) -> Any:
    if len(payload) > limit:
        raise DecodeError("payload too large")
    try:
        return json.loads(payload)
    except (ValueError, RecursionError) as err:
        raise DecodeError(f"invalid JSON: {err}") from None


def decode_order(payload: bytes) -> Order:
    """Decode a per-vehicle order payload; raise `DecodeError`."""
    return order_from_obj(_load(payload, MAX_PAYLOAD_BYTES))


def decode_gateway_batch(payload: bytes) -> tuple[str | None, list[Any]]:
    """Decode `{"dispatch_id", "orders": [...]}` into (dispatch id, raw items).

    Items are validated one by one with `order_from_obj` so one bad item does not
    spoil the batch.
    """
    obj = _load(payload, MAX_BATCH_BYTES)
    if not isinstance(obj, dict) or not isinstance(obj.get("orders"), list):
        raise DecodeError("gateway batch must be an object with an orders list")
    dispatch_id = obj.get("dispatch_id")
    return (dispatch_id if isinstance(dispatch_id, str) else None), obj["orders"]


def ack_obj(
    command_id: str,
    *,
    accepted: bool,
    reason: str | None = None,
    applied_power_kw: float | None = None,
    vehicle_id: str | None = None,
    minimal: bool = False,
) -> dict[str, Any]:
    """Build an ack object; `minimal` gives the Go form `{"command_id"}`."""
    ack: dict[str, Any] = {"command_id": command_id}
    if vehicle_id is not None:
        ack["vehicle_id"] = vehicle_id
    if minimal:
        return ack
    ack["status"] = "accepted" if accepted else "rejected"
    if reason is not None:
        ack["reason"] = reason
    if applied_power_kw is not None:
        ack["applied_power_kw"] = applied_power_kw
    return ack


def encode(obj: Any) -> bytes:
    """Encode a JSON object compactly."""
    return _dumps(obj).encode()


def encode_gateway_acks(acks: list[dict[str, Any]]) -> bytes:
    """Encode `{"acks": [...]}`."""
    return encode({"acks": acks})


def rfc3339(when: datetime | None) -> str | None:
    """Format an aware time as RFC 3339 (UTC, `Z`)."""
    if when is None:
        return None
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def vehicle_obj(
    *,
    vehicle_id: str,
    soc: float,
    max_power_kw: float,
    charge_rate_kw: float | None,
    battery_kwh: float,
    available: bool,
    charging: bool,
    departure: datetime | None,
    min_soc: float,
    segment: str,
    availability_prob: float,
    degradation_factor: float,
    gateway: str | None,
    is_v2g: bool = True,
    priority: bool = False,
) -> dict[str, Any]:
    """Build the Go-cased vehicle JSON of a discovery answer.

    `MaxPower` is the discharge limit and `ChargeRate` the charge limit (the
    integration reads it as `charge_rate_kw`); Go's Vehicle has no `ChargeRate`:
    None leaves it out.
    """
    obj: dict[str, Any] = {
        "ID": vehicle_id,
        "SoC": round(soc, 6),
        "IsV2G": is_v2g,
        "MaxPower": max_power_kw,
        "ChargeRate": charge_rate_kw,
        "BatteryKWh": battery_kwh,
        "Available": available,
        "Charging": charging,
        "Priority": priority,
        "Departure": rfc3339(departure),
        "MinSoC": min_soc,
        "segment": segment,
        "AvailabilityProb": availability_prob,
        "DegradationFactor": degradation_factor,
    }
    if charge_rate_kw is None:
        del obj["ChargeRate"]
    if gateway is not None:
        obj["gateway"] = gateway
    return obj


def telemetry_obj(
    *,
    vehicle_id: str,
    soc: float,
    available: bool,
    power_kw: float,
    ts: float,
    charging: bool | None = None,
) -> dict[str, Any]:
    """Build a telemetry object; `charging` defaults to power < 0 (charging)."""
    return {
        "vehicle_id": vehicle_id,
        "soc": round(soc, 6),
        "available": available,
        "charging": power_kw < 0 if charging is None else charging,
        "power_kw": power_kw,
        "ts": int(ts),
    }
