"""Standalone EV fleet simulator speaking the V2G Fleet Dispatch MQTT protocol.

It imports nothing from `custom_components`: it is an independent peer with its own
codec, so a wire-format mistake cannot hide on both sides.
"""

from .battery import Battery, refusal_reason
from .codec import TopicTemplate
from .config import (
    BATTERY_PROFILES,
    ConfigError,
    SimulatorConfig,
    TopicConfig,
    VehicleBehaviour,
    load_availability_file,
    load_departures,
    parse_broker,
    parse_duration,
)
from .core import COUNTERS, FleetSimulator, SimulatorError
from .fleet import SimVehicle, generate_fleet, make_ids

__all__ = [
    "BATTERY_PROFILES",
    "COUNTERS",
    "Battery",
    "ConfigError",
    "FleetSimulator",
    "SimVehicle",
    "SimulatorConfig",
    "SimulatorError",
    "TopicConfig",
    "TopicTemplate",
    "VehicleBehaviour",
    "generate_fleet",
    "load_availability_file",
    "load_departures",
    "make_ids",
    "parse_broker",
    "parse_duration",
    "refusal_reason",
]
