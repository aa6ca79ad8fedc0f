"""The simulator's clock offset: a vehicle whose clock is ahead sees stale orders."""

from __future__ import annotations

from collections.abc import Callable
import time

import pytest

from simulator import FleetSimulator, SimulatorConfig
from simulator.cli import build_parser, config_from_args
from simulator.config import ConfigError
from tests.simulator.conftest import Dispatcher, by_command, order

type MakeSim = Callable[..., FleetSimulator]


def test_clock_offset_option() -> None:
    args = build_parser().parse_args(["--clock-offset", "-2.5"])
    assert config_from_args(args).clock_offset == -2.5
    assert config_from_args(build_parser().parse_args([])).clock_offset == 0.0
    with pytest.raises(ConfigError):
        SimulatorConfig(clock_offset=float("inf")).validated()


def test_order_is_stale_to_a_vehicle_whose_clock_is_ahead(
    make_sim: MakeSim, dispatcher: Dispatcher
) -> None:
    sim = make_sim(count=2, connection="shared", clock_offset=120.0)
    dispatcher.subscribe("vehicle/+/ack", "v2g/vehicle/state/+")
    now_ms = int(time.time() * 1000)
    # Fresh for the sender (expires in 60 s), already expired for the vehicle.
    stale = order("veh001", 5.0, expires_at=now_ms + 60_000)
    fresh = order("veh002", 4.0, expires_at=now_ms + 600_000)
    dispatcher.publish("vehicle/veh001/command", stale)
    dispatcher.publish("vehicle/veh002/command", fresh)
    acks = by_command(dispatcher.wait_for("vehicle/+/ack", 2))
    assert acks[stale["command_id"]] == {
        "command_id": stale["command_id"],
        "status": "rejected",
        "reason": "expired",
    }
    assert acks[fresh["command_id"]]["status"] == "accepted"
    assert sim.vehicle("veh001")["power_kw"] == 0.0
    assert sim.vehicle("veh002")["power_kw"] == 4.0
    assert sim.stats()["orders_expired"] == 1
    # Telemetry carries the vehicle's (offset) clock.
    assert sim.publish_telemetry("veh001") == 1
    state = dispatcher.wait_for("v2g/vehicle/state/veh001")[0].json()
    assert state["ts"] == pytest.approx(time.time() + 120.0, abs=5.0)
