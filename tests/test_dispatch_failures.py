"""Failures at a glance: which vehicles failed a dispatch, and which stopped answering.

Seen where a user sees them: the fleet's *Last dispatch failures* sensor, the
logbook line of the dispatch, the vehicles' *Not responding* problem sensors and
the fleet's *Vehicles available* and *Flexibility* sensors.
"""

from __future__ import annotations

import json
from typing import Any
from unittest.mock import patch

from homeassistant.config_entries import ConfigSubentryData
from homeassistant.const import STATE_OFF, STATE_ON
from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import (
    async_capture_events,
    async_fire_mqtt_message,
)
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.v2g.const import (
    CONF_ACK_TIMEOUT,
    CONF_FALLBACK,
    CONF_PLUGGED_ENTITY,
    CONF_VEHICLE_ID,
    EVENT_DISPATCH_COMPLETED,
    SUBENTRY_TYPE_VEHICLE,
)
from custom_components.v2g.logbook import describe_dispatch

from .helpers import (
    FleetResponder,
    async_announce,
    async_dispatch,
    async_settle,
    async_setup_fleet,
)

FAILURES = "sensor.depot_last_dispatch_failures"
OPTIONS = {CONF_ACK_TIMEOUT: 0.05, CONF_FALLBACK: "none"}
VAN = ConfigSubentryData(
    data={CONF_VEHICLE_ID: "van", CONF_PLUGGED_ENTITY: "binary_sensor.van_plug"},
    subentry_type=SUBENTRY_TYPE_VEHICLE,
    title="van",
    unique_id="van",
)


def _attributes(hass: HomeAssistant) -> dict[str, Any]:
    state = hass.states.get(FAILURES)
    assert state is not None
    return dict(state.attributes)


async def test_last_dispatch_failures_name_vehicles_and_reasons(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await async_setup_fleet(hass, options=OPTIONS)
    await async_announce(hass, *[(f"v{i}", {}) for i in range(1, 5)])
    assert hass.states.get(FAILURES).state == "unknown"
    responder = FleetResponder(
        hass,
        fleet_mqtt,
        {"v2": ("reject", "exceeds_max_power"), "v3": "ignore", "v4": "fail"},
    )
    completed = async_capture_events(hass, EVENT_DISPATCH_COMPLETED)

    # A failing publish is retried at once.
    with patch("custom_components.v2g.engine.DispatchSettings.retry_backoff_s", 0.0):
        first = await async_dispatch(
            hass, signal_type="aFRR", power_kw=8, strategy="equal"
        )
    assert first["status"] == "partial"
    state = hass.states.get(FAILURES)
    assert state.state == "3"
    failures = state.attributes["failures"]
    assert [(f["vehicle_id"], f["status"]) for f in failures] == [
        ("v2", "rejected"),
        ("v3", "timeout"),
        ("v4", "publish_failed"),
    ]
    assert failures[0]["reason"] == "exceeds_max_power"
    assert failures[1]["reason"] is None
    assert "broker refused the message" in failures[2]["reason"]
    assert state.attributes["dispatch_id"] == first["dispatch_id"]
    # The dispatch's logbook line names them too.
    await hass.async_block_till_done()
    assert describe_dispatch(dict(completed[-1].data)) == (
        "dispatched 8 kW aFRR: partial, 33 % acknowledged; 3 vehicles failed: "
        "v2 (rejected: exceeds_max_power), v3 (timeout), "
        "v4 (publish failed: HomeAssistantError: broker refused the message)"
    )

    # Everyone answers the next one; a dry run changes nothing.
    responder.behaviours.clear()
    second = await async_dispatch(
        hass, signal_type="FCR", power_kw=-4, strategy="equal"
    )
    await async_dispatch(hass, signal_type="MA", power_kw=4, dry_run=True)
    state = hass.states.get(FAILURES)
    assert state.state == "0"
    assert state.attributes["failures"] == []
    dispatches = state.attributes["dispatches"]
    assert [d["dispatch_id"] for d in dispatches] == [
        second["dispatch_id"],
        first["dispatch_id"],
    ]
    assert dispatches[0] == {
        "dispatch_id": second["dispatch_id"],
        "started_at": second["started_at"],
        "signal_type": "FCR",
        "status": "completed",
        "requested_kw": -4.0,
        "acknowledged_kw": -4.0,
        "failure_count": 0,
        "failures": [],
    }
    assert dispatches[1]["failure_count"] == 3
    assert dispatches[1]["failures"] == failures


async def test_failures_are_capped_and_survive_a_restart(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = await async_setup_fleet(hass, options=OPTIONS)
    vehicles = [f"v{i:02d}" for i in range(1, 13)]
    await async_announce(hass, *[(v, {}) for v in vehicles])
    FleetResponder(hass, fleet_mqtt, default="reject")
    for _ in range(6):
        await async_dispatch(hass, signal_type="aFRR", power_kw=12, strategy="equal")
    state = hass.states.get(FAILURES)
    assert state.state == "12"  # every vehicle counted...
    assert [f["vehicle_id"] for f in state.attributes["failures"]] == vehicles[:10]
    assert len(state.attributes["dispatches"]) == 5  # ...10 named, 5 dispatches
    shown = (state.state, _attributes(hass))

    assert await hass.config_entries.async_reload(entry.entry_id)
    await hass.async_block_till_done()
    state = hass.states.get(FAILURES)
    assert (state.state, _attributes(hass)) == shown


async def test_a_hand_added_vehicle_that_keeps_timing_out_is_a_problem(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    entity_registry: er.EntityRegistry,
) -> None:
    hass.states.async_set("binary_sensor.van_plug", STATE_ON)
    await async_setup_fleet(hass, options=OPTIONS, subentries=[VAN])
    await async_announce(hass, ("v1", {"MaxPower": 10.0}))
    available = "sensor.depot_vehicles_available"
    flexibility = "sensor.depot_flexibility_available_up"
    problem = "binary_sensor.van_not_responding"
    assert hass.states.get(available).state == "2"
    assert hass.states.get(flexibility).state == "17.0"  # 10 kW + the van's 7 kW
    assert hass.states.get(problem).state == STATE_OFF
    # Enabled by default for the vehicle added by hand, not for discovered ones.
    for entity_id, disabled in (
        (problem, False),
        ("event.van_dispatch_outcome", False),
        ("binary_sensor.v1_not_responding", True),
        ("event.v1_dispatch_outcome", True),
    ):
        registered = entity_registry.async_get(entity_id)
        assert registered is not None
        assert (registered.disabled_by is not None) is disabled, entity_id

    # Nothing answers for the van (its entities keep it live).
    responder = FleetResponder(hass, fleet_mqtt, {"van": "ignore"})
    for timeouts in (1, 2):
        response = await async_dispatch(
            hass, signal_type="aFRR", power_kw=4, strategy="equal"
        )
        assert response["vehicles"]["van"]["status"] == "timeout"
        await hass.async_block_till_done()
        assert hass.states.get(problem).state == STATE_OFF
        assert hass.states.get(problem).attributes["timeouts_in_a_row"] == timeouts
        assert hass.states.get(available).state == "2"
    await async_dispatch(hass, signal_type="aFRR", power_kw=4, strategy="equal")
    await hass.async_block_till_done()
    assert hass.states.get(problem).state == STATE_ON
    assert hass.states.get(available).state == "1"
    assert hass.states.get(flexibility).state == "10.0"
    assert hass.states.get("sensor.van_setpoint").state == "0.0"  # still shown

    # It is still sent orders: once it answers, it is back.
    responder.behaviours.clear()
    response = await async_dispatch(
        hass, signal_type="aFRR", power_kw=4, strategy="equal"
    )
    assert response["vehicles"]["van"]["status"] == "acknowledged"
    await hass.async_block_till_done()
    assert hass.states.get(problem).state == STATE_OFF
    assert hass.states.get(available).state == "2"


async def test_a_late_answer_ends_not_responding(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    hass.states.async_set("binary_sensor.van_plug", STATE_ON)
    await async_setup_fleet(hass, options=OPTIONS, subentries=[VAN])
    responder = FleetResponder(hass, fleet_mqtt, {"van": "ignore"})
    for _ in range(3):
        await async_dispatch(hass, signal_type="aFRR", power_kw=2)
    await hass.async_block_till_done()
    problem = "binary_sensor.van_not_responding"
    assert hass.states.get(problem).state == STATE_ON

    # The van answers its last order, after the timeout: it is alive.
    last = responder.orders_for("van")[-1]
    async_fire_mqtt_message(
        hass, "vehicle/van/ack", json.dumps({"command_id": last["command_id"]})
    )
    await async_settle(hass, seconds=31)
    assert hass.states.get(problem).state == STATE_OFF
