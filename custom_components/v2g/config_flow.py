"""Config flow for V2G Fleet Dispatch.

- ``user``: checks that Home Assistant's MQTT integration is set up and connected,
  then asks for a fleet name and the MQTT topic templates (docs/protocol.md). The
  unique id is the command topic base (the template with its ``{vehicle_id}`` level
  replaced by ``+``): one entry per command topic base.
- ``reconfigure``: the same form, prefilled from the entry; updates the entry data
  (and unique id) and reloads the entry.
- options: :class:`.options_flow.V2GOptionsFlow`.
- vehicle subentries: :class:`.vehicle_flow.VehicleSubentryFlowHandler`; vehicles
  controlled through Home Assistant: :class:`.controlled_flow.ControlledVehicleFlowHandler`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from homeassistant.components import mqtt
from homeassistant.config_entries import (
    ConfigFlow,
    ConfigFlowResult,
    ConfigSubentryFlow,
)
from homeassistant.const import CONF_NAME
from homeassistant.core import HomeAssistant, callback
from homeassistant.data_entry_flow import section
from homeassistant.helpers.selector import TextSelector, TextSelectorConfig
import voluptuous as vol

from .const import (
    CONF_ACK_TOPIC,
    CONF_COMMAND_TOPIC,
    CONF_GATEWAY_ACK_TOPIC,
    CONF_GATEWAY_COMMAND_TOPIC,
    DEFAULT_NAME,
    DEFAULT_TOPICS,
    DOMAIN,
    GATEWAY_ID_PLACEHOLDER,
    SUBENTRY_TYPE_CONTROLLED,
    SUBENTRY_TYPE_VEHICLE,
    VEHICLE_ID_PLACEHOLDER,
)
from .controlled_flow import ControlledVehicleFlowHandler
from .options import default_options
from .options_flow import FormSchema, V2GOptionsFlow, form_schema
from .topics import command_topic_base, topic_placeholder, topic_template_error
from .vehicle_flow import VehicleSubentryFlowHandler

if TYPE_CHECKING:
    from .coordinator import V2GConfigEntry

MQTT_DOMAIN: Final = "mqtt"

# Collapsible section of the user/reconfigure form holding every topic but the
# command topic; flattened into entry.data.
SECTION_ADVANCED_TOPICS: Final = "advanced_topics"
# Error codes for topics inside that section get this prefix: the frontend shows
# section errors at the section, and these messages name the offending topic.
_SECTION_ERROR_PREFIX: Final = "advanced_"


def _flatten(user_input: Mapping[str, Any]) -> dict[str, Any]:
    """Merge the advanced topics section into the top level."""
    flat = {k: v for k, v in user_input.items() if k != SECTION_ADVANCED_TOPICS}
    flat.update(user_input.get(SECTION_ADVANCED_TOPICS, {}))
    return flat


def _validate_entry_input(
    user_input: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, str], str]:
    """Validate the user/reconfigure form.

    Returns the entry data (name + every topic, flat), the errors and the offending
    topic of the advanced section (for the error message placeholder).
    """
    flat = _flatten(user_input)
    data: dict[str, Any] = {CONF_NAME: str(flat[CONF_NAME]).strip() or DEFAULT_NAME}
    errors: dict[str, str] = {}
    bad_topic = ""
    for key in DEFAULT_TOPICS:
        topic = str(flat[key]).strip()
        data[key] = topic
        if (code := topic_template_error(topic, topic_placeholder(key))) is None:
            continue
        if key == CONF_COMMAND_TOPIC:
            errors[CONF_COMMAND_TOPIC] = code
        elif SECTION_ADVANCED_TOPICS not in errors:
            errors[SECTION_ADVANCED_TOPICS] = f"{_SECTION_ERROR_PREFIX}{code}"
            bad_topic = topic
    if not errors:
        if data[CONF_ACK_TOPIC] == data[CONF_COMMAND_TOPIC]:
            errors[CONF_COMMAND_TOPIC] = "ack_topic_same_as_command"
        if data[CONF_GATEWAY_ACK_TOPIC] == data[CONF_GATEWAY_COMMAND_TOPIC]:
            errors[SECTION_ADVANCED_TOPICS] = "gateway_ack_topic_same_as_command"
    return data, errors, bad_topic


def _topic_placeholders(bad_topic: str = "") -> dict[str, str]:
    """Description placeholders of the topic forms.

    ``{vehicle_id}`` and ``{gateway_id}`` render literally in the texts.
    """
    return {
        "vehicle_id": VEHICLE_ID_PLACEHOLDER,
        "gateway_id": GATEWAY_ID_PLACEHOLDER,
        "topic": bad_topic,
    }


def _entry_schema(defaults: Mapping[str, Any]) -> FormSchema:
    """Return the user/reconfigure schema with ``defaults`` (flat entry data)."""
    text = TextSelector(TextSelectorConfig(autocomplete="off"))
    return form_schema(
        {
            vol.Required(CONF_NAME, default=defaults[CONF_NAME]): text,
            vol.Required(
                CONF_COMMAND_TOPIC, default=defaults[CONF_COMMAND_TOPIC]
            ): text,
            vol.Required(SECTION_ADVANCED_TOPICS): section(
                form_schema(
                    {
                        vol.Required(key, default=defaults[key]): text
                        for key in DEFAULT_TOPICS
                        if key != CONF_COMMAND_TOPIC
                    }
                ),
                {"collapsed": True},
            ),
        }
    )


def _mqtt_problem(hass: HomeAssistant) -> str | None:
    """Return why Home Assistant's MQTT integration cannot be used, if it cannot.

    Reads the MQTT entry state rather than awaiting
    ``mqtt.async_wait_for_mqtt_client``, which can block the form for up to 50 s
    while MQTT retries its setup. A loaded MQTT entry has its client, so
    ``mqtt.is_connected`` can then be asked.
    """
    if not hass.config_entries.async_loaded_entries(MQTT_DOMAIN):
        return "mqtt_not_configured"
    return None if mqtt.is_connected(hass) else "mqtt_not_connected"


class V2GConfigFlow(ConfigFlow, domain=DOMAIN):
    """Create a fleet entry on top of Home Assistant's MQTT integration."""

    VERSION = 1

    @staticmethod
    @callback
    def async_get_options_flow(config_entry: V2GConfigEntry) -> V2GOptionsFlow:
        """Return the options flow."""
        return V2GOptionsFlow()

    @classmethod
    @callback
    def async_get_supported_subentry_types(
        cls, config_entry: V2GConfigEntry
    ) -> dict[str, type[ConfigSubentryFlow]]:
        """Return the subentry types: vehicles added by hand, or controlled by HA."""
        return {
            SUBENTRY_TYPE_VEHICLE: VehicleSubentryFlowHandler,
            SUBENTRY_TYPE_CONTROLLED: ControlledVehicleFlowHandler,
        }

    async def async_step_user(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Check MQTT, then ask for the fleet name and topics."""
        if (problem := _mqtt_problem(self.hass)) is not None:
            return self.async_abort(reason=problem)
        errors: dict[str, str] = {}
        bad_topic = ""
        if user_input is not None:
            data, errors, bad_topic = _validate_entry_input(user_input)
            if not errors:
                await self.async_set_unique_id(
                    command_topic_base(data[CONF_COMMAND_TOPIC])
                )
                self._abort_if_unique_id_configured()
                return self.async_create_entry(
                    title=data[CONF_NAME], data=data, options=default_options()
                )
        return self.async_show_form(
            step_id="user",
            data_schema=self.add_suggested_values_to_schema(
                _entry_schema({CONF_NAME: DEFAULT_NAME, **DEFAULT_TOPICS}), user_input
            ),
            errors=errors,
            description_placeholders=_topic_placeholders(bad_topic),
        )

    async def async_step_reconfigure(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Change the fleet name and topics of an existing entry."""
        entry = self._get_reconfigure_entry()
        errors: dict[str, str] = {}
        bad_topic = ""
        if user_input is not None:
            data, errors, bad_topic = _validate_entry_input(user_input)
            if not errors:
                unique_id = command_topic_base(data[CONF_COMMAND_TOPIC])
                other = self.hass.config_entries.async_entry_for_domain_unique_id(
                    DOMAIN, unique_id
                )
                if other is not None and other.entry_id != entry.entry_id:
                    errors[CONF_COMMAND_TOPIC] = "command_topic_in_use"
                else:
                    return self.async_update_reload_and_abort(
                        entry, unique_id=unique_id, title=data[CONF_NAME], data=data
                    )
        current = {**DEFAULT_TOPICS, **entry.data, CONF_NAME: entry.title}
        return self.async_show_form(
            step_id="reconfigure",
            data_schema=self.add_suggested_values_to_schema(
                _entry_schema(current), user_input
            ),
            errors=errors,
            description_placeholders=_topic_placeholders(bad_topic),
        )
