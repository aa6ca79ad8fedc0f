"""Fleet runtime: telemetry, bad input, staleness, MQTT loss, persistence, subentries."""

from __future__ import annotations

import asyncio
from datetime import timedelta
import json
import logging
from typing import Any
from unittest.mock import patch

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigSubentryData
from homeassistant.const import EVENT_HOMEASSISTANT_STOP, STATE_UNAVAILABLE
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
    MqttMockHAClient,
    WebSocketGenerator,
)

from custom_components.v2g.const import (
    CONF_ACK_TIMEOUT,
    CONF_EMISSION_FACTOR,
    CONF_PREDICTION,
    CONF_PREDICTION_PROFILE,
    CONF_STALE_TIMEOUT,
    CONF_TELEMETRY_MODE,
    DOMAIN,
    EVENT_DISPATCH_COMPLETED,
    MAX_VEHICLE_PAYLOAD_BYTES,
)
from custom_components.v2g.coordinator import DispatchMetrics, HassRuntime
from custom_components.v2g.engine import MAX_GATEWAY_PAYLOAD_BYTES

from .helpers import (
    ENTRY_ID,
    FleetResponder,
    async_announce,
    async_setup_fleet,
    vehicle_payload,
)

FAST = {CONF_ACK_TIMEOUT: 0.05}


async def _settle(hass: HomeAssistant, seconds: float = 2) -> None:
    """Run the coalescing debouncer (and anything due within ``seconds``)."""
    await hass.async_block_till_done()
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=seconds))
    await hass.async_block_till_done()


async def test_push_telemetry_updates_entities(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = await async_setup_fleet(hass)
    await async_announce(hass, ("v1", {"SoC": 0.8}))
    assert hass.states.get("sensor.v1_state_of_charge").state == "80.0"

    async_fire_mqtt_message(
        hass,
        "v2g/vehicle/state/v1",
        json.dumps({"soc": 0.42, "available": False, "ts": 1_700_000_000}),
    )
    await _settle(hass)
    assert hass.states.get("sensor.v1_state_of_charge").state == "42.0"
    assert hass.states.get("binary_sensor.v1_plugged_in").state == "off"

    # Telemetry from a vehicle never seen before adds it (with entities).
    async_fire_mqtt_message(
        hass, "v2g/vehicle/state/newcomer", json.dumps({"soc": 0.3, "available": True})
    )
    await _settle(hass)
    assert hass.states.get("sensor.newcomer_state_of_charge").state == "30.0"
    assert "newcomer" in entry.runtime_data.fleet.vehicles


async def test_telemetry_is_coalesced(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = await async_setup_fleet(hass)
    await async_announce(hass, ("v1", {}))
    coordinator = entry.runtime_data
    with patch.object(
        coordinator, "async_set_updated_data", wraps=coordinator.async_set_updated_data
    ) as updates:
        for soc in range(50):
            async_fire_mqtt_message(
                hass, "v2g/vehicle/state/v1", json.dumps({"soc": soc / 100})
            )
        await _settle(hass)
    assert updates.call_count == 1
    assert hass.states.get("sensor.v1_state_of_charge").state == "49.0"


async def test_pull_telemetry_polls(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await async_setup_fleet(hass, options={CONF_TELEMETRY_MODE: "pull"})
    await async_announce(hass, ("v1", {}))
    responder = FleetResponder(hass, fleet_mqtt)
    await _settle(hass, seconds=11)
    assert responder.payloads("v2g/telemetry/request") == ["poll"]
    async_fire_mqtt_message(
        hass, "v2g/telemetry/response/v1", json.dumps({"vehicle_id": "v1", "soc": 0.25})
    )
    await _settle(hass)
    assert hass.states.get("sensor.v1_state_of_charge").state == "25.0"
    # No poll while the broker is away; a failing poll is only logged.
    async_dispatcher_send(hass, mqtt.MQTT_CONNECTION_STATE, False)
    await _settle(hass, seconds=11)
    assert responder.payloads("v2g/telemetry/request") == ["poll"]
    async_dispatcher_send(hass, mqtt.MQTT_CONNECTION_STATE, True)
    fleet_mqtt.async_publish.side_effect = HomeAssistantError("down")
    await _settle(hass, seconds=11)


async def test_bad_input_is_counted_and_logged_once(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
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
        await _settle(hass)
    counters = entry.runtime_data.counters
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
    tracker = entry.runtime_data.engine.tracker
    assert tracker.counters["unknown"] == 1
    assert tracker.counters["invalid_items"] == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    # One warning per kind and reason, the repeats at debug level.
    assert len(warnings) == len(counters)
    assert "v9" not in entry.runtime_data.fleet.vehicles
    # Nothing broke: a valid message still works.
    async_fire_mqtt_message(hass, "v2g/vehicle/state/v1", json.dumps({"soc": 0.5}))
    await _settle(hass)
    assert hass.states.get("sensor.v1_state_of_charge").state == "50.0"


async def test_unexpected_handler_error_never_raises(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = await async_setup_fleet(hass)
    coordinator = entry.runtime_data
    with patch.object(
        coordinator.engine, "handle_ack", side_effect=RuntimeError("bug")
    ):
        async_fire_mqtt_message(hass, "vehicle/v1/ack", "{}")
        await hass.async_block_till_done()
    assert coordinator.counters == {"ack_error": 1}


async def test_stale_vehicle_unavailable_and_removable(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_ws_client: WebSocketGenerator,
    device_registry: dr.DeviceRegistry,
) -> None:
    assert await async_setup_component(hass, "config", {})
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

    v1 = device_registry.async_get_device(identifiers={(DOMAIN, f"{ENTRY_ID}_v1")})
    fleet = device_registry.async_get_device(identifiers={(DOMAIN, ENTRY_ID)})
    assert v1 is not None
    assert fleet is not None
    assert v1.via_device_id == fleet.id
    assert not await remove(v1.id)  # fresh: not removable

    await asyncio.sleep(0.1)
    async_fire_mqtt_message(hass, "v2g/vehicle/state/v2", json.dumps({"soc": 0.5}))
    await _settle(hass, seconds=31)  # housekeeping notices the silence
    assert hass.states.get("sensor.v1_setpoint").state == STATE_UNAVAILABLE
    assert hass.states.get("sensor.v2_setpoint").state == "0.0"
    assert hass.states.get("sensor.depot_vehicles_available").state == "1"

    assert not await remove(fleet.id)  # the fleet device stays
    assert await remove(v1.id)
    await hass.async_block_till_done()
    assert "v1" not in entry.runtime_data.fleet.vehicles
    assert device_registry.async_get(v1.id) is None
    assert hass.states.get("sensor.v1_setpoint") is None
    # It comes back if it talks again.
    await async_announce(hass, ("v1", {}))
    assert hass.states.get("sensor.v1_setpoint").state == "0.0"


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
    response = await hass.services.async_call(
        DOMAIN,
        "dispatch",
        {"config_entry_id": ENTRY_ID, "signal_type": "FCR", "power_kw": 10},
        blocking=True,
        return_response=True,
    )
    assert response is not None
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    assert f"v2g.{ENTRY_ID}.fleet" in hass_storage
    assert f"v2g.{ENTRY_ID}.dispatch_log" in hass_storage

    await async_setup_fleet(hass, entry=entry)
    coordinator = entry.runtime_data
    assert set(coordinator.fleet.vehicles) == {"v1", "v2"}
    assert coordinator.engine.fleet is coordinator.fleet
    assert [e["dispatch_id"] for e in coordinator.dispatch_log.query()] == [
        response["dispatch_id"]
    ]
    assert hass.states.get("sensor.depot_dispatches").state == "1"
    assert hass.states.get("sensor.depot_last_dispatch_status").state == "completed"
    assert float(hass.states.get("sensor.v1_setpoint").state) > 0
    assert hass.states.get("sensor.v1_ack_rate").state == "100.0"


async def test_in_flight_marker_becomes_interrupted(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, hass_storage: dict[str, Any]
) -> None:
    started = "2026-03-01T12:00:00+00:00"
    hass_storage[f"v2g.{ENTRY_ID}.in_flight"] = {
        "version": 1,
        "minor_version": 1,
        "key": f"v2g.{ENTRY_ID}.in_flight",
        "data": {
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
    }
    events = async_capture_events(hass, EVENT_DISPATCH_COMPLETED)
    entry = await async_setup_fleet(hass)
    log = entry.runtime_data.dispatch_log.query()
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
    assert hass_storage[f"v2g.{ENTRY_ID}.in_flight"]["data"] == {"dispatches": {}}
    assert hass.states.get("sensor.depot_last_dispatch_status").state == "interrupted"


async def test_unload_during_dispatch_records_interrupted(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = await async_setup_fleet(hass)
    await async_announce(hass, ("v1", {}))
    FleetResponder(hass, fleet_mqtt, default="ignore")
    task = hass.async_create_task(
        hass.services.async_call(
            DOMAIN,
            "dispatch",
            {"config_entry_id": ENTRY_ID, "signal_type": "FCR", "power_kw": 5},
            blocking=True,
            return_response=True,
        )
    )
    await asyncio.sleep(0.05)
    coordinator = entry.runtime_data
    assert coordinator.in_flight.running
    # Home Assistant stopping saves what the running dispatch knows.
    hass.bus.async_fire(EVENT_HOMEASSISTANT_STOP)
    await asyncio.sleep(0)
    assert coordinator.in_flight.running[0]["vehicles"]["v1"]["status"] == "pending"
    assert await hass.config_entries.async_unload(entry.entry_id)
    with pytest.raises(HomeAssistantError) as err:
        await task
    assert err.value.translation_key == "dispatch_interrupted"
    log = coordinator.dispatch_log.query()
    assert [e["status"] for e in log] == ["interrupted"]
    assert log[0]["vehicles"]["v1"]["status"] == "timeout"


async def test_in_flight_refreshed_by_housekeeping(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = await async_setup_fleet(hass, options={CONF_ACK_TIMEOUT: 60})
    await async_announce(hass, ("v1", {}))
    FleetResponder(hass, fleet_mqtt, default="ignore")
    coordinator = entry.runtime_data
    task = hass.async_create_task(
        coordinator.async_dispatch("FCR", 5.0, 900.0), eager_start=True
    )
    await asyncio.sleep(0.05)
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=31))
    await asyncio.sleep(0)
    record = coordinator.in_flight.running[0]
    assert record["phase"] == "waiting"
    assert "updated_at" in record
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


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
) -> None:
    hass.states.async_set("sensor.van_soc", "64", {"unit_of_measurement": "%"})
    hass.states.async_set("binary_sensor.van_plug", "on")
    entry = await async_setup_fleet(hass, subentries=[VEHICLE_SUBENTRY])
    coordinator = entry.runtime_data
    vehicle = coordinator.fleet.vehicles["van-1"]
    assert vehicle.max_power_kw == 11.0
    assert vehicle.battery_kwh == 75.0
    assert hass.states.get("sensor.van_1_state_of_charge").state == "64.0"
    assert hass.states.get("binary_sensor.van_1_plugged_in").state == "on"
    subentry_id = next(iter(entry.subentries))
    registry_entry = entity_registry.async_get("sensor.van_1_state_of_charge")
    assert registry_entry is not None
    assert registry_entry.config_subentry_id == subentry_id

    hass.states.async_set("sensor.van_soc", "20")
    hass.states.async_set("binary_sensor.van_plug", "off")
    await _settle(hass)
    assert hass.states.get("sensor.van_1_state_of_charge").state == "20.0"
    assert hass.states.get("binary_sensor.van_1_plugged_in").state == "off"
    hass.states.async_set("sensor.van_soc", "garbage")
    await _settle(hass)
    assert hass.states.get("sensor.van_1_state_of_charge").state == "20.0"

    # Discovery answers keep the settings entered by hand.
    async_fire_mqtt_message(
        hass,
        "v2g/fleet/response/van-1",
        vehicle_payload("van-1", MaxPower=3.0, SoC=0.9),
    )
    await _settle(hass)
    assert coordinator.fleet.vehicles["van-1"].max_power_kw == 11.0

    # A device added by hand is removed with its subentry, not by hand.
    assert not coordinator.is_stale("van-1")
    assert coordinator.is_manual("van-1")
    hass.config_entries.async_remove_subentry(entry, subentry_id)
    await _settle(hass)
    assert "van-1" not in coordinator.fleet.vehicles
    assert hass.states.get("sensor.van_1_state_of_charge") is None


async def test_subentry_added_at_runtime(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = await async_setup_fleet(hass)
    bare = ConfigSubentryData(
        data={"vehicle_id": "car-9", "max_power_kw": 7.0, "battery_kwh": 50.0},
        subentry_type="vehicle",
        title="Car 9",
        unique_id="car-9",
    )
    from homeassistant.config_entries import ConfigSubentry

    hass.config_entries.async_add_subentry(entry, ConfigSubentry(**bare))
    await _settle(hass)
    assert "car-9" in entry.runtime_data.fleet.vehicles
    # Known by hand only: unavailable (stale) and unknown SoC until it talks.
    assert hass.states.get("sensor.car_9_setpoint").state == STATE_UNAVAILABLE
    async_fire_mqtt_message(hass, "v2g/vehicle/state/car-9", json.dumps({"soc": 0.5}))
    await _settle(hass)
    assert hass.states.get("sensor.car_9_state_of_charge").state == "50.0"


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
    await hass.services.async_call(
        DOMAIN,
        "dispatch",
        {"config_entry_id": ENTRY_ID, "signal_type": "aFRR", "power_kw": 7},
        blocking=True,
    )
    await hass.async_block_till_done()
    assert hass.states.get("sensor.v1_availability_forecast").state == "50.0"
    with patch(
        "custom_components.v2g.coordinator.dt_util.utcnow",
        return_value=dt_util.utcnow() + timedelta(hours=1),
    ):
        entry = hass.config_entries.async_get_entry(ENTRY_ID)
        assert entry is not None
        entry.runtime_data.async_update_now()
    await hass.async_block_till_done()
    # 7 kW until the order expires, 15 minutes after it was sent.
    discharged = float(hass.states.get("sensor.v1_energy_discharged").state)
    assert discharged == pytest.approx(1.75, rel=0.01)
    assert float(hass.states.get("sensor.v1_co2_avoided").state) == pytest.approx(
        discharged * 50, rel=0.01
    )


async def test_bad_prediction_profile_is_ignored(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = await async_setup_fleet(
        hass,
        options={CONF_PREDICTION: "static_profile", CONF_PREDICTION_PROFILE: "1,2"},
    )
    assert entry.runtime_data.prediction is None


async def test_corrupt_store_is_ignored(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, hass_storage: dict[str, Any]
) -> None:
    hass_storage[f"v2g.{ENTRY_ID}.fleet"] = {
        "version": 1,
        "minor_version": 1,
        "key": f"v2g.{ENTRY_ID}.fleet",
        "data": {
            "fleet": {"version": 99},
            "last_seen": {"ghost": "x"},
            "soc_known": ["ghost"],
            "metrics": {"version": 1, "dispatches": "many"},
        },
    }
    entry = await async_setup_fleet(hass)
    assert entry.runtime_data.fleet.vehicles == {}
    assert entry.runtime_data.metrics.dispatches == 0


def test_metrics_roundtrip_and_window() -> None:
    metrics = DispatchMetrics()
    assert metrics.latency_p95() is None
    assert DispatchMetrics.from_dict(None).dispatches == 0
    now = dt_util.utcnow()
    old = (now - timedelta(hours=25)).isoformat()
    metrics.record(
        {"status": "completed", "completed_at": old},
        [{"status": "acknowledged", "latency_ms": 5.0}],
    )
    metrics.record(
        {"status": "partial", "completed_at": now.isoformat()},
        [
            {"status": "acknowledged", "latency_ms": 10.0},
            {"status": "timeout"},
            {"status": "publish_failed"},
        ],
    )
    metrics.record({"status": "planned"}, [{"status": "planned"}])
    assert metrics.ack_rate_24h(now) == 0.5  # the 25 h old one dropped out
    assert metrics.latency_p95() == 10.0
    assert metrics.publish_failures == 1
    assert metrics.last is not None
    assert metrics.last["status"] == "planned"
    again = DispatchMetrics.from_dict(metrics.as_dict())
    assert again.as_dict() == metrics.as_dict()


async def test_runtime_timers_cancelled_on_close(hass: HomeAssistant) -> None:
    runtime = HassRuntime(hass)
    fired: list[int] = []
    runtime.call_later(0, lambda: fired.append(1))
    runtime.call_later(10, lambda: fired.append(2))
    await asyncio.sleep(0.01)
    assert fired == [1]
    runtime.close()
    future = runtime.create_future()
    assert not future.done()
    await runtime.sleep(0)
    assert runtime.now().tzinfo is not None
    assert runtime.monotonic() > 0


async def test_remove_entry_deletes_stores(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, hass_storage: dict[str, Any]
) -> None:
    entry = await async_setup_fleet(hass, options=FAST)
    await async_announce(hass, ("v1", {}))
    FleetResponder(hass, fleet_mqtt)
    await hass.services.async_call(
        DOMAIN,
        "dispatch",
        {"config_entry_id": ENTRY_ID, "signal_type": "FCR", "power_kw": 5},
        blocking=True,
    )
    assert await hass.config_entries.async_remove(entry.entry_id)
    await hass.async_block_till_done()
    assert not [key for key in hass_storage if key.startswith(f"v2g.{ENTRY_ID}")]


async def test_second_entry_is_independent(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await async_setup_fleet(hass)
    other = MockConfigEntry(
        domain=DOMAIN,
        title="Other",
        data={"ack_topic": "other/{vehicle_id}/ack"},
    )
    other.add_to_hass(hass)
    assert await hass.config_entries.async_setup(other.entry_id)
    await hass.async_block_till_done()
    assert other.runtime_data.ack_topic.wildcard == "other/+/ack"


async def test_interrupted_on_unload_is_counted_after_restart(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = await async_setup_fleet(hass)
    await async_announce(hass, ("v1", {}))
    FleetResponder(hass, fleet_mqtt, default="ignore")
    task = hass.async_create_task(
        entry.runtime_data.async_dispatch("FCR", 5.0, 900.0), eager_start=True
    )
    await asyncio.sleep(0.05)
    assert await hass.config_entries.async_unload(entry.entry_id)
    with pytest.raises(HomeAssistantError):
        await task
    await async_setup_fleet(hass, entry=entry)
    assert hass.states.get("sensor.depot_dispatches").state == "1"
    assert hass.states.get("sensor.depot_last_dispatch_status").state == "interrupted"
