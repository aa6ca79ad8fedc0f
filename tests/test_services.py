"""The actions: dispatch outcomes, discovery, dispatch log, day-ahead plan."""

from __future__ import annotations

from datetime import timedelta
import json
import math
from pathlib import Path
import re
from typing import Any
from unittest.mock import patch

from freezegun.api import FrozenDateTimeFactory
from homeassistant.components import mqtt
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers.dispatcher import async_dispatcher_send
from homeassistant.helpers.service import async_get_all_descriptions
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_capture_events,
)
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.v2g.const import (
    CONF_ACK_TIMEOUT,
    CONF_FALLBACK,
    DOMAIN,
    EVENT_DISPATCH_COMPLETED,
)
from custom_components.v2g.transport import SubscriptionGate

from .helpers import ENTRY_ID, FleetResponder, async_announce, async_setup_fleet

STRINGS: dict[str, Any] = json.loads(
    (
        Path(__file__).parent.parent
        / "custom_components"
        / DOMAIN
        / "translations"
        / "en.json"
    ).read_text(encoding="utf-8")
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


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"power_kw": 5, "vehicles": ["v1", "ghost"]}, "unknown_vehicles"),
        ({"power_kw": 5, "duration": {"days": 2}}, "invalid_duration"),
        ({"power_kw": 5, "duration": {"seconds": 0}}, "invalid_duration"),
    ],
)
async def test_dispatch_bad_input(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, data: dict[str, Any], key: str
) -> None:
    await _fleet(hass)
    responder = FleetResponder(hass, fleet_mqtt)
    with pytest.raises(ServiceValidationError) as err:
        await _dispatch(hass, **data)
    assert err.value.translation_key == key
    assert responder.command_publishes() == []


async def test_dispatch_schema_rejects_bad_values(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass)
    for data in (
        {"power_kw": 5, "signal_type": "XYZ"},
        {"power_kw": "nan"},
        {"power_kw": 5, "strategy": "random"},
    ):
        with pytest.raises(Exception, match=r"Invalid|invalid|unknown|finite"):
            await _dispatch(hass, **data)


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

    # 12:00 to 24:00 in Paris is 11:00 to 23:00 UTC.
    result = await _plan(
        hass,
        date="2026-03-02",
        target_kwh=12,
        windows={"v2": [{"start": "12:00", "end": "24:00"}]},
    )
    assert result["date"] == "2026-03-02"
    assert result["slot_minutes"] == 60
    assert result["target_kwh"] == 12.0
    assert result["vehicles"] == ["v1", "v2"]
    assert result["total_kwh"] == pytest.approx(12.0)
    assert _timeslots(result, "v2") == [
        f"2026-03-02T{hour:02d}:00:00Z" for hour in range(11, 23)
    ]
    assert len(_timeslots(result, "v1")) == 24
    assert result["csv"].startswith("vehicle_id,timeslot,power_kw\n")
    assert result["csv"].count("\n") == len(result["entries"]) + 1

    # ISO bounds: with an offset as given, without one in Paris time.
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
        f"2026-03-02T{minutes // 60:02d}:{minutes % 60:02d}:00Z"
        for minutes in range(12 * 60, 17 * 60, 30)
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
        "2026-03-03T05:00:00Z",
        "2026-03-03T06:00:00Z",
    ]


@pytest.mark.parametrize(
    ("data", "key", "placeholders"),
    [
        (
            {"target_kwh": 1000, "vehicles": ["v1"]},
            "plan_insufficient_capacity",
            {"target_kwh": "1000"},
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
