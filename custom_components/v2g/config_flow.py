"""Config flow for V2G Fleet Dispatch.

- ``user``: checks that Home Assistant's MQTT integration is set up and connected,
  then asks for a fleet name and the MQTT topic templates (docs/protocol.md). A
  topic that overlaps a topic of another fleet is refused on its field, naming that
  fleet (collisions.py, docs/options.md#fleets-cannot-collide); a second fleet's
  form proposes topics of its own. The unique id is the command topic base (the
  template with its ``{vehicle_id}`` level replaced by ``+``).
- ``reconfigure``: the same form and checks, prefilled from the entry; updates the
  entry data (and unique id) and reloads the entry.
- options: :class:`.options_flow.V2GOptionsFlow`.
- vehicle subentries: :class:`.vehicle_flow.VehicleSubentryFlowHandler`; vehicles
  controlled through Home Assistant: :class:`.controlled_flow.ControlledVehicleFlowHandler`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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

from .collisions import (
    TopicCollision,
    fleet_topics,
    new_fleet_defaults,
    topic_collisions,
)
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
from .form_fields import FormSchema, form_schema
from .options import default_options
from .options_flow import V2GOptionsFlow
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


@dataclass(slots=True)
class _EntryCheck:
    """The validated entry data, the errors and their message placeholders."""

    data: dict[str, Any]
    errors: dict[str, str] = field(default_factory=dict)
    # The offending topic of the advanced section.
    topic: str = ""
    # The fleet and topic an advanced topic overlaps, and how many of them do.
    other_fleet: str = ""
    other_topic: str = ""
    overlap_count: int = 0
    # The fleet and topic the command topic overlaps.
    command_other_fleet: str = ""
    command_other_topic: str = ""

    def placeholders(self) -> dict[str, str]:
        """Description placeholders of the topic forms; every one, always.

        ``{vehicle_id}`` and ``{gateway_id}`` render literally in the texts. A
        placeholder missing from a text's values breaks its translation.
        """
        return {
            "vehicle_id": VEHICLE_ID_PLACEHOLDER,
            "gateway_id": GATEWAY_ID_PLACEHOLDER,
            "topic": self.topic,
            "other_fleet": self.other_fleet,
            "other_topic": self.other_topic,
            "overlap_count": str(self.overlap_count),
            "command_other_fleet": self.command_other_fleet,
            "command_other_topic": self.command_other_topic,
        }

    def report_collisions(self, collisions: list[TopicCollision]) -> None:
        """Report the overlaps with other fleets on the fields without an error."""
        errors = self.errors
        advanced = [c for c in collisions if c.key != CONF_COMMAND_TOPIC]
        command = [c for c in collisions if c.key == CONF_COMMAND_TOPIC]
        if command and CONF_COMMAND_TOPIC not in errors:
            errors[CONF_COMMAND_TOPIC] = "command_topic_overlaps"
            self.command_other_fleet = command[0].other_fleet
            self.command_other_topic = command[0].other_topic
        if advanced and SECTION_ADVANCED_TOPICS not in errors:
            errors[SECTION_ADVANCED_TOPICS] = (
                "advanced_topic_overlaps"
                if len(advanced) == 1
                else "advanced_topics_overlap"
            )
            self.topic = advanced[0].topic
            self.other_fleet = advanced[0].other_fleet
            self.other_topic = advanced[0].other_topic
            self.overlap_count = len(advanced)


def _check_entry_input(
    hass: HomeAssistant,
    user_input: Mapping[str, Any],
    *,
    exclude_entry_id: str | None,
) -> _EntryCheck:
    """Validate the user/reconfigure form against itself and the other fleets.

    Per field (the advanced section is one), the first problem found: a topic's own
    error, then the topics that must differ, then an overlap with the topics of the
    other fleets (``exclude_entry_id`` is the fleet being reconfigured).
    """
    flat = _flatten(user_input)
    check = _EntryCheck(data={CONF_NAME: str(flat[CONF_NAME]).strip() or DEFAULT_NAME})
    data, errors = check.data, check.errors
    valid: dict[str, str] = {}
    for key in DEFAULT_TOPICS:
        topic = data[key] = str(flat[key]).strip()
        if (code := topic_template_error(topic, topic_placeholder(key))) is None:
            valid[key] = topic
        elif key == CONF_COMMAND_TOPIC:
            errors[CONF_COMMAND_TOPIC] = code
        elif SECTION_ADVANCED_TOPICS not in errors:
            errors[SECTION_ADVANCED_TOPICS] = f"{_SECTION_ERROR_PREFIX}{code}"
            check.topic = topic
    if (
        CONF_ACK_TOPIC in valid
        and valid.get(CONF_COMMAND_TOPIC) == valid[CONF_ACK_TOPIC]
    ):
        errors[CONF_COMMAND_TOPIC] = "ack_topic_same_as_command"
    gateway_ack = valid.get(CONF_GATEWAY_ACK_TOPIC)
    if gateway_ack is not None and gateway_ack == valid.get(CONF_GATEWAY_COMMAND_TOPIC):
        errors.setdefault(SECTION_ADVANCED_TOPICS, "gateway_ack_topic_same_as_command")
    check.report_collisions(
        topic_collisions(hass, valid, exclude_entry_id=exclude_entry_id)
    )
    return check


def _entry_schema(
    defaults: Mapping[str, Any], *, advanced_open: bool = False
) -> FormSchema:
    """Return the user/reconfigure schema with ``defaults`` (flat entry data).

    ``advanced_open``: the advanced topics section is shown open (it has an error).
    """
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
                {"collapsed": not advanced_open},
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
        check = _EntryCheck(data={})
        if user_input is not None:
            check = _check_entry_input(self.hass, user_input, exclude_entry_id=None)
            if not check.errors:
                data = check.data
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
                _entry_schema(
                    new_fleet_defaults(self.hass),
                    advanced_open=SECTION_ADVANCED_TOPICS in check.errors,
                ),
                user_input,
            ),
            errors=check.errors,
            description_placeholders=check.placeholders(),
        )

    async def async_step_reconfigure(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Change the fleet name and topics of an existing entry."""
        entry = self._get_reconfigure_entry()
        check = _EntryCheck(data={})
        if user_input is not None:
            check = _check_entry_input(
                self.hass, user_input, exclude_entry_id=entry.entry_id
            )
            if not check.errors:
                data = check.data
                unique_id = command_topic_base(data[CONF_COMMAND_TOPIC])
                other = self.hass.config_entries.async_entry_for_domain_unique_id(
                    DOMAIN, unique_id
                )
                # An entry without topic data (ignored) may still hold the id.
                if other is not None and other.entry_id != entry.entry_id:
                    check.errors[CONF_COMMAND_TOPIC] = "command_topic_in_use"
                else:
                    return self.async_update_reload_and_abort(
                        entry, unique_id=unique_id, title=data[CONF_NAME], data=data
                    )
        current = {**fleet_topics(entry), CONF_NAME: entry.title}
        return self.async_show_form(
            step_id="reconfigure",
            data_schema=self.add_suggested_values_to_schema(
                _entry_schema(
                    current, advanced_open=SECTION_ADVANCED_TOPICS in check.errors
                ),
                user_input,
            ),
            errors=check.errors,
            description_placeholders=check.placeholders(),
        )
