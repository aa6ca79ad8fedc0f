"""Fleet generation and the per-vehicle state (seed §7.2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
import random
from typing import Any, Final

from .battery import Battery
from .config import ConfigError, SimulatorConfig, VehicleBehaviour

COMMUTER: Final = "commuter"
OPPORTUNISTIC_CHARGER: Final = "opportunistic_charger"

# Why a vehicle is silent.
OFFLINE_MANUAL: Final = "manual"
OFFLINE_RANDOM: Final = "disconnect"
OFFLINE_DEPARTED: Final = "departed"


@dataclass(slots=True, eq=False)
class SimVehicle:
    """One simulated vehicle (mutated only by the simulator's event-loop thread)."""

    vehicle_id: str
    battery: Battery
    max_power_kw: float
    segment: str
    behaviour: VehicleBehaviour = field(default_factory=VehicleBehaviour)
    gateway: str | None = None
    departure: datetime | None = None
    min_soc: float = 0.0
    degradation_factor: float = 0.0
    power_kw: float = 0.0
    setpoint_until: float | None = None
    available: bool = True
    online: bool = True
    offline_reason: str | None = None
    last_update: float = 0.0

    @property
    def charging(self) -> bool:
        """True while the vehicle charges (negative power)."""
        return self.power_kw < 0

    @property
    def reported_charging(self) -> bool:
        """The `charging` flag its telemetry carries (inverted like Go's if so set)."""
        if self.behaviour.inverted_charging_flag:
            return self.power_kw > 0
        return self.power_kw < 0

    @property
    def charge_limit_kw(self) -> float:
        """The charge power it really accepts."""
        return min(self.max_power_kw, self.battery.charge_rate_kw)

    @property
    def discharge_limit_kw(self) -> float:
        """The discharge power it really accepts."""
        return min(self.max_power_kw, self.battery.discharge_rate_kw)

    def run_on_its_own(self, power_kw: float) -> float:
        """Start charging (< 0) or discharging without an order; return the power.

        Clamped to the vehicle's limits; held until an order or unplugging.
        """
        power = max(-self.charge_limit_kw, min(self.discharge_limit_kw, power_kw))
        self.power_kw = power if self.available else 0.0
        self.setpoint_until = None
        return self.power_kw

    def advance(self, now: float) -> None:
        """Run the battery model from the last update to `now` (monotonic s)."""
        last = self.last_update
        if now <= last:
            return
        self.last_update = now
        until = self.setpoint_until
        if until is not None and until <= now:
            if self.power_kw and until > last:
                self.battery.apply_power(self.power_kw, until - last)
            self.power_kw = 0.0
            self.setpoint_until = None
            return
        if self.power_kw:
            self.power_kw = self.battery.apply_power(self.power_kw, now - last)

    def snapshot(self) -> dict[str, Any]:
        """A plain copy of the state, for tests and the API."""
        return {
            "vehicle_id": self.vehicle_id,
            "soc": self.battery.soc,
            "power_kw": self.power_kw,
            "charging": self.charging,
            "available": self.available,
            "online": self.online,
            "offline_reason": self.offline_reason,
            "gateway": self.gateway,
            "segment": self.segment,
            "departure": self.departure,
            "max_power_kw": self.max_power_kw,
            "battery_kwh": self.battery.capacity_kwh,
            "charge_rate_kw": self.battery.charge_rate_kw,
            "discharge_rate_kw": self.battery.discharge_rate_kw,
        }


def make_ids(prefix: str, count: int, min_width: int = 3) -> list[str]:
    """Return `prefix001 … prefixNNN`; the width grows with the count."""
    width = max(min_width, len(str(count)))
    return [f"{prefix}{i:0{width}d}" for i in range(1, count + 1)]


def gateway_ids(count: int) -> list[str]:
    """Return `gw01 … gwNN`."""
    return make_ids("gw", count, min_width=2)


def gateway_index(config: SimulatorConfig, index: int) -> int | None:
    """Which gateway (0-based) serves the vehicle at `index`, if any."""
    if config.gateway_size:
        return index // config.gateway_size
    if config.gateways:
        return index * config.gateway_count // config.count
    return None


def generate_fleet(
    config: SimulatorConfig, rng: random.Random, now: float = 0.0
) -> list[SimVehicle]:
    """Create the fleet described by a validated `config`."""
    gateways = gateway_ids(config.gateway_count)
    ids = make_ids(config.id_prefix, config.count)
    unknown = set(config.vehicle_overrides) - set(ids)
    if unknown:
        raise ConfigError(
            f"overrides for unknown vehicles: {', '.join(sorted(unknown))}"
        )
    shared = config.behaviour()
    fleet: list[SimVehicle] = []
    for index, vehicle_id in enumerate(ids):
        segment = (
            COMMUTER if rng.random() < config.commuter_pct else (OPPORTUNISTIC_CHARGER)
        )
        soc = config.initial_soc
        if config.soc_spread:
            soc += rng.uniform(-config.soc_spread, config.soc_spread)
        gw_index = gateway_index(config, index)
        fleet.append(
            SimVehicle(
                vehicle_id=vehicle_id,
                battery=Battery(
                    capacity_kwh=config.capacity_kwh,
                    charge_rate_kw=config.charge_rate_kw,
                    discharge_rate_kw=config.discharge_rate_kw,
                    soc=min(1.0, max(0.0, soc)),
                ),
                max_power_kw=config.max_power_kw,
                segment=segment,
                behaviour=config.behaviour(vehicle_id)
                if vehicle_id in config.vehicle_overrides
                else shared,
                gateway=None if gw_index is None else gateways[gw_index],
                departure=config.departures.get(vehicle_id),
                min_soc=config.min_soc,
                degradation_factor=config.degradation_factor,
                last_update=now,
            )
        )
    return fleet
