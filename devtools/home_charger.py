"""The demo's home set-up: one simulated bidirectional charger made of helpers.

`scripts/develop --home` adds it beside the MQTT fleet. Everything is plain Home
Assistant configuration (no code of ours drives it):
- `input_number.home_charger_current`: the control, in A, -32..32 (as Wallbox:
  positive = charging);
- an automation copies the current, times 230 V, to the measured power two
  seconds later (`input_number.home_charger_power_w`, read through the template
  power sensor `sensor.home_charger_power`);
- another automation moves the car's SoC (`input_number.home_charger_car_soc`,
  read through the battery sensor `sensor.home_charger_car_battery`) every 10 s
  from that power, for a 60 kWh battery;
- `binary_sensor.home_charger_plugged_in` is always on.
The vehicle `home_car` is then added through the real `controlled_vehicle`
subentry flow, confirmed by the power sensor. The helpers are named after the
charger: the integration names its own entities after the vehicle
(`sensor.home_car_setpoint`, `binary_sensor.home_car_plugged_in`, ...).
"""

from __future__ import annotations

from typing import Any

from devtools.hass_instance import HassInstance

HOME_VEHICLE_ID = "home_car"
SUBENTRY_TYPE = "controlled_vehicle"

CURRENT_ENTITY = "input_number.home_charger_current"
POWER_SETTING = "input_number.home_charger_power_w"
POWER_SENSOR = "sensor.home_charger_power"
SOC_SETTING = "input_number.home_charger_car_soc"
SOC_SENSOR = "sensor.home_charger_car_battery"
PLUGGED_SENSOR = "binary_sensor.home_charger_plugged_in"
CHARGER_ENTITIES = (CURRENT_ENTITY, POWER_SENSOR, SOC_SENSOR, PLUGGED_SENSOR)

VOLTAGE = 230
MAX_CURRENT_A = 32
BATTERY_KWH = 60
FOLLOW_DELAY_S = 2
SOC_PERIOD_S = 10
START_SOC = 60.0  # percent, the first time the folder is used

# What the demo dispatches to the home car alone: 30 A x 230 V, a whole step of
# the control, so the acknowledged power is the power asked for.
HOME_DISPATCH_KW = 6.9

HOME_VIEW_PATH = "home"

_SOC_STEP = round(100 / 3600 / BATTERY_KWH * SOC_PERIOD_S, 9)  # % per kW per period


def home_charger_yaml() -> str:
    """Configuration of the simulated charger (appended to configuration.yaml)."""
    max_power_w = MAX_CURRENT_A * VOLTAGE
    return f"""
# Demo --home: a simulated bidirectional home charger (devtools/home_charger.py).
input_number:
  home_charger_current:
    name: Home charger current
    min: -{MAX_CURRENT_A}
    max: {MAX_CURRENT_A}
    step: 1
    initial: 0
    mode: box
    unit_of_measurement: A
    icon: mdi:ev-station
  home_charger_power_w:
    name: Home charger measured power (simulated)
    min: -{max_power_w}
    max: {max_power_w}
    step: 1
    initial: 0
    mode: box
    unit_of_measurement: W
  home_charger_car_soc:
    name: Home charger car SoC (simulated)
    min: 0
    max: 100
    step: 0.01
    mode: box
    unit_of_measurement: "%"

template:
  - sensor:
      - name: Home charger power
        unique_id: v2g_demo_home_charger_power
        default_entity_id: {POWER_SENSOR}
        device_class: power
        unit_of_measurement: W
        state_class: measurement
        availability: "{{{{ has_value('{POWER_SETTING}') }}}}"
        state: "{{{{ states('{POWER_SETTING}') | float }}}}"
      - name: Home charger car battery
        unique_id: v2g_demo_home_charger_car_battery
        default_entity_id: {SOC_SENSOR}
        device_class: battery
        unit_of_measurement: "%"
        state_class: measurement
        availability: "{{{{ has_value('{SOC_SETTING}') }}}}"
        state: "{{{{ states('{SOC_SETTING}') | float }}}}"
    binary_sensor:
      - name: Home charger plugged in
        unique_id: v2g_demo_home_charger_plugged_in
        default_entity_id: {PLUGGED_SENSOR}
        device_class: plug
        state: "{{{{ true }}}}"

automation home_charger:
  - id: v2g_demo_home_charger_follows
    alias: Home charger follows its current setpoint
    description: The simulated charger reaches the current it was given after {FOLLOW_DELAY_S} s.
    triggers:
      - trigger: state
        entity_id: {CURRENT_ENTITY}
        to: ~
      - trigger: homeassistant
        event: start
    actions:
      - delay:
          seconds: {FOLLOW_DELAY_S}
      - action: input_number.set_value
        target:
          entity_id: {POWER_SETTING}
        data:
          value: "{{{{ states('{CURRENT_ENTITY}') | float(0) * {VOLTAGE} }}}}"
    mode: restart
  - id: v2g_demo_home_charger_car_soc
    alias: Home charger car SoC follows its power
    description: Every {SOC_PERIOD_S} s, the energy of the measured power goes into a {BATTERY_KWH} kWh battery.
    triggers:
      - trigger: time_pattern
        seconds: "/{SOC_PERIOD_S}"
    conditions:
      - condition: template
        value_template: "{{{{ states('{POWER_SETTING}') | float(0) != 0 }}}}"
    actions:
      - action: input_number.set_value
        target:
          entity_id: {SOC_SETTING}
        data:
          value: >-
            {{% set soc = states('{SOC_SETTING}') | float({START_SOC}) %}}
            {{% set kw = states('{POWER_SETTING}') | float(0) / 1000 %}}
            {{{{ [0, [100, soc + kw * {_SOC_STEP}] | min] | max | round(2) }}}}
    mode: single
"""


async def ensure_home_vehicle(hass: HassInstance, entry_id: str) -> bool:
    """Add `home_car` through the subentry flow unless the entry has it.

    Returns True when it was added now.
    """
    await hass.wait_for_states(CHARGER_ENTITIES)
    subentries = await hass.ws("config_entries/subentries/list", entry_id=entry_id)
    if any(item.get("unique_id") == HOME_VEHICLE_ID for item in subentries):
        return False
    # A new folder: the SoC helper starts at its minimum (0 %), not a car's SoC.
    await hass.call_service(
        "input_number", "set_value", {"entity_id": SOC_SETTING, "value": START_SOC}
    )
    await hass.subentry_flow(
        entry_id,
        SUBENTRY_TYPE,
        {
            "vehicle_id": HOME_VEHICLE_ID,
            "control_entity": CURRENT_ENTITY,
            "control_unit": "A",
            "voltage": VOLTAGE,
            "phases": 1,
            "sign_convention": "positive_charging",
        },
        {
            "battery_kwh": BATTERY_KWH,
            "soc_entity": SOC_SENSOR,
            "plugged_entity": PLUGGED_SENSOR,
            "power_entity": POWER_SENSOR,
            "power_sign": "positive_charging",
            "confirmation": "power",
        },
    )
    return True


async def dispatch_to_home(
    hass: HassInstance, entry_id: str, minutes: int
) -> dict[str, Any]:
    """A dispatch restricted to the home car: it discharges HOME_DISPATCH_KW."""
    response: dict[str, Any] = await hass.call_service(
        "v2g",
        "dispatch",
        {
            "config_entry_id": entry_id,
            "signal_type": "aFRR",
            "power_kw": HOME_DISPATCH_KW,
            "duration": {"minutes": minutes},
            "vehicles": [HOME_VEHICLE_ID],
        },
        return_response=True,
    )
    return response


def home_view(car_card: dict[str, Any], setpoint: str | None) -> dict[str, Any]:
    """The dashboard's "Home" view: the home car's card and its charger's entities."""
    charger = [
        # Shown as text: the integration sets it (an input box would hide the value).
        {"entity": CURRENT_ENTITY, "name": "Control current", "type": "simple-entity"},
        {"entity": POWER_SENSOR, "name": "Measured power"},
        {"entity": SOC_SENSOR, "name": "Car battery"},
        {"entity": PLUGGED_SENSOR, "name": "Plugged in"},
    ]
    return {
        "title": "Home",
        "path": HOME_VIEW_PATH,
        "cards": [
            car_card,
            {"type": "entities", "title": "Home charger", "entities": charger},
            {
                "type": "history-graph",
                "title": "Home charger, last hour",
                "hours_to_show": 1,
                "entities": [POWER_SENSOR, *([setpoint] if setpoint else [])],
            },
        ],
    }


def describe_dispatch(response: dict[str, Any]) -> str:
    """One line on the home dispatch for the console."""
    order = response.get("vehicles", {}).get(HOME_VEHICLE_ID, {})
    latency = order.get("latency_ms")
    latency_text = "" if latency is None else f" after {latency / 1000:.1f} s"
    return (
        f"Home dispatch: {response['status']}, {HOME_VEHICLE_ID} "
        f"{order.get('status', 'not ordered')}{latency_text}, "
        f"{response['acknowledged_kw']:.2f} of {response['requested_kw']:.2f} kW"
    )
