"""Measured delivery after each dispatch: event, log, sensors, reliability, verify.

Vehicles are played through MQTT (acks by `FleetResponder`, telemetry with
``power_kw`` fired by the test), time is moved with `async_fire_time_changed`;
observed through the `v2g_dispatch_verified` event, the action's response, the
dispatch log, the fleet sensors and the scores of later dispatches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
import json
from typing import Any

from homeassistant.const import EVENT_STATE_CHANGED
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.setup import async_setup_component
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_capture_events,
    async_fire_mqtt_message,
    async_fire_time_changed,
)
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.v2g.const import (
    CONF_ACK_TIMEOUT,
    CONF_DELIVERY_TOLERANCE_KW,
    CONF_POLL_INTERVAL,
    CONF_STALE_TIMEOUT,
    CONF_TELEMETRY_MODE,
    CONF_VERIFY_WINDOW,
    EVENT_DISPATCH_COMPLETED,
    EVENT_DISPATCH_VERIFIED,
)

from .controlled_helpers import async_add_controlled_vehicle
from .helpers import (
    FleetResponder,
    async_announce,
    async_dispatch,
    async_dispatch_log,
    async_setup_fleet,
)

FAST = {CONF_ACK_TIMEOUT: 0.05}
VERIFIED_KEYS = {"delivered_kw", "delivery_ratio", "verified_at", "unmeasured"}
DELIVERED = "sensor.depot_delivered_power_last_dispatch"
RATIO_24H = "sensor.depot_delivery_ratio_24_h"


async def _fleet(
    hass: HomeAssistant, count: int = 2, options: dict[str, Any] | None = None
) -> MockConfigEntry:
    entry = await async_setup_fleet(hass, options={**FAST, **(options or {})})
    await async_announce(hass, *[(f"v{i}", {}) for i in range(1, count + 1)])
    return entry


def _telemetry(
    hass: HomeAssistant, vehicle_id: str, power_kw: float, answer: bool = False
) -> None:
    """A vehicle's telemetry: pushed on its state topic, or a poll answer."""
    topic = "v2g/telemetry/response/{}" if answer else "v2g/vehicle/state/{}"
    async_fire_mqtt_message(
        hass,
        topic.format(vehicle_id),
        json.dumps({"vehicle_id": vehicle_id, "power_kw": power_kw}),
    )


async def _later(hass: HomeAssistant, seconds: float) -> None:
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=seconds))
    await hass.async_block_till_done()


async def _until(condition: Callable[[], bool]) -> None:
    """Let the loop run (real time: acks and timeouts) until ``condition()``."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never came true")


def _state(hass: HomeAssistant, entity_id: str) -> str:
    state = hass.states.get(entity_id)
    assert state is not None, entity_id
    return state.state


async def test_a_followed_dispatch_is_verified_after_the_window(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = await _fleet(hass)
    verified = async_capture_events(hass, EVENT_DISPATCH_VERIFIED)
    FleetResponder(hass, fleet_mqtt)
    assert _state(hass, DELIVERED) == "unknown"

    response = await async_dispatch(
        hass, signal_type="aFRR", power_kw=20, strategy="equal"
    )
    assert not VERIFIED_KEYS & set(response)  # the default response is unchanged
    _telemetry(hass, "v1", 10.0)
    _telemetry(hass, "v2", 9.5)
    await _later(hass, 8)
    assert verified == []  # 10 s after the last ack (the option's default)

    written = async_capture_events(hass, EVENT_STATE_CHANGED)
    await _later(hass, 11)
    # It writes the two delivery sensors, nothing else.
    assert sorted(event.data["entity_id"] for event in written) == [
        DELIVERED,
        RATIO_24H,
    ]
    assert [event.data for event in verified] == [
        {
            "config_entry_id": entry.entry_id,
            "dispatch_id": response["dispatch_id"],
            "signal_type": "aFRR",
            "requested_kw": 20.0,
            "acknowledged_kw": 20.0,
            "delivered_kw": 19.5,
            "delivery_ratio": 0.975,
            "following": 2,
            "not_following": [],
            "not_following_count": 0,
            "unmeasured": 0,
        }
    ]
    assert _state(hass, DELIVERED) == "19.5"
    assert _state(hass, RATIO_24H) == "97.5"
    # The log entry is amended; the dispatch's own keys stay as they were.
    (logged,) = await async_dispatch_log(hass)
    assert logged["delivered_kw"] == 19.5
    assert logged["delivery_ratio"] == 0.975
    assert logged["unmeasured"] == []
    assert logged["verified_at"] > logged["completed_at"]
    assert logged["vehicles"]["v1"] == {
        **response["vehicles"]["v1"],
        "measured_kw": 10.0,
        "following": True,
    }
    assert logged["vehicles"]["v2"]["measured_kw"] == 9.5
    assert {k: v for k, v in logged.items() if k in response} == {
        **response,
        "vehicles": logged["vehicles"],
    }
    # Only once.
    await _later(hass, 60)
    assert len(verified) == 1


async def test_acknowledged_but_refused_is_not_following_and_costs_reliability(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    """Finding 1: a vehicle acks a charge beyond its limit and keeps its power."""
    await _fleet(hass)
    verified = async_capture_events(hass, EVENT_DISPATCH_VERIFIED)
    FleetResponder(hass, fleet_mqtt)
    plan = await async_dispatch(
        hass, signal_type="MA", power_kw=-20, strategy="smart", dry_run=True
    )
    scores = {vid: plan["vehicles"][vid]["score"] for vid in ("v1", "v2")}
    assert scores["v1"] == scores["v2"]

    await async_dispatch(hass, signal_type="MA", power_kw=-20, strategy="equal")
    _telemetry(hass, "v1", -7.0)  # its charge limit
    _telemetry(hass, "v2", -10.0)
    await _later(hass, 11)

    (event,) = verified
    assert event.data["acknowledged_kw"] == -20.0
    assert event.data["delivered_kw"] == -17.0
    assert event.data["delivery_ratio"] == 0.85
    assert event.data["following"] == 1
    assert event.data["not_following"] == ["v1"]
    assert _state(hass, RATIO_24H) == "85.0"
    # The vehicle that did not follow is trusted less by the next allocation.
    plan = await async_dispatch(
        hass, signal_type="MA", power_kw=-20, strategy="smart", dry_run=True
    )
    assert plan["vehicles"]["v1"]["score"] < plan["vehicles"]["v2"]["score"]


async def test_unmeasured_stale_and_dropped_ack_vehicles(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    """Telemetry before the ack does not count; a lost ack is judged against 0."""
    await _fleet(hass, count=4, options={"fallback": "none"})
    verified = async_capture_events(hass, EVENT_DISPATCH_VERIFIED)
    _telemetry(hass, "v2", 7.5)  # received before its order: stale
    await hass.async_block_till_done()
    FleetResponder(hass, fleet_mqtt, {"v4": "ignore"})  # v4's ack is lost

    response = await async_dispatch(
        hass, signal_type="FCR", power_kw=40, strategy="equal"
    )
    assert response["vehicles"]["v4"]["status"] == "timeout"
    _telemetry(hass, "v4", 10.0)  # it applied the order all the same (finding 2)
    await _later(hass, 11)

    (event,) = verified
    assert event.data["unmeasured"] == 3
    assert event.data["not_following"] == ["v4"]
    (logged,) = await async_dispatch_log(hass)
    assert logged["unmeasured"] == ["v1", "v2", "v3"]
    assert logged["vehicles"]["v2"]["measured_kw"] is None
    assert logged["vehicles"]["v2"]["following"] is None
    assert logged["vehicles"]["v4"]["measured_kw"] == 10.0
    assert logged["vehicles"]["v4"]["following"] is False
    # Unmeasured vehicles never count as delivering; v4 delivers unacknowledged.
    assert logged["delivered_kw"] == 10.0
    assert logged["acknowledged_kw"] == 30.0
    assert logged["delivery_ratio"] == pytest.approx(0.3333)


async def test_verify_true_waits_and_returns_the_measurements(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass, options={CONF_VERIFY_WINDOW: 30})
    completed = async_capture_events(hass, EVENT_DISPATCH_COMPLETED)
    verified = async_capture_events(hass, EVENT_DISPATCH_VERIFIED)
    FleetResponder(hass, fleet_mqtt)
    call = asyncio.ensure_future(
        async_dispatch(hass, signal_type="aFRR", power_kw=20, verify=True)
    )
    await _until(lambda: bool(completed))
    _telemetry(hass, "v1", 10.2)
    _telemetry(hass, "v2", 9.9)
    await _later(hass, 20)
    assert not call.done()  # the window is 30 s
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=31))
    response = await call

    assert verified
    assert response["dispatch_id"] == completed[0].data["dispatch_id"]
    assert response["delivered_kw"] == 20.1
    assert response["delivery_ratio"] == 1.005
    assert response["unmeasured"] == []
    assert dt_util.parse_datetime(response["verified_at"]) is not None
    for vehicle_id, measured in (("v1", 10.2), ("v2", 9.9)):
        assert response["vehicles"][vehicle_id]["measured_kw"] == measured
        assert response["vehicles"][vehicle_id]["following"] is True
    # The sensors are up to date when the action returns.
    assert _state(hass, DELIVERED) == "20.1"


async def test_a_caller_that_gives_up_does_not_cancel_the_verification(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass)
    completed = async_capture_events(hass, EVENT_DISPATCH_COMPLETED)
    verified = async_capture_events(hass, EVENT_DISPATCH_VERIFIED)
    FleetResponder(hass, fleet_mqtt)
    call = asyncio.ensure_future(
        async_dispatch(hass, signal_type="aFRR", power_kw=20, verify=True)
    )
    await _until(lambda: bool(completed))
    call.cancel()  # e.g. the script that called it was stopped
    with pytest.raises(asyncio.CancelledError):
        await call
    await _later(hass, 11)
    assert len(verified) == 1


async def test_unload_while_waiting_for_poll_answers(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = await _fleet(
        hass,
        options={
            CONF_TELEMETRY_MODE: "hybrid",
            CONF_POLL_INTERVAL: 3600,
            CONF_ACK_TIMEOUT: 30,
        },
    )
    verified = async_capture_events(hass, EVENT_DISPATCH_VERIFIED)
    responder = FleetResponder(hass, fleet_mqtt)
    await async_dispatch(hass, signal_type="aFRR", power_kw=20)
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=11))
    await _until(lambda: responder.payloads("v2g/telemetry/request") == ["poll"])
    # Nobody answers: the verification waits up to the ack timeout (30 s).
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    assert verified == []


async def test_the_default_response_does_not_wait_for_the_verification(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass, options={CONF_VERIFY_WINDOW: 600})
    verified = async_capture_events(hass, EVENT_DISPATCH_VERIFIED)
    FleetResponder(hass, fleet_mqtt)
    async with asyncio.timeout(5):
        response = await async_dispatch(
            hass, signal_type="aFRR", power_kw=20, verify=False
        )
    assert set(response) == {
        "dispatch_id",
        "status",
        "signal",
        "strategy",
        "requested_kw",
        "assigned_kw",
        "shortfall_kw",
        "acknowledged_kw",
        "ack_rate",
        "vehicles",
        "fallback",
        "excluded",
        "started_at",
        "completed_at",
    }
    assert "measured_kw" not in response["vehicles"]["v1"]
    assert verified == []
    await _later(hass, 601)
    assert len(verified) == 1
    assert verified[0].data["unmeasured"] == 2  # nobody sent telemetry
    assert verified[0].data["delivered_kw"] == 0.0
    assert _state(hass, DELIVERED) == "0.0"


async def test_dry_runs_and_returns_to_idle_are_not_verified(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass)
    verified = async_capture_events(hass, EVENT_DISPATCH_VERIFIED)
    FleetResponder(hass, fleet_mqtt)
    plan = await async_dispatch(
        hass, signal_type="aFRR", power_kw=20, dry_run=True, verify=True
    )
    assert plan["status"] == "planned"
    assert not VERIFIED_KEYS & set(plan)
    await async_dispatch(hass, signal_type="aFRR", power_kw=20)
    idle = await async_dispatch(hass, signal_type="aFRR", power_kw=0, verify=True)
    assert not VERIFIED_KEYS & set(idle)
    await _later(hass, 11)
    assert len(verified) == 1  # the 20 kW dispatch only


def _answer_polls(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, answers: dict[str, float]
) -> None:
    """Vehicles that answer each telemetry poll with these powers."""
    publish = fleet_mqtt.async_publish.side_effect

    async def publish_and_answer(
        topic: str, payload: Any, *args: Any, **kwargs: Any
    ) -> None:
        await publish(topic, payload, *args, **kwargs)
        if topic == "v2g/telemetry/request":
            for vehicle_id, power in answers.items():
                hass.loop.call_soon(_telemetry, hass, vehicle_id, power, True)

    fleet_mqtt.async_publish.side_effect = publish_and_answer


PULL = {CONF_TELEMETRY_MODE: "pull", CONF_POLL_INTERVAL: 3600, CONF_STALE_TIMEOUT: 7200}


async def test_pull_mode_polls_once_and_waits_for_the_answers(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass, count=3, options={**PULL, CONF_ACK_TIMEOUT: 0.5})
    verified = async_capture_events(hass, EVENT_DISPATCH_VERIFIED)
    responder = FleetResponder(hass, fleet_mqtt)
    _answer_polls(hass, fleet_mqtt, {"v1": 10.0, "v2": 8.5})  # v3 does not answer
    await async_dispatch(hass, signal_type="aFRR", power_kw=30, strategy="equal")
    assert responder.payloads("v2g/telemetry/request") == []

    await _later(hass, 11)
    await _until(lambda: bool(verified))
    assert responder.payloads("v2g/telemetry/request") == ["poll"]
    (event,) = verified
    assert event.data["delivered_kw"] == 18.5
    assert event.data["following"] == 1
    assert event.data["not_following"] == ["v2"]
    assert event.data["unmeasured"] == 1  # v3: waited for up to the ack timeout


async def test_pull_mode_does_not_wait_once_every_vehicle_answered(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass, options={**PULL, CONF_ACK_TIMEOUT: 60})
    verified = async_capture_events(hass, EVENT_DISPATCH_VERIFIED)
    FleetResponder(hass, fleet_mqtt)
    _answer_polls(hass, fleet_mqtt, {"v1": 10.0, "v2": 10.0})
    await async_dispatch(hass, signal_type="aFRR", power_kw=20, strategy="equal")
    await _later(hass, 11)
    await _until(lambda: bool(verified))  # well before the 60 s ack timeout
    assert verified[0].data["following"] == 2


async def test_unload_during_the_window_cancels_the_verification(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, caplog: pytest.LogCaptureFixture
) -> None:
    entry = await _fleet(hass)
    completed = async_capture_events(hass, EVENT_DISPATCH_COMPLETED)
    verified = async_capture_events(hass, EVENT_DISPATCH_VERIFIED)
    FleetResponder(hass, fleet_mqtt)
    waiting = asyncio.ensure_future(
        async_dispatch(hass, signal_type="aFRR", power_kw=20, verify=True)
    )
    await _until(lambda: bool(completed))
    await async_dispatch(hass, signal_type="aFRR", power_kw=10)
    _telemetry(hass, "v1", 5.0)
    await hass.async_block_till_done()

    assert await hass.config_entries.async_unload(entry.entry_id)
    with pytest.raises(HomeAssistantError) as err:
        await waiting
    assert err.value.translation_key == "verification_interrupted"
    await _later(hass, 30)
    assert verified == []
    assert "Error" not in caplog.text
    (first, second) = await _logged_after_reload(hass, entry)
    assert "delivered_kw" not in first
    assert "delivered_kw" not in second


async def _logged_after_reload(
    hass: HomeAssistant, entry: MockConfigEntry
) -> list[dict[str, Any]]:
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    return await async_dispatch_log(hass)


async def test_delivery_sensors_are_restored_after_a_restart(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = await _fleet(hass)
    FleetResponder(hass, fleet_mqtt)
    await async_dispatch(hass, signal_type="FCR", power_kw=20, strategy="equal")
    _telemetry(hass, "v1", 10.0)
    _telemetry(hass, "v2", 8.0)
    await _later(hass, 11)
    assert _state(hass, DELIVERED) == "18.0"
    assert _state(hass, RATIO_24H) == "90.0"

    assert await hass.config_entries.async_reload(entry.entry_id)
    await hass.async_block_till_done()
    assert _state(hass, DELIVERED) == "18.0"
    assert _state(hass, RATIO_24H) == "90.0"


async def test_a_vehicle_controlled_through_home_assistant_is_read_from_its_meter(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    assert await async_setup_component(
        hass,
        "input_number",
        {
            "input_number": {
                "charger": {"min": -7400, "max": 7400, "step": 1, "mode": "box"},
                "wallbox": {"min": -7400, "max": 7400, "step": 1, "mode": "box"},
            }
        },
    )
    meter = "sensor.charger_power"
    watts = {"unit_of_measurement": "W", "device_class": "power"}
    hass.states.async_set(meter, "0", watts)
    entry = await async_setup_fleet(
        hass, options={CONF_ACK_TIMEOUT: 0.3, CONF_DELIVERY_TOLERANCE_KW: 0.5}
    )
    control = {
        "control_unit": "W",
        "sign_convention": "positive_discharging",
    }
    await async_add_controlled_vehicle(
        hass,
        entry,
        {"vehicle_id": "car", "control_entity": "input_number.charger", **control},
        {"power_entity": meter, "power_sign": "positive_discharging"},
    )
    await async_add_controlled_vehicle(
        hass,
        entry,
        {"vehicle_id": "van", "control_entity": "input_number.wallbox", **control},
    )
    verified = async_capture_events(hass, EVENT_DISPATCH_VERIFIED)

    response = await async_dispatch(
        hass, signal_type="aFRR", power_kw=6, strategy="equal"
    )
    assert response["acknowledged_kw"] == 6.0
    hass.states.async_set(meter, "2400", watts)  # 3 kW ordered, 2.4 kW measured
    await _later(hass, 11)

    (event,) = verified
    assert event.data["delivered_kw"] == 2.4
    assert event.data["not_following"] == ["car"]  # 0.6 kW off, tolerance 0.5 kW
    assert event.data["unmeasured"] == 1  # the van has no power sensor
    (logged,) = await async_dispatch_log(hass)
    assert logged["unmeasured"] == ["van"]
    assert logged["vehicles"]["car"]["measured_kw"] == 2.4
