"""Subentry flow of a vehicle controlled through Home Assistant (add and edit).

Two steps: the control (a `number` / `input_number` entity with its unit and
sign convention, or a script), then the vehicle's settings, whose limits default
to what the control's min / max allow. The subentry (type `controlled_vehicle`)
keeps: `vehicle_id`; `control_entity` or `control_action`, `control_unit` (W, kW,
A), `voltage`, `phases`, `sign_convention`; `max_discharge_kw`, `max_charge_kw`,
`battery_kwh`; `soc_entity`, `plugged_entity`, `power_entity` and `power_sign`,
`departure_entity`, `target_soc`; `confirmation` (control | power),
`tolerance_kw`; `idle_mode` (fixed | previous) and `idle_value`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeassistant.config_entries import (
    SOURCE_RECONFIGURE,
    ConfigSubentry,
    ConfigSubentryFlow,
    SubentryFlowResult,
)
from homeassistant.const import ATTR_UNIT_OF_MEASUREMENT, PERCENTAGE

from .collisions import vehicle_id_conflict
from .const import (
    CONF_BATTERY_KWH,
    CONF_CONFIRMATION,
    CONF_CONTROL_ACTION,
    CONF_CONTROL_ENTITY,
    CONF_CONTROL_UNIT,
    CONF_IDLE_MODE,
    CONF_IDLE_VALUE,
    CONF_MAX_CHARGE,
    CONF_MAX_DISCHARGE,
    CONF_PHASES,
    CONF_POWER_ENTITY,
    CONF_POWER_SIGN,
    CONF_SIGN,
    CONF_SOC_ENTITY,
    CONF_TARGET_SOC,
    CONF_TOLERANCE,
    CONF_VEHICLE_ID,
    CONF_VOLTAGE,
    CONFIRM_POWER,
    CONTROL_UNITS,
    DEFAULT_VEHICLE_MAX_POWER_KW,
    MAX_VEHICLE_POWER_KW,
)
from .controlled_forms import (
    BATTERY_RANGE,
    CHARGE_RANGE,
    DISCHARGE_RANGE,
    IDLE_VALUE_RANGE,
    OPTIONAL_ENTITIES,
    PHASES_RANGE,
    POWER_UNITS,
    TARGET_SOC_RANGE,
    TOLERANCE_RANGE,
    VOLTAGE_RANGE,
    control_schema,
    settings_schema,
)
from .home_control import Bounds, ControlSpec
from .topics import vehicle_id_error


class ControlledVehicleFlowHandler(ConfigSubentryFlow):
    """Add or edit a vehicle whose orders go through Home Assistant."""

    def __init__(self) -> None:
        """Start with no control chosen."""
        self._control: dict[str, Any] = {}

    async def async_step_user(
        self, user_input: dict[str, Any] | None = None
    ) -> SubentryFlowResult:
        """Choose the control of a new vehicle."""
        return self._control_step("user", user_input, None)

    async def async_step_reconfigure(
        self, user_input: dict[str, Any] | None = None
    ) -> SubentryFlowResult:
        """Change the control of a vehicle (its id is shown read only)."""
        return self._control_step(
            "reconfigure", user_input, self._get_reconfigure_subentry()
        )

    def _control_step(
        self,
        step_id: str,
        user_input: dict[str, Any] | None,
        editing: ConfigSubentry | None,
    ) -> SubentryFlowResult:
        errors: dict[str, str] = {}
        if user_input is not None:
            self._control, errors = self._validate_control(user_input, editing)
            if not errors:
                return self._settings_form(None, {})
        current_id = None if editing is None else str(editing.data[CONF_VEHICLE_ID])
        suggested = user_input or _present(editing.data if editing else {})
        return self.async_show_form(
            step_id=step_id,
            data_schema=self.add_suggested_values_to_schema(
                control_schema(vehicle_id=current_id), suggested
            ),
            errors=errors,
            description_placeholders={"vehicle_id": current_id or ""},
        )

    async def async_step_settings(
        self, user_input: dict[str, Any] | None = None
    ) -> SubentryFlowResult:
        """The vehicle's limits, measurement entities, confirmation and idle value."""
        if user_input is None:
            return self._settings_form(None, {})
        settings, errors = self._validate_settings(user_input)
        if errors:
            return self._settings_form(user_input, errors)
        data = {**self._control, **settings}
        vehicle_id = data[CONF_VEHICLE_ID]
        if self.source == SOURCE_RECONFIGURE:
            return self.async_update_and_abort(
                self._get_entry(),
                self._get_reconfigure_subentry(),
                unique_id=vehicle_id,
                title=vehicle_id,
                data=data,
            )
        return self.async_create_entry(
            title=vehicle_id, data=data, unique_id=vehicle_id
        )

    def _settings_form(
        self, user_input: Mapping[str, Any] | None, errors: dict[str, str]
    ) -> SubentryFlowResult:
        discharge_kw, charge_kw = self._control_limits()
        suggested: Mapping[str, Any] = user_input or {}
        if user_input is None and self.source == SOURCE_RECONFIGURE:
            suggested = _present(self._get_reconfigure_subentry().data)
        return self.async_show_form(
            step_id="settings",
            data_schema=self.add_suggested_values_to_schema(
                settings_schema(discharge_kw, charge_kw), suggested
            ),
            errors=errors,
            description_placeholders={
                "vehicle_id": str(self._control.get(CONF_VEHICLE_ID, "")),
                "control": str(
                    self._control.get(CONF_CONTROL_ENTITY)
                    or self._control.get(CONF_CONTROL_ACTION)
                    or ""
                ),
            },
        )

    def _control_limits(self) -> tuple[float, float]:
        """(discharge, charge) kW the chosen control allows (defaults when unknown)."""
        entity_id = self._control.get(CONF_CONTROL_ENTITY)
        state = self.hass.states.get(entity_id) if entity_id else None
        spec = ControlSpec.from_subentry(
            "",
            {
                **self._control,
                CONF_MAX_DISCHARGE: MAX_VEHICLE_POWER_KW,
                CONF_MAX_CHARGE: MAX_VEHICLE_POWER_KW,
            },
        )
        discharge, charge = spec.limits_kw(Bounds.of(state))
        return (
            DEFAULT_VEHICLE_MAX_POWER_KW
            if discharge >= MAX_VEHICLE_POWER_KW
            else round(discharge, 3),
            DEFAULT_VEHICLE_MAX_POWER_KW
            if charge >= MAX_VEHICLE_POWER_KW
            else round(charge, 3),
        )

    def _validate_control(
        self, user_input: Mapping[str, Any], editing: ConfigSubentry | None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        vehicle_id = (
            str(editing.data[CONF_VEHICLE_ID])
            if editing is not None
            else str(user_input[CONF_VEHICLE_ID]).strip()
        )
        data: dict[str, Any] = {
            CONF_VEHICLE_ID: vehicle_id,
            CONF_CONTROL_ENTITY: user_input.get(CONF_CONTROL_ENTITY) or None,
            CONF_CONTROL_ACTION: user_input.get(CONF_CONTROL_ACTION) or None,
            CONF_CONTROL_UNIT: str(user_input[CONF_CONTROL_UNIT]),
            CONF_VOLTAGE: VOLTAGE_RANGE.check(user_input[CONF_VOLTAGE]),
            CONF_PHASES: _whole(PHASES_RANGE.check(user_input[CONF_PHASES])),
            CONF_SIGN: str(user_input[CONF_SIGN]),
        }
        errors: dict[str, str] = {}
        if (code := self._id_error(vehicle_id, editing)) is not None:
            errors[CONF_VEHICLE_ID] = code
        if data[CONF_VOLTAGE] is None:
            errors[CONF_VOLTAGE] = "invalid_voltage"
        if data[CONF_PHASES] is None:
            errors[CONF_PHASES] = "invalid_phases"
        entity_id, action = data[CONF_CONTROL_ENTITY], data[CONF_CONTROL_ACTION]
        if entity_id and action:
            errors["base"] = "control_conflict"
        elif not entity_id and not action:
            errors["base"] = "control_missing"
        for key in (CONF_CONTROL_ENTITY, CONF_CONTROL_ACTION):
            if data[key] and self.hass.states.get(data[key]) is None:
                errors[key] = "entity_not_found"
        if entity_id and (state := self.hass.states.get(entity_id)) is not None:
            unit = state.attributes.get(ATTR_UNIT_OF_MEASUREMENT)
            if unit in CONTROL_UNITS and unit != data[CONF_CONTROL_UNIT]:
                errors[CONF_CONTROL_UNIT] = "unit_mismatch"
        return data, errors

    def _id_error(self, vehicle_id: str, editing: ConfigSubentry | None) -> str | None:
        """Why the id cannot be used: another vehicle of any kind, or discovered."""
        return vehicle_id_error(vehicle_id) or vehicle_id_conflict(
            self._get_entry(),
            vehicle_id,
            editing_subentry_id=None if editing is None else editing.subentry_id,
        )

    def _validate_settings(
        self, user_input: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, str]]:
        target_soc = user_input.get(CONF_TARGET_SOC)
        data: dict[str, Any] = {
            CONF_MAX_DISCHARGE: DISCHARGE_RANGE.check(user_input[CONF_MAX_DISCHARGE]),
            CONF_MAX_CHARGE: CHARGE_RANGE.check(user_input[CONF_MAX_CHARGE]),
            CONF_BATTERY_KWH: BATTERY_RANGE.check(user_input[CONF_BATTERY_KWH]),
            **{key: user_input.get(key) or None for key in OPTIONAL_ENTITIES},
            CONF_POWER_SIGN: str(user_input[CONF_POWER_SIGN]),
            CONF_TARGET_SOC: None
            if target_soc is None
            else TARGET_SOC_RANGE.check(target_soc),
            CONF_CONFIRMATION: str(user_input[CONF_CONFIRMATION]),
            CONF_TOLERANCE: TOLERANCE_RANGE.check(user_input[CONF_TOLERANCE]),
            CONF_IDLE_MODE: str(user_input[CONF_IDLE_MODE]),
            CONF_IDLE_VALUE: IDLE_VALUE_RANGE.check(user_input[CONF_IDLE_VALUE]),
        }
        # Every field out of its range, at once.
        errors: dict[str, str] = {
            key: code
            for key, code in (
                (CONF_MAX_DISCHARGE, "invalid_max_discharge"),
                (CONF_MAX_CHARGE, "invalid_max_charge"),
                (CONF_BATTERY_KWH, "invalid_battery"),
                (CONF_TOLERANCE, "invalid_tolerance"),
                (CONF_IDLE_VALUE, "invalid_idle_value"),
            )
            if data[key] is None
        }
        if target_soc is not None and data[CONF_TARGET_SOC] is None:
            errors[CONF_TARGET_SOC] = "invalid_target_soc"
        if data[CONF_MAX_DISCHARGE] == data[CONF_MAX_CHARGE] == 0:
            errors[CONF_MAX_CHARGE] = "invalid_limits"
        power_entity = data[CONF_POWER_ENTITY]
        if data[CONF_CONFIRMATION] == CONFIRM_POWER and not power_entity:
            errors[CONF_POWER_ENTITY] = "power_entity_required"
        elif power_entity and not _has_unit(self, power_entity, POWER_UNITS):
            errors[CONF_POWER_ENTITY] = "not_a_power_sensor"
        soc_entity = data[CONF_SOC_ENTITY]
        if soc_entity and not _has_unit(
            self, soc_entity, {PERCENTAGE}, missing_ok=True
        ):
            errors[CONF_SOC_ENTITY] = "not_a_percentage"
        return data, errors


def _has_unit(
    flow: ConfigSubentryFlow,
    entity_id: str,
    units: set[str] | frozenset[str],
    *,
    missing_ok: bool = False,
) -> bool:
    """True if the entity's unit is one of ``units`` (or it has none, if allowed)."""
    state = flow.hass.states.get(entity_id)
    if state is None:
        return missing_ok
    unit = state.attributes.get(ATTR_UNIT_OF_MEASUREMENT)
    return unit in units or (unit is None and missing_ok)


def _whole(value: float | None) -> int | None:
    """Return a whole number as an int, or None (not a number, or a fraction)."""
    return None if value is None or not value.is_integer() else int(value)


def _present(data: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if value is not None}
