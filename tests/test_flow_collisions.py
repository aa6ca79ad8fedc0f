"""Fleets cannot collide: overlapping MQTT topics and vehicle ids already known.

The flows are driven as the UI drives them (flow manager results, errors keyed by
field, texts in en.json with every placeholder they use).
"""

from __future__ import annotations

from collections.abc import Mapping
import re
from typing import Any
from unittest.mock import AsyncMock

from homeassistant.config_entries import SOURCE_IGNORE, SOURCE_USER, ConfigSubentryData
from homeassistant.const import CONF_NAME
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import device_registry as dr
from homeassistant.setup import async_setup_component
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.v2g.collisions import filters_overlap, topic_filter
from custom_components.v2g.config_flow import SECTION_ADVANCED_TOPICS
from custom_components.v2g.const import (
    CONF_ACK_TOPIC,
    CONF_COMMAND_TOPIC,
    CONF_DISCOVERY_TOPIC,
    CONF_STATE_TOPIC,
    CONF_TELEMETRY_REQUEST_TOPIC,
    DEFAULT_TOPICS,
    DOMAIN,
    SUBENTRY_TYPE_CONTROLLED,
    SUBENTRY_TYPE_VEHICLE,
)
from custom_components.v2g.entity import vehicle_device_identifier

from .helpers import (
    STRINGS,
    async_announce,
    async_setup_fleet,
    device_subentries,
    find_device,
)

PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _assert_shown(result: Mapping[str, Any], strings: Mapping[str, Any]) -> None:
    """Each error has a text, and the form gives every placeholder the text uses."""
    for error in (result.get("errors") or {}).values():
        text = strings["error"][error]
        placeholders = result.get("description_placeholders") or {}
        assert set(PLACEHOLDER.findall(text)) <= set(placeholders), error


def _form_input(name: str = "Hub", **topics: str) -> dict[str, Any]:
    """The fleet form's input, nested like the form, from flat topics."""
    flat = {**DEFAULT_TOPICS, **topics}
    return {
        CONF_NAME: name,
        CONF_COMMAND_TOPIC: flat[CONF_COMMAND_TOPIC],
        SECTION_ADVANCED_TOPICS: {
            key: flat[key] for key in DEFAULT_TOPICS if key != CONF_COMMAND_TOPIC
        },
    }


def _shown(schema: Any) -> dict[str, Any]:
    """The values a form shows (suggested or default), sections flattened."""
    values: dict[str, Any] = {}
    for key, validator in schema.schema.items():
        if hasattr(validator, "schema") and hasattr(validator, "options"):
            values.update(_shown(validator.schema))
            continue
        suggested = (key.description or {}).get("suggested_value")
        values[str(key)] = key.default() if suggested is None else suggested
    return values


def _home_fleet(**data: str) -> MockConfigEntry:
    return MockConfigEntry(
        domain=DOMAIN,
        title="Home",
        data={CONF_NAME: "Home", **DEFAULT_TOPICS, **data},
        unique_id=topic_filter(
            data.get(CONF_COMMAND_TOPIC, DEFAULT_TOPICS[CONF_COMMAND_TOPIC])
        ),
    )


async def _start(hass: HomeAssistant) -> Any:
    return await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_USER}
    )


# ------------------------------------------------------------------- topics


async def test_second_fleet_with_only_its_command_topic_changed_is_refused(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    _home_fleet().add_to_hass(hass)
    result = await _start(hass)
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _form_input(command_topic="hub/{vehicle_id}/command")
    )
    assert result["type"] is FlowResultType.FORM
    # Every topic it reads is the first fleet's: the same cars twice.
    assert result["errors"] == {SECTION_ADVANCED_TOPICS: "advanced_topics_overlap"}
    placeholders = result["description_placeholders"]
    assert placeholders["topic"] == DEFAULT_TOPICS[CONF_ACK_TOPIC]
    assert placeholders["other_topic"] == DEFAULT_TOPICS[CONF_ACK_TOPIC]
    assert placeholders["other_fleet"] == "Home"
    # Ack, discovery answer, state, telemetry answer, gateway commands and acks.
    assert placeholders["overlap_count"] == "6"
    _assert_shown(result, STRINGS["config"])
    # The section with the error is open; the typed values stay.
    assert (
        not result["data_schema"].schema[SECTION_ADVANCED_TOPICS].options["collapsed"]
    )
    assert _shown(result["data_schema"])[CONF_COMMAND_TOPIC] == (
        "hub/{vehicle_id}/command"
    )
    assert len(hass.config_entries.async_entries(DOMAIN)) == 1


async def test_second_fleet_form_proposes_topics_of_its_own(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    _home_fleet().add_to_hass(hass)
    result = await _start(hass)
    shown = _shown(result["data_schema"])
    assert shown[CONF_NAME] == "V2G fleet 2"
    assert shown[CONF_COMMAND_TOPIC] == "v2g_fleet_2/vehicle/{vehicle_id}/command"
    assert shown[CONF_STATE_TOPIC] == "v2g_fleet_2/v2g/vehicle/state/{vehicle_id}"
    assert result["data_schema"].schema[SECTION_ADVANCED_TOPICS].options["collapsed"]

    # Submitted as pre-filled: a fleet, not an abort.
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        _form_input(
            name=shown[CONF_NAME],
            **{key: shown[key] for key in DEFAULT_TOPICS},
        ),
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["title"] == "V2G fleet 2"
    assert result["result"].unique_id == "v2g_fleet_2/vehicle/+/command"

    # A third fleet is offered the next number.
    result = await _start(hass)
    assert _shown(result["data_schema"])[CONF_ACK_TOPIC] == (
        "v2g_fleet_3/vehicle/{vehicle_id}/ack"
    )


async def test_overlap_is_wildcard_aware(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    _home_fleet(**{CONF_STATE_TOPIC: "fleet/{vehicle_id}/state"}).add_to_hass(hass)
    own = {key: f"hub/{topic}" for key, topic in DEFAULT_TOPICS.items()}
    result = await _start(hass)
    # fleet/+/state and fleet/car7/+ both match fleet/car7/state.
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        _form_input(**{**own, CONF_ACK_TOPIC: "fleet/car7/{vehicle_id}"}),
    )
    assert result["errors"] == {SECTION_ADVANCED_TOPICS: "advanced_topic_overlaps"}
    placeholders = result["description_placeholders"]
    assert placeholders["topic"] == "fleet/car7/{vehicle_id}"
    assert placeholders["other_topic"] == "fleet/{vehicle_id}/state"
    assert placeholders["other_fleet"] == "Home"
    _assert_shown(result, STRINGS["config"])

    # One level less matches nothing of the other fleet's.
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        _form_input(**{**own, CONF_ACK_TOPIC: "fleet/{vehicle_id}"}),
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY


async def test_command_topic_read_by_another_fleet_is_refused(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    _home_fleet().add_to_hass(hass)
    own = {key: f"hub/{topic}" for key, topic in DEFAULT_TOPICS.items()}
    result = await _start(hass)
    # Its orders would arrive where the first fleet reads its acks.
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        _form_input(**{**own, CONF_COMMAND_TOPIC: "vehicle/{vehicle_id}/ack"}),
    )
    assert result["errors"] == {CONF_COMMAND_TOPIC: "command_topic_overlaps"}
    placeholders = result["description_placeholders"]
    assert placeholders["command_other_fleet"] == "Home"
    assert placeholders["command_other_topic"] == "vehicle/{vehicle_id}/ack"
    _assert_shown(result, STRINGS["config"])


async def test_request_topics_may_be_shared(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    _home_fleet().add_to_hass(hass)
    own = {key: f"hub/{topic}" for key, topic in DEFAULT_TOPICS.items()}
    shared = {
        CONF_DISCOVERY_TOPIC: DEFAULT_TOPICS[CONF_DISCOVERY_TOPIC],
        CONF_TELEMETRY_REQUEST_TOPIC: DEFAULT_TOPICS[CONF_TELEMETRY_REQUEST_TOPIC],
    }
    result = await _start(hass)
    # Not with a topic the other fleet reads: its "hello" would be a state.
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        _form_input(**{**own, CONF_DISCOVERY_TOPIC: "v2g/vehicle/state/hello"}),
    )
    assert result["errors"] == {SECTION_ADVANCED_TOPICS: "advanced_topic_overlaps"}
    assert (
        result["description_placeholders"]["other_topic"]
        == (DEFAULT_TOPICS[CONF_STATE_TOPIC])
    )

    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _form_input(**{**own, **shared})
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY


async def test_reconfigure_checks_the_other_fleets_only(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    _home_fleet().add_to_hass(hass)
    hub = MockConfigEntry(
        domain=DOMAIN,
        title="Hub",
        data={key: f"hub/{topic}" for key, topic in DEFAULT_TOPICS.items()},
        unique_id="hub/vehicle/+/command",
    )
    hub.add_to_hass(hass)
    own = {key: f"hub/{topic}" for key, topic in DEFAULT_TOPICS.items()}

    result = await hub.start_reconfigure_flow(hass)
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        _form_input(**{**own, CONF_STATE_TOPIC: DEFAULT_TOPICS[CONF_STATE_TOPIC]}),
    )
    assert result["errors"] == {SECTION_ADVANCED_TOPICS: "advanced_topic_overlaps"}
    assert result["description_placeholders"]["other_fleet"] == "Home"
    assert (
        not result["data_schema"].schema[SECTION_ADVANCED_TOPICS].options["collapsed"]
    )
    assert hub.data[CONF_STATE_TOPIC] == own[CONF_STATE_TOPIC]

    # Its own topics, unchanged or renamed, are no collision.
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _form_input(name="Hub 2", **own)
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reconfigure_successful"
    assert hub.title == "Hub 2"


async def test_reconfigure_onto_an_ignored_entry_id(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    # An ignored entry has no topics to compare, but holds its unique id.
    MockConfigEntry(
        domain=DOMAIN, source=SOURCE_IGNORE, unique_id="other/+/cmd"
    ).add_to_hass(hass)
    hub = _home_fleet()
    hub.add_to_hass(hass)
    result = await hub.start_reconfigure_flow(hass)
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _form_input(command_topic="other/{vehicle_id}/cmd")
    )
    assert result["errors"] == {CONF_COMMAND_TOPIC: "command_topic_in_use"}
    _assert_shown(result, STRINGS["config"])


@pytest.mark.parametrize(
    ("first", "second", "overlap"),
    [
        ("vehicle/+/ack", "vehicle/x/ack", True),
        ("vehicle/+/ack", "vehicle/+/ack", True),
        ("vehicle/+/ack", "vehicle/x/state", False),
        ("+/ack", "car7/+", True),
        ("fleet/+", "fleet/+/state", False),
        ("fleet/#", "fleet", True),
        ("fleet/#", "fleet/a/b/c", True),
        ("fleet/#", "depot/a", False),
        ("a/b", "a/b/c", False),
    ],
)
def test_filters_overlap(first: str, second: str, overlap: bool) -> None:
    assert filters_overlap(first, second) is overlap
    assert filters_overlap(second, first) is overlap


def test_topic_filter() -> None:
    assert topic_filter("vehicle/{vehicle_id}/ack") == "vehicle/+/ack"
    assert topic_filter("v2g/gateway/{gateway_id}/acks") == "v2g/gateway/+/acks"
    assert topic_filter("v2g/fleet/discovery") == "v2g/fleet/discovery"


# -------------------------------------------------------------- vehicle ids


async def test_add_vehicle_with_a_discovered_id_is_refused(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = await async_setup_fleet(hass)
    await async_announce(hass, ("veh001", {"MaxPower": 10.0, "BatteryKWh": 40.0}))
    strings = STRINGS["config_subentries"][SUBENTRY_TYPE_VEHICLE]

    result = await hass.config_entries.subentries.async_init(
        (entry.entry_id, SUBENTRY_TYPE_VEHICLE), context={"source": SOURCE_USER}
    )
    typed = {
        "vehicle_id": "veh001",
        "max_power_kw": 11,
        "battery_kwh": 62,
        "is_v2g": True,
    }
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], typed
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {"vehicle_id": "vehicle_discovered"}
    _assert_shown(result, strings)
    assert not entry.subentries
    registry = dr.async_get(hass)
    device = find_device(registry, vehicle_device_identifier(entry.entry_id, "veh001"))
    assert device is not None
    assert device_subentries(device, entry.entry_id) == {None}

    # An id the fleet does not know is added.
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], {**typed, "vehicle_id": "veh900"}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert [s.unique_id for s in entry.subentries.values()] == ["veh900"]


async def test_controlled_vehicle_with_a_discovered_id_is_refused(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    assert await async_setup_component(
        hass,
        "input_number",
        {"input_number": {"charger": {"min": -32, "max": 32, "step": 1}}},
    )
    entry = await async_setup_fleet(hass)
    await async_announce(hass, ("veh001", {}))
    result = await hass.config_entries.subentries.async_init(
        (entry.entry_id, SUBENTRY_TYPE_CONTROLLED), context={"source": SOURCE_USER}
    )
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"],
        {"vehicle_id": "veh001", "control_entity": "input_number.charger"},
    )
    assert result["errors"] == {"vehicle_id": "vehicle_discovered"}
    _assert_shown(result, STRINGS["config_subentries"][SUBENTRY_TYPE_CONTROLLED])
    assert not entry.subentries


async def test_edit_hand_added_vehicle_that_talks_over_mqtt(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    car = ConfigSubentryData(
        data={"vehicle_id": "car-1", "max_power_kw": 7.0, "battery_kwh": 40.0},
        subentry_id="sub1",
        subentry_type=SUBENTRY_TYPE_VEHICLE,
        title="car-1",
        unique_id="car-1",
    )
    entry = await async_setup_fleet(hass, subentries=[car])
    # Both vehicles are in the fleet; only veh001 is the fleet's own discovery.
    await async_announce(hass, ("car-1", {}), ("veh001", {}))
    edit = {"vehicle_id": "car-1", "max_power_kw": 9, "battery_kwh": 50, "is_v2g": True}

    result = await entry.start_subentry_reconfigure_flow(hass, "sub1")
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], {**edit, "vehicle_id": "veh001"}
    )
    assert result["errors"] == {"vehicle_id": "vehicle_discovered"}

    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], edit
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reconfigure_successful"
    assert entry.subentries["sub1"].data["max_power_kw"] == 9.0
