"""Forms that guide: range errors in the integration's words, all at once, shown.

Number fields keep their min / max for the UI, but the step checks them: Home
Assistant validates the schema before the step runs, so a range in the schema would
answer with voluptuous's raw message at the top of the dialog instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from unittest.mock import AsyncMock

from homeassistant.config_entries import SOURCE_USER
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.setup import async_setup_component
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import (
    ClientSessionGenerator,
    MqttMockHAClient,
)

from custom_components.v2g.const import (
    DEFAULT_TOPICS,
    DOMAIN,
    SUBENTRY_TYPE_CONTROLLED,
    SUBENTRY_TYPE_VEHICLE,
)
from custom_components.v2g.form_fields import NumberRange
from custom_components.v2g.options import default_options
from custom_components.v2g.options_flow import OPTION_RANGES, OPTION_SECTIONS

from .helpers import STRINGS, async_setup_fleet

OPTIONS_ERRORS: dict[str, str] = STRINGS["options"]["error"]


def _options_input(**values: Any) -> dict[str, Any]:
    flat = default_options() | values
    return {
        name: {key: str(flat[key]) if key == "qos" else flat[key] for key in keys}
        for name, keys in OPTION_SECTIONS.items()
    }


def _collapsed(result: Mapping[str, Any]) -> dict[str, bool]:
    return {
        str(key): value.options["collapsed"]
        for key, value in result["data_schema"].schema.items()
    }


async def _fleet_entry(hass: HomeAssistant) -> MockConfigEntry:
    entry = MockConfigEntry(
        domain=DOMAIN,
        title="Depot",
        data=dict(DEFAULT_TOPICS),
        options=default_options(),
        unique_id="vehicle/+/command",
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    return entry


# -------------------------------------------------------------------- options


async def test_min_soc_out_of_range_is_said_on_its_section(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    entry = await _fleet_entry(hass)
    result = await hass.config_entries.options.async_init(entry.entry_id)
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], _options_input(min_soc=150)
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {"safety": "invalid_min_soc"}
    assert "percentage from 0 to 100" in OPTIONS_ERRORS["invalid_min_soc"]
    # The section with the error opens; the others keep their state.
    assert _collapsed(result) == {
        "dispatch": False,
        "safety": False,
        "prediction": True,
        "telemetry": True,
        "reporting": True,
        "delivery": True,
    }
    # What was typed stays, the stored options do not change.
    safety = result["data_schema"].schema["safety"].schema.schema
    min_soc = next(key for key in safety if str(key) == "min_soc")
    assert min_soc.description["suggested_value"] == 150
    assert entry.options == default_options()

    result = await hass.config_entries.options.async_configure(
        result["flow_id"], _options_input(min_soc=15)
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert entry.options["min_soc"] == 15.0


async def test_every_options_error_at_once(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    entry = await _fleet_entry(hass)
    result = await hass.config_entries.options.async_init(entry.entry_id)
    result = await hass.config_entries.options.async_configure(
        result["flow_id"],
        _options_input(
            ack_timeout=0,
            min_soc=150,
            safe_discharge_floor=-1,
            prediction_lookback_days=400,
            prediction_profile="50,50",
            telemetry_mode="pull",
            poll_interval=0,
            emission_factor=-5,
            verify_window=601,
            not_following_grace=4000,
        ),
    )
    assert result["errors"] == {
        "dispatch": "invalid_ack_timeout",
        "safety": "invalid_safety",
        "prediction": "invalid_prediction",
        # Out of range, so not compared with the stale timeout.
        "telemetry": "invalid_poll_interval",
        "reporting": "invalid_emission_factor",
        "delivery": "invalid_delivery",
    }
    for code in result["errors"].values():
        assert code in OPTIONS_ERRORS
    assert not any(_collapsed(result).values())
    assert entry.options == default_options()


@pytest.mark.parametrize("value", ["abc", float("inf"), float("nan"), None])
async def test_options_not_a_number(
    hass: HomeAssistant,
    mqtt_mock: MqttMockHAClient,
    mock_setup_entry: AsyncMock,
    value: Any,
) -> None:
    entry = await _fleet_entry(hass)
    result = await hass.config_entries.options.async_init(entry.entry_id)
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], _options_input(emission_factor=value)
    )
    assert result["errors"] == {"reporting": "invalid_emission_factor"}


def test_every_options_error_has_a_text() -> None:
    section_of = {key: name for name, keys in OPTION_SECTIONS.items() for key in keys}
    for key in OPTION_RANGES:
        assert f"invalid_{key}" in OPTIONS_ERRORS, key
    # A section that can have several problems has a text naming all its rules.
    problems = dict.fromkeys(OPTION_SECTIONS, 0)
    for key in OPTION_RANGES:
        problems[section_of[key]] += 1
    problems["prediction"] += 1  # the profile
    for name, count in problems.items():
        assert (f"invalid_{name}" in OPTIONS_ERRORS) is (count > 1), name


async def test_options_form_over_http_as_the_frontend_sends_it(
    hass: HomeAssistant,
    hass_client: ClientSessionGenerator,
    mqtt_mock: MqttMockHAClient,
    mock_setup_entry: AsyncMock,
) -> None:
    entry = await _fleet_entry(hass)
    assert await async_setup_component(hass, "config", {})
    client = await hass_client()
    response = await client.post(
        "/api/config/config_entries/options/flow", json={"handler": entry.entry_id}
    )
    flow = await response.json()
    safety = next(field for field in flow["data_schema"] if field["name"] == "safety")
    assert safety["expanded"] is False
    min_soc = next(field for field in safety["schema"] if field["name"] == "min_soc")
    # The UI still knows the range.
    assert min_soc["selector"]["number"]["min"] == 0
    assert min_soc["selector"]["number"]["max"] == 100

    response = await client.post(
        f"/api/config/config_entries/options/flow/{flow['flow_id']}",
        json=_options_input(min_soc=150),
    )
    # Not a 400 with "Value 150.0 is too large for dictionary value ...".
    assert response.status == 200
    flow = await response.json()
    assert flow["errors"] == {"safety": "invalid_min_soc"}
    safety = next(field for field in flow["data_schema"] if field["name"] == "safety")
    assert safety["expanded"] is True


# ------------------------------------------------------------ vehicle forms


async def test_vehicle_form_shows_every_error_at_once(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    entry = await _fleet_entry(hass)
    strings = STRINGS["config_subentries"][SUBENTRY_TYPE_VEHICLE]["error"]
    result = await hass.config_entries.subentries.async_init(
        (entry.entry_id, SUBENTRY_TYPE_VEHICLE), context={"source": SOURCE_USER}
    )
    max_power = next(
        value
        for key, value in result["data_schema"].schema.items()
        if str(key) == "max_power_kw"
    )
    assert max_power.config["max"] == 1000
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"],
        {
            "vehicle_id": "a/b",
            "max_power_kw": 1500,
            "battery_kwh": "lots",
            "is_v2g": True,
        },
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {
        "vehicle_id": "invalid_vehicle_id",
        "max_power_kw": "invalid_max_power",
        "battery_kwh": "invalid_battery",
    }
    for code in result["errors"].values():
        assert code in strings

    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"],
        {"vehicle_id": "car", "max_power_kw": 1000, "battery_kwh": 80, "is_v2g": True},
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    (subentry,) = entry.subentries.values()
    assert subentry.data["max_power_kw"] == 1000.0


async def test_controlled_vehicle_forms_show_every_error_at_once(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    assert await async_setup_component(
        hass,
        "input_number",
        {"input_number": {"charger": {"min": -32, "max": 32, "step": 1}}},
    )
    entry = await async_setup_fleet(hass)
    strings = STRINGS["config_subentries"][SUBENTRY_TYPE_CONTROLLED]["error"]
    control = {"vehicle_id": "quasar", "control_entity": "input_number.charger"}
    result = await hass.config_entries.subentries.async_init(
        (entry.entry_id, SUBENTRY_TYPE_CONTROLLED), context={"source": SOURCE_USER}
    )
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], {**control, "voltage": 2000, "phases": 2.5}
    )
    assert result["step_id"] == "user"
    assert result["errors"] == {
        "voltage": "invalid_voltage",
        "phases": "invalid_phases",
    }
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], {**control, "voltage": 230, "phases": 3}
    )
    assert result["step_id"] == "settings"

    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"],
        {
            "max_discharge_kw": -1,
            "max_charge_kw": 2000,
            "battery_kwh": 0,
            "target_soc": 150,
            "tolerance_kw": 0,
        },
    )
    assert result["step_id"] == "settings"
    assert result["errors"] == {
        "max_discharge_kw": "invalid_max_discharge",
        "max_charge_kw": "invalid_max_charge",
        "battery_kwh": "invalid_battery",
        "target_soc": "invalid_target_soc",
        "tolerance_kw": "invalid_tolerance",
    }
    for code in result["errors"].values():
        assert code in strings

    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], {"battery_kwh": 60, "target_soc": 80}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    (subentry,) = entry.subentries.values()
    assert subentry.data["phases"] == 3
    assert subentry.data["voltage"] == 230.0


def test_number_range() -> None:
    percent = NumberRange(0, 100, 1, "%")
    assert percent.check("42.5") == 42.5
    assert percent.check(0) == 0.0
    for bad in (101, -0.1, True, None, "x", float("nan"), float("-inf")):
        assert percent.check(bad) is None, bad
    positive = NumberRange(0, None, above_minimum=True)
    assert positive.check(0) is None
    assert positive.check(1e12) == 1e12
    selector = positive.selector()
    assert selector.config == {"mode": "box", "step": "any", "min": 0}
    # The selector converts, the step judges.
    assert selector("7") == 7.0
    assert selector(-5) == -5.0
    assert selector("lots") == "lots"
