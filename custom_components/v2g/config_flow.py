"""Config flow for V2G Fleet Dispatch.

- ``user``: checks that Home Assistant's MQTT integration is set up and connected,
  then asks for a fleet name and the MQTT topic templates (docs/protocol.md). The
  unique id is the command topic base (the template with its ``{vehicle_id}`` level
  replaced by ``+``): one entry per command topic base.
- ``reconfigure``: the same form, prefilled from the entry; updates the entry data
  (and unique id) and reloads the entry.
- options (``OptionsFlowWithReload``, no update listener): dispatch, safety,
  prediction, telemetry and reporting settings, shown in sections but stored flat in
  ``entry.options`` (see :func:`.options.default_options`).
- vehicle subentries: vehicles added or edited by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from homeassistant.components import mqtt, webhook
from homeassistant.config_entries import (
    ConfigFlow,
    ConfigFlowResult,
    ConfigSubentry,
    ConfigSubentryFlow,
    OptionsFlowWithReload,
    SubentryFlowResult,
)
from homeassistant.const import CONF_NAME
from homeassistant.core import HomeAssistant, callback
from homeassistant.data_entry_flow import section
from homeassistant.helpers.selector import (
    BooleanSelector,
    EntitySelector,
    EntitySelectorConfig,
    NumberSelector,
    NumberSelectorConfig,
    NumberSelectorMode,
    Selector,
    SelectSelector,
    SelectSelectorConfig,
    SelectSelectorMode,
    TextSelector,
    TextSelectorConfig,
)
import voluptuous as vol

from .const import (
    CONF_ACK_RATE_SLA,
    CONF_ACK_TIMEOUT,
    CONF_ACK_TOPIC,
    CONF_BATTERY_KWH,
    CONF_COMMAND_TOPIC,
    CONF_EMISSION_FACTOR,
    CONF_FALLBACK,
    CONF_GATEWAY_ACK_TOPIC,
    CONF_GATEWAY_COMMAND_TOPIC,
    CONF_IS_V2G,
    CONF_MAX_POWER,
    CONF_MIN_SOC,
    CONF_PLUGGED_ENTITY,
    CONF_POLL_INTERVAL,
    CONF_PREDICTION,
    CONF_PREDICTION_LOOKBACK_DAYS,
    CONF_PREDICTION_PROFILE,
    CONF_QOS,
    CONF_SAFE_DISCHARGE_FLOOR,
    CONF_SOC_CONSTRAINTS,
    CONF_SOC_ENTITY,
    CONF_STALE_TIMEOUT,
    CONF_STRATEGY_PREFIX,
    CONF_TELEMETRY_MODE,
    CONF_VEHICLE_ID,
    CONF_WEBHOOK_ENABLED,
    CONF_WEBHOOK_ID,
    DEFAULT_NAME,
    DEFAULT_STRATEGIES,
    DEFAULT_TOPICS,
    DEFAULT_VEHICLE_BATTERY_KWH,
    DEFAULT_VEHICLE_IS_V2G,
    DEFAULT_VEHICLE_MAX_POWER_KW,
    DOMAIN,
    FALLBACK_MODES,
    GATEWAY_ID_PLACEHOLDER,
    GATEWAY_TOPIC_KEYS,
    MAX_VEHICLE_BATTERY_KWH,
    MAX_VEHICLE_ID_LENGTH,
    MAX_VEHICLE_POWER_KW,
    PREDICTION_MODES,
    PREDICTION_PROFILE_HOURS,
    QOS_LEVELS,
    STRATEGIES,
    SUBENTRY_TYPE_VEHICLE,
    TELEMETRY_MODES,
    TELEMETRY_PUSH,
    VEHICLE_ID_PLACEHOLDER,
    VEHICLE_TOPIC_KEYS,
)
from .options import default_options, effective_options

if TYPE_CHECKING:
    from .coordinator import V2GConfigEntry

MQTT_DOMAIN: Final = "mqtt"
MAX_TOPIC_BYTES: Final = 65535

# Collapsible section of the user/reconfigure form holding every topic but the
# command topic; flattened into entry.data.
SECTION_ADVANCED_TOPICS: Final = "advanced_topics"
# Error codes for topics inside that section get this prefix: the frontend shows
# section errors at the section, and these messages name the offending topic.
_SECTION_ERROR_PREFIX: Final = "advanced_"

# Option keys of the per-signal strategies, in signal order (strategy_FCR, ...).
STRATEGY_KEYS: Final = tuple(
    f"{CONF_STRATEGY_PREFIX}{sig}" for sig in DEFAULT_STRATEGIES
)

# Options form sections (options are stored flat: the section names are UI only).
SECTION_DISPATCH: Final = "dispatch"
SECTION_SAFETY: Final = "safety"
SECTION_PREDICTION: Final = "prediction"
SECTION_TELEMETRY: Final = "telemetry"
SECTION_REPORTING: Final = "reporting"
# Read-only field of the reporting section: the path of the signal webhook.
FIELD_WEBHOOK_URL: Final = "webhook_url"
OPTION_SECTIONS: Final[dict[str, tuple[str, ...]]] = {
    SECTION_DISPATCH: (*STRATEGY_KEYS, CONF_FALLBACK, CONF_ACK_TIMEOUT, CONF_QOS),
    SECTION_SAFETY: (CONF_MIN_SOC, CONF_SAFE_DISCHARGE_FLOOR, CONF_SOC_CONSTRAINTS),
    SECTION_PREDICTION: (
        CONF_PREDICTION,
        CONF_PREDICTION_PROFILE,
        CONF_PREDICTION_LOOKBACK_DAYS,
    ),
    SECTION_TELEMETRY: (CONF_TELEMETRY_MODE, CONF_POLL_INTERVAL, CONF_STALE_TIMEOUT),
    SECTION_REPORTING: (CONF_EMISSION_FACTOR, CONF_ACK_RATE_SLA, CONF_WEBHOOK_ENABLED),
}


def parse_prediction_profile(text: str) -> list[float]:
    """Parse a static availability profile: 24 comma-separated percentages.

    Hour 0 first. A trailing ``%`` on a value is accepted. Raises ``ValueError``
    when the count is not 24 or a value is not a number between 0 and 100.
    """
    parts = [part.strip().removesuffix("%").strip() for part in text.split(",")]
    if len(parts) != PREDICTION_PROFILE_HOURS:
        raise ValueError(
            f"expected {PREDICTION_PROFILE_HOURS} values, got {len(parts)}"
        )
    values = [float(part) for part in parts]
    for value in values:
        if not 0.0 <= value <= 100.0:  # also rejects nan
            raise ValueError(f"{value} is not between 0 and 100")
    return values


def format_prediction_profile(values: list[float]) -> str:
    """Format profile values the way they are stored (``100,87.5,...``)."""
    return ",".join(f"{value:g}" for value in values)


def command_topic_base(command_topic: str) -> str:
    """Return the command topic base: the ``{vehicle_id}`` level replaced by ``+``."""
    return "/".join(
        "+" if level == VEHICLE_ID_PLACEHOLDER else level
        for level in command_topic.split("/")
    )


def topic_template_error(template: str, placeholder: str | None) -> str | None:
    """Return the error code of a topic template, or None when it is valid.

    ``placeholder`` is the one placeholder the template must contain as exactly one
    whole topic level (``{vehicle_id}`` or ``{gateway_id}``), or None for a plain
    topic, which must contain no placeholder at all.
    """
    try:
        template.encode("utf-8")
    except UnicodeEncodeError:
        return "invalid_topic"
    if not template or template.startswith("$"):
        return "invalid_topic"
    if "+" in template or "#" in template:
        return "wildcard_not_allowed"
    levels = template.split("/")
    if "" in levels:
        return "empty_topic_level"
    if (code := _placeholder_error(levels, placeholder)) is not None:
        return code
    # The longest id a vehicle or gateway may have must still fit.
    concrete = (
        template
        if placeholder is None
        else template.replace(placeholder, "x" * MAX_VEHICLE_ID_LENGTH)
    )
    if len(concrete.encode("utf-8")) > MAX_TOPIC_BYTES:
        return "topic_too_long"
    try:
        mqtt.valid_publish_topic(concrete)
    except vol.Invalid:  # control characters, non-characters
        return "invalid_topic"
    return None


def _placeholder_error(levels: list[str], placeholder: str | None) -> str | None:
    """Check the placeholder levels of a topic template (see topic_template_error)."""
    if placeholder is None:
        if any("{" in level or "}" in level for level in levels):
            return "placeholder_not_allowed"
        return None
    if levels.count(placeholder) != 1:
        if placeholder == VEHICLE_ID_PLACEHOLDER:
            return "vehicle_placeholder_required"
        return "gateway_placeholder_required"
    if any("{" in level or "}" in level for level in levels if level != placeholder):
        return "unknown_placeholder"
    return None


def _topic_placeholder(key: str) -> str | None:
    """Return the placeholder the template of ``key`` must contain."""
    if key in VEHICLE_TOPIC_KEYS:
        return VEHICLE_ID_PLACEHOLDER
    if key in GATEWAY_TOPIC_KEYS:
        return GATEWAY_ID_PLACEHOLDER
    return None


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
        if (code := topic_template_error(topic, _topic_placeholder(key))) is None:
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


def _entry_schema(defaults: Mapping[str, Any]) -> vol.Schema:
    """Return the user/reconfigure schema with ``defaults`` (flat entry data)."""
    text = TextSelector(TextSelectorConfig(autocomplete="off"))
    return vol.Schema(
        {
            vol.Required(CONF_NAME, default=defaults[CONF_NAME]): text,
            vol.Required(
                CONF_COMMAND_TOPIC, default=defaults[CONF_COMMAND_TOPIC]
            ): text,
            vol.Required(SECTION_ADVANCED_TOPICS): section(
                vol.Schema(
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
        """Return the subentry types: vehicles added by hand."""
        return {SUBENTRY_TYPE_VEHICLE: VehicleSubentryFlowHandler}

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


def _number(
    minimum: float, maximum: float | None, step: float, unit: str
) -> NumberSelector:
    """Return a box number selector (no maximum when ``maximum`` is None)."""
    config = NumberSelectorConfig(
        min=minimum, step=step, mode=NumberSelectorMode.BOX, unit_of_measurement=unit
    )
    if maximum is not None:
        config["max"] = maximum
    return NumberSelector(config)


def _select(options: tuple[str, ...], translation_key: str) -> SelectSelector:
    """Return a translated dropdown selector."""
    return SelectSelector(
        SelectSelectorConfig(
            options=list(options),
            translation_key=translation_key,
            mode=SelectSelectorMode.DROPDOWN,
        )
    )


def _option_selectors() -> dict[str, Selector[Any]]:
    """Return the selector of every option key."""
    selectors: dict[str, Selector[Any]] = {
        key: _select(STRATEGIES, "strategy") for key in STRATEGY_KEYS
    }
    selectors.update(
        {
            CONF_FALLBACK: _select(FALLBACK_MODES, "fallback"),
            CONF_ACK_TIMEOUT: _number(0.5, 120, 0.1, "s"),
            CONF_QOS: _select(tuple(str(qos) for qos in QOS_LEVELS), "qos"),
            CONF_MIN_SOC: _number(0, 100, 1, "%"),
            CONF_SAFE_DISCHARGE_FLOOR: _number(0, 100, 1, "%"),
            CONF_SOC_CONSTRAINTS: BooleanSelector(),
            CONF_PREDICTION: _select(PREDICTION_MODES, "prediction"),
            CONF_PREDICTION_PROFILE: TextSelector(
                TextSelectorConfig(autocomplete="off")
            ),
            CONF_PREDICTION_LOOKBACK_DAYS: _number(1, 365, 1, "d"),
            CONF_TELEMETRY_MODE: _select(TELEMETRY_MODES, "telemetry_mode"),
            CONF_POLL_INTERVAL: _number(1, 3600, 1, "s"),
            CONF_STALE_TIMEOUT: _number(10, 86400, 1, "s"),
            CONF_EMISSION_FACTOR: _number(0, None, 1, "g/kWh"),
            CONF_ACK_RATE_SLA: _number(0, 100, 1, "%"),
            CONF_WEBHOOK_ENABLED: BooleanSelector(),
        }
    )
    return selectors


def _options_schema(current: Mapping[str, Any], webhook_path: str | None) -> vol.Schema:
    """Return the options schema; defaults are the current (flat) options.

    ``webhook_path`` (where external systems POST signals) is shown read only in
    the reporting section when there is one.
    """
    selectors = _option_selectors()
    sections: dict[str, dict[vol.Marker, Any]] = {
        name: {
            vol.Required(
                key,
                # Select selectors take strings (the QoS level).
                default=str(current[key]) if key == CONF_QOS else current[key],
            ): selectors[key]
            for key in keys
        }
        for name, keys in OPTION_SECTIONS.items()
    }
    if webhook_path is not None:
        # Shown, never stored: _validate_options keeps the option keys only.
        sections[SECTION_REPORTING][
            vol.Optional(
                FIELD_WEBHOOK_URL, description={"suggested_value": webhook_path}
            )
        ] = TextSelector(TextSelectorConfig(read_only=True))
    return vol.Schema(
        {
            vol.Required(name): section(
                vol.Schema(fields), {"collapsed": name != SECTION_DISPATCH}
            )
            for name, fields in sections.items()
        }
    )


def _validate_options(
    user_input: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, str]]:
    """Flatten and type the options form input; return (options, errors)."""
    flat: dict[str, Any] = {}
    for name in OPTION_SECTIONS:
        flat.update(user_input[name])
    options = {key: flat[key] for key in default_options()}
    errors: dict[str, str] = {}
    for key in (
        CONF_ACK_TIMEOUT,
        CONF_MIN_SOC,
        CONF_SAFE_DISCHARGE_FLOOR,
        CONF_POLL_INTERVAL,
        CONF_STALE_TIMEOUT,
        CONF_EMISSION_FACTOR,
        CONF_ACK_RATE_SLA,
    ):
        options[key] = float(options[key])
    options[CONF_QOS] = int(options[CONF_QOS])
    options[CONF_PREDICTION_LOOKBACK_DAYS] = round(
        float(options[CONF_PREDICTION_LOOKBACK_DAYS])
    )
    options[CONF_SOC_CONSTRAINTS] = bool(options[CONF_SOC_CONSTRAINTS])
    options[CONF_WEBHOOK_ENABLED] = bool(options[CONF_WEBHOOK_ENABLED])
    try:
        profile = parse_prediction_profile(str(options[CONF_PREDICTION_PROFILE]))
    except ValueError:
        errors[SECTION_PREDICTION] = "invalid_profile"
    else:
        options[CONF_PREDICTION_PROFILE] = format_prediction_profile(profile)
    if (
        options[CONF_TELEMETRY_MODE] != TELEMETRY_PUSH
        and options[CONF_STALE_TIMEOUT] <= options[CONF_POLL_INTERVAL]
    ):
        errors[SECTION_TELEMETRY] = "stale_timeout_too_short"
    return options, errors


class V2GOptionsFlow(OptionsFlowWithReload):
    """Fleet options; saving them reloads the entry (no update listener)."""

    async def async_step_init(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Show and store the options."""
        errors: dict[str, str] = {}
        if user_input is not None:
            options, errors = _validate_options(user_input)
            if not errors:
                webhook_id = self.config_entry.options.get(CONF_WEBHOOK_ID)
                if webhook_id is None and options[CONF_WEBHOOK_ENABLED]:
                    webhook_id = webhook.async_generate_id()
                if webhook_id is not None:
                    # Kept when the webhook is disabled: re-enabling it keeps the URL.
                    options[CONF_WEBHOOK_ID] = webhook_id
                return self.async_create_entry(data=options)
        current = effective_options(self.config_entry.options)
        webhook_id = current.get(CONF_WEBHOOK_ID)
        # The id exists once the webhook was saved enabled; its path is shown while
        # the saved options keep it enabled.
        webhook_path = (
            webhook.async_generate_path(webhook_id)
            if current[CONF_WEBHOOK_ENABLED] and webhook_id
            else None
        )
        return self.async_show_form(
            step_id="init",
            data_schema=self.add_suggested_values_to_schema(
                _options_schema(current, webhook_path), user_input
            ),
            errors=errors,
        )


def _vehicle_id_error(vehicle_id: str) -> str | None:
    """Return the error code of a vehicle id (one MQTT topic level), or None."""
    if (
        not vehicle_id
        or len(vehicle_id) > MAX_VEHICLE_ID_LENGTH
        or any(char in vehicle_id for char in "/+#{}")
    ):
        return "invalid_vehicle_id"
    try:
        mqtt.valid_publish_topic(vehicle_id)
    except vol.Invalid:  # control characters, non-characters, invalid UTF-8
        return "invalid_vehicle_id"
    return None


def _vehicle_schema(*, vehicle_id: str | None) -> vol.Schema:
    """Return the vehicle form; ``vehicle_id`` set = editing (id read only)."""
    id_key = (
        vol.Required(CONF_VEHICLE_ID)
        if vehicle_id is None
        else vol.Required(CONF_VEHICLE_ID, default=vehicle_id)
    )
    return vol.Schema(
        {
            id_key: TextSelector(
                TextSelectorConfig(autocomplete="off", read_only=vehicle_id is not None)
            ),
            vol.Required(CONF_MAX_POWER, default=DEFAULT_VEHICLE_MAX_POWER_KW): _number(
                0, MAX_VEHICLE_POWER_KW, 0.1, "kW"
            ),
            vol.Required(
                CONF_BATTERY_KWH, default=DEFAULT_VEHICLE_BATTERY_KWH
            ): _number(0, MAX_VEHICLE_BATTERY_KWH, 0.1, "kWh"),
            vol.Required(
                CONF_IS_V2G, default=DEFAULT_VEHICLE_IS_V2G
            ): BooleanSelector(),
            vol.Optional(CONF_SOC_ENTITY): EntitySelector(
                EntitySelectorConfig(domain=["sensor", "number", "input_number"])
            ),
            vol.Optional(CONF_PLUGGED_ENTITY): EntitySelector(
                EntitySelectorConfig(
                    domain=["binary_sensor", "input_boolean", "switch"]
                )
            ),
        }
    )


class VehicleSubentryFlowHandler(ConfigSubentryFlow):
    """Add or edit a vehicle by hand (a config subentry of the fleet)."""

    def _validate(
        self, user_input: Mapping[str, Any], editing: ConfigSubentry | None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Return the subentry data and the errors.

        ``editing`` is the subentry being reconfigured (None when adding one).
        """
        vehicle_id = str(user_input[CONF_VEHICLE_ID]).strip()
        data: dict[str, Any] = {
            CONF_VEHICLE_ID: vehicle_id,
            CONF_MAX_POWER: float(user_input[CONF_MAX_POWER]),
            CONF_BATTERY_KWH: float(user_input[CONF_BATTERY_KWH]),
            CONF_IS_V2G: bool(user_input[CONF_IS_V2G]),
            CONF_SOC_ENTITY: user_input.get(CONF_SOC_ENTITY) or None,
            CONF_PLUGGED_ENTITY: user_input.get(CONF_PLUGGED_ENTITY) or None,
        }
        errors: dict[str, str] = {}
        if (code := _vehicle_id_error(vehicle_id)) is not None:
            errors[CONF_VEHICLE_ID] = code
        elif any(
            subentry.data.get(CONF_VEHICLE_ID) == vehicle_id
            for subentry_id, subentry in self._get_entry().subentries.items()
            if editing is None or subentry_id != editing.subentry_id
        ):
            errors[CONF_VEHICLE_ID] = "vehicle_exists"
        if not 0 < data[CONF_MAX_POWER] <= MAX_VEHICLE_POWER_KW:
            errors[CONF_MAX_POWER] = "invalid_max_power"
        if not 0 < data[CONF_BATTERY_KWH] <= MAX_VEHICLE_BATTERY_KWH:
            errors[CONF_BATTERY_KWH] = "invalid_battery"
        return data, errors

    async def async_step_user(
        self, user_input: dict[str, Any] | None = None
    ) -> SubentryFlowResult:
        """Add a vehicle."""
        errors: dict[str, str] = {}
        if user_input is not None:
            data, errors = self._validate(user_input, None)
            if not errors:
                return self.async_create_entry(
                    title=data[CONF_VEHICLE_ID],
                    data=data,
                    unique_id=data[CONF_VEHICLE_ID],
                )
        return self.async_show_form(
            step_id="user",
            data_schema=self.add_suggested_values_to_schema(
                _vehicle_schema(vehicle_id=None), user_input
            ),
            errors=errors,
        )

    async def async_step_reconfigure(
        self, user_input: dict[str, Any] | None = None
    ) -> SubentryFlowResult:
        """Edit a vehicle; its id is shown read only (a changed id is validated)."""
        subentry = self._get_reconfigure_subentry()
        errors: dict[str, str] = {}
        if user_input is not None:
            data, errors = self._validate(user_input, subentry)
            if not errors:
                return self.async_update_and_abort(
                    self._get_entry(),
                    subentry,
                    unique_id=data[CONF_VEHICLE_ID],
                    title=data[CONF_VEHICLE_ID],
                    data=data,
                )
        current_id = str(subentry.data[CONF_VEHICLE_ID])
        suggested = user_input or {
            key: value for key, value in subentry.data.items() if value is not None
        }
        return self.async_show_form(
            step_id="reconfigure",
            data_schema=self.add_suggested_values_to_schema(
                _vehicle_schema(vehicle_id=current_id), suggested
            ),
            errors=errors,
            description_placeholders={"vehicle_id": current_id},
        )
