"""Simulator configuration: options, validation, presets and input files."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
import ipaddress
import json
import math
from pathlib import Path
import re
from typing import Any, Final, Literal

type ConnectionMode = Literal["per-vehicle", "shared"]

CONNECTION_MODES: Final = ("per-vehicle", "shared")

# Go presets (seed §7.1): capacity kWh, charge rate kW, discharge rate kW.
BATTERY_PROFILES: Final[dict[str, tuple[float, float, float]]] = {
    "small": (20.0, 3.6, 7.0),
    "medium": (40.0, 7.0, 10.0),
    "large": (80.0, 11.0, 20.0),
}

VEHICLE_ID: Final = "{vehicle_id}"
GATEWAY_ID: Final = "{gateway_id}"


class ConfigError(ValueError):
    """An option or an input file is invalid."""


@dataclass(frozen=True, kw_only=True, slots=True)
class VehicleBehaviour:
    """How one vehicle answers orders and reports itself (defaults: honest).

    The fleet-wide values come from `SimulatorConfig`; `vehicle_overrides` changes
    them per vehicle, `FleetSimulator.set_behaviour` at run time.
    """

    drop_rate: float = 0.0
    # A dropped order is lost with its ack (never applied) unless apply_dropped:
    # then it is applied and only the ack is lost (the Go vehicles).
    apply_dropped: bool = False
    reject_rate: float = 0.0
    ack_all: bool = False
    minimal_acks: bool = False
    # Ack an order beyond the charge/discharge limit with the Go ack, keep the
    # previous power (refused orders are otherwise rejected with their reason).
    refuse_over_limit_ack: bool = False
    # Hold a setpoint past `expires_at` / `duration_s` and act on late orders.
    ignore_expiry: bool = False
    # Telemetry `charging` = power_kw > 0 (true while discharging), as in Go.
    inverted_charging_flag: bool = False
    # Discovery answers carry `ChargeRate` (Go's vehicle JSON has none).
    announce_charge_rate: bool = True

    def check(self) -> None:
        """Raise `ConfigError` if a value is invalid."""
        for name in BEHAVIOUR_FIELDS:
            value = getattr(self, name)
            if name in _RATE_FIELDS:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigError(f"{name} must be a number")
                _check_fraction(name, value)
            elif not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false")


BEHAVIOUR_FIELDS: Final = tuple(VehicleBehaviour.__dataclass_fields__)
_RATE_FIELDS: Final = ("drop_rate", "reject_rate")


@dataclass(frozen=True, kw_only=True, slots=True)
class TopicConfig:
    """Topic templates (docs/protocol.md#topics defaults); `{vehicle_id}` is one topic level."""

    command: str = "vehicle/{vehicle_id}/command"
    ack: str = "vehicle/{vehicle_id}/ack"
    discovery: str = "v2g/fleet/discovery"
    discovery_response: str = "v2g/fleet/response/{vehicle_id}"
    state: str = "v2g/vehicle/state/{vehicle_id}"
    telemetry_request: str = "v2g/telemetry/request"
    telemetry_response: str = "v2g/telemetry/response/{vehicle_id}"
    gateway_commands: str = "v2g/gateway/{gateway_id}/commands"
    gateway_acks: str = "v2g/gateway/{gateway_id}/acks"

    def validate(self) -> None:
        """Raise `ConfigError` if a template is unusable."""
        per_vehicle = {
            "command": self.command,
            "ack": self.ack,
            "discovery_response": self.discovery_response,
            "state": self.state,
            "telemetry_response": self.telemetry_response,
        }
        for name, template in per_vehicle.items():
            _check_template(name, template, VEHICLE_ID)
        _check_template("gateway_commands", self.gateway_commands, GATEWAY_ID)
        _check_template("gateway_acks", self.gateway_acks, GATEWAY_ID)
        for name, topic in (
            ("discovery", self.discovery),
            ("telemetry_request", self.telemetry_request),
        ):
            if not topic or any(c in topic for c in "+#{}"):
                raise ConfigError(f"{name} topic must be a plain topic: {topic!r}")


def _check_template(name: str, template: str, placeholder: str) -> None:
    if template.count(placeholder) != 1:
        raise ConfigError(f"{name} topic must contain {placeholder} once: {template!r}")
    if any(c in template for c in "+#"):
        raise ConfigError(f"{name} topic must not contain wildcards: {template!r}")
    if placeholder not in template.split("/"):
        raise ConfigError(
            f"{name} topic: {placeholder} must be a whole topic level: {template!r}"
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class SimulatorConfig:
    """Everything the simulator needs; the CLI builds one from its options.

    Times are seconds, powers kW (positive = discharge into the grid), energies kWh,
    SoC a fraction 0..1.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    allow_remote: bool = False
    keepalive: int = 30
    client_id_prefix: str = "sim-"
    connection: ConnectionMode = "per-vehicle"
    qos: int = 1

    count: int = 1
    id_prefix: str = "veh"
    seed: int | None = None
    initial_soc: float = 0.8
    soc_spread: float = 0.0
    min_soc: float = 0.0
    degradation_factor: float = 0.0
    commuter_pct: float = 0.0
    capacity_kwh: float = 40.0
    charge_rate_kw: float = 7.0
    discharge_rate_kw: float = 10.0
    max_power_kw: float = 10.0
    battery_profile: str | None = None

    ack_latency: float = 0.0
    ack_jitter: float = 0.0
    # Seconds the vehicles' wall clock is ahead (< 0: behind) of the real one: an
    # order then looks older to them (expiry), and so do their telemetry times.
    clock_offset: float = 0.0
    drop_rate: float = 0.0
    reject_rate: float = 0.0
    ack_all: bool = False
    minimal_acks: bool = False
    apply_dropped: bool = False
    refuse_over_limit_ack: bool = False
    ignore_expiry: bool = False
    inverted_charging_flag: bool = False
    announce_charge_rate: bool = True
    # Vehicle id -> {behaviour field: value}, over the fleet-wide values above.
    vehicle_overrides: Mapping[str, Mapping[str, float | bool]] = field(
        default_factory=dict
    )

    disconnect_rate: float = 0.0
    availability_interval: float = 60.0
    availability: tuple[float, ...] | None = None
    departures: Mapping[str, datetime] = field(default_factory=dict)

    telemetry_push: bool = False
    telemetry_interval: float = 10.0

    gateways: int = 0
    gateway_size: int = 0
    gateway_batch_window: float = 0.005
    gateway_batch_max: int = 500
    # Gateways answer discovery for their vehicles, up to `gateway_batch_max`
    # vehicles a message (False: each vehicle answers on its own).
    gateway_discovery: bool = True

    topics: TopicConfig = field(default_factory=TopicConfig)

    def validated(self) -> SimulatorConfig:
        """Return the config with the battery preset applied; raise `ConfigError`."""
        cfg = self._with_preset()
        cfg.check()
        return cfg

    def check(self) -> None:
        """Raise `ConfigError` if an option is invalid."""
        check_host(self.host, allow_remote=self.allow_remote)
        self._check_connection()
        self._check_numbers()
        self._check_gateways()
        if self.availability is not None and len(self.availability) != 24:
            raise ConfigError("availability profile needs 24 hourly values")
        self.topics.validate()
        self.behaviour()
        for vehicle_id in self.vehicle_overrides:
            self.behaviour(vehicle_id)

    def behaviour(self, vehicle_id: str | None = None) -> VehicleBehaviour:
        """The fleet-wide behaviour, with `vehicle_id`'s overrides if given.

        Raises `ConfigError` for an unknown field or an invalid value.
        """
        values = {name: getattr(self, name) for name in BEHAVIOUR_FIELDS}
        if vehicle_id is not None:
            values.update(self.vehicle_overrides.get(vehicle_id, {}))
        return make_behaviour(values)

    def _with_preset(self) -> SimulatorConfig:
        if not self.battery_profile:
            return self
        preset = BATTERY_PROFILES.get(self.battery_profile)
        if preset is None:
            raise ConfigError(
                f"unknown battery profile {self.battery_profile!r}"
                f" (one of {', '.join(BATTERY_PROFILES)})"
            )
        return replace(
            self,
            capacity_kwh=preset[0],
            charge_rate_kw=preset[1],
            discharge_rate_kw=preset[2],
        )

    def _check_connection(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"invalid port {self.port}")
        if self.connection not in CONNECTION_MODES:
            raise ConfigError(f"connection must be one of {CONNECTION_MODES}")
        if self.qos not in (0, 1, 2):
            raise ConfigError("qos must be 0, 1 or 2")
        if self.keepalive <= 0:
            raise ConfigError("keepalive must be > 0")
        if self.count <= 0:
            raise ConfigError("fleet size must be > 0")
        if not self.id_prefix or any(c in self.id_prefix for c in "/+#"):
            raise ConfigError(f"invalid id prefix {self.id_prefix!r}")

    def _check_numbers(self) -> None:
        for name in (
            "drop_rate",
            "reject_rate",
            "disconnect_rate",
            "commuter_pct",
            "initial_soc",
            "soc_spread",
            "min_soc",
            "degradation_factor",
        ):
            _check_fraction(name, getattr(self, name))
        for name in (
            "capacity_kwh",
            "charge_rate_kw",
            "discharge_rate_kw",
            "max_power_kw",
            "telemetry_interval",
            "availability_interval",
        ):
            _check_positive(name, getattr(self, name))
        for name in ("ack_latency", "ack_jitter", "gateway_batch_window"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be >= 0")
        if not math.isfinite(self.clock_offset):
            raise ConfigError("clock_offset must be a finite number of seconds")

    def _check_gateways(self) -> None:
        if self.gateways < 0 or self.gateway_size < 0:
            raise ConfigError("gateways and gateway size must be >= 0")
        if self.gateways and self.gateway_size:
            raise ConfigError("use either gateways or gateway size, not both")
        if self.gateway_batch_max <= 0:
            raise ConfigError("gateway batch max must be > 0")

    @property
    def gateway_count(self) -> int:
        """Number of gateway controllers (0 = every vehicle on its own topics)."""
        if self.gateways:
            return min(self.gateways, self.count)
        if self.gateway_size:
            return -(-self.count // self.gateway_size)
        return 0


def make_behaviour(values: Mapping[str, Any]) -> VehicleBehaviour:
    """Build and check a `VehicleBehaviour`; raise `ConfigError`."""
    unknown = set(values) - set(BEHAVIOUR_FIELDS)
    if unknown:
        raise ConfigError(
            f"unknown vehicle behaviour {', '.join(sorted(unknown))}"
            f" (one of {', '.join(BEHAVIOUR_FIELDS)})"
        )
    behaviour = VehicleBehaviour(**values)
    behaviour.check()
    return behaviour


def parse_override(text: str) -> tuple[str, dict[str, float | bool]]:
    """Parse `veh002:drop_rate=1,apply_dropped=true` into (id, values)."""
    vehicle_id, sep, rest = text.partition(":")
    vehicle_id = vehicle_id.strip()
    if not sep or not vehicle_id or not rest.strip():
        raise ConfigError(f"override must be ID:field=value[,...]: {text!r}")
    values: dict[str, float | bool] = {}
    for item in rest.split(","):
        name, eq, raw = (part.strip() for part in item.partition("="))
        name = name.replace("-", "_")
        if not eq or name not in BEHAVIOUR_FIELDS:
            raise ConfigError(
                f"override {item!r}: use field=value with a field among"
                f" {', '.join(BEHAVIOUR_FIELDS)}"
            )
        values[name] = _parse_value(name, raw)
    return vehicle_id, values


def _parse_value(name: str, raw: str) -> float | bool:
    if name in _RATE_FIELDS:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number: {raw!r}") from None
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false: {raw!r}")


def _check_fraction(name: str, value: float) -> None:
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be within [0, 1]")


def _check_positive(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be > 0")


def check_host(host: str, *, allow_remote: bool) -> None:
    """Refuse a broker that is not on the loopback interface unless allowed."""
    if allow_remote:
        return
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"broker host {host!r} is not a loopback address (use --allow-remote)"
        )


def parse_broker(text: str) -> tuple[str, int]:
    """Parse `host:port`, `mqtt://host:port` or `tcp://host:port` (port 1883)."""
    rest = text.strip()
    match = re.match(r"^(mqtt|tcp)://", rest)
    if match:
        rest = rest[match.end() :]
    elif "://" in rest:
        raise ConfigError(f"unsupported broker scheme in {text!r}")
    rest = rest.rstrip("/")
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port_text = tail.removeprefix(":")
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
    else:
        host, port_text = rest, ""
    if not host:
        raise ConfigError(f"missing broker host in {text!r}")
    try:
        port = int(port_text) if port_text else 1883
    except ValueError:
        raise ConfigError(f"invalid broker port in {text!r}") from None
    if host == "localhost":
        host = "127.0.0.1"
    return host, port


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str | float) -> float:
    """Parse seconds (`0.05`) or a Go duration (`50ms`, `1m30s`) into seconds."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        raw = text.strip()
        try:
            value = float(raw)
        except ValueError:
            pos = 0
            value = 0.0
            for match in _DURATION_PART.finditer(raw):
                if match.start() != pos:
                    break
                value += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos != len(raw) or not raw:
                raise ConfigError(f"invalid duration {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"invalid duration {text!r}")
    return value


def parse_availability(data: Any) -> tuple[float, ...]:
    """Build a 24-hour profile from JSON `{"0": 0.1, ..., "23": 0.9}`.

    As in Go: non-numeric or out-of-range keys are ignored and missing hours are 0.
    """
    if not isinstance(data, dict):
        raise ConfigError("availability profile must be a JSON object hour -> value")
    hours = [0.0] * 24
    for key, value in data.items():
        try:
            hour = int(key)
        except (TypeError, ValueError):
            continue
        if not 0 <= hour < 24:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"availability for hour {hour} must be a number")
        if not math.isfinite(value) or not 0 <= value <= 1:
            raise ConfigError(f"availability for hour {hour} must be within [0, 1]")
        hours[hour] = float(value)
    return tuple(hours)


def load_availability_file(path: str | Path) -> tuple[float, ...]:
    """Read an availability profile file (JSON hour -> probability)."""
    return parse_availability(_load_json(path))


def parse_departure(value: Any) -> datetime | None:
    """Parse an RFC 3339 time; naive times are UTC; None if unparsable."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def load_departures(
    schedule_file: str | Path | None = None,
    template_file: str | Path | None = None,
) -> dict[str, datetime]:
    """Departures from a schedule file and/or a template file.

    Schedule: `{"veh001": "RFC3339"}`. Template: `{"veh002": {"departure": "RFC3339"}}`.
    The schedule wins over the template; unparsable times are ignored (as in Go).
    """
    departures: dict[str, datetime] = {}
    if template_file:
        data = _load_json(template_file)
        if not isinstance(data, dict):
            raise ConfigError("template file must be a JSON object")
        for vehicle_id, entry in data.items():
            if isinstance(entry, dict) and (
                when := parse_departure(entry.get("departure"))
            ):
                departures[str(vehicle_id)] = when
    if schedule_file:
        data = _load_json(schedule_file)
        if not isinstance(data, dict):
            raise ConfigError("schedule file must be a JSON object")
        for vehicle_id, entry in data.items():
            if when := parse_departure(entry):
                departures[str(vehicle_id)] = when
    return departures


def _load_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err}") from err
    except ValueError as err:
        raise ConfigError(f"invalid JSON in {path}: {err}") from err
