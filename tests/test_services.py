"""The actions: dispatch outcomes, discovery, dispatch log, day-ahead plan."""

from __future__ import annotations

import ast
from datetime import timedelta
import json
import logging
import math
from pathlib import Path
import re
from typing import Any
from unittest.mock import patch

from freezegun.api import FrozenDateTimeFactory
from homeassistant.components import mqtt
from homeassistant.components.logbook.const import LOGBOOK_ENTRY_MESSAGE
from homeassistant.core import Event, HomeAssistant
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers.dispatcher import async_dispatcher_send
from homeassistant.helpers.service import async_get_all_descriptions
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_capture_events,
)
from pytest_homeassistant_custom_component.typing import (
    MqttMockHAClient,
    WebSocketGenerator,
)

from custom_components.v2g.const import (
    CONF_ACK_TIMEOUT,
    CONF_FALLBACK,
    DOMAIN,
    EVENT_DISPATCH_COMPLETED,
)
from custom_components.v2g.logbook import async_describe_events
from custom_components.v2g.transport import SubscriptionGate

from .helpers import (
    ENTRY_ID,
    STRINGS,
    FleetResponder,
    async_announce,
    async_setup_fleet,
    find_device,
)

FAST = {CONF_ACK_TIMEOUT: 0.05}
ORDER_KEYS = {
    "command_id",
    "vehicle_id",
    "power_kw",
    "timestamp",
    "dispatch_id",
    "signal_type",
    "duration_s",
    "expires_at",
}


async def _dispatch(hass: HomeAssistant, **data: Any) -> dict[str, Any]:
    response = await hass.services.async_call(
        DOMAIN,
        "dispatch",
        {"config_entry_id": ENTRY_ID, "signal_type": "FCR", **data},
        blocking=True,
        return_response=True,
    )
    assert isinstance(response, dict)
    # The vehicle entities are written just after the response.
    await hass.async_block_till_done()
    return response


async def _fleet(
    hass: HomeAssistant,
    count: int = 2,
    options: dict[str, Any] | None = None,
    **fields: Any,
) -> MockConfigEntry:
    entry = await async_setup_fleet(hass, options={**FAST, **(options or {})})
    await async_announce(hass, *[(f"v{i}", dict(fields)) for i in range(1, count + 1)])
    return entry


async def test_dispatch_all_acknowledged(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass)
    events = async_capture_events(hass, EVENT_DISPATCH_COMPLETED)
    responder = FleetResponder(hass, fleet_mqtt)

    response = await _dispatch(hass, power_kw=12, strategy="equal")

    assert response["status"] == "completed"
    assert response["ack_rate"] == 1.0
    assert response["strategy"] == "equal"
    assert response["requested_kw"] == 12.0
    assert response["acknowledged_kw"] == pytest.approx(12.0)
    assert response["signal"]["type"] == "FCR"
    assert response["signal"]["duration_s"] == 900.0
    assert response["fallback"] == {}
    assert set(response["vehicles"]) == {"v1", "v2"}
    for outcome in response["vehicles"].values():
        assert outcome["status"] == "acknowledged"
        assert outcome["power_kw"] == pytest.approx(6.0)
        assert outcome["latency_ms"] is not None
    # One order per vehicle on its command topic, QoS 1 (option), never retained.
    commands = [p for p in responder.publishes if p[0].endswith("/command")]
    assert sorted(p[0] for p in commands) == [
        "vehicle/v1/command",
        "vehicle/v2/command",
    ]
    for _, payload, qos, retain in commands:
        assert qos == 1
        assert retain is False
        order = json.loads(payload)
        assert set(order) == ORDER_KEYS
        assert order["dispatch_id"] == response["dispatch_id"]
        assert order["signal_type"] == "FCR"
        assert order["expires_at"] == order["timestamp"] + 900_000
    # The bus event carries the response (and the entry it came from).
    assert len(events) == 1
    assert events[0].data == {**response, "config_entry_id": ENTRY_ID}
    # Entities follow once.
    assert hass.states.get("sensor.depot_last_dispatch_status").state == "completed"
    assert hass.states.get("sensor.depot_dispatches").state == "1"
    assert hass.states.get("sensor.depot_orders_sent").state == "2"
    assert hass.states.get("sensor.depot_orders_acknowledged").state == "2"
    assert hass.states.get("sensor.depot_last_dispatch_ack_rate").state == "100.0"
    assert hass.states.get("sensor.depot_last_acknowledged_power").state == "12.0"
    assert hass.states.get("sensor.v1_setpoint").state == "6.0"
    assert hass.states.get("binary_sensor.depot_ack_rate_below_sla").state == "off"


async def test_dispatch_partial_with_fallback_round(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass, count=3)
    responder = FleetResponder(hass, fleet_mqtt, {"v1": "ignore"})

    response = await _dispatch(hass, power_kw=15, strategy="equal")

    assert response["vehicles"]["v1"]["status"] == "timeout"
    # The residual 5 kW is re-allocated and really sent as a second round.
    assert set(response["fallback"]) == {"v2", "v3"}
    for vehicle_id in ("v2", "v3"):
        orders = responder.orders_for(vehicle_id)
        assert len(orders) == 2
        assert orders[1]["power_kw"] == pytest.approx(7.5)
        assert orders[1]["dispatch_id"] == response["dispatch_id"]
        fallback = response["fallback"][vehicle_id]
        assert fallback["status"] == "acknowledged"
        assert fallback["command_id"] == orders[1]["command_id"]
    assert responder.topics().count("vehicle/v2/command") == 2
    assert response["status"] == "completed"
    assert response["acknowledged_kw"] == pytest.approx(15.0)
    # 4 of 5 published orders acknowledged, both rounds counted.
    assert response["ack_rate"] == pytest.approx(0.8)


async def test_dispatch_partial_without_fallback(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass, options={CONF_FALLBACK: "none"})
    FleetResponder(hass, fleet_mqtt, {"v1": "reject"})

    response = await _dispatch(hass, power_kw=12, strategy="equal")

    assert response["status"] == "partial"
    assert response["fallback"] == {}
    assert response["vehicles"]["v1"]["status"] == "rejected"
    assert response["vehicles"]["v1"]["reason"] == "battery too hot"
    assert response["ack_rate"] == 0.5
    assert hass.states.get("sensor.depot_last_dispatch_status").state == "partial"


async def test_dispatch_applied_power_lower_than_ordered(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass, count=1, options={CONF_FALLBACK: "none"})
    FleetResponder(hass, fleet_mqtt, {"v1": ("partial", 2.0)})

    response = await _dispatch(hass, power_kw=6)

    assert response["vehicles"]["v1"]["status"] == "acknowledged"
    assert response["acknowledged_kw"] == pytest.approx(2.0)
    assert response["status"] == "partial"


async def test_dispatch_all_timeout(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass)
    FleetResponder(hass, fleet_mqtt, default="ignore")

    response = await _dispatch(hass, power_kw=-8)

    assert response["status"] == "failed"
    assert {o["status"] for o in response["vehicles"].values()} == {"timeout"}
    assert response["acknowledged_kw"] == 0.0
    assert response["ack_rate"] == 0.0
    assert hass.states.get("binary_sensor.depot_ack_rate_below_sla").state == "on"
    assert hass.states.get("sensor.v1_ack_rate").state == "0.0"


async def test_dispatch_publish_failure(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass)
    FleetResponder(hass, fleet_mqtt, default="fail")

    with patch("custom_components.v2g.engine.DispatchSettings.retry_backoff_s", 0.0):
        response = await _dispatch(hass, power_kw=12)

    assert response["status"] == "failed"
    for outcome in response["vehicles"].values():
        assert outcome["status"] == "publish_failed"
        assert "broker refused" in outcome["reason"]
    # The engine counts failed publishes in the ack-rate denominator.
    assert response["ack_rate"] is None  # nothing was published
    assert hass.states.get("sensor.depot_publish_failures").state == "2"
    assert hass.states.get("sensor.depot_orders_sent").state == "0"


async def test_dry_run_publishes_nothing(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass)
    events = async_capture_events(hass, EVENT_DISPATCH_COMPLETED)
    responder = FleetResponder(hass, fleet_mqtt)

    response = await _dispatch(hass, power_kw=12, dry_run=True)

    assert response["status"] == "planned"
    assert {o["status"] for o in response["vehicles"].values()} == {"planned"}
    assert responder.command_publishes() == []
    assert len(events) == 1
    assert hass.states.get("sensor.depot_last_dispatch_status").state == "planned"
    assert hass.states.get("sensor.depot_dispatches").state == "0"


async def test_zero_power_returns_holders_to_idle(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass, count=3)
    responder = FleetResponder(hass, fleet_mqtt)
    await _dispatch(hass, power_kw=10, vehicles=["v1", "v2"], strategy="equal")
    responder.orders.clear()

    response = await _dispatch(hass, power_kw=0)

    assert response["status"] == "completed"
    assert set(response["vehicles"]) == {"v1", "v2"}
    assert {o["power_kw"] for o in responder.orders} == {0.0}
    assert responder.orders_for("v3") == []
    assert hass.states.get("sensor.v1_setpoint").state == "0.0"


async def test_no_eligible_vehicle(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass, IsV2G=False)
    responder = FleetResponder(hass, fleet_mqtt)

    response = await _dispatch(hass, power_kw=5)

    assert response["status"] == "failed"
    assert response["vehicles"] == {}
    assert response["excluded"] == {"v1": "not_v2g", "v2": "not_v2g"}
    assert responder.command_publishes() == []


async def test_gateway_batches(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass, gateway="depot-1")
    responder = FleetResponder(hass, fleet_mqtt)

    response = await _dispatch(hass, power_kw=12)

    assert response["status"] == "completed"
    assert responder.command_publishes() == ["v2g/gateway/depot-1/commands"]
    batch = json.loads(responder.payloads("v2g/gateway/depot-1/commands")[0])
    assert batch["dispatch_id"] == response["dispatch_id"]
    assert {o["vehicle_id"] for o in batch["orders"]} == {"v1", "v2"}


async def test_dispatch_without_response_and_duration_forms(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass)
    responder = FleetResponder(hass, fleet_mqtt)
    assert (
        await hass.services.async_call(
            DOMAIN,
            "dispatch",
            {
                "config_entry_id": ENTRY_ID,
                "signal_type": "afrr",
                "power_kw": "4",
                "duration": "00:05:00",
            },
            blocking=True,
        )
        is None
    )
    assert (
        json.loads(responder.payloads("vehicle/v1/command")[0])["duration_s"] == 300.0
    )
    response = await _dispatch(hass, power_kw=4, duration=timedelta(seconds=30))
    assert response["signal"]["duration_s"] == 30.0
    assert response["signal"]["type"] == "FCR"


def _assert_names_the_field(
    err: ServiceValidationError, key: str, service: str, field: str | None
) -> str:
    """The refusal is translated and names the field as the action form labels it."""
    assert err.translation_domain == DOMAIN
    assert err.translation_key == key
    template = STRINGS["exceptions"][key]["message"]
    assert set(re.findall(r"{(\w+)}", template)) == set(
        err.translation_placeholders or {}
    )
    message = str(err)
    assert message != key  # translated, not the bare key
    if field is not None:
        label = STRINGS["services"][service]["fields"][field]["name"]
        assert message.startswith(label), message
        if "_" in field:
            assert field not in message, message  # no internal names
    # Plain words: no interval notation such as "(0, 86400]".
    assert not re.search(r"[(\[]\s*-?\d+\s*,\s*-?\d+\s*[)\]]", message), message
    return message


@pytest.mark.parametrize(
    ("data", "key", "field"),
    [
        ({"power_kw": 200_000}, "power_out_of_range", "power_kw"),
        ({"power_kw": -100_000.5}, "power_out_of_range", "power_kw"),
        ({"power_kw": "nan"}, "invalid_power", "power_kw"),
        ({"power_kw": "lots"}, "invalid_power", "power_kw"),
        ({"power_kw": True}, "invalid_power", "power_kw"),
        ({"power_kw": 5, "duration": {"days": 2}}, "invalid_duration", "duration"),
        ({"power_kw": 5, "duration": {"seconds": 0}}, "invalid_duration", "duration"),
        ({"power_kw": 5, "duration": "-00:05:00"}, "invalid_duration", "duration"),
        ({"power_kw": 5, "duration": "soon"}, "invalid_duration_format", "duration"),
        ({"power_kw": 5, "signal_type": "XYZ"}, "invalid_signal_type", "signal_type"),
        ({"power_kw": 5, "strategy": "random"}, "invalid_strategy", "strategy"),
        ({"power_kw": 5, "vehicles": ["v1", "ghost"]}, "unknown_vehicles", "vehicles"),
        ({"power_kw": 5, "dry_run": "maybe"}, "invalid_field", "dry_run"),
        ({"power_kw": 5, "verify": [1]}, "invalid_field", "verify"),
        ({}, "missing_field", "power_kw"),
        ({"power_kw": 5, "speed": 3}, "unknown_field", None),
        (
            {"power_kw": 5, "config_entry_id": "nope"},
            "invalid_config_entry",
            "config_entry_id",
        ),
    ],
)
async def test_dispatch_refusals_name_the_field(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    data: dict[str, Any],
    key: str,
    field: str | None,
) -> None:
    """Each refusal of the Actions form says, in plain words, which field is wrong."""
    await _fleet(hass)
    responder = FleetResponder(hass, fleet_mqtt)
    with pytest.raises(ServiceValidationError) as err:
        await _dispatch(hass, **data)
    _assert_names_the_field(err.value, key, "dispatch", field)
    assert responder.command_publishes() == []


async def test_power_bound_message(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass)
    with pytest.raises(ServiceValidationError) as err:
        await _dispatch(hass, power_kw=200_000)
    assert str(err.value) == (
        "Power must be at most 100,000 kW either way (discharging or charging), "
        "not 200000 kW"
    )
    with pytest.raises(ServiceValidationError) as err:
        await _dispatch(hass, power_kw=5, duration={"hours": 25})
    assert str(err.value) == (
        "Duration must be more than 0 and at most 24 hours, not 90000 seconds"
    )


async def test_response_numbers_carry_no_float_noise(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    """Scores to 4 decimals, kW and ms to 3, whatever the vehicles reported."""
    await async_setup_fleet(hass, options=FAST)
    await async_announce(
        hass,
        *(
            (f"v{i}", {"SoC": 0.6206423999999999 - i / 7, "MaxPower": 7.123456789})
            for i in range(3)
        ),
    )
    FleetResponder(hass, fleet_mqtt)

    response = await _dispatch(hass, power_kw=8.3333333, strategy="smart")

    for order in response["vehicles"].values():
        assert order["score"] == round(order["score"], 4)
        assert order["power_kw"] == round(order["power_kw"], 3)
        assert order["latency_ms"] == round(order["latency_ms"], 3)
    for key in ("requested_kw", "assigned_kw", "shortfall_kw", "acknowledged_kw"):
        assert response[key] == round(response[key], 3)


async def test_refusal_as_the_actions_page_receives_it(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_ws_client: WebSocketGenerator,
) -> None:
    """The frontend calls actions over the websocket: it gets the field's words."""
    await _fleet(hass)
    responder = FleetResponder(hass, fleet_mqtt)
    client = await hass_ws_client(hass)
    await client.send_json(
        {
            "id": 1,
            "type": "call_service",
            "domain": DOMAIN,
            "service": "dispatch",
            "service_data": {
                "config_entry_id": ENTRY_ID,
                "signal_type": "aFRR",
                "power_kw": 200_000,
            },
            "return_response": True,
        }
    )
    answer = await client.receive_json()
    assert not answer["success"]
    error = answer["error"]
    assert error["code"] == "service_validation_error"
    assert error["translation_key"] == "power_out_of_range"
    assert error["translation_domain"] == DOMAIN
    assert error["message"] == (
        "Validation error: Power must be at most 100,000 kW either way "
        "(discharging or charging), not 200000 kW"
    )
    assert responder.command_publishes() == []


async def test_more_power_than_the_fleet_can_give(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Dispatched as far as the fleet goes; response, logbook and log say how far."""
    await _fleet(hass, MaxPower=10.0)
    events = async_capture_events(hass, EVENT_DISPATCH_COMPLETED)
    FleetResponder(hass, fleet_mqtt)

    # The bound itself is accepted: 100 MW is refused only beyond it.
    response = await _dispatch(hass, signal_type="aFRR", power_kw=100_000)

    assert response["requested_kw"] == 100_000.0
    assert response["assigned_kw"] == pytest.approx(20.0)
    assert response["shortfall_kw"] == pytest.approx(99_980.0)
    assert response["status"] == "completed"  # all that was placed was acknowledged
    assert _warnings(caplog) == [
        f"Depot: dispatch {response['dispatch_id']} asked for 100000 kW aFRR; "
        "the fleet could place 20 kW of it (99980 kW short)"
    ]
    [event] = events
    assert _logbook_line(hass, event) == (
        "dispatched 100000 kW aFRR (20 kW placed, 99980 kW short): completed, "
        "100 % acknowledged"
    )

    # Charging: the shortfall is a magnitude.
    caplog.clear()
    response = await _dispatch(hass, power_kw=-50)
    assert response["assigned_kw"] == pytest.approx(-20.0)
    assert response["shortfall_kw"] == pytest.approx(30.0)
    assert len(_warnings(caplog)) == 1
    assert _logbook_line(hass, events[-1]) == (
        "dispatched -50 kW FCR (-20 kW placed, 30 kW short): completed, "
        "100 % acknowledged"
    )

    # What fits leaves no warning and the usual line.
    caplog.clear()
    response = await _dispatch(hass, power_kw=12)
    assert response["shortfall_kw"] == 0.0
    assert _logbook_line(hass, events[-1]) == (
        "dispatched 12 kW FCR: completed, 100 % acknowledged"
    )
    assert _warnings(caplog) == []

    # A dry run says it in its response and logbook line, not in the log.
    response = await _dispatch(hass, power_kw=30, dry_run=True)
    assert response["shortfall_kw"] == pytest.approx(10.0)
    assert _logbook_line(hass, events[-1]) == (
        "planned 30 kW FCR (20 kW placed, 10 kW short) (dry run)"
    )
    assert _warnings(caplog) == []


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The integration's warnings."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("custom_components.v2g")
        and record.levelno == logging.WARNING
    ]


def _logbook_line(hass: HomeAssistant, event: Event) -> str:
    """The logbook's text for a dispatch event, as the logbook describes it."""
    described: dict[str, Any] = {}

    def register(domain: str, event_type: str, describe: Any) -> None:
        described[event_type] = describe

    async_describe_events(hass, register)
    line: str = described[EVENT_DISPATCH_COMPLETED](event)[LOGBOOK_ENTRY_MESSAGE]
    return line


async def test_vehicles_are_picked_as_devices_or_named_by_id(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    device_registry: dr.DeviceRegistry,
) -> None:
    """The vehicle picker gives device ids; vehicle ids typed in YAML still work."""
    await _fleet(hass, count=3)
    responder = FleetResponder(hass, fleet_mqtt)
    v1 = find_device(device_registry, (DOMAIN, f"{ENTRY_ID}_v1"))
    v3 = find_device(device_registry, (DOMAIN, f"{ENTRY_ID}_v3"))
    assert v1 is not None
    assert v3 is not None

    response = await _dispatch(
        hass, power_kw=10, vehicles=[v1.id, "v2"], strategy="equal"
    )
    assert set(response["vehicles"]) == {"v1", "v2"}
    assert responder.orders_for("v3") == []
    response = await _dispatch(hass, power_kw=3, vehicles=v3.id)  # one, not a list
    assert set(response["vehicles"]) == {"v3"}

    # The dispatch log filtered by a picked vehicle.
    log = await hass.services.async_call(
        DOMAIN,
        "get_dispatch_log",
        {"config_entry_id": ENTRY_ID, "vehicle_id": v3.id},
        blocking=True,
        return_response=True,
    )
    assert log is not None
    assert [e["dispatch_id"] for e in log["entries"]] == [response["dispatch_id"]]

    # The day-ahead plan: picked vehicles, and windows keyed by a picked vehicle.
    plan = await _plan(
        hass,
        date="2026-03-02",
        target_kwh=2,
        vehicles=[v1.id],
        windows={v1.id: [{"start": "10:00", "end": "12:00"}]},
    )
    assert plan["vehicles"] == ["v1"]
    assert {e["vehicle_id"] for e in plan["entries"]} == {"v1"}
    assert len(plan["entries"]) == 2

    # The fleet's own device, and a device of another integration, are no vehicles.
    fleet = find_device(device_registry, (DOMAIN, ENTRY_ID))
    assert fleet is not None
    other_entry = MockConfigEntry(domain="mqtt_room", title="Room")
    other_entry.add_to_hass(hass)
    lamp = device_registry.async_get_or_create(
        config_entry_id=other_entry.entry_id,
        identifiers={("mqtt_room", "lamp")},
        name="Lamp",
    )
    for device, name in ((fleet, "Depot"), (lamp, "Lamp")):
        with pytest.raises(ServiceValidationError) as err:
            await _dispatch(hass, power_kw=5, vehicles=["v1", device.id])
        message = _assert_names_the_field(
            err.value, "not_a_fleet_vehicle", "dispatch", "vehicles"
        )
        assert name in message
    with pytest.raises(ServiceValidationError) as err:
        await _plan(hass, target_kwh=2, windows={fleet.id: []})
    _assert_names_the_field(
        err.value, "not_a_fleet_vehicle", "plan_day_ahead", "windows"
    )


async def test_vehicle_picker_offers_vehicles_only(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    device_registry: dr.DeviceRegistry,
) -> None:
    """The picker's filter matches every vehicle device, V2G or not, never the fleet."""
    await async_setup_fleet(hass)
    await async_announce(hass, ("v1", {}), ("ice", {"IsV2G": False}))
    devices = {
        name: find_device(device_registry, identifier)
        for name, identifier in (
            ("v1", (DOMAIN, f"{ENTRY_ID}_v1")),
            ("ice", (DOMAIN, f"{ENTRY_ID}_ice")),
            ("fleet", (DOMAIN, ENTRY_ID)),
        )
    }
    descriptions = await async_get_all_descriptions(hass)
    for service, field in (
        ("dispatch", "vehicles"),
        ("plan_day_ahead", "vehicles"),
        ("get_dispatch_log", "vehicle_id"),
    ):
        picker = descriptions[DOMAIN][service]["fields"][field]["selector"]["device"]
        assert picker.get("multiple", False) is (field == "vehicles")

        def offered(
            device: dr.DeviceEntry | None, filters: Any = picker["filter"]
        ) -> bool:
            assert device is not None
            return any(
                f["integration"] == DOMAIN and f["model"] == device.model
                for f in filters
            )

        assert offered(devices["v1"])
        assert offered(devices["ice"])
        assert not offered(devices["fleet"])


async def test_action_on_unknown_or_unloaded_entry(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = await _fleet(hass)
    other = MockConfigEntry(domain="mqtt_room", title="Other")
    other.add_to_hass(hass)
    for entry_id in ("nope", other.entry_id):
        with pytest.raises(ServiceValidationError) as err:
            await hass.services.async_call(
                DOMAIN,
                "discover",
                {"config_entry_id": entry_id},
                blocking=True,
                return_response=True,
            )
        assert err.value.translation_key == "invalid_config_entry"
    await hass.config_entries.async_unload(entry.entry_id)
    with pytest.raises(ServiceValidationError) as err:
        await _dispatch(hass, power_kw=5)
    assert err.value.translation_key == "unloaded_config_entry"


async def test_dispatch_while_mqtt_disconnected(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass)
    responder = FleetResponder(hass, fleet_mqtt)
    async_dispatcher_send(hass, mqtt.MQTT_CONNECTION_STATE, False)
    await hass.async_block_till_done()
    with pytest.raises(HomeAssistantError) as err:
        await _dispatch(hass, power_kw=5)
    assert err.value.translation_key == "mqtt_not_connected"
    # A dry run needs no broker.
    assert (await _dispatch(hass, power_kw=5, dry_run=True))["status"] == "planned"
    assert responder.command_publishes() == []


async def test_dispatch_waits_for_subscription_confirmation(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = await _fleet(hass)
    responder = FleetResponder(hass, fleet_mqtt)
    coordinator = entry.runtime_data
    confirmed = coordinator.intake.gate
    coordinator.intake.gate = SubscriptionGate()  # a subscription never confirmed
    with (
        patch("custom_components.v2g.dispatcher.SUBSCRIBE_CONFIRM_TIMEOUT_S", 0.01),
        pytest.raises(HomeAssistantError) as err,
    ):
        await _dispatch(hass, power_kw=5)
    assert err.value.translation_key == "subscription_not_confirmed"
    assert responder.command_publishes() == []
    # Once confirmed, the dispatch proceeds.
    coordinator.intake.gate = confirmed
    assert (await _dispatch(hass, power_kw=5))["status"] == "completed"


async def test_discover_action(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await async_setup_fleet(hass, options=FAST)
    responder = FleetResponder(
        hass,
        fleet_mqtt,
        discovery=[("car-1", {"SoC": 0.5}), ("car-2", {"IsV2G": False})],
    )
    with patch("custom_components.v2g.coordinator.DISCOVERY_WINDOW_S", 0.01):
        response = await hass.services.async_call(
            DOMAIN,
            "discover",
            {"config_entry_id": ENTRY_ID},
            blocking=True,
            return_response=True,
        )
    assert responder.payloads("v2g/fleet/discovery")[-1] == "hello"
    assert response is not None
    assert response["count"] == 2
    by_id = {v["vehicle_id"]: v for v in response["vehicles"]}
    assert by_id["car-1"]["soc"] == 0.5
    assert by_id["car-2"]["is_v2g"] is False
    # New vehicles get entities right away.
    assert hass.states.get("sensor.car_1_state_of_charge").state == "50.0"
    # Without a response requested.
    with patch("custom_components.v2g.coordinator.DISCOVERY_WINDOW_S", 0.01):
        assert (
            await hass.services.async_call(
                DOMAIN, "discover", {"config_entry_id": ENTRY_ID}, blocking=True
            )
            is None
        )


async def test_discover_publish_failure(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await async_setup_fleet(hass)
    fleet_mqtt.async_publish.side_effect = HomeAssistantError("down")
    with pytest.raises(HomeAssistantError) as err:
        await hass.services.async_call(
            DOMAIN, "discover", {"config_entry_id": ENTRY_ID}, blocking=True
        )
    assert err.value.translation_key == "discovery_failed"


async def test_get_dispatch_log_filters(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await hass.config.async_set_time_zone("Europe/Paris")
    await _fleet(hass, count=3)
    FleetResponder(hass, fleet_mqtt)
    before = dt_util.utcnow()
    ids: dict[str, str] = {}
    for signal_type, vehicles in (
        ("FCR", ["v1"]),
        ("aFRR", ["v2"]),
        ("MA", ["v3"]),
        ("NEBEF", ["v1", "v2"]),
        ("EcoWatt", ["v3"]),
    ):
        response = await _dispatch(
            hass, signal_type=signal_type, power_kw=3, vehicles=vehicles
        )
        ids[signal_type] = response["dispatch_id"]

    async def query(**filters: Any) -> list[str]:
        result = await hass.services.async_call(
            DOMAIN,
            "get_dispatch_log",
            {"config_entry_id": ENTRY_ID, **filters},
            blocking=True,
            return_response=True,
        )
        assert result is not None
        assert result["count"] == len(result["entries"])
        return [entry["dispatch_id"] for entry in result["entries"]]

    assert await query() == list(ids.values())
    for signal_type, dispatch_id in ids.items():
        assert await query(signal_type=signal_type) == [dispatch_id]
    assert await query(signal_type="ecowatt") == [ids["EcoWatt"]]
    # NEBEF (load shedding) only uses charging vehicles: none here.
    assert await query(vehicle_id="v3") == [ids["MA"], ids["EcoWatt"]]
    assert await query(vehicle_id="v1") == [ids["FCR"]]
    assert await query(limit=2) == [ids["NEBEF"], ids["EcoWatt"]]
    assert await query(
        start=before.isoformat(), end=dt_util.utcnow().isoformat()
    ) == list(ids.values())
    assert await query(start=(dt_util.utcnow() + timedelta(hours=1)).isoformat()) == []
    # A naive time (the UI's datetime selector) is local time (UTC+1 or +2 here).
    naive_now = dt_util.now().replace(tzinfo=None)
    assert len(await query(start=(naive_now - timedelta(minutes=30)).isoformat())) == 5
    assert await query(start=(naive_now + timedelta(minutes=30)).isoformat()) == []
    with pytest.raises(ServiceValidationError) as err:
        await query(start=dt_util.utcnow().isoformat(), end=before.isoformat())
    assert err.value.translation_key == "invalid_time_range"


async def _plan(hass: HomeAssistant, **data: Any) -> dict[str, Any]:
    result = await hass.services.async_call(
        DOMAIN,
        "plan_day_ahead",
        {"config_entry_id": ENTRY_ID, **data},
        blocking=True,
        return_response=True,
    )
    assert isinstance(result, dict)
    return result


async def _plan_fleet(hass: HomeAssistant) -> None:
    """A fleet in Paris (UTC+1 in March): two 5 kW V2G vehicles, one that is not."""
    await hass.config.async_set_time_zone("Europe/Paris")
    await async_setup_fleet(hass)
    await async_announce(
        hass,
        ("v1", {"MaxPower": 5.0}),
        ("v2", {"MaxPower": 5.0}),
        ("ice", {"IsV2G": False}),
    )


def _timeslots(result: dict[str, Any], vehicle_id: str) -> list[str]:
    return [e["timeslot"] for e in result["entries"] if e["vehicle_id"] == vehicle_id]


async def test_plan_day_ahead_windows_are_local_time(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _plan_fleet(hass)

    # 12:00 to 24:00 in Paris: the plan's slots are Paris times, with their offset.
    result = await _plan(
        hass,
        date="2026-03-02",
        target_kwh=12,
        windows={"v2": [{"start": "12:00", "end": "24:00"}]},
    )
    assert result["date"] == "2026-03-02"
    assert result["time_zone"] == "Europe/Paris"
    assert result["slot_minutes"] == 60
    assert result["target_kwh"] == 12.0
    assert result["vehicles"] == ["v1", "v2"]
    assert result["total_kwh"] == pytest.approx(12.0)
    assert _timeslots(result, "v2") == [
        f"2026-03-02T{hour:02d}:00:00+01:00" for hour in range(12, 24)
    ]
    assert _timeslots(result, "v1")[0] == "2026-03-02T00:00:00+01:00"
    assert len(_timeslots(result, "v1")) == 24
    assert result["csv"].startswith(
        "vehicle_id,timeslot,power_kw\nv1,2026-03-02T00:00:00+01:00,"
    )
    assert result["csv"].count("\n") == len(result["entries"]) + 1

    # ISO bounds: with an offset as given, without one in Paris time
    # (12:00 UTC is 13:00 in Paris).
    result = await _plan(
        hass,
        date="2026-03-02",
        target_kwh=2,
        slot_minutes=30,
        vehicles=["v1"],
        windows={
            "v1": [{"start": "2026-03-02T12:00:00+00:00", "end": "2026-03-02T18:00:00"}]
        },
    )
    assert result["vehicles"] == ["v1"]
    assert _timeslots(result, "v1") == [
        f"2026-03-02T{minutes // 60:02d}:{minutes % 60:02d}:00+01:00"
        for minutes in range(13 * 60, 18 * 60, 30)
    ]


async def test_plan_day_ahead_default_date_is_tomorrow_in_local_time(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, freezer: FrozenDateTimeFactory
) -> None:
    # 00:30 on 2 March in Paris, still 1 March in UTC.
    freezer.move_to("2026-03-01T23:30:00+00:00")
    await _plan_fleet(hass)

    result = await _plan(
        hass, target_kwh=4, windows={"v1": [{"start": "06:00", "end": "08:00"}]}
    )

    assert result["date"] == "2026-03-03"
    assert _timeslots(result, "v1") == [
        "2026-03-03T06:00:00+01:00",
        "2026-03-03T07:00:00+01:00",
    ]


@pytest.mark.parametrize(
    ("day", "hours", "first", "last"),
    [
        ("2026-03-29", 23, "2026-03-29T00:00:00+01:00", "2026-03-29T23:00:00+02:00"),
        ("2026-10-25", 25, "2026-10-25T00:00:00+02:00", "2026-10-25T23:00:00+01:00"),
    ],
    ids=["spring-forward", "fall-back"],
)
async def test_plan_day_ahead_days_are_local_days(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    day: str,
    hours: int,
    first: str,
    last: str,
) -> None:
    """A day when the clocks change has 23 or 25 hourly slots, none repeated."""
    await _plan_fleet(hass)

    result = await _plan(hass, date=day, target_kwh=hours, vehicles=["v1"])

    slots = _timeslots(result, "v1")
    assert len(slots) == hours
    assert (slots[0], slots[-1]) == (first, last)
    assert len(set(slots)) == hours
    # Every slot gets its equal share: 1 kWh per hour.
    assert {e["power_kw"] for e in result["entries"]} == {1.0}
    # A window in local time on that day: 02:00 does not exist on 29 March.
    result = await _plan(
        hass,
        date=day,
        target_kwh=2,
        vehicles=["v1"],
        windows={"v1": [{"start": "04:00", "end": "06:00"}]},
    )
    assert [slot[11:] for slot in _timeslots(result, "v1")] == (
        ["04:00:00+02:00", "05:00:00+02:00"]
        if hours == 23
        else ["04:00:00+01:00", "05:00:00+01:00"]
    )


@pytest.mark.parametrize(
    ("data", "key", "placeholders"),
    [
        (
            {"target_kwh": 1000, "vehicles": ["v1"]},
            "plan_insufficient_capacity",
            {"target_kwh": "1000", "deliverable_kwh": "120"},
        ),
        (
            {"target_kwh": 5, "vehicles": ["v1", "ghost", "ice", "phantom"]},
            "unknown_vehicles",
            {"vehicles": "ghost, phantom"},
        ),
        ({"target_kwh": -1}, "plan_target_not_positive", {"target_kwh": "-1"}),
        ({"target_kwh": 0}, "plan_target_not_positive", {"target_kwh": "0"}),
        (
            {"target_kwh": 5, "windows": {"v1": [{"start": "18:00", "end": "12:00"}]}},
            "invalid_window_order",
            {
                "vehicle_id": "v1",
                "start": "2026-03-02 18:00:00",
                "end": "2026-03-02 12:00:00",
            },
        ),
        (
            {
                "target_kwh": 5,
                "windows": {
                    "v2": [
                        {"start": "2026-03-02T10:00:00+00:00", "end": "11:00"},
                    ]
                },
            },
            "invalid_window_order",
            {
                "vehicle_id": "v2",
                "start": "2026-03-02 11:00:00",
                "end": "2026-03-02 11:00:00",
            },
        ),
        (
            {"target_kwh": 5, "windows": {"v1": [{"start": "noon", "end": "13:00"}]}},
            "invalid_window_time",
            {"vehicle_id": "v1", "time": "noon"},
        ),
        (
            {"target_kwh": 5, "windows": {"v1": [{"start": "08:00", "end": "25:00"}]}},
            "invalid_window_time",
            {"vehicle_id": "v1", "time": "25:00"},
        ),
    ],
)
async def test_plan_day_ahead_bad_input(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    data: dict[str, Any],
    key: str,
    placeholders: dict[str, str],
) -> None:
    await _plan_fleet(hass)
    with pytest.raises(ServiceValidationError) as err:
        await _plan(hass, date="2026-03-02", **data)
    assert err.value.translation_domain == DOMAIN
    assert err.value.translation_key == key
    assert err.value.translation_placeholders == placeholders
    # The message has a text for the key and uses exactly these placeholders:
    # values only, the sentence is translated.
    message = STRINGS["exceptions"][key]["message"]
    assert set(re.findall(r"{(\w+)}", message)) == set(placeholders)
    _assert_names_the_field(err.value, key, "plan_day_ahead", PLAN_FIELDS[key])


# The field each refusal of the day-ahead plan is about.
PLAN_FIELDS = {
    "plan_insufficient_capacity": "target_kwh",
    "plan_target_not_positive": "target_kwh",
    "unknown_vehicles": "vehicles",
    "invalid_window_order": "windows",
    "invalid_window_time": "windows",
}


@pytest.mark.parametrize(
    ("service", "data", "key", "field"),
    [
        (
            "plan_day_ahead",
            {"target_kwh": "a lot"},
            "invalid_target_energy",
            "target_kwh",
        ),
        (
            "plan_day_ahead",
            {"target_kwh": 5, "slot_minutes": 0},
            "invalid_slot_length",
            "slot_minutes",
        ),
        (
            "plan_day_ahead",
            {"target_kwh": 5, "slot_minutes": 1441},
            "invalid_slot_length",
            "slot_minutes",
        ),
        (
            "plan_day_ahead",
            {"target_kwh": 5, "slot_minutes": 7.5},
            "invalid_slot_length",
            "slot_minutes",
        ),
        (
            "plan_day_ahead",
            {"target_kwh": 5, "windows": "all day"},
            "invalid_windows",
            "windows",
        ),
        (
            "plan_day_ahead",
            {"target_kwh": 5, "windows": {"v1": [{"start": "08:00"}]}},
            "invalid_windows",
            "windows",
        ),
        (
            "plan_day_ahead",
            {"target_kwh": 5, "date": "tomorrow"},
            "invalid_field",
            "date",
        ),
        ("plan_day_ahead", {}, "missing_field", "target_kwh"),
        ("get_dispatch_log", {"limit": 0}, "invalid_limit", "limit"),
        ("get_dispatch_log", {"start": "yesterday"}, "invalid_field", "start"),
        (
            "get_dispatch_log",
            {"signal_type": "FCRR"},
            "invalid_signal_type",
            "signal_type",
        ),
        (
            "get_dispatch_log",
            {"start": "2026-03-02T10:00:00", "end": "2026-03-02T09:00:00"},
            "invalid_time_range",
            "start",
        ),
    ],
)
async def test_plan_and_log_refusals_name_the_field(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    service: str,
    data: dict[str, Any],
    key: str,
    field: str,
) -> None:
    await _plan_fleet(hass)
    with pytest.raises(ServiceValidationError) as err:
        await hass.services.async_call(
            DOMAIN,
            service,
            {"config_entry_id": ENTRY_ID, **data},
            blocking=True,
            return_response=True,
        )
    _assert_names_the_field(err.value, key, service, field)


async def test_plan_day_ahead_without_vehicles(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await async_setup_fleet(hass)
    await async_announce(hass, ("ice", {"IsV2G": False}))
    with pytest.raises(ServiceValidationError) as err:
        await _plan(hass, target_kwh=5)
    assert err.value.translation_key == "plan_no_vehicles"
    assert "plan_no_vehicles" in STRINGS["exceptions"]


async def test_action_descriptions(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await async_setup_fleet(hass)
    descriptions = await async_get_all_descriptions(hass)
    fields = descriptions[DOMAIN]["plan_day_ahead"]["fields"]
    # Examples are YAML values the action accepts, not JSON strings.
    assert fields["windows"]["example"] == {
        "car-1": [{"start": "08:00", "end": "18:00"}]
    }
    assert fields["vehicles"]["example"] == ["car-1", "car-2"]
    # Home Assistant reads braces in these texts as placeholders.
    for service in STRINGS["services"].values():
        texts = [service["name"], service["description"]]
        for field in service["fields"].values():
            texts.extend((field["name"], field["description"]))
        for text in texts:
            assert "{" not in text, text
            assert "}" not in text, text


@pytest.mark.parametrize(
    ("args", "kwargs", "key", "placeholders"),
    [
        (("XYZ", 5.0, 60.0), {}, "invalid_signal_type", {"value": "XYZ"}),
        (
            ("FCR", 5.0, 60.0),
            {"strategy": "fast"},
            "invalid_strategy",
            {"value": "fast"},
        ),
        (("FCR", math.nan, 60.0), {}, "invalid_power", {"value": "nan"}),
        (("FCR", 5.0, 90_000.0), {}, "invalid_duration", {"value": "90000"}),
    ],
)
async def test_dispatch_errors_carry_the_refused_value(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    key: str,
    placeholders: dict[str, str],
) -> None:
    """What the webhook and automations hand over is checked with translated errors."""
    entry = await _fleet(hass)
    responder = FleetResponder(hass, fleet_mqtt)
    with pytest.raises(ServiceValidationError) as err:
        await entry.runtime_data.dispatcher.async_dispatch(*args, **kwargs)
    assert err.value.translation_key == key
    assert placeholders.items() <= (err.value.translation_placeholders or {}).items()
    assert responder.command_publishes() == []


# The modules behind the actions, and the calls that name a translated error.
ACTION_MODULES = ("services", "action_fields", "dispatching", "day_ahead", "dispatcher")
ERROR_CALLS = {"field_error", "FieldInvalid", "_error"}


def _raised_keys() -> dict[str, set[str] | None]:
    """Translation key -> the placeholders its raise names (None: not literal)."""
    found: dict[str, set[str] | None] = {}
    for module in ACTION_MODULES:
        path = Path(__file__).parent.parent / "custom_components" / DOMAIN
        tree = ast.parse((path / f"{module}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            key: Any = None
            placeholders: set[str] | None = None
            if name in ERROR_CALLS and node.args:
                key = getattr(node.args[0], "value", None)
                placeholders = {kw.arg for kw in node.keywords if kw.arg}
                if any(kw.arg is None for kw in node.keywords):
                    placeholders = None  # **placeholders
            elif name.endswith("Error"):
                keywords = {kw.arg: kw.value for kw in node.keywords}
                key = getattr(keywords.get("translation_key"), "value", None)
                given = keywords.get("translation_placeholders")
                placeholders = (
                    {k.value for k in given.keys if isinstance(k, ast.Constant)}
                    if isinstance(given, ast.Dict)
                    else None
                    if given is not None
                    else set()
                )
            if isinstance(key, str):
                found[key] = placeholders
    return found


def test_every_refusal_has_its_message() -> None:
    """Each translated error the actions raise has a message with its placeholders."""
    raised = _raised_keys()
    assert {"power_out_of_range", "not_a_fleet_vehicle", "invalid_field"} <= set(raised)
    for key, placeholders in raised.items():
        assert key in STRINGS["exceptions"], key
        message = STRINGS["exceptions"][key]["message"]
        if placeholders is not None:
            assert set(re.findall(r"{(\w+)}", message)) == placeholders, key
