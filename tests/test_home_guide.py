"""The README's "Use your own charger" guide, as a home owner would follow it.

Each test is one example of the guide: a Quasar-like current number (status of
a 7 kW order that can only be applied in whole amperes), a template `number` in
W whose `set_value` writes a signed value into a Modbus-like register, and
scripts given the order's fields (one whose action fails, one that stops).
"""

from __future__ import annotations

from typing import Any

from homeassistant.core import HomeAssistant, ServiceCall
from homeassistant.exceptions import HomeAssistantError
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.v2g.const import CONF_ACK_TIMEOUT

from .controlled_helpers import async_add_controlled_vehicle, async_dispatch_afrr
from .helpers import async_setup_fleet


async def test_quasar_order_rounded_to_whole_amperes_is_partial(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    assert await async_setup_component(
        hass,
        "input_number",
        {
            "input_number": {
                "quasar_current": {
                    "min": -32,
                    "max": 32,
                    "step": 1,
                    "initial": 0,
                    "unit_of_measurement": "A",
                }
            }
        },
    )
    entry = await async_setup_fleet(hass, options={CONF_ACK_TIMEOUT: 5})
    await async_add_controlled_vehicle(
        hass,
        entry,
        {
            "vehicle_id": "quasar",
            "control_entity": "input_number.quasar_current",
            "control_unit": "A",
            "voltage": 230,
            "phases": 1,
            "sign_convention": "positive_charging",
        },
    )

    response = await async_dispatch_afrr(hass, 7)

    assert hass.states.get("input_number.quasar_current").state == "-30.0"
    assert response["vehicles"]["quasar"]["status"] == "acknowledged"
    assert response["acknowledged_kw"] == 6.9
    # 6.9 of the 7 kW: the dispatch says so.
    assert response["status"] == "partial"


async def test_template_number_in_watts_writes_a_signed_register(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    """The guide's template number over a Modbus register (W, positive = charging).

    The register write is a test action that stores the raw 16-bit value and shows
    it, decoded, on the read-back sensor, as a Modbus `int16` sensor does after
    its next read.
    """
    registers: dict[int, int] = {}
    readback = "sensor.charger_setpoint_register"
    hass.states.async_set(readback, "0", {"unit_of_measurement": "W"})

    async def write_register(call: ServiceCall) -> None:
        raw = int(call.data["value"])
        assert 0 <= raw < 65536  # Modbus takes unsigned 16-bit words
        registers[int(call.data["address"])] = raw
        signed = raw - 65536 if raw >= 32768 else raw
        hass.states.async_set(readback, str(signed), {"unit_of_measurement": "W"})

    hass.services.async_register("charger", "write_register", write_register)
    assert await async_setup_component(
        hass,
        "template",
        {
            "template": [
                {
                    "number": [
                        {
                            "name": "Charger power setpoint",
                            "unit_of_measurement": "W",
                            "state": f"{{{{ states('{readback}') | int(0) }}}}",
                            "min": -7400,
                            "max": 7400,
                            "step": 100,
                            "set_value": [
                                {
                                    "action": "charger.write_register",
                                    "data": {
                                        "address": 40100,
                                        "value": "{{ (value | int) % 65536 }}",
                                    },
                                }
                            ],
                        }
                    ]
                }
            ]
        },
    )
    await hass.async_block_till_done()
    entry = await async_setup_fleet(hass, options={CONF_ACK_TIMEOUT: 5})
    await async_add_controlled_vehicle(
        hass,
        entry,
        {
            "vehicle_id": "modbus",
            "control_entity": "number.charger_power_setpoint",
            "control_unit": "W",
            "sign_convention": "positive_charging",
        },
    )

    # 3.33 kW discharge: -3300 W (100 W steps), written as 65536 - 3300.
    response = await async_dispatch_afrr(hass, 3.33)
    assert registers == {40100: 62236}
    assert hass.states.get("number.charger_power_setpoint").state == "-3300.0"
    assert response["vehicles"]["modbus"]["status"] == "acknowledged"
    assert response["acknowledged_kw"] == 3.3

    response = await async_dispatch_afrr(hass, -2)
    assert registers == {40100: 2000}
    assert response["acknowledged_kw"] == -2.0


async def test_script_gets_the_order_and_a_failing_action_rejects_it(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    """An action of the script that fails rejects the order; a `stop` step does not.

    Home Assistant ends a script that stops (even with `error: true`) without
    raising to its caller: for the integration the script ran, and the order
    counts as acknowledged.
    """
    calls: list[dict[str, Any]] = []

    async def apply(call: ServiceCall) -> None:
        if call.data["power_kw"] > 0 and call.data["charger"] == "offline":
            raise HomeAssistantError("charger offline")
        calls.append(dict(call.data))

    hass.services.async_register("charger", "apply", apply)
    fields = {"power_kw": {}, "duration_s": {}, "dispatch_id": {}, "signal_type": {}}

    def script(charger: str) -> dict[str, Any]:
        return {
            "fields": fields,
            "sequence": [
                {
                    "action": "charger.apply",
                    "data": {
                        "charger": charger,
                        "power_kw": "{{ power_kw }}",
                        "duration_s": "{{ duration_s }}",
                        "dispatch_id": "{{ dispatch_id }}",
                        "signal_type": "{{ signal_type }}",
                    },
                }
            ],
        }

    assert await async_setup_component(
        hass,
        "script",
        {
            "script": {
                "home_charger": script("home"),
                "offline_charger": script("offline"),
                "stopping_charger": {
                    "fields": fields,
                    "sequence": [{"stop": "car not plugged in", "error": True}],
                },
            }
        },
    )
    await hass.async_block_till_done()
    entry = await async_setup_fleet(hass, options={CONF_ACK_TIMEOUT: 5})
    for vehicle_id in ("home_charger", "offline_charger", "stopping_charger"):
        await async_add_controlled_vehicle(
            hass,
            entry,
            {"vehicle_id": vehicle_id, "control_action": f"script.{vehicle_id}"},
            {"max_discharge_kw": 3, "max_charge_kw": 3},
        )

    response = await async_dispatch_afrr(hass, 9)

    assert calls == [
        {
            "charger": "home",
            "power_kw": 3.0,
            "duration_s": 900.0,
            "dispatch_id": response["dispatch_id"],
            "signal_type": "aFRR",
        }
    ]
    vehicles = response["vehicles"]
    assert vehicles["home_charger"]["status"] == "acknowledged"
    assert vehicles["offline_charger"]["status"] == "rejected"
    assert vehicles["offline_charger"]["reason"] == "charger offline"
    assert vehicles["stopping_charger"]["status"] == "acknowledged"
