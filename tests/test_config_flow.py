"""Config flow, reconfigure flow, options flow and vehicle subentry flows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from unittest.mock import AsyncMock

from homeassistant.config_entries import (
    SOURCE_USER,
    ConfigEntryDisabler,
    ConfigSubentryData,
)
from homeassistant.const import CONF_NAME
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType, section
from homeassistant.helpers.selector import SelectSelector, TextSelector
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import MqttMockHAClient
import voluptuous as vol

from custom_components.v2g.config_flow import SECTION_ADVANCED_TOPICS
from custom_components.v2g.const import (
    CONF_ACK_TOPIC,
    CONF_COMMAND_TOPIC,
    CONF_DISCOVERY_RESPONSE_TOPIC,
    CONF_DISCOVERY_TOPIC,
    CONF_GATEWAY_ACK_TOPIC,
    CONF_GATEWAY_COMMAND_TOPIC,
    CONF_STATE_TOPIC,
    CONF_TELEMETRY_REQUEST_TOPIC,
    CONF_WEBHOOK_ID,
    DEFAULT_NAME,
    DEFAULT_TOPICS,
    DOMAIN,
    SUBENTRY_TYPE_VEHICLE,
)
from custom_components.v2g.engine import FallbackMode, SignalType, Strategy
from custom_components.v2g.options import FleetOptions, default_options
from custom_components.v2g.options_flow import (
    OPTION_SECTIONS,
    format_prediction_profile,
    parse_prediction_profile,
)
from custom_components.v2g.topics import command_topic_base

from .helpers import STRINGS

COMMAND_BASE = "vehicle/+/command"
ENTRY_DATA = {CONF_NAME: "Depot", **DEFAULT_TOPICS}

# --------------------------------------------------------------------- helpers


def _user_input(**topics: str) -> dict[str, Any]:
    """Return the user/reconfigure form input (nested like the form)."""
    flat = {CONF_NAME: "Depot", **DEFAULT_TOPICS, **topics}
    return {
        CONF_NAME: flat[CONF_NAME],
        CONF_COMMAND_TOPIC: flat[CONF_COMMAND_TOPIC],
        SECTION_ADVANCED_TOPICS: {
            key: flat[key] for key in DEFAULT_TOPICS if key != CONF_COMMAND_TOPIC
        },
    }


def _options_input(**values: Any) -> dict[str, Any]:
    """Return the options form input (nested by section) from flat values."""
    flat = default_options() | values
    return {
        name: {key: str(flat[key]) if key == "qos" else flat[key] for key in keys}
        for name, keys in OPTION_SECTIONS.items()
    }


def _vehicle_input(**values: Any) -> dict[str, Any]:
    return {
        "vehicle_id": "car-1",
        "max_power_kw": 11,
        "battery_kwh": 60,
        "is_v2g": True,
        **values,
    }


def _vehicle_subentry(vehicle_id: str, subentry_id: str) -> ConfigSubentryData:
    return ConfigSubentryData(
        data={
            "vehicle_id": vehicle_id,
            "max_power_kw": 7.0,
            "battery_kwh": 40.0,
            "is_v2g": True,
            "soc_entity": "sensor.soc",
            "plugged_entity": None,
        },
        subentry_id=subentry_id,
        subentry_type=SUBENTRY_TYPE_VEHICLE,
        title=vehicle_id,
        unique_id=vehicle_id,
    )


def _assert_translated(result: Mapping[str, Any], strings: Mapping[str, Any]) -> None:
    """Every error and abort reason a flow returns has an English text."""
    for error in (result.get("errors") or {}).values():
        assert error in strings["error"], error
    if result["type"] is FlowResultType.ABORT:
        assert result["reason"] in strings["abort"], result["reason"]


def _defaults(schema: vol.Schema) -> dict[str, Any]:
    """Return the default (or suggested) value of every field, sections nested."""
    values: dict[str, Any] = {}
    for key, validator in schema.schema.items():
        if isinstance(validator, section):
            values[str(key)] = _defaults(validator.schema)
            continue
        suggested = (key.description or {}).get("suggested_value")
        if suggested is None and key.default is not vol.UNDEFINED:
            suggested = key.default()
        values[str(key)] = suggested
    return values


async def _create_entry(
    hass: HomeAssistant, *, options: dict[str, Any] | None = None, **kwargs: Any
) -> MockConfigEntry:
    entry = MockConfigEntry(
        domain=DOMAIN,
        title="Depot",
        data=dict(ENTRY_DATA),
        options=default_options() if options is None else options,
        unique_id=COMMAND_BASE,
        **kwargs,
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    return entry


# ------------------------------------------------------------------ user step


async def test_user_flow_creates_entry(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_USER}
    )
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "user"
    assert result["errors"] == {}
    assert result["description_placeholders"] == {
        "vehicle_id": "{vehicle_id}",
        "gateway_id": "{gateway_id}",
        "topic": "",
        "other_fleet": "",
        "other_topic": "",
        "overlap_count": "0",
        "command_other_fleet": "",
        "command_other_topic": "",
    }
    assert _defaults(result["data_schema"]) == _user_input(name=DEFAULT_NAME)
    topics = result["data_schema"].schema[SECTION_ADVANCED_TOPICS]
    assert topics.options == {"collapsed": True}

    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _user_input()
    )
    await hass.async_block_till_done()

    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["title"] == "Depot"
    assert result["data"] == {CONF_NAME: "Depot", **DEFAULT_TOPICS}
    assert result["options"] == default_options()
    assert result["result"].unique_id == COMMAND_BASE
    assert len(mock_setup_entry.mock_calls) == 1


async def test_user_flow_strips_and_defaults_name(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_USER}
    )
    user_input = _user_input(command_topic="  fleet/a/{vehicle_id}/cmd ")
    user_input[CONF_NAME] = "   "
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], user_input
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["title"] == DEFAULT_NAME
    assert result["data"][CONF_NAME] == DEFAULT_NAME
    assert result["data"][CONF_COMMAND_TOPIC] == "fleet/a/{vehicle_id}/cmd"
    assert set(result["data"]) == {CONF_NAME, *DEFAULT_TOPICS}
    assert result["result"].unique_id == "fleet/a/+/cmd"


async def test_user_flow_mqtt_not_configured(hass: HomeAssistant) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_USER}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "mqtt_not_configured"
    _assert_translated(result, STRINGS["config"])


async def test_user_flow_mqtt_not_loaded(hass: HomeAssistant) -> None:
    # Configured but not set up (disabled): no client to publish with. An entry left
    # to set up would make Home Assistant connect to the broker (2026.11 first tries
    # MQTT 5): a socket, which tests do not open.
    MockConfigEntry(
        domain="mqtt",
        data={"broker": "127.0.0.1"},
        disabled_by=ConfigEntryDisabler.USER,
    ).add_to_hass(hass)
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_USER}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "mqtt_not_configured"


async def test_user_flow_mqtt_unloaded(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient
) -> None:
    (mqtt_entry,) = hass.config_entries.async_entries("mqtt")
    assert await hass.config_entries.async_unload(mqtt_entry.entry_id)
    await hass.async_block_till_done()
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_USER}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "mqtt_not_configured"


async def test_user_flow_mqtt_not_connected(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient
) -> None:
    mqtt_mock.connected = False
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_USER}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "mqtt_not_connected"
    _assert_translated(result, STRINGS["config"])


async def test_user_flow_same_command_topic_is_a_field_error(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    MockConfigEntry(
        domain=DOMAIN, title="Home", data=ENTRY_DATA, unique_id=COMMAND_BASE
    ).add_to_hass(hass)
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_USER}
    )
    # Same command topic base, every other topic moved: still the same fleet's
    # command topic, refused on its field (not an abort with a Close button).
    moved = {
        key: f"fleet/{topic}"
        for key, topic in DEFAULT_TOPICS.items()
        if key != CONF_COMMAND_TOPIC
    }
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _user_input(**moved)
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {CONF_COMMAND_TOPIC: "command_topic_overlaps"}
    assert result["description_placeholders"]["command_other_fleet"] == "Home"
    assert (
        result["description_placeholders"]["command_other_topic"]
        == (DEFAULT_TOPICS[CONF_COMMAND_TOPIC])
    )
    _assert_translated(result, STRINGS["config"])


@pytest.mark.parametrize(
    ("command_topic", "error"),
    [
        ("", "invalid_topic"),
        ("$SYS/{vehicle_id}/command", "invalid_topic"),
        ("vehicle/{vehicle_id}/\x01", "invalid_topic"),
        ("vehicle/{vehicle_id}/\ud800", "invalid_topic"),
        ("vehicle/{vehicle_id}/\ufdd0", "invalid_topic"),
        ("vehicle/+/command", "wildcard_not_allowed"),
        ("vehicle/{vehicle_id}/#", "wildcard_not_allowed"),
        ("/vehicle/{vehicle_id}", "empty_topic_level"),
        ("vehicle/{vehicle_id}/", "empty_topic_level"),
        ("vehicle//{vehicle_id}", "empty_topic_level"),
        ("vehicle/command", "vehicle_placeholder_required"),
        ("vehicle/car{vehicle_id}/command", "vehicle_placeholder_required"),
        ("vehicle/{vehicle_id}/{vehicle_id}", "vehicle_placeholder_required"),
        ("vehicle/{gateway_id}/command", "vehicle_placeholder_required"),
        ("vehicle/{vehicle_id}/{kind}", "unknown_placeholder"),
        ("vehicle/{vehicle_id}/cmd}", "unknown_placeholder"),
        ("a" * 65500 + "/{vehicle_id}", "topic_too_long"),
    ],
)
async def test_user_flow_command_topic_errors(
    hass: HomeAssistant,
    mqtt_mock: MqttMockHAClient,
    mock_setup_entry: AsyncMock,
    command_topic: str,
    error: str,
) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_USER}
    )
    bad_input = _user_input(command_topic=command_topic)
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], bad_input
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {CONF_COMMAND_TOPIC: error}
    assert result["description_placeholders"]["topic"] == ""
    _assert_translated(result, STRINGS["config"])
    # The form keeps what the user typed.
    assert _defaults(result["data_schema"]) == bad_input

    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _user_input()
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["data"] == ENTRY_DATA


@pytest.mark.parametrize(
    ("key", "topic", "error"),
    [
        (CONF_ACK_TOPIC, "vehicle/+/ack", "advanced_wildcard_not_allowed"),
        (CONF_ACK_TOPIC, "vehicle/ack", "advanced_vehicle_placeholder_required"),
        (CONF_DISCOVERY_TOPIC, "v2g/{vehicle_id}", "advanced_placeholder_not_allowed"),
        (CONF_TELEMETRY_REQUEST_TOPIC, "$SYS/poll", "advanced_invalid_topic"),
        (
            CONF_DISCOVERY_RESPONSE_TOPIC,
            "v2g//{vehicle_id}",
            "advanced_empty_topic_level",
        ),
        (CONF_STATE_TOPIC, "v2g/{vehicle_id}/{ts}", "advanced_unknown_placeholder"),
        (
            CONF_GATEWAY_COMMAND_TOPIC,
            "v2g/gateway/commands",
            "advanced_gateway_placeholder_required",
        ),
        (
            CONF_GATEWAY_ACK_TOPIC,
            "v2g/{gateway_id}/{vehicle_id}",
            "advanced_unknown_placeholder",
        ),
        (
            CONF_GATEWAY_ACK_TOPIC,
            "g" * 65500 + "/{gateway_id}",
            "advanced_topic_too_long",
        ),
    ],
)
async def test_user_flow_advanced_topic_errors(
    hass: HomeAssistant,
    mqtt_mock: MqttMockHAClient,
    mock_setup_entry: AsyncMock,
    key: str,
    topic: str,
    error: str,
) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_USER}
    )
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _user_input(**{key: topic})
    )
    assert result["type"] is FlowResultType.FORM
    # Fields inside a section cannot show errors: the section does, naming the topic.
    assert result["errors"] == {SECTION_ADVANCED_TOPICS: error}
    assert result["description_placeholders"]["topic"] == topic
    _assert_translated(result, STRINGS["config"])

    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _user_input()
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY


async def test_user_flow_reports_first_advanced_error_and_command_error(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_USER}
    )
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        _user_input(
            command_topic="vehicle/command",
            ack_topic="vehicle/#",
            state_topic="v2g/state",
        ),
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {
        CONF_COMMAND_TOPIC: "vehicle_placeholder_required",
        SECTION_ADVANCED_TOPICS: "advanced_wildcard_not_allowed",
    }
    assert result["description_placeholders"]["topic"] == "vehicle/#"
    _assert_translated(result, STRINGS["config"])

    # Fixing the command topic alone still reports the advanced topic.
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _user_input(ack_topic="vehicle/#", state_topic="v2g/state")
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {
        SECTION_ADVANCED_TOPICS: "advanced_wildcard_not_allowed"
    }

    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        _user_input(state_topic="v2g/state/{vehicle_id}/now"),
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["data"] == {
        **ENTRY_DATA,
        CONF_STATE_TOPIC: "v2g/state/{vehicle_id}/now",
    }
    assert len(mock_setup_entry.mock_calls) == 1


async def test_user_flow_topics_that_must_differ(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_USER}
    )
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        _user_input(
            ack_topic=DEFAULT_TOPICS[CONF_COMMAND_TOPIC],
            gateway_ack_topic=DEFAULT_TOPICS[CONF_GATEWAY_COMMAND_TOPIC],
        ),
    )
    assert result["errors"] == {
        CONF_COMMAND_TOPIC: "ack_topic_same_as_command",
        SECTION_ADVANCED_TOPICS: "gateway_ack_topic_same_as_command",
    }
    _assert_translated(result, STRINGS["config"])

    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _user_input()
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY


def test_helpers() -> None:
    assert command_topic_base("{vehicle_id}") == "+"
    assert command_topic_base("a/{vehicle_id}/b") == "a/+/b"
    assert parse_prediction_profile(" 50%, " + ",".join(["12.5"] * 23)) == [
        50.0,
        *[12.5] * 23,
    ]
    assert format_prediction_profile([100.0, 87.5, 0.0]) == "100,87.5,0"
    for bad in ("1,2,3", ",".join(["x"] * 24), ",".join(["101"] * 24), "nan," * 23):
        with pytest.raises(ValueError):
            parse_prediction_profile(bad)


# ---------------------------------------------------------------- reconfigure


async def test_reconfigure(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    entry = await _create_entry(hass)
    hass.config_entries.async_update_entry(entry, title="Renamed in the UI")
    result = await entry.start_reconfigure_flow(hass)
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "reconfigure"
    assert _defaults(result["data_schema"]) == _user_input(name="Renamed in the UI")

    new_input = _user_input(
        command_topic="depot/{vehicle_id}/orders", ack_topic="depot/{vehicle_id}/acks"
    )
    new_input[CONF_NAME] = "Depot 2"
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], new_input
    )
    await hass.async_block_till_done()

    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reconfigure_successful"
    _assert_translated(result, STRINGS["config"])
    assert entry.unique_id == "depot/+/orders"
    assert entry.title == "Depot 2"
    assert entry.data == {
        **DEFAULT_TOPICS,
        CONF_NAME: "Depot 2",
        CONF_COMMAND_TOPIC: "depot/{vehicle_id}/orders",
        CONF_ACK_TOPIC: "depot/{vehicle_id}/acks",
    }
    assert entry.options == default_options()
    assert len(mock_setup_entry.mock_calls) == 2  # reloaded
    assert len(hass.config_entries.async_entries(DOMAIN)) == 1


async def test_reconfigure_keeps_command_topic(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    entry = await _create_entry(hass)
    result = await entry.start_reconfigure_flow(hass)
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _user_input(state_topic="fleet/state/{vehicle_id}")
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reconfigure_successful"
    assert entry.unique_id == COMMAND_BASE
    assert entry.data[CONF_STATE_TOPIC] == "fleet/state/{vehicle_id}"


async def test_reconfigure_command_topic_of_another_fleet(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    entry = await _create_entry(hass)
    MockConfigEntry(
        domain=DOMAIN,
        title="Other",
        data={key: f"other/{topic}" for key, topic in DEFAULT_TOPICS.items()},
        unique_id="other/vehicle/+/command",
    ).add_to_hass(hass)

    result = await entry.start_reconfigure_flow(hass)
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        _user_input(command_topic="other/vehicle/{vehicle_id}/command"),
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {CONF_COMMAND_TOPIC: "command_topic_overlaps"}
    assert result["description_placeholders"]["command_other_fleet"] == "Other"
    _assert_translated(result, STRINGS["config"])

    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _user_input(command_topic="mine/{vehicle_id}/cmd")
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reconfigure_successful"
    assert entry.unique_id == "mine/+/cmd"


async def test_reconfigure_invalid_topic(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    entry = await _create_entry(hass)
    result = await entry.start_reconfigure_flow(hass)
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _user_input(ack_topic="vehicle/#")
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {
        SECTION_ADVANCED_TOPICS: "advanced_wildcard_not_allowed"
    }
    assert result["description_placeholders"]["topic"] == "vehicle/#"
    assert entry.data == ENTRY_DATA

    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _user_input(ack_topic="vehicle/{vehicle_id}/a")
    )
    assert result["type"] is FlowResultType.ABORT
    assert entry.data[CONF_ACK_TOPIC] == "vehicle/{vehicle_id}/a"


# -------------------------------------------------------------------- options


async def test_options_round_trip(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    entry = await _create_entry(hass)
    result = await hass.config_entries.options.async_init(entry.entry_id)
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "init"
    assert _defaults(result["data_schema"]) == _options_input()
    schema = result["data_schema"].schema
    assert not schema["dispatch"].options["collapsed"]
    assert schema["safety"].options["collapsed"]

    profile = ", ".join(["80"] * 12 + ["25.5%"] * 12)
    result = await hass.config_entries.options.async_configure(
        result["flow_id"],
        _options_input(
            strategy_FCR="equal",
            strategy_aFRR="optimal",
            strategy_MA="segmented",
            strategy_NEBEF="equal",
            strategy_EcoWatt="smart",
            fallback="probabilistic",
            ack_timeout=2.5,
            qos=2,
            min_soc=20,
            safe_discharge_floor=15,
            soc_constraints=False,
            prediction="static_profile",
            prediction_profile=profile,
            prediction_lookback_days=14,
            telemetry_mode="hybrid",
            poll_interval=30,
            stale_timeout=600,
            emission_factor=56,
            ack_rate_sla=95,
            release_at_end=False,
            verify_window=20,
            delivery_tolerance_pct=5,
            delivery_tolerance_kw=0.5,
            not_following_grace=45,
        ),
    )
    await hass.async_block_till_done()

    assert result["type"] is FlowResultType.CREATE_ENTRY
    expected = {
        "release_at_end": False,
        "strategy_FCR": "equal",
        "strategy_aFRR": "optimal",
        "strategy_MA": "segmented",
        "strategy_NEBEF": "equal",
        "strategy_EcoWatt": "smart",
        "fallback": "probabilistic",
        "ack_timeout": 2.5,
        "qos": 2,
        "min_soc": 20.0,
        "safe_discharge_floor": 15.0,
        "soc_constraints": False,
        "prediction": "static_profile",
        "prediction_profile": ",".join(["80"] * 12 + ["25.5"] * 12),
        "prediction_lookback_days": 14,
        "telemetry_mode": "hybrid",
        "poll_interval": 30.0,
        "stale_timeout": 600.0,
        "emission_factor": 56.0,
        "ack_rate_sla": 95.0,
        "not_following_grace": 45.0,
        "webhook_enabled": False,
        "verify_window": 20.0,
        "delivery_tolerance_pct": 5.0,
        "delivery_tolerance_kw": 0.5,
    }
    assert entry.options == expected
    assert type(entry.options["qos"]) is int
    assert type(entry.options["prediction_lookback_days"]) is int
    assert set(expected) == set(default_options())
    assert len(mock_setup_entry.mock_calls) == 2  # OptionsFlowWithReload reloaded
    assert not entry.update_listeners

    # The runtime reads them typed, percentages as fractions.
    fleet = FleetOptions.from_entry(entry)
    assert fleet.settings.strategies == {
        SignalType.FCR: Strategy.EQUAL,
        SignalType.AFRR: Strategy.OPTIMAL,
        SignalType.MA: Strategy.SEGMENTED,
        SignalType.NEBEF: Strategy.EQUAL,
        SignalType.ECOWATT: Strategy.SMART,
    }
    assert fleet.settings.fallback is FallbackMode.PROBABILISTIC
    assert fleet.settings.ack_timeout_s == 2.5
    assert fleet.settings.safety.min_soc == pytest.approx(0.20)
    assert fleet.settings.safety.safe_discharge_floor == pytest.approx(0.15)
    assert fleet.settings.safety.soc_constraints is False
    assert fleet.settings.stale_timeout_s == 600.0
    assert fleet.qos == 2
    assert fleet.stale_timeout == 600.0
    assert fleet.not_following_grace == 45.0
    assert fleet.emission_factor == 56.0
    assert fleet.ack_rate_sla == pytest.approx(0.95)
    assert fleet.telemetry_mode == "hybrid"
    assert fleet.poll_interval == 30.0
    assert fleet.prediction == "static_profile"
    assert fleet.prediction_profile == pytest.approx([0.8] * 12 + [0.255] * 12)
    assert fleet.prediction_lookback_days == 14
    assert fleet.webhook_enabled is False
    assert fleet.webhook_id is None
    assert fleet.verify_window == 20.0
    assert fleet.delivery_tolerance.fraction == pytest.approx(0.05)
    assert fleet.delivery_tolerance.kw == 0.5

    # The form shows the stored options next time.
    result = await hass.config_entries.options.async_init(entry.entry_id)
    assert _defaults(result["data_schema"]) == _options_input(**expected)


async def test_options_webhook_id_generated_once(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    entry = await _create_entry(hass)

    async def save(**values: Any) -> None:
        result = await hass.config_entries.options.async_init(entry.entry_id)
        result = await hass.config_entries.options.async_configure(
            result["flow_id"], _options_input(**values)
        )
        await hass.async_block_till_done()
        assert result["type"] is FlowResultType.CREATE_ENTRY

    await save(webhook_enabled=True)
    webhook_id = entry.options[CONF_WEBHOOK_ID]
    assert isinstance(webhook_id, str)
    assert len(webhook_id) == 64
    assert entry.options == default_options() | {
        "webhook_enabled": True,
        CONF_WEBHOOK_ID: webhook_id,
    }

    await save(webhook_enabled=False)
    assert entry.options[CONF_WEBHOOK_ID] == webhook_id
    assert entry.options["webhook_enabled"] is False

    await save(webhook_enabled=True, ack_rate_sla=80)
    assert entry.options[CONF_WEBHOOK_ID] == webhook_id
    assert entry.options["ack_rate_sla"] == 80.0

    # The form tells the user where to POST signals, read only, in the reporting
    # section (a field: its text is translated, the value is only the path).
    result = await hass.config_entries.options.async_init(entry.entry_id)
    assert not result["description_placeholders"]
    reporting = result["data_schema"].schema["reporting"].schema
    url_selector = next(v for k, v in reporting.schema.items() if k == "webhook_url")
    assert isinstance(url_selector, TextSelector)
    assert url_selector.config["read_only"] is True
    assert _defaults(result["data_schema"])["reporting"]["webhook_url"] == (
        f"/api/webhook/{webhook_id}"
    )
    # Submitting the form as shown stores no path.
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], _defaults(result["data_schema"])
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert "webhook_url" not in entry.options
    assert FleetOptions.from_entry(entry).webhook_id == webhook_id

    await save(webhook_enabled=False)
    result = await hass.config_entries.options.async_init(entry.entry_id)
    assert "webhook_url" not in _defaults(result["data_schema"])["reporting"]


async def test_options_fill_missing_keys(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    entry = await _create_entry(hass, options={"qos": 0, "min_soc": 30.0})
    result = await hass.config_entries.options.async_init(entry.entry_id)
    assert _defaults(result["data_schema"]) == _options_input(qos=0, min_soc=30.0)
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], _defaults(result["data_schema"])
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert entry.options == default_options() | {"qos": 0, "min_soc": 30.0}


def test_fleet_options_fill_defaults_and_ignore_a_bad_profile() -> None:
    # An entry from an older version: most keys missing, a profile the engine
    # cannot read (the options form would not have stored it).
    fleet = FleetOptions.from_options(
        {"ack_rate_sla": 50, "prediction_profile": "oops", "webhook_id": "abc"}
    )
    defaults = FleetOptions.from_options(default_options())
    assert fleet.ack_rate_sla == 0.5
    assert fleet.prediction_profile is None
    assert fleet.webhook_id == "abc"
    assert fleet.settings == defaults.settings
    assert defaults.settings.safety.min_soc == pytest.approx(0.10)
    assert defaults.settings.strategies[SignalType.FCR] is Strategy.OPTIMAL
    assert defaults.ack_rate_sla == pytest.approx(0.90)
    assert defaults.prediction_profile == (1.0,) * 24
    assert defaults.webhook_id is None


@pytest.mark.parametrize(
    "profile",
    [
        ",".join(["50"] * 23),
        ",".join(["50"] * 25),
        ",".join(["50"] * 23 + ["101"]),
        ",".join(["50"] * 23 + ["-1"]),
        ",".join(["50"] * 23 + ["lots"]),
        ",".join(["50"] * 22 + [""]) + ",",
    ],
)
async def test_options_invalid_profile(
    hass: HomeAssistant,
    mqtt_mock: MqttMockHAClient,
    mock_setup_entry: AsyncMock,
    profile: str,
) -> None:
    entry = await _create_entry(hass)
    result = await hass.config_entries.options.async_init(entry.entry_id)
    result = await hass.config_entries.options.async_configure(
        result["flow_id"],
        _options_input(prediction="static_profile", prediction_profile=profile),
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {"prediction": "invalid_profile"}
    _assert_translated(result, STRINGS["options"])
    assert entry.options == default_options()
    # What the user typed stays in the form.
    assert _defaults(result["data_schema"])["prediction"]["prediction_profile"] == (
        profile
    )

    result = await hass.config_entries.options.async_configure(
        result["flow_id"],
        _options_input(
            prediction="static_profile", prediction_profile=",".join(["50"] * 24)
        ),
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert entry.options["prediction_profile"] == ",".join(["50"] * 24)


async def test_options_stale_timeout_shorter_than_poll(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    entry = await _create_entry(hass)
    result = await hass.config_entries.options.async_init(entry.entry_id)
    result = await hass.config_entries.options.async_configure(
        result["flow_id"],
        _options_input(telemetry_mode="pull", poll_interval=60, stale_timeout=60),
    )
    assert result["errors"] == {"telemetry": "stale_timeout_too_short"}
    _assert_translated(result, STRINGS["options"])

    result = await hass.config_entries.options.async_configure(
        result["flow_id"],
        _options_input(telemetry_mode="pull", poll_interval=60, stale_timeout=61),
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert entry.options["telemetry_mode"] == "pull"

    # In push mode the poll interval is not used, so it is not compared.
    result = await hass.config_entries.options.async_init(entry.entry_id)
    result = await hass.config_entries.options.async_configure(
        result["flow_id"],
        _options_input(telemetry_mode="push", poll_interval=600, stale_timeout=60),
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY


# ----------------------------------------------------------- vehicle subentries


async def _start_vehicle_flow(hass: HomeAssistant, entry: MockConfigEntry) -> Any:
    result = await hass.config_entries.subentries.async_init(
        (entry.entry_id, SUBENTRY_TYPE_VEHICLE), context={"source": SOURCE_USER}
    )
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "user"
    return result


async def test_vehicle_pickers_list_what_fits(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    entry = await _create_entry(hass)
    result = await _start_vehicle_flow(hass, entry)
    fields = {str(key): value for key, value in result["data_schema"].schema.items()}
    assert fields["soc_entity"].config["filter"] == [
        {"domain": ["sensor"], "device_class": ["battery"]},
        {"domain": ["number", "input_number"]},
    ]
    assert fields["plugged_entity"].config["filter"][0] == {
        "domain": ["binary_sensor"],
        "device_class": ["plug"],
    }


async def test_vehicle_add(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    entry = await _create_entry(hass)
    result = await _start_vehicle_flow(hass, entry)
    defaults = result["data_schema"]({"vehicle_id": "x"})
    assert defaults == {
        "vehicle_id": "x",
        "max_power_kw": 7.0,
        "battery_kwh": 40.0,
        "is_v2g": True,
    }

    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"],
        _vehicle_input(
            vehicle_id=" car-1 ",
            soc_entity="sensor.car_1_soc",
            plugged_entity="binary_sensor.car_1_plugged",
        ),
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["title"] == "car-1"
    (subentry,) = entry.subentries.values()
    assert subentry.subentry_type == SUBENTRY_TYPE_VEHICLE
    assert subentry.unique_id == "car-1"
    assert subentry.title == "car-1"
    assert dict(subentry.data) == {
        "vehicle_id": "car-1",
        "max_power_kw": 11.0,
        "battery_kwh": 60.0,
        "is_v2g": True,
        "soc_entity": "sensor.car_1_soc",
        "plugged_entity": "binary_sensor.car_1_plugged",
    }


async def test_vehicle_add_duplicate_then_fixed(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    entry = await _create_entry(
        hass, subentries_data=[_vehicle_subentry("car-1", "sub1")]
    )
    result = await _start_vehicle_flow(hass, entry)
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], _vehicle_input(vehicle_id="car-1")
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {"vehicle_id": "vehicle_exists"}
    _assert_translated(result, STRINGS["config_subentries"]["vehicle"])

    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], _vehicle_input(vehicle_id="car-2", is_v2g=False)
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert {s.unique_id for s in entry.subentries.values()} == {"car-1", "car-2"}
    car_2 = next(s for s in entry.subentries.values() if s.unique_id == "car-2")
    assert car_2.data["is_v2g"] is False
    assert car_2.data["soc_entity"] is None
    assert car_2.data["plugged_entity"] is None


@pytest.mark.parametrize(
    ("values", "errors"),
    [
        ({"vehicle_id": ""}, {"vehicle_id": "invalid_vehicle_id"}),
        ({"vehicle_id": "   "}, {"vehicle_id": "invalid_vehicle_id"}),
        ({"vehicle_id": "a/b"}, {"vehicle_id": "invalid_vehicle_id"}),
        ({"vehicle_id": "car+"}, {"vehicle_id": "invalid_vehicle_id"}),
        ({"vehicle_id": "#1"}, {"vehicle_id": "invalid_vehicle_id"}),
        ({"vehicle_id": "{vehicle_id}"}, {"vehicle_id": "invalid_vehicle_id"}),
        ({"vehicle_id": "x" * 65}, {"vehicle_id": "invalid_vehicle_id"}),
        ({"vehicle_id": "car\x00"}, {"vehicle_id": "invalid_vehicle_id"}),
        ({"vehicle_id": "car\x7f"}, {"vehicle_id": "invalid_vehicle_id"}),
        ({"max_power_kw": 0}, {"max_power_kw": "invalid_max_power"}),
        ({"battery_kwh": 0}, {"battery_kwh": "invalid_battery"}),
        (
            {"vehicle_id": "a/b", "max_power_kw": 0, "battery_kwh": 0},
            {
                "vehicle_id": "invalid_vehicle_id",
                "max_power_kw": "invalid_max_power",
                "battery_kwh": "invalid_battery",
            },
        ),
    ],
)
async def test_vehicle_add_invalid(
    hass: HomeAssistant,
    mqtt_mock: MqttMockHAClient,
    mock_setup_entry: AsyncMock,
    values: dict[str, Any],
    errors: dict[str, str],
) -> None:
    entry = await _create_entry(hass)
    result = await _start_vehicle_flow(hass, entry)
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], _vehicle_input(**values)
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == errors
    _assert_translated(result, STRINGS["config_subentries"]["vehicle"])

    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], _vehicle_input(vehicle_id="x" * 64)
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["title"] == "x" * 64


async def test_vehicle_reconfigure(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    entry = await _create_entry(
        hass,
        subentries_data=[
            _vehicle_subentry("car-1", "sub1"),
            _vehicle_subentry("car-2", "sub2"),
        ],
    )
    result = await entry.start_subentry_reconfigure_flow(hass, "sub1")
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "reconfigure"
    assert result["description_placeholders"] == {"vehicle_id": "car-1"}
    id_selector = next(
        v for k, v in result["data_schema"].schema.items() if k == "vehicle_id"
    )
    assert isinstance(id_selector, TextSelector)
    assert id_selector.config["read_only"] is True
    assert _defaults(result["data_schema"]) == {
        "vehicle_id": "car-1",
        "max_power_kw": 7.0,
        "battery_kwh": 40.0,
        "is_v2g": True,
        "soc_entity": "sensor.soc",
        "plugged_entity": None,
    }

    # Omitting the read-only id keeps it; clearing the SoC entity removes it.
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"],
        {"max_power_kw": 22, "battery_kwh": 77, "is_v2g": False},
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reconfigure_successful"
    _assert_translated(result, STRINGS["config_subentries"]["vehicle"])
    subentry = entry.subentries["sub1"]
    assert subentry.unique_id == "car-1"
    assert dict(subentry.data) == {
        "vehicle_id": "car-1",
        "max_power_kw": 22.0,
        "battery_kwh": 77.0,
        "is_v2g": False,
        "soc_entity": None,
        "plugged_entity": None,
    }
    assert len(entry.subentries) == 2


async def test_vehicle_reconfigure_changed_id(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    entry = await _create_entry(
        hass,
        subentries_data=[
            _vehicle_subentry("car-1", "sub1"),
            _vehicle_subentry("car-2", "sub2"),
        ],
    )
    result = await entry.start_subentry_reconfigure_flow(hass, "sub1")
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], _vehicle_input(vehicle_id="car-2", battery_kwh=0)
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {
        "vehicle_id": "vehicle_exists",
        "battery_kwh": "invalid_battery",
    }
    # The form keeps the user's input.
    assert _defaults(result["data_schema"])["battery_kwh"] == 0

    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], _vehicle_input(vehicle_id="car-9")
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reconfigure_successful"
    subentry = entry.subentries["sub1"]
    assert subentry.unique_id == "car-9"
    assert subentry.title == "car-9"
    assert subentry.data["vehicle_id"] == "car-9"


async def test_vehicle_reconfigure_unchanged(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    entry = await _create_entry(
        hass, subentries_data=[_vehicle_subentry("car-1", "sub1")]
    )
    result = await entry.start_subentry_reconfigure_flow(hass, "sub1")
    shown = {k: v for k, v in _defaults(result["data_schema"]).items() if v is not None}
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], shown
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reconfigure_successful"
    assert (
        dict(entry.subentries["sub1"].data)
        == _vehicle_subentry("car-1", "sub1")["data"]
    )


# --------------------------------------------------------------- translations


def _check_fields(schema: vol.Schema, strings: Mapping[str, Any]) -> None:
    """Each field has a label and a description, each section a name."""
    keys = set()
    for key, validator in schema.schema.items():
        name = str(key)
        if isinstance(validator, section):
            sect = strings["sections"][name]
            assert sect["name"]
            _check_fields(validator.schema, sect)
            continue
        keys.add(name)
        if isinstance(validator, SelectSelector):
            options = STRINGS["selector"][validator.config["translation_key"]][
                "options"
            ]
            assert set(options) == set(validator.config["options"])
    assert set(strings.get("data", {})) == keys
    assert set(strings.get("data_description", {})) == keys


async def test_forms_are_fully_translated(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, mock_setup_entry: AsyncMock
) -> None:
    config = STRINGS["config"]
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_USER}
    )
    _check_fields(result["data_schema"], config["step"]["user"])

    # Webhook on: the options form shows every field, the webhook path too.
    entry = await _create_entry(
        hass,
        options=default_options() | {"webhook_enabled": True, CONF_WEBHOOK_ID: "x"},
        subentries_data=[_vehicle_subentry("car-1", "sub1")],
    )
    result = await entry.start_reconfigure_flow(hass)
    _check_fields(result["data_schema"], config["step"]["reconfigure"])

    result = await hass.config_entries.options.async_init(entry.entry_id)
    _check_fields(result["data_schema"], STRINGS["options"]["step"]["init"])

    vehicle = STRINGS["config_subentries"]["vehicle"]
    result = await _start_vehicle_flow(hass, entry)
    _check_fields(result["data_schema"], vehicle["step"]["user"])
    result = await entry.start_subentry_reconfigure_flow(hass, "sub1")
    _check_fields(result["data_schema"], vehicle["step"]["reconfigure"])
    assert set(vehicle["initiate_flow"]) == {"user", "reconfigure"}
