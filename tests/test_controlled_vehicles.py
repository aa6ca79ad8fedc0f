"""Vehicles controlled through Home Assistant entities: orders, answers, idle, faults.

Driven from outside: helpers and template entities of Home Assistant are the
chargers, the `v2g.dispatch` action gives the orders, time is moved with
`async_fire_time_changed`; observed through entity states, the responses,
repair issues, diagnostics and the stores.
"""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest.mock import patch

from homeassistant.core import Event, EventStateChangedData, HomeAssistant, ServiceCall
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers import entity_registry as er, issue_registry as ir
from homeassistant.helpers.event import async_track_state_change_event
from homeassistant.setup import async_setup_component
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_fire_time_changed,
)
from pytest_homeassistant_custom_component.typing import (
    ClientSessionGenerator,
    MqttMockHAClient,
)

from custom_components.v2g.const import CONF_ACK_TIMEOUT, DOMAIN

from .controlled_helpers import async_add_controlled_vehicle, async_dispatch_afrr
from .helpers import (
    ENTRY_ID,
    FleetResponder,
    async_announce,
    async_diagnostics,
    async_setup_fleet,
)

CHARGER = "input_number.charger"
HELD_STORE = f"v2g.{ENTRY_ID}.held_setpoints"
QUASAR = {"vehicle_id": "quasar", "control_entity": CHARGER, "control_unit": "A"}


async def _helpers(hass: HomeAssistant, **numbers: dict[str, Any]) -> None:
    """Create the ``input_number`` helpers (one setup per test)."""
    assert await async_setup_component(
        hass,
        "input_number",
        {
            "input_number": {
                name: {"mode": "box", "initial": 0, **config}
                for name, config in numbers.items()
            }
        },
    )
    await hass.async_block_till_done()


async def _quasar_helper(hass: HomeAssistant, **extra: dict[str, Any]) -> None:
    """A bidirectional charger's current: -32..32 A, positive = charging."""
    await _helpers(
        hass,
        charger={"min": -32, "max": 32, "step": 1, "unit_of_measurement": "A"},
        **extra,
    )


async def _fleet(hass: HomeAssistant, ack_timeout: float = 2.0) -> MockConfigEntry:
    return await async_setup_fleet(hass, options={CONF_ACK_TIMEOUT: ack_timeout})


def _value(hass: HomeAssistant, entity_id: str = CHARGER) -> float:
    return float(hass.states.get(entity_id).state)


async def _later(hass: HomeAssistant, minutes: float) -> None:
    """Let ``minutes`` pass for the timers; wait for what they start."""
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(minutes=minutes))
    await hass.async_block_till_done()


# --------------------------------------------------------------- orders and acks


async def test_current_control_in_both_directions(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _quasar_helper(hass)
    entry = await _fleet(hass)
    await async_add_controlled_vehicle(hass, entry, QUASAR)

    discharge = await async_dispatch_afrr(hass, 7)
    # 7000 W / 230 V = 30.4 A, step 1 A; positive = charging: -30 A discharges.
    assert _value(hass) == -30
    order = discharge["vehicles"]["quasar"]
    assert order["status"] == "acknowledged"
    assert order["power_kw"] == 7.0
    assert order["latency_ms"] is not None
    assert discharge["acknowledged_kw"] == 6.9  # what was actually set
    assert float(hass.states.get("sensor.quasar_setpoint").state) == 6.9

    charge = await async_dispatch_afrr(hass, -7)
    assert _value(hass) == 30
    assert charge["vehicles"]["quasar"]["status"] == "acknowledged"
    assert charge["acknowledged_kw"] == -6.9
    assert float(hass.states.get("sensor.quasar_setpoint").state) == -6.9


@pytest.mark.parametrize(
    ("control", "bounds", "power_kw", "expected_value", "acknowledged_kw"),
    [
        # W, positive = discharging, 100 W steps: 3.33 kW -> 3300 W.
        (
            {"control_unit": "W", "sign_convention": "positive_discharging"},
            {"min": -11000, "max": 11000, "step": 100},
            3.33,
            3300,
            3.3,
        ),
        (
            {"control_unit": "W", "sign_convention": "positive_discharging"},
            {"min": -11000, "max": 11000, "step": 100},
            -3.33,
            -3300,
            -3.3,
        ),
        # kW, positive = charging, 0.5 kW steps: 2.7 kW discharge -> -2.5.
        (
            {"control_unit": "kW", "sign_convention": "positive_charging"},
            {"min": -5, "max": 5, "step": 0.5},
            2.7,
            -2.5,
            2.5,
        ),
        # A on three phases at 230 V, positive = discharging: 7 kW / 690 W = 10 A.
        (
            {
                "control_unit": "A",
                "phases": 3,
                "sign_convention": "positive_discharging",
            },
            {"min": -16, "max": 16, "step": 1},
            7,
            10,
            6.9,
        ),
    ],
)
async def test_units_signs_and_steps(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    control: dict[str, Any],
    bounds: dict[str, Any],
    power_kw: float,
    expected_value: float,
    acknowledged_kw: float,
) -> None:
    await _helpers(hass, charger=bounds)
    entry = await _fleet(hass)
    await async_add_controlled_vehicle(
        hass, entry, {"vehicle_id": "car", "control_entity": CHARGER, **control}
    )

    response = await async_dispatch_afrr(hass, power_kw)

    assert _value(hass) == expected_value
    assert response["vehicles"]["car"]["status"] == "acknowledged"
    assert response["acknowledged_kw"] == acknowledged_kw


async def test_charge_only_control_is_v1g(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    # A charger that only charges: 6..16 A (minimum not below 0).
    await _helpers(hass, charger={"min": 6, "max": 16, "step": 1, "initial": 6})
    entry = await _fleet(hass)
    await async_add_controlled_vehicle(
        hass, entry, {**QUASAR, "vehicle_id": "v1g"}, {"max_discharge_kw": 5}
    )

    discharge = await async_dispatch_afrr(hass, 3)
    assert discharge["excluded"] == {"v1g": "not_v2g"}
    assert discharge["vehicles"] == {}
    assert _value(hass) == 6

    # 2000 W / 230 V = 8.7 A -> 8 A.
    charge = await async_dispatch_afrr(hass, -2)
    assert _value(hass) == 8
    assert charge["vehicles"]["v1g"]["status"] == "acknowledged"
    assert charge["acknowledged_kw"] == -1.84

    # Below the minimum current: held at the minimum (6 A).
    await async_dispatch_afrr(hass, -0.5)
    assert _value(hass) == 6

    # More than the charger takes: its 16 A maximum (3.68 kW) is all it gets.
    response = await async_dispatch_afrr(hass, -10)
    assert response["vehicles"]["v1g"]["power_kw"] == -3.68
    assert _value(hass) == 16


async def test_entity_that_never_follows_times_out(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    assert await async_setup_component(
        hass,
        "template",
        {
            "template": [
                {
                    "number": [
                        {
                            "name": "Stuck charger",
                            "state": "{{ 0 }}",
                            "set_value": [{"delay": 0}],
                            "min": -32,
                            "max": 32,
                            "step": 1,
                        }
                    ]
                }
            ]
        },
    )
    await hass.async_block_till_done()
    entry = await _fleet(hass, ack_timeout=0.2)
    await async_add_controlled_vehicle(
        hass, entry, {**QUASAR, "control_entity": "number.stuck_charger"}
    )

    response = await async_dispatch_afrr(hass, 7)

    assert response["vehicles"]["quasar"]["status"] == "timeout"
    assert response["acknowledged_kw"] == 0
    assert response["status"] == "failed"


@pytest.mark.parametrize(
    "error",
    [
        ServiceValidationError("charger refused: car not plugged in"),
        HomeAssistantError("charger refused: car not plugged in"),
    ],
)
async def test_action_that_raises_is_rejected_with_its_reason(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, error: Exception
) -> None:
    calls: list[float] = []

    async def refuse(call: ServiceCall) -> None:
        calls.append(call.data["value"])
        raise error

    hass.services.async_register("charger", "apply", refuse)
    assert await async_setup_component(
        hass,
        "template",
        {
            "template": [
                {
                    "number": [
                        {
                            "name": "Picky charger",
                            "state": "{{ 0 }}",
                            "set_value": [
                                {
                                    "action": "charger.apply",
                                    "data": {"value": "{{ value }}"},
                                }
                            ],
                            "min": -10,
                            "max": 10,
                            "step": 0.1,
                        }
                    ]
                }
            ]
        },
    )
    await hass.async_block_till_done()
    entry = await _fleet(hass, ack_timeout=5)
    await async_add_controlled_vehicle(
        hass,
        entry,
        {
            "vehicle_id": "picky",
            "control_entity": "number.picky_charger",
            "control_unit": "kW",
            "sign_convention": "positive_discharging",
        },
    )

    response = await async_dispatch_afrr(hass, 4)

    assert calls == [4.0]
    order = response["vehicles"]["picky"]
    assert order["status"] == "rejected"
    assert order["reason"] == "charger refused: car not plugged in"
    assert order["latency_ms"] < 5000  # answered, not timed out

    # Nothing was set: nothing to set back at the end of the order.
    await _later(hass, 16)
    assert calls == [4.0]


async def test_script_control_and_concurrent_orders(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    """A script gets the order's fields; a hanging one delays no other vehicle."""
    await _quasar_helper(hass, script_power={"min": -50, "max": 50, "step": 0.001})
    assert await async_setup_component(
        hass,
        "script",
        {
            "script": {
                "home_battery": {
                    "fields": {
                        "power_kw": {},
                        "duration_s": {},
                        "dispatch_id": {},
                        "signal_type": {},
                    },
                    "sequence": [
                        {
                            "action": "input_number.set_value",
                            "target": {"entity_id": "input_number.script_power"},
                            "data": {"value": "{{ power_kw }}"},
                        }
                    ],
                },
                # Never ends an order (it only returns for a return to idle).
                "hanging_charger": {
                    "mode": "parallel",
                    "fields": {"power_kw": {}},
                    "sequence": [{"wait_template": "{{ power_kw == 0 }}"}],
                },
            }
        },
    )
    await hass.async_block_till_done()
    entry = await _fleet(hass, ack_timeout=0.5)
    await async_add_controlled_vehicle(hass, entry, QUASAR)
    await async_add_controlled_vehicle(
        hass,
        entry,
        {"vehicle_id": "battery", "control_action": "script.home_battery"},
        {"max_discharge_kw": 3, "max_charge_kw": 3},
    )
    await async_add_controlled_vehicle(
        hass,
        entry,
        {"vehicle_id": "hanging", "control_action": "script.hanging_charger"},
        {"max_discharge_kw": 3, "max_charge_kw": 3},
    )

    response = await async_dispatch_afrr(hass, 9, strategy="equal")

    vehicles = response["vehicles"]
    assert vehicles["hanging"]["status"] == "timeout"
    assert vehicles["battery"]["status"] == "acknowledged"
    assert vehicles["quasar"]["status"] == "acknowledged"
    # Answered before the hanging script's deadline: nobody waited for it.
    assert vehicles["battery"]["latency_ms"] < 500
    assert vehicles["quasar"]["latency_ms"] < 500
    assert _value(hass, "input_number.script_power") == 3.0
    assert _value(hass) == -13  # 3 kW / 230 V

    # At the end of the order the script runs again with 0 kW.
    await _later(hass, 16)
    assert _value(hass, "input_number.script_power") == 0.0
    assert _value(hass) == 0


async def test_power_sensor_confirms_and_unreadable_states_are_counted(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
) -> None:
    await _helpers(hass, charger={"min": -7400, "max": 7400, "step": 1})
    power = "sensor.charger_power"
    attributes = {"unit_of_measurement": "W", "device_class": "power"}
    hass.states.async_set(power, "n/a", attributes)
    entry = await _fleet(hass, ack_timeout=0.3)
    await async_add_controlled_vehicle(
        hass,
        entry,
        {
            "vehicle_id": "car",
            "control_entity": CHARGER,
            "control_unit": "W",
            "sign_convention": "positive_discharging",
        },
        {
            "power_entity": power,
            "power_sign": "positive_discharging",
            "confirmation": "power",
            "tolerance_kw": 0.2,
        },
    )

    # The meter shows nothing usable: never confirmed, so the order is revoked.
    response = await async_dispatch_afrr(hass, 3)
    assert response["vehicles"]["car"]["status"] == "timeout"
    assert response["revoked"]["car"]["status"] in {"pending", "timeout"}
    assert _value(hass) == 0
    diagnostics = await async_diagnostics(hass, hass_client, entry)
    assert diagnostics["dropped_input"]["entity_state_non_numeric"] >= 1

    # The meter follows the setpoint (3 % off, within the tolerance).
    def follow(event: Event[EventStateChangedData]) -> None:
        if (state := event.data["new_state"]) is not None:
            hass.states.async_set(power, str(float(state.state) * 0.97), attributes)

    unsub = async_track_state_change_event(hass, CHARGER, follow)
    response = await async_dispatch_afrr(hass, 4)
    unsub()
    assert response["vehicles"]["car"]["status"] == "acknowledged"
    assert response["acknowledged_kw"] == 4.0  # the power set, not measured

    hass.states.async_set(power, "unavailable", attributes)
    response = await async_dispatch_afrr(hass, 2)
    assert response["vehicles"]["car"]["status"] == "timeout"
    diagnostics = await async_diagnostics(hass, hass_client, entry)
    assert diagnostics["dropped_input"]["entity_state_unavailable"] >= 1


# ------------------------------------------------------------------- end of order


async def test_end_of_order_returns_to_idle_unless_a_newer_order_took_over(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _quasar_helper(hass)
    entry = await _fleet(hass)
    await async_add_controlled_vehicle(hass, entry, QUASAR)

    await async_dispatch_afrr(hass, 7, minutes=15)
    assert _value(hass) == -30
    await async_dispatch_afrr(hass, -3, minutes=30)
    assert _value(hass) == 13

    await _later(hass, 16)  # the first order's end: the second one holds
    assert _value(hass) == 13
    await _later(hass, 31)
    assert _value(hass) == 0


async def test_idle_value_can_be_the_value_before_the_first_order(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _helpers(
        hass,
        charger={"min": -32, "max": 32, "step": 1, "initial": 10},
    )
    entry = await _fleet(hass)
    await async_add_controlled_vehicle(hass, entry, QUASAR, {"idle_mode": "previous"})

    await async_dispatch_afrr(hass, 7)
    await async_dispatch_afrr(hass, 3)
    assert _value(hass) == -13
    await _later(hass, 16)
    assert _value(hass) == 10  # as before the first order


async def test_fixed_idle_value(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _quasar_helper(hass)
    entry = await _fleet(hass)
    await async_add_controlled_vehicle(hass, entry, QUASAR, {"idle_value": 6})

    await async_dispatch_afrr(hass, 7)
    await _later(hass, 16)
    assert _value(hass) == 6


async def test_unload_and_vehicle_removal_return_to_idle(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _quasar_helper(
        hass, second={"min": -32, "max": 32, "step": 1, "unit_of_measurement": "A"}
    )
    entry = await _fleet(hass)
    await async_add_controlled_vehicle(hass, entry, QUASAR)
    second = await async_add_controlled_vehicle(
        hass,
        entry,
        {**QUASAR, "vehicle_id": "second", "control_entity": "input_number.second"},
    )

    await async_dispatch_afrr(hass, 14, strategy="equal")
    assert _value(hass) == -30
    assert _value(hass, "input_number.second") == -30

    assert hass.config_entries.async_remove_subentry(entry, second)
    await hass.async_block_till_done()
    assert _value(hass, "input_number.second") == 0
    assert _value(hass) == -30

    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    assert _value(hass) == 0


async def test_restart_releases_an_order_that_ended_while_stopped(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, hass_storage: dict[str, Any]
) -> None:
    # Wall time is stepped by hand (a frozen clock also stops the loop's timers).
    wall = [dt_util.utcnow()]
    with patch.object(dt_util, "utcnow", side_effect=lambda: wall[0]):
        await _check_restart(hass, hass_storage, wall)


async def _check_restart(
    hass: HomeAssistant, hass_storage: dict[str, Any], wall: list[datetime]
) -> None:
    await _quasar_helper(
        hass, second={"min": -32, "max": 32, "step": 1, "unit_of_measurement": "A"}
    )
    entry = await _fleet(hass)
    await async_add_controlled_vehicle(hass, entry, QUASAR)
    await async_add_controlled_vehicle(
        hass,
        entry,
        {**QUASAR, "vehicle_id": "second", "control_entity": "input_number.second"},
    )
    await async_dispatch_afrr(hass, 7, minutes=10, vehicles=["quasar"])
    await async_dispatch_afrr(hass, 7, minutes=30, vehicles=["second"])
    await asyncio.sleep(0)  # the held orders are written at once
    await hass.async_block_till_done()
    saved = copy.deepcopy(hass_storage[HELD_STORE])
    assert set(saved["data"]["held"]) == {"quasar", "second"}

    # Home Assistant stops without a word to the chargers (say, a power cut):
    # what the store holds is what the last run wrote; the chargers keep going.
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    hass_storage[HELD_STORE] = saved
    for entity_id in (CHARGER, "input_number.second"):
        await hass.services.async_call(
            "input_number",
            "set_value",
            {"entity_id": entity_id, "value": -30},
            blocking=True,
        )

    # It starts again 20 minutes later: the first order ended meanwhile.
    wall[0] += timedelta(minutes=20)
    await async_setup_fleet(hass, entry=entry)
    await hass.async_block_till_done()
    assert _value(hass) == 0
    assert _value(hass, "input_number.second") == -30  # still running
    # The loop's timers follow the real clock: the second order ends 30 min in.
    async_fire_time_changed(hass, datetime.now(UTC) + timedelta(minutes=31))
    await hass.async_block_till_done()
    assert _value(hass, "input_number.second") == 0


# ------------------------------------------------------------------------- faults


async def test_missing_control_makes_the_vehicle_unavailable_with_a_repair_issue(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    entity_registry: er.EntityRegistry,
    issue_registry: ir.IssueRegistry,
) -> None:
    await _quasar_helper(hass)
    entry = await _fleet(hass)
    subentry_id = await async_add_controlled_vehicle(hass, entry, QUASAR)
    issue_id = f"control_entity_missing_{subentry_id}"
    assert issue_registry.async_get_issue(DOMAIN, issue_id) is None

    entity_registry.async_update_entity(CHARGER, new_entity_id="input_number.renamed")
    await hass.async_block_till_done()

    issue = issue_registry.async_get_issue(DOMAIN, issue_id)
    assert issue is not None
    assert issue.translation_key == "control_entity_missing"
    assert issue.translation_placeholders == {
        "entity_id": CHARGER,
        "vehicle_id": "quasar",
    }
    response = await async_dispatch_afrr(hass, 7)
    assert response["excluded"] == {"quasar": "unavailable"}
    assert _value(hass, "input_number.renamed") == 0

    entity_registry.async_update_entity("input_number.renamed", new_entity_id=CHARGER)
    await hass.async_block_till_done()
    assert issue_registry.async_get_issue(DOMAIN, issue_id) is None
    response = await async_dispatch_afrr(hass, 7)
    assert response["vehicles"]["quasar"]["status"] == "acknowledged"


async def test_control_no_longer_provided_raises_the_repair_issue(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, issue_registry: ir.IssueRegistry
) -> None:
    """A removed YAML helper leaves a restored "unavailable" state behind."""
    await _quasar_helper(hass)
    entry = await _fleet(hass)
    subentry_id = await async_add_controlled_vehicle(hass, entry, QUASAR)
    hass.states.async_set(CHARGER, "unavailable", {"restored": True})
    await hass.async_block_till_done()

    issue = issue_registry.async_get_issue(
        DOMAIN, f"control_entity_missing_{subentry_id}"
    )
    assert issue is not None
    assert issue.translation_placeholders == {
        "entity_id": CHARGER,
        "vehicle_id": "quasar",
    }
    response = await async_dispatch_afrr(hass, 7)
    assert response["excluded"] == {"quasar": "unavailable"}


async def test_unavailable_control_is_not_ordered(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    hass.states.async_set("number.cloud_charger", "12", {"min": -32, "max": 32})
    entry = await _fleet(hass)
    await async_add_controlled_vehicle(
        hass, entry, {**QUASAR, "control_entity": "number.cloud_charger"}
    )
    hass.states.async_set("number.cloud_charger", "unavailable", {})
    await hass.async_block_till_done()

    response = await async_dispatch_afrr(hass, 7)

    assert response["excluded"] == {"quasar": "unavailable"}


# ------------------------------------------------------------------ mixed fleets


async def test_one_dispatch_mixes_mqtt_gateway_and_controlled_vehicles(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _quasar_helper(hass)
    entry = await _fleet(hass)
    await async_announce(
        hass, ("mqtt-car", {"MaxPower": 7}), ("depot-car", {"gateway": "depot-1"})
    )
    await async_add_controlled_vehicle(hass, entry, QUASAR)
    responder = FleetResponder(hass, fleet_mqtt)

    # 6.9 kW each: the controlled vehicle can take exactly that (30 A).
    response = await async_dispatch_afrr(hass, 20.7, strategy="equal")

    assert {vid: o["status"] for vid, o in response["vehicles"].items()} == {
        "mqtt-car": "acknowledged",
        "depot-car": "acknowledged",
        "quasar": "acknowledged",
    }
    assert sorted(responder.command_publishes()) == [
        "v2g/gateway/depot-1/commands",
        "vehicle/mqtt-car/command",
    ]
    assert _value(hass) == -30  # 7 kW through Home Assistant


async def test_measurements_and_a_changed_control(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    """SoC, plug and departure entities shape eligibility; a new control frees the old."""
    await _quasar_helper(
        hass, second={"min": -32, "max": 32, "step": 1, "unit_of_measurement": "A"}
    )
    hass.states.async_set("sensor.car_soc", "30", {"unit_of_measurement": "%"})
    hass.states.async_set("binary_sensor.car_plugged", "on")
    departure = dt_util.utcnow() + timedelta(hours=1)
    hass.states.async_set("sensor.car_departure", departure.isoformat())
    entry = await _fleet(hass)
    subentry_id = await async_add_controlled_vehicle(
        hass,
        entry,
        QUASAR,
        {
            "soc_entity": "sensor.car_soc",
            "plugged_entity": "binary_sensor.car_plugged",
            "departure_entity": "sensor.car_departure",
            "target_soc": 80,
        },
    )

    # 30 % now, 80 % needed in an hour: nothing to give.
    response = await async_dispatch_afrr(hass, 7)
    assert response["excluded"] == {"quasar": "departure_protected"}
    assert hass.states.get("sensor.quasar_state_of_charge").state == "30.0"

    hass.states.async_set("binary_sensor.car_plugged", "off")
    await hass.async_block_till_done()
    response = await async_dispatch_afrr(hass, -7)
    assert response["excluded"] == {"quasar": "unavailable"}

    hass.states.async_set("binary_sensor.car_plugged", "on")
    await hass.async_block_till_done()
    response = await async_dispatch_afrr(hass, -7)
    assert response["vehicles"]["quasar"]["status"] == "acknowledged"
    assert _value(hass) == 30

    # Another control: the old one goes back to idle at once.
    subentry = entry.subentries[subentry_id]
    hass.config_entries.async_update_subentry(
        entry,
        subentry,
        data={**subentry.data, "control_entity": "input_number.second"},
    )
    await hass.async_block_till_done()
    assert _value(hass) == 0
    response = await async_dispatch_afrr(hass, -7)
    assert _value(hass, "input_number.second") == 30
    assert _value(hass) == 0
