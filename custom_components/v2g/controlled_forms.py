"""The forms of the controlled vehicle subentry flow (controlled_flow.py).

Entity pickers are filtered to what fits each field: numbers for the control,
scripts for an action, battery / plug / power / timestamp device classes for
the measurements. Number ranges are shown by the selectors and checked by the
flow's steps (form_fields.py), which report every field's error at once.
"""

from __future__ import annotations

from homeassistant.const import PERCENTAGE
from homeassistant.helpers.selector import (
    EntityFilterSelectorConfig,
    EntitySelector,
    EntitySelectorConfig,
    SelectSelector,
    SelectSelectorConfig,
    SelectSelectorMode,
    TextSelector,
    TextSelectorConfig,
)
from homeassistant.util.unit_conversion import PowerConverter
import voluptuous as vol

from .const import (
    CONF_BATTERY_KWH,
    CONF_CONFIRMATION,
    CONF_CONTROL_ACTION,
    CONF_CONTROL_ENTITY,
    CONF_CONTROL_UNIT,
    CONF_DEPARTURE_ENTITY,
    CONF_IDLE_MODE,
    CONF_IDLE_VALUE,
    CONF_MAX_CHARGE,
    CONF_MAX_DISCHARGE,
    CONF_PHASES,
    CONF_PLUGGED_ENTITY,
    CONF_POWER_ENTITY,
    CONF_POWER_SIGN,
    CONF_SIGN,
    CONF_SOC_ENTITY,
    CONF_TARGET_SOC,
    CONF_TOLERANCE,
    CONF_VEHICLE_ID,
    CONF_VOLTAGE,
    CONFIRM_CONTROL,
    CONFIRMATION_SOURCES,
    CONTROL_UNITS,
    DEFAULT_IDLE_VALUE,
    DEFAULT_PHASES,
    DEFAULT_TOLERANCE_KW,
    DEFAULT_VEHICLE_BATTERY_KWH,
    DEFAULT_VOLTAGE,
    IDLE_FIXED,
    IDLE_MODES,
    MAX_VEHICLE_BATTERY_KWH,
    MAX_VEHICLE_POWER_KW,
    SIGN_CONVENTIONS,
    SIGN_POSITIVE_CHARGING,
    UNIT_A,
)
from .form_fields import NumberRange

OPTIONAL_ENTITIES = (
    CONF_SOC_ENTITY,
    CONF_PLUGGED_ENTITY,
    CONF_POWER_ENTITY,
    CONF_DEPARTURE_ENTITY,
)
POWER_UNITS = frozenset(str(unit) for unit in PowerConverter.VALID_UNITS)
MAX_VOLTAGE = 1000.0
MAX_PHASES = 3


# The ranges of the number fields: the forms show them, the flow's steps check them.
VOLTAGE_RANGE = NumberRange(1, MAX_VOLTAGE, 1, "V")
PHASES_RANGE = NumberRange(1, MAX_PHASES, 1)
DISCHARGE_RANGE = NumberRange(0, MAX_VEHICLE_POWER_KW, 0.01, "kW")
CHARGE_RANGE = NumberRange(0, MAX_VEHICLE_POWER_KW, 0.01, "kW")
BATTERY_RANGE = NumberRange(0, MAX_VEHICLE_BATTERY_KWH, 0.1, "kWh", above_minimum=True)
TARGET_SOC_RANGE = NumberRange(0, 100, 1, PERCENTAGE)
TOLERANCE_RANGE = NumberRange(0.001, MAX_VEHICLE_POWER_KW, 0.001, "kW")
# In the control's own unit and sign: any finite number.
IDLE_VALUE_RANGE = NumberRange(None, None)


def _select(options: tuple[str, ...], translation_key: str) -> SelectSelector:
    return SelectSelector(
        SelectSelectorConfig(
            options=list(options),
            mode=SelectSelectorMode.DROPDOWN,
            translation_key=translation_key,
        )
    )


def _entities(*filters: EntityFilterSelectorConfig) -> EntitySelector:
    return EntitySelector(EntitySelectorConfig(filter=list(filters)))


def control_schema(*, vehicle_id: str | None) -> vol.Schema:
    """The control form; ``vehicle_id`` set = editing (id read only)."""
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
            vol.Optional(CONF_CONTROL_ENTITY): _entities(
                {"domain": ["number", "input_number"]}
            ),
            vol.Optional(CONF_CONTROL_ACTION): _entities({"domain": "script"}),
            vol.Required(CONF_CONTROL_UNIT, default=UNIT_A): _select(
                CONTROL_UNITS, CONF_CONTROL_UNIT
            ),
            vol.Required(
                CONF_VOLTAGE, default=DEFAULT_VOLTAGE
            ): VOLTAGE_RANGE.selector(),
            vol.Required(CONF_PHASES, default=DEFAULT_PHASES): PHASES_RANGE.selector(),
            vol.Required(CONF_SIGN, default=SIGN_POSITIVE_CHARGING): _select(
                SIGN_CONVENTIONS, CONF_SIGN
            ),
        }
    )


def settings_schema(discharge_kw: float, charge_kw: float) -> vol.Schema:
    """The settings form, limits defaulting to what the control allows."""
    return vol.Schema(
        {
            vol.Required(
                CONF_MAX_DISCHARGE, default=discharge_kw
            ): DISCHARGE_RANGE.selector(),
            vol.Required(CONF_MAX_CHARGE, default=charge_kw): CHARGE_RANGE.selector(),
            vol.Required(
                CONF_BATTERY_KWH, default=DEFAULT_VEHICLE_BATTERY_KWH
            ): BATTERY_RANGE.selector(),
            vol.Optional(CONF_SOC_ENTITY): _entities(
                {"domain": "sensor", "device_class": "battery"},
                {"domain": ["number", "input_number"]},
            ),
            vol.Optional(CONF_PLUGGED_ENTITY): _entities(
                {"domain": "binary_sensor", "device_class": "plug"},
                {"domain": ["input_boolean", "switch"]},
            ),
            vol.Optional(CONF_POWER_ENTITY): _entities(
                {"domain": "sensor", "device_class": "power"}
            ),
            vol.Required(CONF_POWER_SIGN, default=SIGN_POSITIVE_CHARGING): _select(
                SIGN_CONVENTIONS, CONF_SIGN
            ),
            vol.Optional(CONF_DEPARTURE_ENTITY): _entities(
                {"domain": "input_datetime"},
                {"domain": "sensor", "device_class": "timestamp"},
            ),
            vol.Optional(CONF_TARGET_SOC): TARGET_SOC_RANGE.selector(),
            vol.Required(CONF_CONFIRMATION, default=CONFIRM_CONTROL): _select(
                CONFIRMATION_SOURCES, CONF_CONFIRMATION
            ),
            vol.Required(
                CONF_TOLERANCE, default=DEFAULT_TOLERANCE_KW
            ): TOLERANCE_RANGE.selector(),
            vol.Required(CONF_IDLE_MODE, default=IDLE_FIXED): _select(
                IDLE_MODES, CONF_IDLE_MODE
            ),
            vol.Required(
                CONF_IDLE_VALUE, default=DEFAULT_IDLE_VALUE
            ): IDLE_VALUE_RANGE.selector(),
        }
    )
