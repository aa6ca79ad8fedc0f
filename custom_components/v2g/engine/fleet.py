"""Fleet state: known vehicles and what the dispatcher learned about them.

Holds the vehicles, when each was last heard from (monotonic seconds), the
acknowledged setpoint of each vehicle, participation counts, a per-vehicle
reliability learned from acks, ack counters and latency, and the energy each
vehicle discharged / charged, integrated from its acknowledged setpoints.

Reliability is the Go `AckBasedTuner` idea done per vehicle: an exponentially
weighted ack success rate (acknowledged = 1, rejected or timed out = 0; publish
failures and superseded orders are not the vehicle's fault and do not count),
bounded to [0.1, 1.0] and starting at 1.0. A verified delivery is a sample too:
a measured vehicle that followed its setpoint counts 1, one that did not 0
(docs/dispatch.md#verification).

A vehicle whose last `NOT_RESPONDING_TIMEOUTS` orders all timed out is *not
responding* until it answers again (an ack or a rejection, in time or late, or
its acknowledged 0 kW revoke or release): its entities show it as a problem and
it is not counted as available (docs/entities.md#vehicle-lifecycle).

A setpoint holds from its ack until it is replaced or its order expires. Energy is
integrated lazily: when the setpoint changes and when `accrue(now)` is called.
A setpoint that expired stays *unreleased* until the host sent the vehicle its
release (a 0 kW order, docs/dispatch.md#release-at-the-end) or a newer order
replaced it: a vehicle that ignores `expires_at` would otherwise keep it.

Measured power (telemetry `power_kw`, or the power entity of a vehicle controlled
through Home Assistant) is kept per vehicle and teaches the vehicle's real charge
and discharge limits (`limits.LearnedLimits`), judged with `delivery_tolerance`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .codec import DecodeError, Telemetry, vehicle_from_mapping
from .delivery import PowerReadings
from .kpi import energy_kwh
from .limits import DeliveryTolerance, LearnedLimits
from .models import InvalidValueError, OrderStatus, Vehicle, isoformat_utc
from .steps import Steps, chunks, run_steps

RELIABILITY_MIN = 0.1
RELIABILITY_MAX = 1.0
# Weight of the newest outcome: about the last ten orders matter.
RELIABILITY_ALPHA = 0.2
# Timeouts in a row after which a vehicle is not responding.
NOT_RESPONDING_TIMEOUTS = 3
STATE_VERSION = 1

_SENT = frozenset({OrderStatus.ACKNOWLEDGED, OrderStatus.REJECTED, OrderStatus.TIMEOUT})
_STATUS_COUNTER = {
    OrderStatus.ACKNOWLEDGED: "acknowledged",
    OrderStatus.REJECTED: "rejected",
    OrderStatus.TIMEOUT: "timeouts",
    OrderStatus.PUBLISH_FAILED: "publish_failed",
    OrderStatus.SUPERSEDED: "superseded",
}
_RELIABILITY_SAMPLE = {
    OrderStatus.ACKNOWLEDGED: 1.0,
    OrderStatus.REJECTED: 0.0,
    OrderStatus.TIMEOUT: 0.0,
}


@dataclass(slots=True)
class VehicleStats:
    """Order counters of one vehicle.

    `sent` counts orders that reached the broker and were answered or timed out;
    publish failures and superseded orders are counted apart.
    """

    sent: int = 0
    acknowledged: int = 0
    rejected: int = 0
    timeouts: int = 0
    publish_failed: int = 0
    superseded: int = 0
    late: int = 0
    last_latency_ms: float | None = None
    last_status: OrderStatus | None = None
    last_outcome_at: datetime | None = None
    # Verified deliveries (measured vehicles only) and those not following.
    verified: int = 0
    not_following: int = 0
    last_verified_at: datetime | None = None
    # Orders timed out since the vehicle last answered one.
    timeouts_in_a_row: int = 0

    @property
    def ack_rate(self) -> float | None:
        """Acknowledged / sent, None before the first order."""
        return self.acknowledged / self.sent if self.sent else None

    @property
    def not_responding(self) -> bool:
        """Whether its last `NOT_RESPONDING_TIMEOUTS` orders all timed out."""
        return self.timeouts_in_a_row >= NOT_RESPONDING_TIMEOUTS

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict."""
        return {
            "sent": self.sent,
            "acknowledged": self.acknowledged,
            "rejected": self.rejected,
            "timeouts": self.timeouts,
            "publish_failed": self.publish_failed,
            "superseded": self.superseded,
            "late": self.late,
            "last_latency_ms": self.last_latency_ms,
            "last_status": None if self.last_status is None else self.last_status.value,
            "last_outcome_at": None
            if self.last_outcome_at is None
            else isoformat_utc(self.last_outcome_at),
            "verified": self.verified,
            "not_following": self.not_following,
            "last_verified_at": None
            if self.last_verified_at is None
            else isoformat_utc(self.last_verified_at),
            "timeouts_in_a_row": self.timeouts_in_a_row,
        }

    def count(
        self, status: OrderStatus, latency_ms: float | None, at: datetime
    ) -> None:
        """Count one order's final status."""
        if status in _SENT:
            self.sent += 1
        counter = _STATUS_COUNTER.get(status)
        if counter is not None:
            setattr(self, counter, getattr(self, counter) + 1)
        if latency_ms is not None:
            self.last_latency_ms = latency_ms
        if status is OrderStatus.TIMEOUT:
            self.timeouts_in_a_row += 1
        elif status in _SENT:
            self.timeouts_in_a_row = 0
        self.last_status = status
        self.last_outcome_at = at

    def count_late(self) -> None:
        """Count a late ack: the vehicle answered, after its order timed out."""
        self.late += 1
        self.timeouts_in_a_row = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VehicleStats:
        """Inverse of `as_dict`."""
        status = data.get("last_status")
        at = data.get("last_outcome_at")
        verified_at = data.get("last_verified_at")
        return cls(
            sent=int(data.get("sent", 0)),
            acknowledged=int(data.get("acknowledged", 0)),
            rejected=int(data.get("rejected", 0)),
            timeouts=int(data.get("timeouts", 0)),
            publish_failed=int(data.get("publish_failed", 0)),
            superseded=int(data.get("superseded", 0)),
            late=int(data.get("late", 0)),
            last_latency_ms=_optional_float(data.get("last_latency_ms")),
            last_status=None if status is None else OrderStatus(status),
            last_outcome_at=None if at is None else _parse_time(at),
            verified=int(data.get("verified", 0)),
            not_following=int(data.get("not_following", 0)),
            last_verified_at=None if verified_at is None else _parse_time(verified_at),
            timeouts_in_a_row=int(data.get("timeouts_in_a_row", 0)),
        )


@dataclass(slots=True)
class Setpoint:
    """An acknowledged setpoint and how far its energy has been integrated."""

    power_kw: float
    since: datetime
    expires_at: datetime | None
    accrued_until: datetime
    # The dispatch whose order set it (None: stored before releases existed).
    dispatch_id: str | None = None
    signal_type: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict."""
        return {
            "power_kw": self.power_kw,
            "since": isoformat_utc(self.since),
            "expires_at": None
            if self.expires_at is None
            else isoformat_utc(self.expires_at),
            "accrued_until": isoformat_utc(self.accrued_until),
            "dispatch_id": self.dispatch_id,
            "signal_type": self.signal_type,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Setpoint:
        """Inverse of `as_dict`."""
        expires = data.get("expires_at")
        return cls(
            float(data["power_kw"]),
            _parse_time(data["since"]),
            None if expires is None else _parse_time(expires),
            _parse_time(data["accrued_until"]),
            _optional_text(data.get("dispatch_id")),
            _optional_text(data.get("signal_type")),
        )


class EnergyLedger:
    """The acknowledged setpoints and the energy integrated from them.

    Apart from `FleetState` because setpoints follow their own time rule (see the
    module docstring): wall time, expiry, lazy integration.
    """

    def __init__(self) -> None:
        """Start with no setpoint and no energy."""
        self.setpoints: dict[str, Setpoint] = {}
        # Expired setpoints of a dispatch whose vehicle was not sent its release.
        self.unreleased: dict[str, Setpoint] = {}
        self.discharged_kwh: dict[str, float] = {}
        self.charged_kwh: dict[str, float] = {}

    def hold(
        self,
        vehicle_id: str,
        power_kw: float,
        at: datetime,
        expires_at: datetime | None,
        dispatch_id: str | None = None,
        signal_type: str | None = None,
    ) -> None:
        """Hold an acknowledged setpoint from `at` (an older one is ignored)."""
        current = self.setpoints.get(vehicle_id)
        if current is not None:
            if at < current.since:
                return
            self._accrue_one(vehicle_id, current, at)
        # A newer order replaces what the vehicle held: nothing left to release.
        self.unreleased.pop(vehicle_id, None)
        if power_kw == 0.0:
            self.setpoints.pop(vehicle_id, None)
            return
        self.setpoints[vehicle_id] = Setpoint(
            power_kw, at, expires_at, at, dispatch_id, signal_type
        )

    def accrue(self, now: datetime) -> None:
        """Integrate every setpoint up to `now`; drop the ones that expired."""
        expired: list[str] = []
        for vehicle_id, setpoint in self.setpoints.items():
            self._accrue_one(vehicle_id, setpoint, now)
            if setpoint.expires_at is not None and setpoint.expires_at <= now:
                expired.append(vehicle_id)
        for vehicle_id in expired:
            setpoint = self.setpoints.pop(vehicle_id)
            if setpoint.dispatch_id is not None:
                self.unreleased[vehicle_id] = setpoint

    def release_sent(self, vehicle_id: str) -> None:
        """Nothing is left to release for the vehicle (sent, or given up)."""
        self.unreleased.pop(vehicle_id, None)

    def next_expiry(self) -> datetime | None:
        """When the next setpoint of a dispatch expires (None: none held)."""
        return min(
            (
                sp.expires_at
                for sp in self.setpoints.values()
                if sp.expires_at is not None and sp.dispatch_id is not None
            ),
            default=None,
        )

    def as_dict_steps(self) -> Steps[dict[str, Any]]:
        """The setpoints, unreleased setpoints and energies, JSON-safe, in steps."""
        setpoints: dict[str, Any] = {}
        for setpoint_chunk in chunks(list(self.setpoints.items())):
            setpoints.update((vid, sp.as_dict()) for vid, sp in setpoint_chunk)
            yield
        return {
            "setpoints": setpoints,
            "unreleased": {vid: sp.as_dict() for vid, sp in self.unreleased.items()},
            "energy_discharged_kwh": dict(self.discharged_kwh),
            "energy_charged_kwh": dict(self.charged_kwh),
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], known: Mapping[str, Vehicle]
    ) -> EnergyLedger:
        """Read what `as_dict_steps` wrote, for known vehicles only."""
        ledger = cls()
        for table, key in (
            (ledger.setpoints, "setpoints"),
            (ledger.unreleased, "unreleased"),
        ):
            table.update(
                (vid, Setpoint.from_dict(item))
                for vid, item in data.get(key, {}).items()
                if vid in known
            )
        ledger.discharged_kwh = _known_floats(data, "energy_discharged_kwh", known)
        ledger.charged_kwh = _known_floats(data, "energy_charged_kwh", known)
        return ledger

    def forget(self, vehicle_id: str) -> None:
        """Drop a vehicle's setpoint and energy."""
        for table in (
            self.setpoints,
            self.unreleased,
            self.discharged_kwh,
            self.charged_kwh,
        ):
            table.pop(vehicle_id, None)

    def _accrue_one(self, vehicle_id: str, setpoint: Setpoint, now: datetime) -> None:
        until = now
        if setpoint.expires_at is not None and setpoint.expires_at < until:
            until = setpoint.expires_at
        if until <= setpoint.accrued_until:
            return
        seconds = (until - setpoint.accrued_until).total_seconds()
        discharged, charged = energy_kwh(setpoint.power_kw, seconds)
        if discharged:
            self.discharged_kwh[vehicle_id] = (
                self.discharged_kwh.get(vehicle_id, 0.0) + discharged
            )
        if charged:
            self.charged_kwh[vehicle_id] = (
                self.charged_kwh.get(vehicle_id, 0.0) + charged
            )
        setpoint.accrued_until = until


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _optional_text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _parse_time(value: Any) -> datetime:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("naive datetime")
    return parsed


class FleetState:
    """Everything the engine knows about the fleet between dispatches."""

    def __init__(self) -> None:
        """Start with an empty fleet."""
        self.vehicles: dict[str, Vehicle] = {}
        self.last_seen: dict[str, float] = {}
        self.participation: dict[str, int] = {}
        self.stats: dict[str, VehicleStats] = {}
        # Each vehicle's latest measured power, with when it was measured.
        self.power = PowerReadings()
        self.learned_limits = LearnedLimits()
        # How closely measured power must follow a setpoint (set from the options).
        self.delivery_tolerance = DeliveryTolerance()
        self._reliability: dict[str, float] = {}
        # Setpoints, their release and the energy integrated from them.
        self.energy = EnergyLedger()

    # --- vehicles ---------------------------------------------------------------

    def upsert(self, vehicle: Vehicle, seen_at: float) -> bool:
        """Add or replace a vehicle; return True if it was new."""
        is_new = vehicle.vehicle_id not in self.vehicles
        self.vehicles[vehicle.vehicle_id] = vehicle
        self.last_seen[vehicle.vehicle_id] = seen_at
        return is_new

    def apply_telemetry(
        self, telemetry: Telemetry, seen_at: float, at: datetime
    ) -> Vehicle:
        """Update (or create) a vehicle from a telemetry report; return it.

        With `power_kw`, the vehicle is charging when it is < 0, whatever the
        `charging` key says (docs/protocol.md#telemetry); the power is a
        measurement received at `at` (wall time).
        """
        changes: dict[str, Any] = {}
        if telemetry.soc is not None:
            changes["soc"] = telemetry.soc
        if telemetry.available is not None:
            changes["available"] = telemetry.available
        if telemetry.power_kw is not None:
            changes["charging"] = telemetry.power_kw < 0.0
        elif telemetry.charging is not None:
            changes["charging"] = telemetry.charging
        current = self.vehicles.get(telemetry.vehicle_id)
        if current is None:
            vehicle = Vehicle(vehicle_id=telemetry.vehicle_id, **changes)
        elif changes:
            vehicle = current.with_changes(**changes)
        else:
            vehicle = current
        self.vehicles[vehicle.vehicle_id] = vehicle
        self.last_seen[vehicle.vehicle_id] = seen_at
        if telemetry.power_kw is not None:
            self.observe_power(vehicle.vehicle_id, telemetry.power_kw, at)
        return vehicle

    def observe_power(self, vehicle_id: str, power_kw: float, at: datetime) -> bool:
        """Keep a known vehicle's power measured at `at`; learn its limits from it.

        Return True if it changed a learned limit.
        """
        if (vehicle := self.vehicles.get(vehicle_id)) is None:
            return False
        self.power.record(vehicle_id, power_kw, at)
        setpoint = self.energy.setpoints.get(vehicle_id)
        limits, tolerance = self.learned_limits, self.delivery_tolerance
        return limits.observe(vehicle, power_kw, setpoint, at, tolerance)

    def touch(self, vehicle_id: str, seen_at: float) -> None:
        """Note that a known vehicle was heard from (e.g. it sent an ack)."""
        if vehicle_id in self.vehicles:
            self.last_seen[vehicle_id] = seen_at

    def remove(self, vehicle_id: str) -> bool:
        """Forget a vehicle and everything learned about it."""
        found = self.vehicles.pop(vehicle_id, None) is not None
        for table in (
            self.last_seen,
            self.participation,
            self.stats,
            self._reliability,
        ):
            table.pop(vehicle_id, None)
        self.power.forget(vehicle_id)
        self.energy.forget(vehicle_id)
        self.learned_limits.forget(vehicle_id)
        return found

    def stale_ids(self, now: float, timeout: float) -> list[str]:
        """Vehicles not heard from for more than `timeout` seconds (or never)."""
        last_seen = self.last_seen
        return [
            vehicle_id
            for vehicle_id in self.vehicles
            if (seen := last_seen.get(vehicle_id)) is None or now - seen > timeout
        ]

    # --- learning from orders ---------------------------------------------------

    def reliability(self, vehicle_id: str) -> float:
        """Learned reliability of a vehicle in [0.1, 1.0] (1.0 when unknown)."""
        return self._reliability.get(vehicle_id, RELIABILITY_MAX)

    def reliability_map(self) -> dict[str, float]:
        """Reliability of every vehicle that has one (others are 1.0)."""
        return dict(self._reliability)

    def participation_share(self) -> dict[str, float]:
        """Participation relative to the most used vehicle (0..1).

        This keeps the smart score's wear/fairness terms bounded however long the
        integration runs: the busiest vehicle pays the full weight.
        """
        if not self.participation:
            return {}
        most = max(self.participation.values())
        if most <= 0:
            return {}
        return {vid: count / most for vid, count in self.participation.items()}

    def add_participation(self, vehicle_ids: Iterable[str]) -> None:
        """Count one more dispatch for each known vehicle."""
        for vehicle_id in vehicle_ids:
            if vehicle_id in self.vehicles:
                self.participation[vehicle_id] = (
                    self.participation.get(vehicle_id, 0) + 1
                )

    def record_outcome(
        self,
        vehicle_id: str,
        status: OrderStatus,
        power_kw: float,
        latency_ms: float | None,
        at: datetime,
        *,
        expires_at: datetime | None = None,
        dispatch_id: str | None = None,
        signal_type: str | None = None,
    ) -> None:
        """Learn from one order's final status.

        Args:
            vehicle_id: the vehicle.
            status: final status of the order.
            power_kw: the acknowledged setpoint (for acknowledged orders).
            latency_ms: ack latency, if answered.
            at: when the status became final (wall time); the setpoint holds
                from then. An outcome older than the current setpoint does not
                replace it (concurrent dispatches may finish out of order).
            expires_at: when an acknowledged setpoint lapses.
            dispatch_id: the order's dispatch (its release names it).
            signal_type: the order's signal type (its release carries it).
        """
        if vehicle_id not in self.vehicles:
            return
        stats = self.stats.get(vehicle_id)
        if stats is None:
            stats = self.stats[vehicle_id] = VehicleStats()
        stats.count(status, latency_ms, at)
        sample = _RELIABILITY_SAMPLE.get(status)
        if sample is not None:
            self._learn_reliability(vehicle_id, sample)
        if status is OrderStatus.ACKNOWLEDGED:
            self.energy.hold(
                vehicle_id, power_kw, at, expires_at, dispatch_id, signal_type
            )

    def record_delivery(self, vehicle_id: str, following: bool, at: datetime) -> None:
        """Learn from a verified delivery of a measured vehicle.

        Following its setpoint is a reliability sample of 1, not following one of
        0 (docs/dispatch.md#verification); `at` is when it was judged.
        """
        if vehicle_id not in self.vehicles:
            return
        stats = self.stats.setdefault(vehicle_id, VehicleStats())
        stats.verified += 1
        if not following:
            stats.not_following += 1
        stats.last_verified_at = at
        self._learn_reliability(vehicle_id, 1.0 if following else 0.0)

    def _learn_reliability(self, vehicle_id: str, sample: float) -> None:
        previous = self._reliability.get(vehicle_id, RELIABILITY_MAX)
        updated = previous + RELIABILITY_ALPHA * (sample - previous)
        self._reliability[vehicle_id] = min(
            max(updated, RELIABILITY_MIN), RELIABILITY_MAX
        )

    def record_late(self, vehicle_id: str) -> None:
        """Count a late ack (the order's result stays unchanged)."""
        if vehicle_id in self.vehicles:
            self.stats.setdefault(vehicle_id, VehicleStats()).count_late()

    # --- setpoints and energy (see `EnergyLedger`) ------------------------------

    @property
    def setpoints(self) -> dict[str, float]:
        """Acknowledged non-zero setpoints (as of the last `accrue`/outcome)."""
        return {vid: sp.power_kw for vid, sp in self.energy.setpoints.items()}

    def setpoint(self, vehicle_id: str) -> Setpoint | None:
        """The current setpoint record of a vehicle, if any."""
        return self.energy.setpoints.get(vehicle_id)

    def hold_idle(self, vehicle_id: str, at: datetime) -> None:
        """0 kW acknowledged outside an allocation (revoke, release): no stats."""
        if vehicle_id in self.vehicles:
            self.energy.hold(vehicle_id, 0.0, at, None)
            if (stats := self.stats.get(vehicle_id)) is not None:
                stats.timeouts_in_a_row = 0

    @property
    def energy_discharged_kwh(self) -> dict[str, float]:
        """Energy each vehicle discharged (as of the last `accrue`/outcome)."""
        return self.energy.discharged_kwh

    @property
    def energy_charged_kwh(self) -> dict[str, float]:
        """Energy each vehicle charged (as of the last `accrue`/outcome)."""
        return self.energy.charged_kwh

    def accrue(self, now: datetime) -> None:
        """Integrate every setpoint up to `now`; drop the ones that expired."""
        self.energy.accrue(now)

    # --- persistence ------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-safe snapshot (monotonic `last_seen` is not kept)."""
        return run_steps(self.as_dict_steps())

    def as_dict_steps(self) -> Steps[dict[str, Any]]:
        """`as_dict` in steps of at most `STEP_SIZE` vehicles (see `steps`).

        What is walked is copied first: the fleet may change between two steps
        (the result then mixes both moments, each vehicle consistent in itself).
        """
        vehicles: list[dict[str, Any]] = []
        for vehicle_chunk in chunks(list(self.vehicles.values())):
            vehicles.extend(v.as_dict() for v in vehicle_chunk)
            yield
        energy = yield from self.energy.as_dict_steps()
        stats: dict[str, Any] = {}
        for stats_chunk in chunks(list(self.stats.items())):
            stats.update((vid, st.as_dict()) for vid, st in stats_chunk)
            yield
        return {
            "version": STATE_VERSION,
            "vehicles": vehicles,
            **energy,
            "participation": dict(self.participation),
            "reliability": dict(self._reliability),
            "stats": stats,
            "learned_limits": self.learned_limits.as_dict(),
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], seen_at: float | None = None
    ) -> FleetState:
        """Rebuild a fleet from `as_dict` output.

        Args:
            data: the stored snapshot.
            seen_at: if given, every restored vehicle counts as seen at this
                monotonic time (a grace period before it can become stale);
                otherwise restored vehicles are stale until they talk.

        Raises:
            InvalidValueError: the snapshot is malformed.
        """
        if data.get("version") != STATE_VERSION:
            raise InvalidValueError("fleet", "unsupported state version")
        fleet = cls()
        try:
            for item in data.get("vehicles", []):
                vehicle = vehicle_from_mapping(item)
                fleet.vehicles[vehicle.vehicle_id] = vehicle
                if seen_at is not None:
                    fleet.last_seen[vehicle.vehicle_id] = seen_at
            known = fleet.vehicles
            fleet.energy = EnergyLedger.from_dict(data, known)
            fleet.participation = _known(data, "participation", known, int)
            fleet._reliability = _known(data, "reliability", known, _reliability)
            fleet.stats = _known(data, "stats", known, VehicleStats.from_dict)
            # Absent from the data of versions before learned limits.
            fleet.learned_limits = LearnedLimits.from_dict(
                data.get("learned_limits", {}), known
            )
        except (DecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise InvalidValueError("fleet", f"malformed state: {err}") from err
        return fleet


def _known[T](
    data: Mapping[str, Any],
    name: str,
    known: Mapping[str, Vehicle],
    read: Callable[[Any], T],
) -> dict[str, T]:
    """The per-vehicle values stored under `name`, for known vehicles only."""
    return {
        vid: read(value) for vid, value in data.get(name, {}).items() if vid in known
    }


def _known_floats(
    data: Mapping[str, Any], name: str, known: Mapping[str, Vehicle]
) -> dict[str, float]:
    """The per-vehicle numbers stored under `name`, for known vehicles only."""
    return _known(data, name, known, float)


def _reliability(value: Any) -> float:
    """A stored reliability, bounded as learned ones are."""
    return min(max(float(value), RELIABILITY_MIN), RELIABILITY_MAX)
