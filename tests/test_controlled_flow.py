"""Subentry flow of vehicles controlled through Home Assistant: add, edit, errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeassistant.config_entries import SOURCE_USER, ConfigSubentryData
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers.selector import EntitySelector, SelectSelector
from homeassistant.setup import async_setup_component
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import MqttMockHAClient
import voluptuous as vol

from custom_components.v2g.const import SUBENTRY_TYPE_CONTROLLED

from .helpers import STRINGS, async_settle, async_setup_fleet

FLOW_STRINGS = STRINGS["config_subentries"][SUBENTRY_TYPE_CONTROLLED]
CHARGER = "input_number.charger"


@pytest.fixture
async def chargers(hass: HomeAssistant) -> None:
    """A bidirectional charger in A, a charge-only one, and a few sensors."""
    assert await async_setup_component(
        hass,
        "input_number",
        {
            "input_number": {
                "charger": {"min": -32, "max": 32, "step": 1, "mode": "box"},
                "v1g_charger": {"min": 6, "max": 16, "step": 1, "mode": "box"},
                "inverter": {
                    "min": -5000,
                    "max": 5000,
                    "step": 10,
                    "mode": "box",
                    "unit_of_measurement": "W",
                },
            }
        },
    )
    hass.states.async_set(
        "sensor.charger_power",
        "0",
        {"unit_of_measurement": "W", "device_class": "power"},
    )
    hass.states.async_set("sensor.charger_energy", "0", {"unit_of_measurement": "kWh"})
    hass.states.async_set(
        "sensor.car_soc", "64", {"unit_of_measurement": "%", "device_class": "battery"}
    )
    await hass.async_block_till_done()


async def _fleet(
    hass: HomeAssistant, subentries: list[ConfigSubentryData] | None = None
) -> MockConfigEntry:
    return await async_setup_fleet(hass, subentries=subentries)


async def _start(hass: HomeAssistant, entry: MockConfigEntry) -> dict[str, Any]:
    result = await hass.config_entries.subentries.async_init(
        (entry.entry_id, SUBENTRY_TYPE_CONTROLLED), context={"source": SOURCE_USER}
    )
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "user"
    return dict(result)


async def _configure(
    hass: HomeAssistant, result: Mapping[str, Any], user_input: dict[str, Any]
) -> dict[str, Any]:
    return dict(
        await hass.config_entries.subentries.async_configure(
            result["flow_id"], user_input
        )
    )


def _defaults(schema: vol.Schema) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in schema.schema:
        suggested = (key.description or {}).get("suggested_value")
        if suggested is None and key.default is not vol.UNDEFINED:
            suggested = key.default()
        values[str(key)] = suggested
    return values


def _selector(schema: vol.Schema, name: str) -> Any:
    return next(value for key, value in schema.schema.items() if str(key) == name)


def _assert_translated(result: Mapping[str, Any]) -> None:
    for error in (result.get("errors") or {}).values():
        assert error in FLOW_STRINGS["error"], error
    if result["type"] is FlowResultType.ABORT:
        assert result["reason"] in FLOW_STRINGS["abort"]


def _check_fields(schema: vol.Schema, strings: Mapping[str, Any]) -> None:
    keys = {str(key) for key in schema.schema}
    assert set(strings["data"]) == keys
    assert set(strings["data_description"]) == keys
    for validator in schema.schema.values():
        if isinstance(validator, SelectSelector):
            options = STRINGS["selector"][validator.config["translation_key"]]
            assert set(options["options"]) == set(validator.config["options"])


async def test_add_with_limits_from_the_number(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, chargers: None
) -> None:
    entry = await _fleet(hass)
    result = await _start(hass, entry)
    _check_fields(result["data_schema"], FLOW_STRINGS["step"]["user"])
    control = _selector(result["data_schema"], "control_entity")
    assert isinstance(control, EntitySelector)
    assert control.config["filter"] == [{"domain": ["number", "input_number"]}]

    result = await _configure(
        hass, result, {"vehicle_id": " quasar ", "control_entity": CHARGER}
    )
    assert result["step_id"] == "settings"
    assert result["description_placeholders"] == {
        "vehicle_id": "quasar",
        "control": CHARGER,
    }
    schema = result["data_schema"]
    _check_fields(schema, FLOW_STRINGS["step"]["settings"])
    # 32 A at 230 V both ways.
    assert _defaults(schema)["max_discharge_kw"] == 7.36
    assert _defaults(schema)["max_charge_kw"] == 7.36
    assert _selector(schema, "soc_entity").config["filter"][0] == {
        "domain": ["sensor"],
        "device_class": ["battery"],
    }
    assert _selector(schema, "plugged_entity").config["filter"][0] == {
        "domain": ["binary_sensor"],
        "device_class": ["plug"],
    }
    assert _selector(schema, "power_entity").config["filter"] == [
        {"domain": ["sensor"], "device_class": ["power"]}
    ]

    result = await _configure(
        hass,
        result,
        {
            "battery_kwh": 77,
            "soc_entity": "sensor.car_soc",
            "power_entity": "sensor.charger_power",
            "target_soc": 80,
        },
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    (subentry,) = entry.subentries.values()
    assert subentry.subentry_type == SUBENTRY_TYPE_CONTROLLED
    assert subentry.unique_id == subentry.title == "quasar"
    assert dict(subentry.data) == {
        "vehicle_id": "quasar",
        "control_entity": CHARGER,
        "control_action": None,
        "control_unit": "A",
        "voltage": 230.0,
        "phases": 1,
        "sign_convention": "positive_charging",
        "max_discharge_kw": 7.36,
        "max_charge_kw": 7.36,
        "battery_kwh": 77.0,
        "soc_entity": "sensor.car_soc",
        "plugged_entity": None,
        "power_entity": "sensor.charger_power",
        "departure_entity": None,
        "power_sign": "positive_charging",
        "target_soc": 80.0,
        "confirmation": "control",
        "tolerance_kw": 0.1,
        "idle_mode": "fixed",
        "idle_value": 0.0,
    }
    await async_settle(hass)  # the vehicle's entities come with the next snapshot
    assert hass.states.get("sensor.quasar_state_of_charge").state == "64.0"


async def test_charge_only_number_defaults_to_no_discharge(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, chargers: None
) -> None:
    entry = await _fleet(hass)
    result = await _start(hass, entry)
    result = await _configure(
        hass,
        result,
        {"vehicle_id": "v1g", "control_entity": "input_number.v1g_charger"},
    )
    defaults = _defaults(result["data_schema"])
    assert defaults["max_discharge_kw"] == 0
    assert defaults["max_charge_kw"] == 3.68  # 16 A at 230 V


@pytest.mark.parametrize(
    ("control", "errors"),
    [
        ({}, {"base": "control_missing"}),
        (
            {"control_entity": CHARGER, "control_action": "script.charge"},
            {"base": "control_conflict", "control_action": "entity_not_found"},
        ),
        ({"control_entity": "number.gone"}, {"control_entity": "entity_not_found"}),
        (
            {"control_entity": "input_number.inverter", "control_unit": "A"},
            {"control_unit": "unit_mismatch"},
        ),
        (
            {"vehicle_id": "a/b", "control_entity": CHARGER},
            {"vehicle_id": "invalid_vehicle_id"},
        ),
        (
            {"vehicle_id": "car-1", "control_entity": CHARGER},
            {"vehicle_id": "vehicle_exists"},
        ),
    ],
)
async def test_control_errors(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    chargers: None,
    control: dict[str, Any],
    errors: dict[str, str],
) -> None:
    hand_added = ConfigSubentryData(
        data={"vehicle_id": "car-1", "max_power_kw": 7.0, "battery_kwh": 40.0},
        subentry_type="vehicle",
        title="car-1",
        unique_id="car-1",
    )
    entry = await _fleet(hass, [hand_added])
    result = await _start(hass, entry)
    result = await _configure(hass, result, {"vehicle_id": "car", **control})
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "user"
    assert result["errors"] == errors
    _assert_translated(result)

    result = await _configure(
        hass,
        result,
        {
            "vehicle_id": "car-2",
            "control_entity": "input_number.inverter",
            "control_unit": "W",
        },
    )
    assert result["step_id"] == "settings"
    # 5000 W both ways.
    assert _defaults(result["data_schema"])["max_discharge_kw"] == 5.0


@pytest.mark.parametrize(
    ("settings", "errors"),
    [
        (
            {"max_discharge_kw": 0, "max_charge_kw": 0},
            {"max_charge_kw": "invalid_limits"},
        ),
        ({"battery_kwh": 0}, {"battery_kwh": "invalid_battery"}),
        ({"confirmation": "power"}, {"power_entity": "power_entity_required"}),
        (
            {"power_entity": "sensor.charger_energy"},
            {"power_entity": "not_a_power_sensor"},
        ),
        (
            {"soc_entity": "sensor.charger_energy"},
            {"soc_entity": "not_a_percentage"},
        ),
    ],
)
async def test_settings_errors(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    chargers: None,
    settings: dict[str, Any],
    errors: dict[str, str],
) -> None:
    entry = await _fleet(hass)
    result = await _start(hass, entry)
    result = await _configure(
        hass, result, {"vehicle_id": "car", "control_entity": CHARGER}
    )
    result = await _configure(hass, result, settings)
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "settings"
    assert result["errors"] == errors
    _assert_translated(result)
    # The form keeps what was entered.
    for key, value in settings.items():
        assert _defaults(result["data_schema"])[key] == value

    result = await _configure(hass, result, {"battery_kwh": 50})
    assert result["type"] is FlowResultType.CREATE_ENTRY


async def test_reconfigure(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, chargers: None
) -> None:
    entry = await _fleet(hass)
    result = await _start(hass, entry)
    result = await _configure(
        hass, result, {"vehicle_id": "quasar", "control_entity": CHARGER}
    )
    result = await _configure(hass, result, {"battery_kwh": 60, "idle_value": 6})
    (subentry_id,) = entry.subentries

    result = dict(await entry.start_subentry_reconfigure_flow(hass, subentry_id))
    assert result["step_id"] == "reconfigure"
    assert result["description_placeholders"] == {"vehicle_id": "quasar"}
    _check_fields(result["data_schema"], FLOW_STRINGS["step"]["reconfigure"])
    assert _selector(result["data_schema"], "vehicle_id").config["read_only"]
    assert _defaults(result["data_schema"])["control_entity"] == CHARGER

    result = await _configure(
        hass,
        result,
        {
            "vehicle_id": "quasar",
            "control_entity": "input_number.inverter",
            "control_unit": "W",
            "sign_convention": "positive_discharging",
        },
    )
    assert result["step_id"] == "settings"
    # The vehicle's own settings are suggested again.
    defaults = _defaults(result["data_schema"])
    assert defaults["battery_kwh"] == 60
    assert defaults["idle_value"] == 6

    result = await _configure(
        hass,
        result,
        {
            **{key: value for key, value in defaults.items() if value is not None},
            "max_discharge_kw": 5,
            "max_charge_kw": 5,
            "idle_value": 0,
        },
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reconfigure_successful"
    _assert_translated(result)
    data = entry.subentries[subentry_id].data
    assert data["control_entity"] == "input_number.inverter"
    assert data["control_unit"] == "W"
    assert data["sign_convention"] == "positive_discharging"
    assert data["battery_kwh"] == 60
    assert data["max_discharge_kw"] == 5
    assert len(entry.subentries) == 1
