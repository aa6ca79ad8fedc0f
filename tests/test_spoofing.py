"""Spoofed, replayed, late and duplicate acks are never counted (docs/protocol.md#ack-matching).

An ack counts only if its command id is pending and it arrives on the topic of the
order's vehicle (for gateways: the gateway the order went through, and the item's
``vehicle_id``). Everything else is classified, counted, kept in diagnostics, and
changes no result — neither the response, the dispatch log, the bus event, the
entities, nor the vehicle's learned reliability.
"""

from __future__ import annotations

import json
from typing import Any

from homeassistant.core import HomeAssistant
import pytest
from pytest_homeassistant_custom_component.common import (
    async_capture_events,
    async_fire_mqtt_message,
)
from pytest_homeassistant_custom_component.components.diagnostics import (
    get_diagnostics_for_config_entry,
)
from pytest_homeassistant_custom_component.typing import (
    ClientSessionGenerator,
    MqttMockHAClient,
)

from custom_components.v2g.const import (
    CONF_ACK_TIMEOUT,
    CONF_FALLBACK,
    DOMAIN,
    EVENT_DISPATCH_COMPLETED,
)

from .helpers import ENTRY_ID, FleetResponder, async_announce, async_setup_fleet

# Short ack timeout; no fallback round so each vehicle has exactly one order
# (and the revoke of a timed-out one, acknowledged: `idle="ack"`).
OPTIONS = {CONF_ACK_TIMEOUT: 0.1, CONF_FALLBACK: "none"}


async def _fleet(hass: HomeAssistant, *vehicles: tuple[str, dict[str, Any]]) -> None:
    await async_setup_fleet(hass, options=OPTIONS)
    await async_announce(hass, *vehicles)


async def _dispatch(hass: HomeAssistant, **data: Any) -> dict[str, Any]:
    response = await hass.services.async_call(
        DOMAIN,
        "dispatch",
        {
            "config_entry_id": ENTRY_ID,
            "signal_type": "aFRR",
            "strategy": "equal",
            **data,
        },
        blocking=True,
        return_response=True,
    )
    assert isinstance(response, dict)
    await hass.async_block_till_done()
    return response


def _ack(topic_vehicle: str, command_id: str, **extra: Any) -> tuple[str, str]:
    return f"vehicle/{topic_vehicle}/ack", json.dumps(
        {"command_id": command_id, **extra}
    )


async def _diagnostics(
    hass: HomeAssistant, hass_client: ClientSessionGenerator
) -> dict[str, Any]:
    entry = hass.config_entries.async_get_entry(ENTRY_ID)
    assert entry is not None
    return await get_diagnostics_for_config_entry(hass, hass_client, entry)


def _rejections(diagnostics: dict[str, Any]) -> list[dict[str, Any]]:
    return list(diagnostics["ack_tracker"]["recent_rejections"])


async def test_ack_on_another_vehicles_topic_is_never_counted(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
) -> None:
    """v2 answers v1's order on its own topic (and in the payload): spoofing."""
    await _fleet(hass, ("v1", {}), ("v2", {}))
    events = async_capture_events(hass, EVENT_DISPATCH_COMPLETED)

    def spoof_v1(order: dict[str, Any]) -> str:
        # While v1's order is pending, v2 "acknowledges" it twice: once plainly,
        # once also claiming to be v1 in the payload. v1 itself stays silent.
        for payload in (
            {"command_id": order["command_id"]},
            {"command_id": order["command_id"], "vehicle_id": "v1"},
        ):
            hass.loop.call_soon(
                async_fire_mqtt_message, hass, "vehicle/v2/ack", json.dumps(payload)
            )
        return "ignore"

    FleetResponder(hass, fleet_mqtt, {"v1": spoof_v1}, idle="ack")
    response = await _dispatch(hass, power_kw=10)

    v1 = response["vehicles"]["v1"]
    assert v1["status"] == "timeout"
    assert v1["latency_ms"] is None
    assert response["vehicles"]["v2"]["status"] == "acknowledged"
    assert response["status"] == "partial"
    assert response["acknowledged_kw"] == pytest.approx(5.0)
    assert response["ack_rate"] == pytest.approx(0.5)
    assert events[0].data["vehicles"]["v1"]["status"] == "timeout"
    assert hass.states.get("sensor.v1_ack_rate").state == "0.0"
    assert hass.states.get("sensor.depot_orders_acknowledged").state == "1"

    diagnostics = await _diagnostics(hass, hass_client)
    counters = diagnostics["ack_tracker"]["counters"]
    assert counters["vehicle_mismatch"] == 2
    assert counters["accepted"] == 2  # v2's order and v1's revoke
    assert (
        _rejections(diagnostics)
        == [
            {
                "disposition": "vehicle_mismatch",
                "command_id": v1["command_id"],
                "vehicle_id": "v2",
                "expected_vehicle_id": "v1",
            }
        ]
        * 2
    )
    # The log holds the honest result too.
    logged = diagnostics["dispatch_log"]["latest"][-1]
    assert logged["vehicles"]["v1"]["status"] == "timeout"


async def test_payload_vehicle_id_cannot_redirect_an_ack(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    """An ack on the right topic whose payload names another vehicle is refused."""
    await _fleet(hass, ("v1", {}), ("v2", {}))

    def wrong_payload(order: dict[str, Any]) -> str:
        topic, payload = _ack("v1", order["command_id"], vehicle_id="v2")
        hass.loop.call_soon(async_fire_mqtt_message, hass, topic, payload)
        return "ignore"

    FleetResponder(hass, fleet_mqtt, {"v1": wrong_payload}, idle="ack")
    response = await _dispatch(hass, power_kw=10)

    assert response["vehicles"]["v1"]["status"] == "timeout"
    tracker = hass.config_entries.async_get_entry(ENTRY_ID).runtime_data.engine.tracker
    assert tracker.counters["vehicle_mismatch"] == 1


async def test_spoofed_ack_does_not_block_the_genuine_one(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    """A spoof that arrives first does not consume the pending entry."""
    await _fleet(hass, ("v1", {}), ("v2", {}))

    def spoof_then_ack(order: dict[str, Any]) -> str:
        topic, payload = _ack("v2", order["command_id"])
        hass.loop.call_soon(async_fire_mqtt_message, hass, topic, payload)
        return "ack"  # the genuine ack is fired after the spoof

    FleetResponder(hass, fleet_mqtt, {"v1": spoof_then_ack}, idle="ack")
    response = await _dispatch(hass, power_kw=10)

    assert response["status"] == "completed"
    assert response["vehicles"]["v1"]["status"] == "acknowledged"
    tracker = hass.config_entries.async_get_entry(ENTRY_ID).runtime_data.engine.tracker
    assert tracker.counters["vehicle_mismatch"] == 1
    assert tracker.counters["accepted"] == 2


async def test_replayed_command_id_from_an_earlier_dispatch(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
) -> None:
    """Yesterday's ack replayed during today's dispatch acknowledges nothing."""
    await _fleet(hass, ("v1", {}), ("v2", {}))
    responder = FleetResponder(hass, fleet_mqtt, idle="ack")
    first = await _dispatch(hass, power_kw=10)
    assert first["status"] == "completed"
    old_v1 = first["vehicles"]["v1"]["command_id"]
    old_v2 = first["vehicles"]["v2"]["command_id"]

    def replay(order: dict[str, Any]) -> str:
        # An attacker (or a confused vehicle) replays the earlier acks: on the
        # same vehicle's topic, on the other vehicle's topic, and a rejection.
        for topic, payload in (
            _ack("v1", old_v1),
            _ack("v2", old_v1),
            _ack("v1", old_v1, status="rejected", reason="replay"),
        ):
            hass.loop.call_soon(async_fire_mqtt_message, hass, topic, payload)
        return "ignore"

    responder.behaviours = {"v1": replay, "v2": "ignore"}
    second = await _dispatch(hass, power_kw=-6)

    assert {o["status"] for o in second["vehicles"].values()} == {"timeout"}
    assert second["status"] == "failed"
    assert second["acknowledged_kw"] == 0.0
    assert {o["command_id"] for o in second["vehicles"].values()}.isdisjoint(
        {old_v1, old_v2}
    )
    # The first dispatch's record is untouched by the replays.
    diagnostics = await _diagnostics(hass, hass_client)
    log = diagnostics["dispatch_log"]["latest"]
    assert [e["status"] for e in log] == ["completed", "failed"]
    assert log[0] == first
    counters = diagnostics["ack_tracker"]["counters"]
    assert counters["duplicate"] == 2
    assert counters["vehicle_mismatch"] == 1
    # The first dispatch's orders and the second's revokes.
    assert counters["accepted"] == 4
    assert {(r["disposition"], r["vehicle_id"]) for r in _rejections(diagnostics)} == {
        ("duplicate", "v1"),
        ("vehicle_mismatch", "v2"),
    }
    assert hass.states.get("sensor.depot_orders_acknowledged").state == "2"
    # The timed-out order was revoked, and the revoke acknowledged: idle.
    assert hass.states.get("sensor.v1_setpoint").state == "0.0"


async def test_late_ack_is_recorded_as_late_and_changes_nothing(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
) -> None:
    await _fleet(hass, ("v1", {}), ("v2", {}))
    events = async_capture_events(hass, EVENT_DISPATCH_COMPLETED)
    FleetResponder(hass, fleet_mqtt, {"v1": "ignore"}, idle="ack")
    response = await _dispatch(hass, power_kw=10)
    assert response["vehicles"]["v1"]["status"] == "timeout"
    command_id = response["vehicles"]["v1"]["command_id"]

    # After the timeout: the genuine ack (late), again (late), and from v2 (spoof).
    for topic, payload in (
        _ack("v1", command_id),
        _ack("v1", command_id),
        _ack("v2", command_id),
    ):
        async_fire_mqtt_message(hass, topic, payload)
    await hass.async_block_till_done()

    diagnostics = await _diagnostics(hass, hass_client)
    tracker = diagnostics["ack_tracker"]
    assert tracker["counters"]["late"] == 2
    assert tracker["late_by_vehicle"] == {"v1": 2}
    assert tracker["counters"]["vehicle_mismatch"] == 1
    assert tracker["pending"] == 0
    # Result, log, event and entities still say what happened in time.
    assert diagnostics["dispatch_log"]["latest"] == [response]
    assert len(events) == 1
    assert hass.states.get("sensor.v1_setpoint").state == "0.0"
    assert hass.states.get("sensor.v1_ack_rate").state == "0.0"
    assert hass.states.get("sensor.depot_orders_acknowledged").state == "1"
    fleet = hass.config_entries.async_get_entry(ENTRY_ID).runtime_data.fleet
    assert fleet.stats["v1"].ack_rate == 0.0


async def test_duplicate_ack_is_ignored(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
) -> None:
    await _fleet(hass, ("v1", {}))

    def twice(order: dict[str, Any]) -> str:
        # The genuine ack (fired by the responder), then a rejection of the same
        # order queued behind it: it must not flip the result.
        topic, payload = _ack("v1", order["command_id"], status="rejected")
        hass.loop.call_soon(
            hass.loop.call_soon, async_fire_mqtt_message, hass, topic, payload
        )
        return "ack"

    FleetResponder(hass, fleet_mqtt, {"v1": twice}, idle="ack")
    response = await _dispatch(hass, power_kw=4)
    assert response["vehicles"]["v1"]["status"] == "acknowledged"
    # And the same ack once more, after the dispatch ended.
    async_fire_mqtt_message(hass, *_ack("v1", response["vehicles"]["v1"]["command_id"]))
    await hass.async_block_till_done()

    diagnostics = await _diagnostics(hass, hass_client)
    counters = diagnostics["ack_tracker"]["counters"]
    assert counters["accepted"] == 1
    assert counters["rejected"] == 0
    assert counters["duplicate"] == 2
    assert diagnostics["dispatch_log"]["latest"][-1]["status"] == "completed"
    assert hass.states.get("sensor.v1_setpoint").state == "4.0"


async def test_unknown_command_ids_are_counted(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
) -> None:
    await _fleet(hass, ("v1", {}))
    for command_id in ("never-sent", "00000000-0000-4000-8000-000000000000"):
        async_fire_mqtt_message(hass, *_ack("v1", command_id))
    async_fire_mqtt_message(hass, *_ack("ghost", "never-sent"))
    await hass.async_block_till_done()

    diagnostics = await _diagnostics(hass, hass_client)
    assert diagnostics["ack_tracker"]["counters"]["unknown"] == 3
    assert {r["vehicle_id"] for r in _rejections(diagnostics)} == {"v1", "ghost"}
    assert all(r["expected_vehicle_id"] is None for r in _rejections(diagnostics))
    # An ack from an unknown vehicle does not add it to the fleet.
    assert diagnostics["fleet"]["vehicles"] == 1
    assert list(diagnostics["fleet"]["sample"]) == ["v1"]


async def test_gateway_acks_only_count_through_the_orders_gateway(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
) -> None:
    """A gateway cannot acknowledge orders of another gateway or of a lone car."""
    await _fleet(
        hass, ("g1car", {"gateway": "gw1"}), ("g2car", {"gateway": "gw2"}), ("solo", {})
    )

    def spoof_through(gateway: str) -> Any:
        def behaviour(order: dict[str, Any]) -> str:
            payload = json.dumps(
                {
                    "acks": [
                        {
                            "command_id": order["command_id"],
                            "vehicle_id": order["vehicle_id"],
                        }
                    ]
                }
            )
            hass.loop.call_soon(
                async_fire_mqtt_message, hass, f"v2g/gateway/{gateway}/acks", payload
            )
            return "ignore"

        return behaviour

    FleetResponder(
        hass,
        fleet_mqtt,
        {"g1car": spoof_through("gw2"), "g2car": "ack", "solo": spoof_through("gw1")},
        idle="ack",
    )
    response = await _dispatch(hass, power_kw=9)

    assert response["vehicles"]["g1car"]["status"] == "timeout"
    assert response["vehicles"]["solo"]["status"] == "timeout"
    assert response["vehicles"]["g2car"]["status"] == "acknowledged"
    diagnostics = await _diagnostics(hass, hass_client)
    assert diagnostics["ack_tracker"]["counters"]["vehicle_mismatch"] == 2
    assert {
        (r["vehicle_id"], r["expected_vehicle_id"]) for r in _rejections(diagnostics)
    } == {("g1car", "g1car"), ("solo", "solo")}
