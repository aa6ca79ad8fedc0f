"""Fleet runtime: telemetry, bad input, staleness, MQTT loss, persistence, subentries.

Driven and observed from outside only: MQTT messages in, actions, entity states,
the device registry, diagnostics, the event bus, the stores and the log.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
import json
import logging
from typing import Any
from unittest.mock import patch

from homeassistant.components import mqtt
from homeassistant.config_entries import (
    ConfigEntryState,
    ConfigSubentry,
    ConfigSubentryData,
)
from homeassistant.const import (
    EVENT_HOMEASSISTANT_STOP,
    EVENT_STATE_CHANGED,
    STATE_UNAVAILABLE,
    STATE_UNKNOWN,
)
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import device_registry as dr, entity_registry as er
from homeassistant.helpers.dispatcher import async_dispatcher_send
from homeassistant.setup import async_setup_component
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_capture_events,
    async_fire_mqtt_message,
    async_fire_time_changed,
)
from pytest_homeassistant_custom_component.typing import (
    ClientSessionGenerator,
    MqttMockHAClient,
    WebSocketGenerator,
)

from custom_components.v2g.const import (
    CONF_ACK_TIMEOUT,
    CONF_EMISSION_FACTOR,
    CONF_FALLBACK,
    CONF_PREDICTION,
    CONF_PREDICTION_PROFILE,
    CONF_STALE_TIMEOUT,
    CONF_TELEMETRY_MODE,
    DOMAIN,
    EVENT_DISPATCH_COMPLETED,
    MAX_VEHICLE_PAYLOAD_BYTES,
)
from custom_components.v2g.engine import MAX_GATEWAY_PAYLOAD_BYTES, DispatchEngine

from .helpers import (
    ENTRY_ID,
    FleetResponder,
    async_announce,
    async_diagnostics,
    async_dispatch,
    async_dispatch_log,
    async_settle,
    async_setup_fleet,
    find_device,
    flush_subscriptions,
    vehicle_payload,
)

FAST = {CONF_ACK_TIMEOUT: 0.05}
FLEET_STORE = f"v2g.{ENTRY_ID}.fleet"
LOG_STORE = f"v2g.{ENTRY_ID}.dispatch_log"
IN_FLIGHT_STORE = f"v2g.{ENTRY_ID}.in_flight"


def _stored(hass_storage: dict[str, Any], key: str, data: dict[str, Any]) -> None:
    """Put what a previous run saved under ``key``."""
    hass_storage[key] = {"version": 1, "minor_version": 1, "key": key, "data": data}


def _in_flight(hass_storage: dict[str, Any]) -> list[dict[str, Any]]:
    """The in-flight records written to disk."""
    return list(hass_storage[IN_FLIGHT_STORE]["data"]["dispatches"].values())


def _vehicle(diagnostics: dict[str, Any], vehicle_id: str) -> dict[str, Any]:
    """One vehicle of the fleet state in the diagnostics."""
    vehicle: dict[str, Any] = diagnostics["fleet"]["sample"][vehicle_id]["vehicle"]
    return vehicle


async def test_push_telemetry_updates_entities(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    device_registry: dr.DeviceRegistry,
) -> None:
    await async_setup_fleet(hass)
    await async_announce(hass, ("v1", {"SoC": 0.8}))
    assert hass.states.get("sensor.v1_state_of_charge").state == "80.0"

    async_fire_mqtt_message(
        hass,
        "v2g/vehicle/state/v1",
        json.dumps({"soc": 0.42, "available": False, "ts": 1_700_000_000}),
    )
    await async_settle(hass)
    assert hass.states.get("sensor.v1_state_of_charge").state == "42.0"
    assert hass.states.get("binary_sensor.v1_plugged_in").state == "off"

    # Telemetry from a vehicle never seen before adds it (device and entities).
    async_fire_mqtt_message(
        hass, "v2g/vehicle/state/newcomer", json.dumps({"soc": 0.3, "available": True})
    )
    await async_settle(hass)
    assert hass.states.get("sensor.newcomer_state_of_charge").state == "30.0"
    device = find_device(device_registry, (DOMAIN, f"{ENTRY_ID}_newcomer"))
    assert device is not None
    assert device.name == "newcomer"


async def test_telemetry_is_coalesced(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await async_setup_fleet(hass)
    await async_announce(hass, ("v1", {}))
    changes = async_capture_events(hass, EVENT_STATE_CHANGED)
    for soc in range(50):
        async_fire_mqtt_message(
            hass, "v2g/vehicle/state/v1", json.dumps({"soc": soc / 100})
        )
        await hass.async_block_till_done()  # a burst, not all in one go
    await async_settle(hass)
    # 50 messages within the coalescing delay, one state write: the last value.
    soc_writes = [
        event.data["new_state"].state
        for event in changes
        if event.data["entity_id"] == "sensor.v1_state_of_charge"
    ]
    assert soc_writes == ["49.0"]


async def test_pull_telemetry_polls(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await async_setup_fleet(hass, options={CONF_TELEMETRY_MODE: "pull"})
    await async_announce(hass, ("v1", {}))
    responder = FleetResponder(hass, fleet_mqtt)
    await async_settle(hass, seconds=11)
    assert responder.payloads("v2g/telemetry/request") == ["poll"]
    async_fire_mqtt_message(
        hass, "v2g/telemetry/response/v1", json.dumps({"vehicle_id": "v1", "soc": 0.25})
    )
    await async_settle(hass)
    assert hass.states.get("sensor.v1_state_of_charge").state == "25.0"
    # No poll while the broker is away.
    async_dispatcher_send(hass, mqtt.MQTT_CONNECTION_STATE, False)
    await async_settle(hass, seconds=11)
    assert responder.payloads("v2g/telemetry/request") == ["poll"]
    async_dispatcher_send(hass, mqtt.MQTT_CONNECTION_STATE, True)
    await hass.async_block_till_done()

    # A failing poll is only logged: a warning once, then at debug level.
    fleet_mqtt.async_publish.reset_mock()
    fleet_mqtt.async_publish.side_effect = HomeAssistantError("down")
    with caplog.at_level(logging.DEBUG, logger="custom_components.v2g"):
        await async_settle(hass, seconds=11)
        await async_settle(hass, seconds=11)
    polls = [
        call.args[:2]
        for call in fleet_mqtt.async_publish.call_args_list
        if call.args[0] == "v2g/telemetry/request"
    ]
    assert polls == [("v2g/telemetry/request", "poll")] * 2
    failures = [
        r.levelno for r in caplog.records if "Telemetry poll not published" in r.message
    ]
    assert failures == [logging.WARNING, logging.DEBUG]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert hass.states.get("sensor.v1_state_of_charge").state == "25.0"


async def test_bad_input_is_counted_and_logged_once(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    entry = await async_setup_fleet(hass)
    await async_announce(hass, ("v1", {}))
    huge = "x" * (MAX_VEHICLE_PAYLOAD_BYTES + 1)
    messages = [
        ("vehicle/v1/ack", "{not json"),
        ("vehicle/v1/ack", "{not json either"),
        ("vehicle/v1/ack", huge),
        ("vehicle/v1/ack", json.dumps({"command_id": "never-sent"})),
        ("v2g/gateway/gw1/acks", "[]"),
        ("v2g/gateway/gw1/acks", json.dumps({"acks": [{"command_id": 1}]})),
        ("v2g/gateway/gw1/acks", "x" * (MAX_GATEWAY_PAYLOAD_BYTES + 1)),
        ("v2g/fleet/response/v9", "nope"),
        ("v2g/fleet/response/v9", huge),
        ("v2g/fleet/response/v9", vehicle_payload("other")),
        ("v2g/vehicle/state/v1", json.dumps({"soc": 7})),
        ("v2g/vehicle/state/v1", huge),
        ("v2g/vehicle/state/v1", b"\xff\xfe"),
    ]
    with caplog.at_level(logging.DEBUG, logger="custom_components.v2g"):
        for topic, payload in messages:
            async_fire_mqtt_message(hass, topic, payload)
        await async_settle(hass)
    diagnostics = await async_diagnostics(hass, hass_client, entry)
    counters = diagnostics["dropped_input"]
    assert counters == {
        "ack_malformed": 2,
        "ack_oversize": 1,
        "gateway_ack_malformed": 1,
        "gateway_ack_oversize": 1,
        "discovery_malformed": 2,
        "discovery_oversize": 1,
        "telemetry_malformed": 2,
        "telemetry_oversize": 1,
    }
    assert diagnostics["ack_tracker"]["counters"]["unknown"] == 1
    assert diagnostics["ack_tracker"]["counters"]["invalid_items"] == 1
    # Home Assistant's own warnings differ between versions: ours only.
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("custom_components.v2g")
    ]
    # One warning per kind and reason, the repeats at debug level.
    assert len(warnings) == len(counters)
    # Neither v9 nor "other" joined the fleet.
    assert diagnostics["fleet"]["vehicles"] == 1
    assert hass.states.get("sensor.v9_setpoint") is None
    assert hass.states.get("sensor.other_setpoint") is None
    # Nothing broke: a valid message still works.
    async_fire_mqtt_message(hass, "v2g/vehicle/state/v1", json.dumps({"soc": 0.5}))
    await async_settle(hass)
    assert hass.states.get("sensor.v1_state_of_charge").state == "50.0"


async def test_unexpected_handler_error_never_raises(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    entry = await async_setup_fleet(hass)
    # A bug in the engine while it reads an ack.
    with patch.object(DispatchEngine, "handle_ack", side_effect=RuntimeError("bug")):
        async_fire_mqtt_message(hass, "vehicle/v1/ack", "{}")
        await hass.async_block_till_done()
    diagnostics = await async_diagnostics(hass, hass_client, entry)
    assert diagnostics["dropped_input"] == {"ack_error": 1}
    (warning,) = [r for r in caplog.records if "Ignored ack message" in r.message]
    assert warning.levelno == logging.WARNING
    assert warning.exc_info is not None
    assert isinstance(warning.exc_info[1], RuntimeError)
    # The subscription still works.
    async_fire_mqtt_message(hass, "vehicle/v1/ack", "{broken")
    await hass.async_block_till_done()
    diagnostics = await async_diagnostics(hass, hass_client, entry)
    assert diagnostics["dropped_input"] == {"ack_error": 1, "ack_malformed": 1}


async def test_stale_vehicle_unavailable_and_removable(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_ws_client: WebSocketGenerator,
    hass_client: ClientSessionGenerator,
    device_registry: dr.DeviceRegistry,
) -> None:
    # Every component with HTTP routes before the first client: from Home
    # Assistant 2026.11 on, the router is frozen once a client started.
    for component in ("config", "diagnostics"):
        assert await async_setup_component(hass, component, {})
    entry = await async_setup_fleet(hass, options={CONF_STALE_TIMEOUT: 0.05})
    await async_announce(hass, ("v1", {}), ("v2", {}))
    assert hass.states.get("sensor.v1_setpoint").state == "0.0"
    client = await hass_ws_client(hass)

    async def remove(device_id: str) -> bool:
        await client.send_json_auto_id(
            {
                "type": "config/device_registry/remove_config_entry",
                "config_entry_id": entry.entry_id,
                "device_id": device_id,
            }
        )
        result = await client.receive_json()
        return bool(result["success"])

    v1 = find_device(device_registry, (DOMAIN, f"{ENTRY_ID}_v1"))
    fleet = find_device(device_registry, (DOMAIN, ENTRY_ID))
    assert v1 is not None
    assert fleet is not None
    assert v1.via_device_id == fleet.id
    assert not await remove(v1.id)  # fresh: not removable

    await asyncio.sleep(0.1)
    async_fire_mqtt_message(hass, "v2g/vehicle/state/v2", json.dumps({"soc": 0.5}))
    await async_settle(hass, seconds=31)  # housekeeping notices the silence
    assert hass.states.get("sensor.v1_setpoint").state == STATE_UNAVAILABLE
    assert hass.states.get("sensor.v2_setpoint").state == "0.0"
    assert hass.states.get("sensor.depot_vehicles_available").state == "1"

    assert not await remove(fleet.id)  # the fleet device stays
    assert await remove(v1.id)
    await hass.async_block_till_done()
    diagnostics = await async_diagnostics(hass, hass_client, entry)
    assert list(diagnostics["fleet"]["sample"]) == ["v2"]
    assert device_registry.async_get(v1.id) is None
    assert hass.states.get("sensor.v1_setpoint") is None
    # It comes back if it talks again.
    await async_announce(hass, ("v1", {}))
    assert hass.states.get("sensor.v1_setpoint").state == "0.0"


@pytest.mark.usefixtures("outcome_events_enabled")
async def test_mqtt_connection_loss(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await async_setup_fleet(hass)
    await async_announce(hass, ("v1", {}))
    with caplog.at_level(logging.INFO, logger="custom_components.v2g"):
        for _ in range(2):
            async_dispatcher_send(hass, mqtt.MQTT_CONNECTION_STATE, False)
            await hass.async_block_till_done()
        assert hass.states.get("sensor.v1_setpoint").state == STATE_UNAVAILABLE
        assert hass.states.get("sensor.depot_dispatches").state == STATE_UNAVAILABLE
        assert hass.states.get("event.v1_dispatch_outcome").state == STATE_UNAVAILABLE
        for _ in range(2):
            async_dispatcher_send(hass, mqtt.MQTT_CONNECTION_STATE, True)
            await hass.async_block_till_done()
    assert hass.states.get("sensor.v1_setpoint").state == "0.0"
    assert hass.states.get("sensor.depot_dispatches").state == "0"
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert sum("disconnected" in m for m in messages) == 1
    assert sum("connected again" in m for m in messages) == 1


async def test_restart_keeps_fleet_metrics_and_log(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, hass_storage: dict[str, Any]
) -> None:
    entry = await async_setup_fleet(hass, options=FAST)
    await async_announce(hass, ("v1", {}), ("v2", {}))
    FleetResponder(hass, fleet_mqtt)
    response = await async_dispatch(hass, signal_type="FCR", power_kw=10)
    first_run = entry.runtime_data
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    assert FLEET_STORE in hass_storage
    assert LOG_STORE in hass_storage

    await async_setup_fleet(hass, entry=entry)
    assert entry.runtime_data is not first_run
    log = await async_dispatch_log(hass)
    assert [e["dispatch_id"] for e in log] == [response["dispatch_id"]]
    assert hass.states.get("sensor.depot_dispatches").state == "1"
    assert hass.states.get("sensor.depot_last_dispatch_status").state == "completed"
    assert float(hass.states.get("sensor.v1_setpoint").state) > 0
    assert hass.states.get("sensor.v1_ack_rate").state == "100.0"
    assert hass.states.get("sensor.v2_ack_rate").state == "100.0"
    # The dispatcher plans with the restored vehicles.
    plan = await async_dispatch(hass, signal_type="FCR", power_kw=10, dry_run=True)
    assert set(plan["vehicles"]) == {"v1", "v2"}


async def test_in_flight_marker_becomes_interrupted(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, hass_storage: dict[str, Any]
) -> None:
    started = "2026-03-01T12:00:00+00:00"
    _stored(
        hass_storage,
        IN_FLIGHT_STORE,
        {
            "dispatches": {
                "d1": {
                    "dispatch_id": "d1",
                    "signal": {
                        "type": "FCR",
                        "power_kw": 20.0,
                        "duration_s": 900.0,
                        "start": started,
                    },
                    "strategy": "optimal",
                    "phase": "waiting",
                    "started_at": started,
                    "updated_at": "2026-03-01T12:00:03+00:00",
                    "excluded": {"v9": "not_v2g"},
                    "requested_kw": 20.0,
                    "assigned_kw": 20.0,
                    "vehicles": {
                        "v1": {
                            "power_kw": 10.0,
                            "status": "acknowledged",
                            "latency_ms": 12.0,
                            "command_id": "c1",
                            "reason": None,
                            "score": 0.5,
                            "delivered_kw": 10.0,
                        },
                        "v2": {
                            "power_kw": 10.0,
                            "status": "pending",
                            "latency_ms": None,
                            "command_id": "c2",
                            "reason": None,
                            "score": 0.5,
                            "delivered_kw": 0.0,
                        },
                    },
                    "fallback": {},
                },
                "broken": {"dispatch_id": "broken", "vehicles": {"v3": {}}},
            }
        },
    )
    events = async_capture_events(hass, EVENT_DISPATCH_COMPLETED)
    await async_setup_fleet(hass)
    log = await async_dispatch_log(hass)
    assert [e["dispatch_id"] for e in log] == ["d1", "broken"]
    first = log[0]
    assert first["status"] == "interrupted"
    assert first["signal"]["type"] == "FCR"
    assert first["vehicles"]["v1"]["status"] == "acknowledged"
    assert first["vehicles"]["v2"]["status"] == "timeout"
    assert first["acknowledged_kw"] == 10.0
    assert first["excluded"] == {"v9": "not_v2g"}
    assert first["completed_at"] == "2026-03-01T12:00:03+00:00"
    assert log[1]["status"] == "interrupted"
    assert log[1]["vehicles"]["v3"]["status"] == "timeout"
    assert [e.data["status"] for e in events] == ["interrupted", "interrupted"]
    assert _in_flight(hass_storage) == []
    assert hass.states.get("sensor.depot_last_dispatch_status").state == "interrupted"


async def test_unload_during_dispatch_records_interrupted(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, hass_storage: dict[str, Any]
) -> None:
    entry = await async_setup_fleet(hass)
    await async_announce(hass, ("v1", {}))
    FleetResponder(hass, fleet_mqtt, default="ignore")
    events = async_capture_events(hass, EVENT_DISPATCH_COMPLETED)
    task = hass.async_create_task(async_dispatch(hass, signal_type="FCR", power_kw=5))
    await asyncio.sleep(0.05)
    # The orders were written to disk before they were published.
    (record,) = _in_flight(hass_storage)
    assert record["phase"] == "publishing"
    assert record["vehicles"]["v1"]["status"] == "pending"
    # Home Assistant stopping saves what the running dispatch knows now.
    hass.bus.async_fire(EVENT_HOMEASSISTANT_STOP)
    await asyncio.sleep(0.01)
    (record,) = _in_flight(hass_storage)
    assert record["phase"] == "waiting"
    assert record["vehicles"]["v1"]["status"] == "pending"

    assert await hass.config_entries.async_unload(entry.entry_id)
    with pytest.raises(HomeAssistantError) as err:
        await task
    assert err.value.translation_key == "dispatch_interrupted"
    assert [e.data["status"] for e in events] == ["interrupted"]
    assert events[0].data["vehicles"]["v1"]["status"] == "timeout"
    log = hass_storage[LOG_STORE]["data"]["entries"]
    assert [e["status"] for e in log] == ["interrupted"]
    assert log[0]["vehicles"]["v1"]["status"] == "timeout"
    assert _in_flight(hass_storage) == []


async def test_in_flight_refreshed_by_housekeeping(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, hass_storage: dict[str, Any]
) -> None:
    entry = await async_setup_fleet(hass, options={CONF_ACK_TIMEOUT: 60})
    await async_announce(hass, ("v1", {}))
    FleetResponder(hass, fleet_mqtt, default="ignore")
    task = hass.async_create_task(async_dispatch(hass, signal_type="FCR", power_kw=5))
    await asyncio.sleep(0.05)
    (before,) = _in_flight(hass_storage)
    assert before["phase"] == "publishing"
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=31))
    await asyncio.sleep(0.01)
    (record,) = _in_flight(hass_storage)
    assert record["phase"] == "waiting"
    assert record["updated_at"] > before["updated_at"]
    # The caller gives up (a script stopped): the cancellation goes through.
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert entry.state is ConfigEntryState.LOADED


VEHICLE_SUBENTRY = ConfigSubentryData(
    data={
        "vehicle_id": "van-1",
        "max_power_kw": 11.0,
        "battery_kwh": 75.0,
        "is_v2g": True,
        "soc_entity": "sensor.van_soc",
        "plugged_entity": "binary_sensor.van_plug",
    },
    subentry_type="vehicle",
    title="Van 1",
    unique_id="van-1",
)


async def test_vehicle_subentry_follows_entities(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    entity_registry: er.EntityRegistry,
    device_registry: dr.DeviceRegistry,
    hass_client: ClientSessionGenerator,
    hass_ws_client: WebSocketGenerator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # HTTP routes before the first client (frozen once one started, 2026.11).
    for component in ("diagnostics", "websocket_api"):
        assert await async_setup_component(hass, component, {})
    assert await async_setup_component(hass, "config", {})
    hass.states.async_set("sensor.van_soc", "64", {"unit_of_measurement": "%"})
    hass.states.async_set("binary_sensor.van_plug", "on")
    entry = await async_setup_fleet(hass, subentries=[VEHICLE_SUBENTRY])
    diagnostics = await async_diagnostics(hass, hass_client, entry)
    van = _vehicle(diagnostics, "van-1")
    assert van["max_power_kw"] == 11.0
    assert van["battery_kwh"] == 75.0
    assert hass.states.get("sensor.van_1_state_of_charge").state == "64.0"
    assert hass.states.get("binary_sensor.van_1_plugged_in").state == "on"
    subentry_id = next(iter(entry.subentries))
    registry_entry = entity_registry.async_get("sensor.van_1_state_of_charge")
    assert registry_entry is not None
    assert registry_entry.config_subentry_id == subentry_id

    hass.states.async_set("sensor.van_soc", "20")
    hass.states.async_set("binary_sensor.van_plug", "off")
    await async_settle(hass)
    assert hass.states.get("sensor.van_1_state_of_charge").state == "20.0"
    assert hass.states.get("binary_sensor.van_1_plugged_in").state == "off"
    hass.states.async_set("sensor.van_soc", "garbage")
    await async_settle(hass)
    assert hass.states.get("sensor.van_1_state_of_charge").state == "20.0"

    # Discovery answers keep the settings entered by hand.
    async_fire_mqtt_message(
        hass,
        "v2g/fleet/response/van-1",
        vehicle_payload("van-1", MaxPower=3.0, SoC=0.9),
    )
    await async_settle(hass)
    diagnostics = await async_diagnostics(hass, hass_client, entry)
    assert _vehicle(diagnostics, "van-1")["max_power_kw"] == 11.0
    assert diagnostics["fleet"]["manual"] == ["van-1"]
    assert diagnostics["fleet"]["stale_ids"] == []

    # A device added by hand is removed with its subentry, not by hand.
    device = find_device(device_registry, (DOMAIN, f"{ENTRY_ID}_van-1"))
    assert device is not None
    client = await hass_ws_client(hass)
    with caplog.at_level(logging.INFO, logger="custom_components.v2g"):
        await client.send_json_auto_id(
            {
                "type": "config/device_registry/remove_config_entry",
                "config_entry_id": entry.entry_id,
                "device_id": device.id,
            }
        )
        assert not (await client.receive_json())["success"]
    assert "Vehicle van-1 was added by hand" in caplog.text
    assert device_registry.async_get(device.id) is not None

    hass.config_entries.async_remove_subentry(entry, subentry_id)
    await async_settle(hass)
    diagnostics = await async_diagnostics(hass, hass_client, entry)
    assert diagnostics["fleet"]["vehicles"] == 0
    assert diagnostics["fleet"]["manual"] == []
    assert hass.states.get("sensor.van_1_state_of_charge") is None


async def test_subentry_added_at_runtime(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
) -> None:
    entry = await async_setup_fleet(hass)
    bare = ConfigSubentryData(
        data={"vehicle_id": "car-9", "max_power_kw": 7.0, "battery_kwh": 50.0},
        subentry_type="vehicle",
        title="Car 9",
        unique_id="car-9",
    )
    hass.config_entries.async_add_subentry(entry, ConfigSubentry(**bare))
    await async_settle(hass)
    diagnostics = await async_diagnostics(hass, hass_client, entry)
    assert diagnostics["fleet"]["manual"] == ["car-9"]
    # Known by hand only: unavailable (stale) and unknown SoC until it talks.
    assert diagnostics["fleet"]["stale_ids"] == ["car-9"]
    assert hass.states.get("sensor.car_9_setpoint").state == STATE_UNAVAILABLE
    async_fire_mqtt_message(hass, "v2g/vehicle/state/car-9", json.dumps({"soc": 0.5}))
    await async_settle(hass)
    assert hass.states.get("sensor.car_9_state_of_charge").state == "50.0"
    assert hass.states.get("sensor.car_9_setpoint").state == "0.0"


async def test_optional_vehicle_sensors(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await async_setup_fleet(
        hass,
        options={
            CONF_EMISSION_FACTOR: 50.0,
            CONF_PREDICTION: "static_profile",
            CONF_PREDICTION_PROFILE: ",".join(["50"] * 24),
            **FAST,
        },
    )
    await async_announce(hass, ("v1", {}))
    FleetResponder(hass, fleet_mqtt)
    await async_dispatch(hass, signal_type="aFRR", power_kw=7)
    await hass.async_block_till_done()
    assert hass.states.get("sensor.v1_availability_forecast").state == "50.0"
    assert hass.states.get("sensor.v1_energy_discharged").state == "0.0"

    # An hour later (wall clock), housekeeping integrates the energy. The
    # loop's clock is left alone: the vehicle has not been silent for an hour.
    later = dt_util.utcnow() + timedelta(hours=1)
    with patch.object(dt_util, "utcnow", return_value=later):
        async_fire_time_changed(hass, later)
        # Housekeeping runs as a background task.
        await hass.async_block_till_done(wait_background_tasks=True)
    assert hass.states.get("sensor.v1_setpoint").state == "0.0"  # expired
    # 7 kW until the order expires, 15 minutes after it was sent.
    discharged = float(hass.states.get("sensor.v1_energy_discharged").state)
    assert discharged == pytest.approx(1.75, rel=0.01)
    assert float(hass.states.get("sensor.v1_co2_avoided").state) == pytest.approx(
        discharged * 50, rel=0.01
    )


async def test_bad_prediction_profile_is_ignored(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await async_setup_fleet(
        hass,
        options={CONF_PREDICTION: "static_profile", CONF_PREDICTION_PROFILE: "1,2"},
    )
    await async_announce(hass, ("v1", {}))
    assert "Ignoring the availability profile" in caplog.text
    # No prediction: the forecast sensor exists, without a value.
    assert hass.states.get("sensor.v1_availability_forecast").state == STATE_UNKNOWN
    plan = await async_dispatch(hass, signal_type="aFRR", power_kw=2, dry_run=True)
    assert set(plan["vehicles"]) == {"v1"}


async def test_corrupt_store_is_ignored(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_storage: dict[str, Any],
    hass_client: ClientSessionGenerator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _stored(
        hass_storage,
        FLEET_STORE,
        {
            "fleet": {"version": 99},
            "last_seen": {"ghost": "x"},
            "soc_known": ["ghost"],
            "metrics": {"version": 1, "dispatches": "many"},
        },
    )
    entry = await async_setup_fleet(hass)
    assert "Ignoring the saved fleet state" in caplog.text
    diagnostics = await async_diagnostics(hass, hass_client, entry)
    assert diagnostics["fleet"]["vehicles"] == 0
    assert diagnostics["metrics"]["dispatches"] == 0
    assert hass.states.get("sensor.depot_dispatches").state == "0"
    assert hass.states.get("sensor.ghost_setpoint") is None


async def test_metrics_roundtrip_and_window(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_storage: dict[str, Any],
    hass_client: ClientSessionGenerator,
) -> None:
    """The dispatch totals survive restarts; the 24 h ack rate forgets old ones."""
    now = dt_util.utcnow()
    _stored(
        hass_storage,
        FLEET_STORE,
        {
            "metrics": {
                "version": 1,
                "dispatches": 2,
                "orders_sent": 3,
                "orders_acknowledged": 2,
                "publish_failures": 1,
                # (completed at, acknowledged, sent): one 25 h old, one 1 h old.
                "window": [
                    [(now - timedelta(hours=25)).timestamp(), 1, 1],
                    [(now - timedelta(hours=1)).timestamp(), 1, 2],
                ],
                "latencies_ms": [500.0, 1000.0],
                "last": {"status": "partial", "ack_rate": 0.5},
            }
        },
    )
    entry = await async_setup_fleet(hass, options={**FAST, CONF_FALLBACK: "none"})

    def fleet_sensors() -> dict[str, str]:
        return {
            key: hass.states.get(f"sensor.depot_{key}").state
            for key in (
                "dispatches",
                "orders_sent",
                "orders_acknowledged",
                "publish_failures",
                "ack_rate_24_h",
                "ack_latency_p95",
                "last_dispatch_status",
            )
        }

    # The dispatch of 25 h ago is out of the 24 h rate: 1 of 2 orders.
    assert fleet_sensors() == {
        "dispatches": "2",
        "orders_sent": "3",
        "orders_acknowledged": "2",
        "publish_failures": "1",
        "ack_rate_24_h": "50.0",
        "ack_latency_p95": "1000.0",
        "last_dispatch_status": "partial",
    }

    # One order acknowledged, one never answered, one that cannot be published.
    await async_announce(hass, ("v1", {}), ("v2", {}), ("v3", {}))
    FleetResponder(hass, fleet_mqtt, {"v2": "ignore", "v3": "fail"})
    response = await async_dispatch(
        hass, signal_type="aFRR", power_kw=9, strategy="equal"
    )
    assert {vid: o["status"] for vid, o in response["vehicles"].items()} == {
        "v1": "acknowledged",
        "v2": "timeout",
        "v3": "publish_failed",
    }
    await hass.async_block_till_done()
    # A dry run is shown as the last dispatch, not counted.
    await async_dispatch(hass, signal_type="aFRR", power_kw=9, dry_run=True)
    await hass.async_block_till_done()
    expected = {
        "dispatches": "3",
        "orders_sent": "5",
        "orders_acknowledged": "3",
        "publish_failures": "2",
        # 1 h ago 1 of 2, now 1 of 2 (the failed publish was never sent).
        "ack_rate_24_h": "50.0",
        # Nearest rank of 3 samples: the largest (the new one is milliseconds).
        "ack_latency_p95": "1000.0",
        "last_dispatch_status": "planned",
    }
    assert fleet_sensors() == expected
    metrics = (await async_diagnostics(hass, hass_client, entry))["metrics"]
    assert metrics["dispatches_24h"] == 2

    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    saved = hass_storage[FLEET_STORE]["data"]["metrics"]
    assert len(saved["window"]) == 2
    assert saved["dispatches"] == metrics["dispatches"]
    assert saved["last"] == metrics["last"]
    await async_setup_fleet(hass, entry=entry)
    assert fleet_sensors() == expected
    assert (await async_diagnostics(hass, hass_client, entry))["metrics"] == metrics


async def test_runtime_timers_cancelled_on_close(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An ack deadline still running at unload never fires into the fleet."""
    entry = await async_setup_fleet(hass, options={CONF_ACK_TIMEOUT: 60})
    await async_announce(hass, ("v1", {}))
    responder = FleetResponder(hass, fleet_mqtt, default="ignore")
    task = hass.async_create_task(async_dispatch(hass, signal_type="FCR", power_kw=5))
    await asyncio.sleep(0.05)
    assert len(responder.orders) == 1
    assert await hass.config_entries.async_unload(entry.entry_id)
    with pytest.raises(HomeAssistantError):
        await task
    await hass.async_block_till_done()

    changes = async_capture_events(hass, EVENT_STATE_CHANGED)
    completed = async_capture_events(hass, EVENT_DISPATCH_COMPLETED)
    publishes = len(responder.publishes)
    with caplog.at_level(logging.DEBUG, logger="custom_components.v2g"):
        caplog.clear()
        # Past the ack deadline, the retries, housekeeping and the stores' delays.
        async_fire_time_changed(hass, dt_util.utcnow() + timedelta(hours=1))
        await hass.async_block_till_done()
    assert changes == []
    assert completed == []
    assert len(responder.publishes) == publishes
    assert not [r for r in caplog.records if r.name.startswith("custom_components")]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_remove_entry_deletes_stores(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, hass_storage: dict[str, Any]
) -> None:
    entry = await async_setup_fleet(hass, options=FAST)
    await async_announce(hass, ("v1", {}))
    FleetResponder(hass, fleet_mqtt)
    await async_dispatch(hass, signal_type="FCR", power_kw=5)
    assert await hass.config_entries.async_remove(entry.entry_id)
    await hass.async_block_till_done()
    assert not [key for key in hass_storage if key.startswith(f"v2g.{ENTRY_ID}")]


async def test_second_entry_is_independent(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
) -> None:
    first = await async_setup_fleet(hass)
    other = MockConfigEntry(
        domain=DOMAIN,
        title="Other",
        data={"ack_topic": "other/{vehicle_id}/ack"},
    )
    other.add_to_hass(hass)
    assert await hass.config_entries.async_setup(other.entry_id)
    await hass.async_block_till_done()
    await flush_subscriptions(hass)

    # Each fleet hears its own ack topic only.
    async_fire_mqtt_message(hass, "other/v1/ack", "{broken")
    async_fire_mqtt_message(hass, "vehicle/v1/ack", "{broken")
    async_fire_mqtt_message(hass, "vehicle/v2/ack", "{broken")
    await hass.async_block_till_done()
    first_diagnostics = await async_diagnostics(hass, hass_client, first)
    other_diagnostics = await async_diagnostics(hass, hass_client, other)
    assert first_diagnostics["dropped_input"] == {"ack_malformed": 2}
    assert other_diagnostics["dropped_input"] == {"ack_malformed": 1}
    assert other_diagnostics["topics"]["ack_topic"] == "other/{vehicle_id}/ack"
    assert hass.states.get("sensor.other_dispatches") is not None


async def test_interrupted_on_unload_is_counted_after_restart(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = await async_setup_fleet(hass)
    await async_announce(hass, ("v1", {}))
    FleetResponder(hass, fleet_mqtt, default="ignore")
    task = hass.async_create_task(async_dispatch(hass, signal_type="FCR", power_kw=5))
    await asyncio.sleep(0.05)
    assert await hass.config_entries.async_unload(entry.entry_id)
    with pytest.raises(HomeAssistantError):
        await task
    await async_setup_fleet(hass, entry=entry)
    assert hass.states.get("sensor.depot_dispatches").state == "1"
    assert hass.states.get("sensor.depot_last_dispatch_status").state == "interrupted"
