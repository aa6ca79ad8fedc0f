"""Constants of the V2G Fleet Dispatch integration: domain, entry keys, defaults."""

from __future__ import annotations

import logging
from typing import Final

# Home Assistant's own keys, re-exported (the "as" form, for mypy) for the modules
# that still import them from here: coordinator.py, logbook.py, tests/e2e.
from homeassistant.const import (
    ATTR_CONFIG_ENTRY_ID as ATTR_CONFIG_ENTRY_ID,  # noqa: PLC0414
    CONF_NAME as CONF_NAME,  # noqa: PLC0414
)

DOMAIN: Final = "v2g"
LOGGER = logging.getLogger(__package__)

# --- Config entry data (set in the config flow, changed by reconfigure) -----------
CONF_COMMAND_TOPIC: Final = "command_topic"
CONF_ACK_TOPIC: Final = "ack_topic"
CONF_DISCOVERY_TOPIC: Final = "discovery_topic"
CONF_DISCOVERY_RESPONSE_TOPIC: Final = "discovery_response_topic"
CONF_STATE_TOPIC: Final = "state_topic"
CONF_TELEMETRY_REQUEST_TOPIC: Final = "telemetry_request_topic"
CONF_TELEMETRY_RESPONSE_TOPIC: Final = "telemetry_response_topic"
CONF_GATEWAY_COMMAND_TOPIC: Final = "gateway_command_topic"
CONF_GATEWAY_ACK_TOPIC: Final = "gateway_ack_topic"

VEHICLE_ID_PLACEHOLDER: Final = "{vehicle_id}"
GATEWAY_ID_PLACEHOLDER: Final = "{gateway_id}"

DEFAULT_NAME: Final = "V2G fleet"
DEFAULT_TOPICS: Final[dict[str, str]] = {
    CONF_COMMAND_TOPIC: "vehicle/{vehicle_id}/command",
    CONF_ACK_TOPIC: "vehicle/{vehicle_id}/ack",
    CONF_DISCOVERY_TOPIC: "v2g/fleet/discovery",
    CONF_DISCOVERY_RESPONSE_TOPIC: "v2g/fleet/response/{vehicle_id}",
    CONF_STATE_TOPIC: "v2g/vehicle/state/{vehicle_id}",
    CONF_TELEMETRY_REQUEST_TOPIC: "v2g/telemetry/request",
    CONF_TELEMETRY_RESPONSE_TOPIC: "v2g/telemetry/response/{vehicle_id}",
    CONF_GATEWAY_COMMAND_TOPIC: "v2g/gateway/{gateway_id}/commands",
    CONF_GATEWAY_ACK_TOPIC: "v2g/gateway/{gateway_id}/acks",
}
# Templates that must contain exactly one {vehicle_id} level.
VEHICLE_TOPIC_KEYS: Final = (
    CONF_COMMAND_TOPIC,
    CONF_ACK_TOPIC,
    CONF_DISCOVERY_RESPONSE_TOPIC,
    CONF_STATE_TOPIC,
    CONF_TELEMETRY_RESPONSE_TOPIC,
)
# Templates that must contain exactly one {gateway_id} level.
GATEWAY_TOPIC_KEYS: Final = (CONF_GATEWAY_COMMAND_TOPIC, CONF_GATEWAY_ACK_TOPIC)
# Plain topics (no placeholder, no wildcard).
PLAIN_TOPIC_KEYS: Final = (CONF_DISCOVERY_TOPIC, CONF_TELEMETRY_REQUEST_TOPIC)

DISCOVERY_PAYLOAD: Final = "hello"
TELEMETRY_POLL_PAYLOAD: Final = "poll"

# --- Options (options flow; changing them reloads the entry) ----------------------
CONF_STRATEGY_PREFIX: Final = "strategy_"  # strategy_FCR, strategy_aFRR, ...
CONF_FALLBACK: Final = "fallback"
CONF_ACK_TIMEOUT: Final = "ack_timeout"  # seconds
CONF_QOS: Final = "qos"
CONF_MIN_SOC: Final = "min_soc"  # percent in the UI, fraction in the engine
CONF_SAFE_DISCHARGE_FLOOR: Final = "safe_discharge_floor"  # percent
CONF_SOC_CONSTRAINTS: Final = "soc_constraints"
CONF_PREDICTION: Final = "prediction"  # off | static_profile | history
CONF_PREDICTION_PROFILE: Final = "prediction_profile"  # 24 comma-separated %
CONF_PREDICTION_LOOKBACK_DAYS: Final = "prediction_lookback_days"
CONF_TELEMETRY_MODE: Final = "telemetry_mode"  # push | pull | hybrid
CONF_POLL_INTERVAL: Final = "poll_interval"  # seconds
CONF_STALE_TIMEOUT: Final = "stale_timeout"  # seconds
CONF_EMISSION_FACTOR: Final = "emission_factor"  # gCO2/kWh, 0 = off
CONF_ACK_RATE_SLA: Final = "ack_rate_sla"  # percent
CONF_WEBHOOK_ENABLED: Final = "webhook_enabled"
CONF_RELEASE_AT_END: Final = "release_at_end"
CONF_WEBHOOK_ID: Final = "webhook_id"  # generated, kept in options
# Delivery verification (docs/dispatch.md#verification)
CONF_VERIFY_WINDOW: Final = "verify_window"  # seconds after the last ack
CONF_DELIVERY_TOLERANCE_PCT: Final = "delivery_tolerance_pct"  # percent of |setpoint|
CONF_DELIVERY_TOLERANCE_KW: Final = "delivery_tolerance_kw"  # kW, the band's floor
CONF_NOT_FOLLOWING_GRACE: Final = "not_following_grace"  # seconds

PREDICTION_OFF: Final = "off"
PREDICTION_STATIC: Final = "static_profile"
PREDICTION_HISTORY: Final = "history"
PREDICTION_MODES: Final = (PREDICTION_OFF, PREDICTION_STATIC, PREDICTION_HISTORY)

TELEMETRY_PUSH: Final = "push"
TELEMETRY_PULL: Final = "pull"
TELEMETRY_HYBRID: Final = "hybrid"
TELEMETRY_MODES: Final = (TELEMETRY_PUSH, TELEMETRY_PULL, TELEMETRY_HYBRID)

DEFAULT_FALLBACK: Final = "balanced"
DEFAULT_ACK_TIMEOUT: Final = 5.0
DEFAULT_QOS: Final = 1
DEFAULT_MIN_SOC: Final = 10.0
DEFAULT_SAFE_DISCHARGE_FLOOR: Final = 10.0
DEFAULT_SOC_CONSTRAINTS: Final = True
DEFAULT_PREDICTION: Final = PREDICTION_OFF
DEFAULT_PREDICTION_PROFILE: Final = ",".join(["100"] * 24)
DEFAULT_PREDICTION_LOOKBACK_DAYS: Final = 28
DEFAULT_TELEMETRY_MODE: Final = TELEMETRY_PUSH
DEFAULT_POLL_INTERVAL: Final = 10.0
DEFAULT_STALE_TIMEOUT: Final = 300.0
DEFAULT_EMISSION_FACTOR: Final = 0.0
DEFAULT_ACK_RATE_SLA: Final = 90.0
DEFAULT_WEBHOOK_ENABLED: Final = False
# Send 0 kW to the vehicles still holding a dispatch's setpoint when it ends.
DEFAULT_RELEASE_AT_END: Final = True
DEFAULT_VERIFY_WINDOW: Final = 10.0
DEFAULT_NOT_FOLLOWING_GRACE: Final = 30.0
DEFAULT_DELIVERY_TOLERANCE_PCT: Final = 10.0
DEFAULT_DELIVERY_TOLERANCE_KW: Final = 1.0
# Default strategy per signal type: smart, FCR optimal.
DEFAULT_STRATEGIES: Final[dict[str, str]] = {
    "FCR": "optimal",
    "aFRR": "smart",
    "MA": "smart",
    "NEBEF": "smart",
    "EcoWatt": "smart",
}

# --- Vehicle subentries (vehicles added by hand) ----------------------------------
SUBENTRY_TYPE_VEHICLE: Final = "vehicle"
CONF_VEHICLE_ID: Final = "vehicle_id"
CONF_MAX_POWER: Final = "max_power_kw"
CONF_BATTERY_KWH: Final = "battery_kwh"
CONF_IS_V2G: Final = "is_v2g"
CONF_SOC_ENTITY: Final = "soc_entity"
CONF_PLUGGED_ENTITY: Final = "plugged_entity"

# --- Actions, events, storage -------------------------------------------------------
SERVICE_DISPATCH: Final = "dispatch"
SERVICE_DISCOVER: Final = "discover"
SERVICE_GET_DISPATCH_LOG: Final = "get_dispatch_log"
SERVICE_PLAN_DAY_AHEAD: Final = "plan_day_ahead"

EVENT_DISPATCH_COMPLETED: Final = "v2g_dispatch_completed"
EVENT_DISPATCH_VERIFIED: Final = "v2g_dispatch_verified"

DISPATCH_LOG_MAX_ENTRIES: Final = 1000
DISCOVERY_WINDOW_S: Final = 2.0
# Largest MQTT payload accepted from a vehicle; a gateway ack batch may be larger,
# up to the engine codec's MAX_GATEWAY_PAYLOAD_BYTES (4 MiB).
MAX_VEHICLE_PAYLOAD_BYTES: Final = 16 * 1024

# --- Config flow choices and limits (config_flow.py) ------------------------------
STRATEGIES: Final = ("equal", "smart", "optimal", "segmented")
FALLBACK_MODES: Final = ("none", "balanced", "probabilistic")
QOS_LEVELS: Final = (0, 1, 2)
PREDICTION_PROFILE_HOURS: Final = 24
MAX_VEHICLE_ID_LENGTH: Final = 64
MAX_VEHICLE_POWER_KW: Final = 1000.0
MAX_VEHICLE_BATTERY_KWH: Final = 2000.0
DEFAULT_VEHICLE_MAX_POWER_KW: Final = 7.0
DEFAULT_VEHICLE_BATTERY_KWH: Final = 40.0
DEFAULT_VEHICLE_IS_V2G: Final = True

# --- Vehicles controlled through Home Assistant entities (home_control.py, entity_channel.py) -------
SUBENTRY_TYPE_CONTROLLED: Final = "controlled_vehicle"
CONF_CONTROL_ENTITY: Final = "control_entity"  # number / input_number
CONF_CONTROL_ACTION: Final = "control_action"  # script entity, called as an action
CONF_CONTROL_UNIT: Final = "control_unit"  # W | kW | A
CONF_VOLTAGE: Final = "voltage"  # V, for a control in A
CONF_PHASES: Final = "phases"  # 1..3, for a control in A
CONF_SIGN: Final = "sign_convention"
CONF_POWER_ENTITY: Final = "power_entity"
CONF_POWER_SIGN: Final = "power_sign"
CONF_DEPARTURE_ENTITY: Final = "departure_entity"
CONF_TARGET_SOC: Final = "target_soc"  # percent
CONF_MAX_DISCHARGE: Final = "max_discharge_kw"
CONF_MAX_CHARGE: Final = "max_charge_kw"
CONF_CONFIRMATION: Final = "confirmation"  # control | power
CONF_TOLERANCE: Final = "tolerance_kw"
CONF_IDLE_MODE: Final = "idle_mode"  # fixed | previous
CONF_IDLE_VALUE: Final = "idle_value"  # in the control's unit

UNIT_W: Final = "W"
UNIT_KW: Final = "kW"
UNIT_A: Final = "A"
CONTROL_UNITS: Final = (UNIT_A, UNIT_W, UNIT_KW)
SIGN_POSITIVE_CHARGING: Final = "positive_charging"  # as Wallbox
SIGN_POSITIVE_DISCHARGING: Final = "positive_discharging"  # as our orders
SIGN_CONVENTIONS: Final = (SIGN_POSITIVE_CHARGING, SIGN_POSITIVE_DISCHARGING)
CONFIRM_CONTROL: Final = "control"
CONFIRM_POWER: Final = "power"
CONFIRMATION_SOURCES: Final = (CONFIRM_CONTROL, CONFIRM_POWER)
IDLE_FIXED: Final = "fixed"
IDLE_PREVIOUS: Final = "previous"
IDLE_MODES: Final = (IDLE_FIXED, IDLE_PREVIOUS)

DEFAULT_VOLTAGE: Final = 230.0
DEFAULT_PHASES: Final = 1
DEFAULT_TOLERANCE_KW: Final = 0.1
DEFAULT_IDLE_VALUE: Final = 0.0
DEFAULT_TARGET_SOC: Final = 80.0
ISSUE_CONTROL_MISSING: Final = "control_entity_missing"
