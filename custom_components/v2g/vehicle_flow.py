"""Vehicle subentry flow for V2G Fleet Dispatch: vehicles added or edited by hand.

An id the fleet already has (another subentry, or a vehicle it discovered over
MQTT) is refused (collisions.py); ranges are checked by the step, every field's
error at once (form_fields.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeassistant.config_entries import (
    ConfigSubentry,
    ConfigSubentryFlow,
    SubentryFlowResult,
)
from homeassistant.helpers.selector import (
    BooleanSelector,
    EntitySelector,
    EntitySelectorConfig,
    TextSelector,
    TextSelectorConfig,
)
import voluptuous as vol

from .collisions import vehicle_id_conflict
from .const import (
    CONF_BATTERY_KWH,
    CONF_IS_V2G,
    CONF_MAX_POWER,
    CONF_PLUGGED_ENTITY,
    CONF_SOC_ENTITY,
    CONF_VEHICLE_ID,
    DEFAULT_VEHICLE_BATTERY_KWH,
    DEFAULT_VEHICLE_IS_V2G,
    DEFAULT_VEHICLE_MAX_POWER_KW,
    MAX_VEHICLE_BATTERY_KWH,
    MAX_VEHICLE_POWER_KW,
)
from .form_fields import FormSchema, NumberRange, form_schema
from .topics import vehicle_id_error

MAX_POWER_RANGE = NumberRange(0, MAX_VEHICLE_POWER_KW, 0.1, "kW", above_minimum=True)
BATTERY_RANGE = NumberRange(0, MAX_VEHICLE_BATTERY_KWH, 0.1, "kWh", above_minimum=True)


def _vehicle_schema(*, vehicle_id: str | None) -> FormSchema:
    """Return the vehicle form; ``vehicle_id`` set = editing (id read only)."""
    id_key = (
        vol.Required(CONF_VEHICLE_ID)
        if vehicle_id is None
        else vol.Required(CONF_VEHICLE_ID, default=vehicle_id)
    )
    return form_schema(
        {
            id_key: TextSelector(
                TextSelectorConfig(autocomplete="off", read_only=vehicle_id is not None)
            ),
            vol.Required(
                CONF_MAX_POWER, default=DEFAULT_VEHICLE_MAX_POWER_KW
            ): MAX_POWER_RANGE.selector(),
            vol.Required(
                CONF_BATTERY_KWH, default=DEFAULT_VEHICLE_BATTERY_KWH
            ): BATTERY_RANGE.selector(),
            vol.Required(
                CONF_IS_V2G, default=DEFAULT_VEHICLE_IS_V2G
            ): BooleanSelector(),
            # Pickers list what fits: battery sensors (or a number holding the
            # SoC), plug binary sensors (or a boolean / switch).
            vol.Optional(CONF_SOC_ENTITY): EntitySelector(
                EntitySelectorConfig(
                    filter=[
                        {"domain": "sensor", "device_class": "battery"},
                        {"domain": ["number", "input_number"]},
                    ]
                )
            ),
            vol.Optional(CONF_PLUGGED_ENTITY): EntitySelector(
                EntitySelectorConfig(
                    filter=[
                        {"domain": "binary_sensor", "device_class": "plug"},
                        {"domain": ["input_boolean", "switch"]},
                    ]
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
        max_power = MAX_POWER_RANGE.check(user_input[CONF_MAX_POWER])
        battery = BATTERY_RANGE.check(user_input[CONF_BATTERY_KWH])
        data: dict[str, Any] = {
            CONF_VEHICLE_ID: vehicle_id,
            CONF_MAX_POWER: max_power,
            CONF_BATTERY_KWH: battery,
            CONF_IS_V2G: bool(user_input[CONF_IS_V2G]),
            CONF_SOC_ENTITY: user_input.get(CONF_SOC_ENTITY) or None,
            CONF_PLUGGED_ENTITY: user_input.get(CONF_PLUGGED_ENTITY) or None,
        }
        errors: dict[str, str] = {}
        if (
            code := vehicle_id_error(vehicle_id)
            or vehicle_id_conflict(
                self._get_entry(),
                vehicle_id,
                editing_subentry_id=None if editing is None else editing.subentry_id,
            )
        ) is not None:
            errors[CONF_VEHICLE_ID] = code
        if max_power is None:
            errors[CONF_MAX_POWER] = "invalid_max_power"
        if battery is None:
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
