"""`scripts/develop --home` in a real `hass`: the simulated home charger and its car.

The car is added through the real subentry flow over HTTP, dispatches reach it
through its `input_number`, its template power sensor confirms them after the
charger's delay, its SoC moves, and a second start on the same folder adds
nothing twice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
import time

import pytest

from devtools.demo import DemoStack
from devtools.hass_instance import HassInstance
from devtools.home_charger import (
    CURRENT_ENTITY,
    FOLLOW_DELAY_S,
    HOME_DISPATCH_KW,
    HOME_VEHICLE_ID,
    PLUGGED_SENSOR,
    POWER_SENSOR,
    SOC_SENSOR,
)
from devtools.net import free_port

pytestmark = pytest.mark.e2e


async def _controlled_subentries(hass: HassInstance, entry_id: str) -> list[str]:
    found = await hass.ws("config_entries/subentries/list", entry_id=entry_id)
    return [
        item["title"]
        for item in found
        if item.get("subentry_type") == "controlled_vehicle"
    ]


async def _wait_for_state(
    hass: HassInstance, entity_id: str, below: float, timeout: float
) -> float:
    deadline = time.monotonic() + timeout
    while True:
        value = float((await hass.states())[entity_id]["state"])
        if value < below or time.monotonic() > deadline:
            return value
        await asyncio.sleep(1)


async def test_home_car_follows_dispatches_and_survives_a_restart(
    socket_enabled: None, tmp_path: Path
) -> None:
    port, broker_port = free_port(), free_port()

    def demo() -> DemoStack:
        # The same folder and ports: the MQTT entry keeps the broker's port.
        return DemoStack(
            tmp_path / "config",
            port=port,
            broker_port=broker_port,
            vehicles=2,
            dispatch_every=15,
            home=True,
        )

    stack = demo()
    try:
        await stack.start()
        hass = stack.hass
        assert await _controlled_subentries(hass, stack.entry_id) == [HOME_VEHICLE_ID]
        assert HOME_VEHICLE_ID in stack.first_dispatch["vehicles"]  # a mixed fleet

        home = stack.home_dispatch
        assert home["status"] == "completed"
        assert home["acknowledged_kw"] == pytest.approx(HOME_DISPATCH_KW)
        order = home["vehicles"][HOME_VEHICLE_ID]
        assert order["status"] == "acknowledged"
        # Confirmed by the power sensor, which follows the control after a delay.
        assert FOLLOW_DELAY_S * 1000 <= order["latency_ms"] < 5000
        states = await hass.states()
        assert float(states[CURRENT_ENTITY]["state"]) == -30  # A, positive = charging
        assert float(states[POWER_SENSOR]["state"]) == pytest.approx(-6900)
        setpoint = states[f"sensor.{HOME_VEHICLE_ID}_setpoint"]
        assert float(setpoint["state"]) == pytest.approx(HOME_DISPATCH_KW)
        # The charger's helpers and the car's own entities do not clash.
        assert states[PLUGGED_SENSOR]["state"] == "on"
        assert states[f"binary_sensor.{HOME_VEHICLE_ID}_plugged_in"]["state"] == "on"
        assert not [entity_id for entity_id in states if entity_id.endswith("_2")]

        # Discharging 6.9 kW out of 60 kWh: the SoC goes down every 10 s.
        soc = await _wait_for_state(hass, SOC_SENSOR, below=60, timeout=30)
        assert 59 < soc < 60
    finally:
        await stack.stop()

    again = demo()
    try:
        await again.start()
        hass = again.hass
        assert await _controlled_subentries(hass, again.entry_id) == [HOME_VEHICLE_ID]
        states = await hass.states()
        assert float(states[SOC_SENSOR]["state"]) <= soc  # kept, not set again
        assert again.home_dispatch["status"] == "completed"
    finally:
        await again.stop()
