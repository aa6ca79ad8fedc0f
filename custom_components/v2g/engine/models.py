"""Domain model of the dispatch engine: vehicles, signals, enums and errors.

Everything here is plain data with validation at construction time, so the rest of
the engine can trust the values it is given (finite numbers, fractions in 0..1,
timezone-aware datetimes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
import math
from typing import Any, Self

# Characters that cannot appear in an MQTT topic level: the vehicle id is one level.
_FORBIDDEN_ID_CHARS = frozenset("/+#")
MAX_ID_LENGTH = 128
MAX_SIGNAL_DURATION_S = 86_400.0


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class InvalidValueError(EngineError, ValueError):
    """A value given to the engine is out of its domain.

    Attributes:
        field: the name of the offending field (as the caller knows it).
        reason: a short, human readable explanation.
    """

    def __init__(self, field: str, reason: str) -> None:
        """Store the field and the reason; `str()` is "<field>: <reason>"."""
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class SignalType(StrEnum):
    """Flexibility products the fleet can answer."""

    FCR = "FCR"
    AFRR = "aFRR"
    MA = "MA"
    NEBEF = "NEBEF"
    ECOWATT = "EcoWatt"

    @classmethod
    def parse(cls, text: str) -> SignalType:
        """Return the signal type named by `text`, ignoring case.

        Raises:
            InvalidValueError: `text` names no signal type.
        """
        if isinstance(text, str):
            found = _SIGNAL_TYPES_BY_LOWER.get(text.strip().lower())
            if found is not None:
                return found
        raise InvalidValueError(
            "signal_type",
            f"unknown signal type {text!r} (expected one of {', '.join(cls)})",
        )


_SIGNAL_TYPES_BY_LOWER: dict[str, SignalType] = {s.value.lower(): s for s in SignalType}


class Strategy(StrEnum):
    """How requested power is split across eligible vehicles."""

    EQUAL = "equal"
    SMART = "smart"
    OPTIMAL = "optimal"
    SEGMENTED = "segmented"

    @classmethod
    def parse(cls, text: str) -> Strategy:
        """Return the strategy named by `text`, ignoring case.

        Raises:
            InvalidValueError: `text` names no strategy.
        """
        try:
            return cls(text.strip().lower())
        except (ValueError, AttributeError):
            raise InvalidValueError(
                "strategy",
                f"unknown strategy {text!r} (expected one of {', '.join(cls)})",
            ) from None


class FallbackMode(StrEnum):
    """How power that was not acknowledged is re-allocated."""

    NONE = "none"
    BALANCED = "balanced"
    PROBABILISTIC = "probabilistic"


class ExclusionReason(StrEnum):
    """Why a vehicle was left out of a dispatch."""

    NOT_V2G = "not_v2g"
    UNAVAILABLE = "unavailable"
    SOC_BELOW_MIN = "soc_below_min"
    INSUFFICIENT_ENERGY = "insufficient_energy"
    DEPARTURE_PROTECTED = "departure_protected"
    NOT_CHARGING = "not_charging"


class OrderStatus(StrEnum):
    """Final (or, for `planned`/`pending`, current) state of one order."""

    ACKNOWLEDGED = "acknowledged"
    REJECTED = "rejected"
    TIMEOUT = "timeout"
    PUBLISH_FAILED = "publish_failed"
    SUPERSEDED = "superseded"
    # Added to the documented set: a dry-run order that was never published, and an
    # order still waiting for its ack (only seen in in-flight/interrupted records).
    PLANNED = "planned"
    PENDING = "pending"


class DispatchStatus(StrEnum):
    """Outcome of a whole dispatch."""

    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"
    PLANNED = "planned"
    INTERRUPTED = "interrupted"


def validate_vehicle_id(value: object, field: str = "vehicle_id") -> str:
    """Return `value` if it can be a vehicle id (one MQTT topic level).

    Raises:
        InvalidValueError: empty, too long, not a string, containing / + # or
            non-printable characters.
    """
    if not isinstance(value, str) or not value:
        raise InvalidValueError(field, "must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidValueError(field, f"longer than {MAX_ID_LENGTH} characters")
    if not _FORBIDDEN_ID_CHARS.isdisjoint(value):
        raise InvalidValueError(field, "must not contain '/', '+' or '#'")
    if not value.isprintable():
        raise InvalidValueError(field, "must contain only printable characters")
    return value


def _require_number(field: str, value: object) -> float:
    # bool is an int subclass; a JSON true must never pass for 1.0.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidValueError(field, "must be a number")
    if not math.isfinite(value):
        raise InvalidValueError(field, "must be finite")
    return float(value)


def _require_fraction(field: str, value: object) -> float:
    number = _require_number(field, value)
    if not 0.0 <= number <= 1.0:
        raise InvalidValueError(field, "must be between 0 and 1")
    return number


def _require_non_negative(field: str, value: object) -> float:
    number = _require_number(field, value)
    if number < 0.0:
        raise InvalidValueError(field, "must not be negative")
    return number


def _require_bool(field: str, value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidValueError(field, "must be true or false")


def _require_aware(field: str, value: object) -> None:
    if not isinstance(value, datetime):
        raise InvalidValueError(field, "must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidValueError(field, "must be timezone-aware")
    try:
        # A time at the edge of the calendar (year 1 or 9999 with an offset) has
        # no UTC equivalent; it would break every later formatting of the vehicle.
        value.astimezone(UTC)
    except OverflowError as err:
        raise InvalidValueError(field, "is out of range") from err


def isoformat_utc(value: datetime) -> str:
    """Format an aware datetime as ISO 8601 in UTC (`...+00:00`)."""
    return value.astimezone(UTC).isoformat()


def parse_utc_time(value: object) -> datetime | None:
    """Read a time written by the integration (or by hand) as an aware UTC datetime.

    Accepts a `datetime` or an ISO 8601 string (`datetime.fromisoformat`, plus a
    trailing `z`). A value without a UTC offset is read as UTC: every time the
    integration writes carries an offset, so only hand-made values lack one, and
    UTC is how the dispatch log filter and the window bounds of the actions read
    them. Anything else (other types, unreadable text, a time with no UTC
    equivalent) gives None; this never raises.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        text = value[:-1] + "Z" if value.endswith("z") else value
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
    else:
        return None
    if parsed.utcoffset() is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Vehicle:
    """One electric vehicle as the dispatcher sees it.

    SoC values are fractions (0..1). `availability_prob` 0 means "unset" (as in the
    Go system); `charge_rate_kw` None means "charges at `max_power_kw`".
    """

    vehicle_id: str
    soc: float = 0.5
    is_v2g: bool = True
    max_power_kw: float = 7.0
    battery_kwh: float = 40.0
    available: bool = True
    charging: bool = False
    priority: bool = False
    departure: datetime | None = None
    min_soc: float = 0.0
    segment: str = ""
    availability_prob: float = 0.0
    degradation_factor: float = 0.0
    gateway: str | None = None
    charge_rate_kw: float | None = None

    def __post_init__(self) -> None:
        """Validate every field.

        Raises:
            InvalidValueError: a field is out of its domain.
        """
        validate_vehicle_id(self.vehicle_id)
        _require_fraction("soc", self.soc)
        _require_fraction("min_soc", self.min_soc)
        _require_fraction("availability_prob", self.availability_prob)
        _require_fraction("degradation_factor", self.degradation_factor)
        _require_non_negative("max_power_kw", self.max_power_kw)
        if _require_number("battery_kwh", self.battery_kwh) <= 0.0:
            raise InvalidValueError("battery_kwh", "must be positive")
        if self.charge_rate_kw is not None:
            _require_non_negative("charge_rate_kw", self.charge_rate_kw)
        _require_bool("is_v2g", self.is_v2g)
        _require_bool("available", self.available)
        _require_bool("charging", self.charging)
        _require_bool("priority", self.priority)
        if self.departure is not None:
            _require_aware("departure", self.departure)
        if not isinstance(self.segment, str):
            raise InvalidValueError("segment", "must be a string")
        if self.gateway is not None:
            validate_vehicle_id(self.gateway, "gateway")

    @property
    def effective_charge_rate_kw(self) -> float:
        """Power the vehicle charges at when asked to recharge."""
        return self.max_power_kw if self.charge_rate_kw is None else self.charge_rate_kw

    def with_changes(self, **changes: Any) -> Self:
        """Return a validated copy with some fields replaced."""
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict with the snake_case field names."""
        return {
            "vehicle_id": self.vehicle_id,
            "soc": self.soc,
            "is_v2g": self.is_v2g,
            "max_power_kw": self.max_power_kw,
            "battery_kwh": self.battery_kwh,
            "available": self.available,
            "charging": self.charging,
            "priority": self.priority,
            "departure": None
            if self.departure is None
            else isoformat_utc(self.departure),
            "min_soc": self.min_soc,
            "segment": self.segment,
            "availability_prob": self.availability_prob,
            "degradation_factor": self.degradation_factor,
            "gateway": self.gateway,
            "charge_rate_kw": self.charge_rate_kw,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class FlexibilitySignal:
    """A request for flexibility: signed power for a duration from a start time.

    `power_kw` > 0 asks the fleet to discharge into the grid (injection), < 0 to
    charge (absorption), 0 to return to idle.
    """

    signal_type: SignalType
    power_kw: float
    duration_s: float
    start: datetime

    def __post_init__(self) -> None:
        """Validate the signal.

        Raises:
            InvalidValueError: a field is out of its domain.
        """
        if not isinstance(self.signal_type, SignalType):
            raise InvalidValueError("signal_type", "must be a SignalType")
        _require_number("power_kw", self.power_kw)
        duration = _require_number("duration_s", self.duration_s)
        if not 0.0 < duration <= MAX_SIGNAL_DURATION_S:
            raise InvalidValueError(
                "duration_s", f"must be in (0, {MAX_SIGNAL_DURATION_S:.0f}] seconds"
            )
        _require_aware("start", self.start)

    @property
    def end(self) -> datetime:
        """When the signal stops."""
        return self.start + timedelta(seconds=self.duration_s)

    @property
    def duration_h(self) -> float:
        """Duration in hours (energy = power x hours)."""
        return self.duration_s / 3600.0

    @property
    def direction(self) -> int:
        """+1 discharge, -1 charge, 0 idle."""
        return (self.power_kw > 0) - (self.power_kw < 0)

    def as_dict(self) -> dict[str, Any]:
        """Return the `signal` object of docs/actions.md#dispatch-response."""
        return {
            "type": self.signal_type.value,
            "power_kw": self.power_kw,
            "duration_s": self.duration_s,
            "start": isoformat_utc(self.start),
        }
