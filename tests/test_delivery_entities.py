"""What vehicles really do: measured power, not following, learned limits.

Driven from outside: telemetry on the state topic, `v2g.dispatch`, the options,
time moved with the freezer and `async_fire_time_changed`; observed through the
entity states and attributes, the dispatch responses and the orders sent.
"""

from __future__ import annotations

from datetime import timedelta
import json
from typing import Any

from freezegun.api import FrozenDateTimeFactory
from homeassistant.const import STATE_OFF, STATE_ON, STATE_UNKNOWN
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import (
    async_fire_mqtt_message,
    async_fire_time_changed,
)
from pytest_homeassistant_custom_component.typing import (
    ClientSessionGenerator,
    MqttMockHAClient,
)

from custom_components.v2g.const import CONF_NOT_FOLLOWING_GRACE

from .controlled_helpers import async_add_controlled_vehicle
from .helpers import (
    FleetResponder,
    async_announce,
    async_diagnostics,
    async_dispatch,
    async_setup_fleet,
)

MEASURED = "sensor.v1_measured_power"
NOT_FOLLOWING = "binary_sensor.v1_not_following_setpoint"
SETPOINT = "sensor.v1_setpoint"
FLEX_DOWN = "sensor.depot_flexibility_available_down"


async def _advance(
    hass: HomeAssistant, freezer: FrozenDateTimeFactory, seconds: float
) -> None:
    """Move the clock; run what is due (entity timers, housekeeping)."""
    freezer.tick(timedelta(seconds=seconds))
    async_fire_time_changed(hass)
    await hass.async_block_till_done()


async def _publish(hass: HomeAssistant, freezer: FrozenDateTimeFactory) -> None:
    """Let 3.3 s pass: the coalesced snapshot is published.

    In steps of 1.1 s: a debounced refresh that meets another one (housekeeping,
    which yields on timers) runs a second after that one is done.
    """
    for _ in range(3):
        await _advance(hass, freezer, 1.1)


async def _report(
    hass: HomeAssistant,
    freezer: FrozenDateTimeFactory,
    power_kw: float,
    vehicle_id: str = "v1",
    *,
    seconds: float = 3.3,
    **fields: Any,
) -> None:
    """Telemetry with `power_kw`, then `seconds` (>= 3.3) pass.

    The snapshot with it is published in the first 3.3 s.
    """
    async_fire_mqtt_message(
        hass,
        f"v2g/vehicle/state/{vehicle_id}",
        json.dumps({"power_kw": power_kw, **fields}),
    )
    await hass.async_block_till_done()
    await _publish(hass, freezer)
    if seconds > 3.3:
        await _advance(hass, freezer, seconds - 3.3)


def _state(hass: HomeAssistant, entity_id: str) -> str:
    return hass.states.get(entity_id).state


async def _dispatch(hass: HomeAssistant, power_kw: float, **data: Any) -> Any:
    response = await async_dispatch(
        hass, signal_type="aFRR", power_kw=power_kw, strategy="equal", **data
    )
    await hass.async_block_till_done()  # the vehicle entities follow the response
    return response


async def test_not_following_turns_on_after_the_grace_period(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, freezer: FrozenDateTimeFactory
) -> None:
    await async_setup_fleet(hass)
    await async_announce(hass, ("v1", {}))
    assert _state(hass, MEASURED) == STATE_UNKNOWN
    assert _state(hass, NOT_FOLLOWING) == STATE_UNKNOWN

    await _report(hass, freezer, 0.0)
    assert _state(hass, MEASURED) == "0.0"
    assert _state(hass, NOT_FOLLOWING) == STATE_OFF  # idle, as it should be

    FleetResponder(hass, fleet_mqtt)
    await _dispatch(hass, 8)
    assert _state(hass, SETPOINT) == "8.0"
    # Acknowledged, still at 0 kW: not following, but within the 30 s grace.
    await _report(hass, freezer, 0.0, seconds=20)
    assert _state(hass, NOT_FOLLOWING) == STATE_OFF
    await _advance(hass, freezer, 10)
    assert _state(hass, NOT_FOLLOWING) == STATE_ON

    # Within max(10 % x 8, 1 kW) of its setpoint: following again.
    await _report(hass, freezer, 7.1)
    assert _state(hass, MEASURED) == "7.1"
    assert _state(hass, NOT_FOLLOWING) == STATE_OFF
    # A short excursion that ends within the grace never shows.
    await _report(hass, freezer, 3.0, seconds=15)
    await _report(hass, freezer, 8.0, seconds=20)
    assert _state(hass, NOT_FOLLOWING) == STATE_OFF


async def test_a_vehicle_that_keeps_its_power_after_expiry_is_not_following(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, freezer: FrozenDateTimeFactory
) -> None:
    """Finding 3: the order ended, the vehicle ignores `expires_at`."""
    await async_setup_fleet(hass, options={CONF_NOT_FOLLOWING_GRACE: 5})
    await async_announce(hass, ("v1", {}))
    FleetResponder(hass, fleet_mqtt)
    await _dispatch(hass, 6, duration={"seconds": 10})
    await _report(hass, freezer, 6.0, seconds=5)
    await _report(hass, freezer, 6.0, seconds=6)
    assert _state(hass, NOT_FOLLOWING) == STATE_OFF
    # The order expired: the setpoint is 0, the vehicle still injects 6 kW.
    await _report(hass, freezer, 6.0)
    assert _state(hass, SETPOINT) == "0.0"
    assert _state(hass, NOT_FOLLOWING) == STATE_OFF
    await _report(hass, freezer, 6.0, seconds=6)
    assert _state(hass, NOT_FOLLOWING) == STATE_ON


async def test_saturated_charging_teaches_the_charge_limit(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    freezer: FrozenDateTimeFactory,
    hass_client: ClientSessionGenerator,
) -> None:
    """Finding 1: no charge rate announced, the charger stops at 7 of 10 kW."""
    entry = await async_setup_fleet(hass)
    await async_announce(hass, ("v1", {"SoC": 0.5}))
    assert float(_state(hass, FLEX_DOWN)) == 10.0
    responder = FleetResponder(hass, fleet_mqtt)
    await _dispatch(hass, -10)
    # Samples count from 3 s after the ack (time to ramp): at 3.3, 6.6, 9.9 s.
    await _advance(hass, freezer, 3.3)
    for _ in range(3):
        await _report(hass, freezer, -7.0)
    assert _state(hass, NOT_FOLLOWING) == STATE_OFF  # within the grace
    attributes = hass.states.get(SETPOINT).attributes
    assert attributes["learned_charge_kw"] == 7.0
    assert "learned_discharge_kw" not in attributes
    # "Flexibility available down" and the next charge follow the learned limit.
    assert float(_state(hass, FLEX_DOWN)) == 7.0
    response = await _dispatch(hass, -10)
    assert response["vehicles"]["v1"]["power_kw"] == -7.0
    assert responder.orders_for("v1")[-1]["power_kw"] == -7.0
    diagnostics = await async_diagnostics(hass, hass_client, entry)
    assert diagnostics["fleet"]["sample"]["v1"]["learned_limits"] == {
        "charge_kw": 7.0,
        "discharge_kw": None,
    }

    # Kept across a restart.
    assert await hass.config_entries.async_reload(entry.entry_id)
    await hass.async_block_till_done()
    await async_announce(hass, ("v1", {"SoC": 0.5}))
    assert hass.states.get(SETPOINT).attributes["learned_charge_kw"] == 7.0

    # Charging faster again (its limit came back): the learned limit goes.
    await _report(hass, freezer, -10.0)
    assert "learned_charge_kw" not in hass.states.get(SETPOINT).attributes
    assert float(_state(hass, FLEX_DOWN)) == 10.0


async def test_rejections_over_the_limit_lower_the_orders(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await async_setup_fleet(hass)
    await async_announce(hass, ("v1", {}))
    responder = FleetResponder(
        hass,
        fleet_mqtt,
        {
            "v1": lambda order: (
                ("reject", "exceeds_max_power") if order["power_kw"] > 8.5 else "ack"
            )
        },
    )
    for _ in range(3):
        await _dispatch(hass, 10)
    assert [order["power_kw"] for order in responder.orders_for("v1")] == [
        10.0,
        9.0,
        8.1,
    ]
    assert hass.states.get(SETPOINT).attributes["learned_discharge_kw"] == 8.1


async def test_telemetry_power_decides_who_is_charging(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, freezer: FrozenDateTimeFactory
) -> None:
    """Finding 4: Go vehicles publish `charging: power_kw > 0`."""
    await async_setup_fleet(hass)
    await async_announce(hass, ("v1", {}), ("v2", {}), ("v3", {}))
    await _report(hass, freezer, 5.0, "v1", charging=True)  # discharging
    await _report(hass, freezer, -5.0, "v2", charging=False)  # charging
    await _report(hass, freezer, 0.0, "v3", charging=True)  # idle
    response = await async_dispatch(hass, signal_type="NEBEF", power_kw=4, dry_run=True)
    assert response["excluded"] == {"v1": "not_charging", "v3": "not_charging"}
    assert list(response["vehicles"]) == ["v2"]


async def test_a_controlled_vehicle_is_measured_by_its_power_sensor(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, freezer: FrozenDateTimeFactory
) -> None:
    hass.states.async_set("input_number.charger", "0")
    power = "sensor.charger_power"
    attributes = {"unit_of_measurement": "W", "device_class": "power"}
    hass.states.async_set(power, "-3200", attributes)
    entry = await async_setup_fleet(hass)
    await async_add_controlled_vehicle(
        hass,
        entry,
        {"vehicle_id": "car", "control_entity": "input_number.charger"},
        {"power_entity": power, "power_sign": "positive_discharging"},
    )
    await _publish(hass, freezer)
    assert _state(hass, "sensor.car_measured_power") == "-3.2"
    # Idle ordered (no setpoint), 3.2 kW charging: off its setpoint.
    await _advance(hass, freezer, 30)
    assert _state(hass, "binary_sensor.car_not_following_setpoint") == STATE_ON
    hass.states.async_set(power, "0", attributes)
    await _publish(hass, freezer)
    assert _state(hass, "binary_sensor.car_not_following_setpoint") == STATE_OFF
    hass.states.async_set(power, "unavailable", attributes)
    await _publish(hass, freezer)
    assert _state(hass, "sensor.car_measured_power") == STATE_UNKNOWN
    assert _state(hass, "binary_sensor.car_not_following_setpoint") == STATE_UNKNOWN


async def test_unloading_while_a_vehicle_deviates_leaves_no_timer(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, freezer: FrozenDateTimeFactory
) -> None:
    entry = await async_setup_fleet(hass)
    await async_announce(hass, ("v1", {}))
    await _report(hass, freezer, 4.0)  # no setpoint: deviating, within the grace
    assert _state(hass, NOT_FOLLOWING) == STATE_OFF
    assert await hass.config_entries.async_unload(entry.entry_id)
    await _advance(hass, freezer, 60)
    assert _state(hass, NOT_FOLLOWING) == "unavailable"
