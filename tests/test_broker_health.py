"""Depots through the broker: gateway discovery answers, rounds, lost messages.

docs/protocol.md#gateway-discovery-answers and #broker-health: a gateway answers
discovery for its vehicles in one message; a discovery request is not repeated
while its answers still arrive; what the broker drops, a fleet that shrinks
between discoveries and acks missing in a burst each raise a repair issue.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from homeassistant.core import HomeAssistant
from homeassistant.helpers import issue_registry as ir
import pytest
from pytest_homeassistant_custom_component.common import async_fire_mqtt_message
from pytest_homeassistant_custom_component.typing import (
    ClientSessionGenerator,
    MqttMockHAClient,
)

from custom_components.v2g.const import CONF_ACK_TIMEOUT, CONF_FALLBACK, DOMAIN

from .helpers import (
    ENTRY_ID,
    FleetResponder,
    async_announce,
    async_diagnostics,
    async_dispatch,
    async_settle,
    async_setup_fleet,
    patch_tuning,
)

SYS_DROPPED = "$SYS/broker/publish/messages/dropped"
FAST = {CONF_ACK_TIMEOUT: 0.05, CONF_FALLBACK: "none"}


def vehicle(vehicle_id: str, **fields: Any) -> dict[str, Any]:
    """A vehicle JSON as a gateway lists it."""
    return {"ID": vehicle_id, "SoC": 0.8, "MaxPower": 10.0, **fields}


def issue(hass: HomeAssistant, key: str) -> ir.IssueEntry | None:
    """The fleet's repair issue of one kind, if raised."""
    return ir.async_get(hass).async_get_issue(DOMAIN, f"{key}_{ENTRY_ID}")


async def discover(hass: HomeAssistant) -> list[dict[str, Any]]:
    """Run `v2g.discover`; return the vehicles it reports."""
    response = await hass.services.async_call(
        DOMAIN,
        "discover",
        {"config_entry_id": ENTRY_ID},
        blocking=True,
        return_response=True,
    )
    assert isinstance(response, dict)
    vehicles: list[dict[str, Any]] = response["vehicles"]
    return vehicles


async def test_a_gateway_answers_for_its_vehicles_in_one_message(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
) -> None:
    entry = await async_setup_fleet(hass, options=FAST)
    async_fire_mqtt_message(
        hass,
        "v2g/fleet/response/gw01",
        json.dumps(
            {
                "gateway": "gw01",
                "vehicles": [
                    vehicle("car-1"),
                    vehicle("car-2", gateway="gw01", SoC=0.5),
                    vehicle("car-3", gateway="gw02"),  # another gateway's
                    {"SoC": 0.5},  # no id
                    "car-4",
                ],
            }
        ),
    )
    await async_settle(hass)
    fleet = entry.runtime_data.fleet
    assert sorted(fleet.vehicles) == ["car-1", "car-2"]
    assert {v.gateway for v in fleet.vehicles.values()} == {"gw01"}
    assert hass.states.get("sensor.car_2_state_of_charge").state == "50.0"
    health = (await async_diagnostics(hass, hass_client, entry))["broker_health"]
    assert health["discovery_answers"] == {
        "gateway_answers": 1,
        "gateway_invalid_items": 3,
    }

    # Their orders go through the gateway, in one batch.
    responder = FleetResponder(hass, fleet_mqtt)
    response = await async_dispatch(hass, signal_type="aFRR", power_kw=4)
    assert response["status"] == "completed"
    assert responder.command_publishes() == ["v2g/gateway/gw01/commands"]


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        # The envelope names another gateway than the topic.
        ("v2g/fleet/response/gw01", {"gateway": "gw02", "vehicles": []}),
        # No gateway id at all.
        ("v2g/fleet/response/", {"vehicles": [vehicle("car-1")]}),
        ("v2g/fleet/response/gw01", {"gateway": "gw01", "vehicles": "car-1"}),
    ],
)
async def test_a_bad_gateway_answer_is_dropped_whole(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
    topic: str,
    payload: dict[str, Any],
) -> None:
    entry = await async_setup_fleet(hass)
    async_fire_mqtt_message(hass, topic, json.dumps(payload))
    await async_settle(hass)
    assert entry.runtime_data.fleet.vehicles == {}
    diagnostics = await async_diagnostics(hass, hass_client, entry)
    assert diagnostics["dropped_input"] == {"discovery_malformed": 1}


async def test_only_a_gateway_answer_may_exceed_one_vehicles_size(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
) -> None:
    entry = await async_setup_fleet(hass)
    padding = "x" * 17_000  # over the 16 KiB of one vehicle's answer
    async_fire_mqtt_message(
        hass,
        "v2g/fleet/response/car-1",
        json.dumps(vehicle("car-1", segment=padding)),
    )
    async_fire_mqtt_message(hass, "v2g/fleet/response/car-2", "{" + padding)
    # 1,000 vehicles of a gateway: far over 16 KiB, under its 4 MiB.
    depot = [vehicle(f"car-{n:04d}") for n in range(1_000)]
    async_fire_mqtt_message(
        hass,
        "v2g/fleet/response/gw01",
        json.dumps({"gateway": "gw01", "vehicles": depot}),
    )
    await async_settle(hass)
    assert len(entry.runtime_data.fleet.vehicles) == 1_000
    diagnostics = await async_diagnostics(hass, hass_client, entry)
    assert diagnostics["dropped_input"] == {"discovery_oversize": 2}


async def test_discovery_is_not_asked_again_while_its_answers_arrive(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await async_setup_fleet(hass)
    responder = FleetResponder(hass, fleet_mqtt, discovery=[("car-1", {})])
    with patch_tuning("DISCOVERY_WINDOW_S", 0.01):
        assert [v["vehicle_id"] for v in await discover(hass)] == ["car-1"]
        assert responder.payloads("v2g/fleet/discovery") == ["hello"]
        # Answers of that request still arrive: a new call joins it.
        await async_announce(hass, ("car-2", {}))
        found = await discover(hass)
        assert sorted(v["vehicle_id"] for v in found) == ["car-1", "car-2"]
        assert responder.payloads("v2g/fleet/discovery") == ["hello"]
        # Once they stopped, a call asks again.
        with patch_tuning("ROUND_BUSY_S", 0.0):
            await discover(hass)
        assert responder.payloads("v2g/fleet/discovery") == ["hello", "hello"]


async def test_the_brokers_dropped_messages_raise_a_repair_issue(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
) -> None:
    entry = await async_setup_fleet(hass)
    # The count when the fleet begins to follow it (retained): not its drops.
    async_fire_mqtt_message(hass, SYS_DROPPED, "120", retain=True)
    await hass.async_block_till_done()
    assert issue(hass, "dropped_messages") is None

    async_fire_mqtt_message(hass, SYS_DROPPED, "200")
    await hass.async_block_till_done()
    raised = issue(hass, "dropped_messages")
    assert raised is not None
    assert raised.translation_key == "dropped_messages"
    assert raised.severity is ir.IssueSeverity.WARNING
    assert not raised.is_fixable
    assert raised.translation_placeholders is not None
    assert raised.translation_placeholders["dropped"] == "80"
    assert raised.translation_placeholders["fleet"] == "Depot"

    async_fire_mqtt_message(hass, SYS_DROPPED, "1300")
    await hass.async_block_till_done()
    raised = issue(hass, "dropped_messages")
    assert raised is not None
    assert raised.translation_placeholders is not None
    assert raised.translation_placeholders["dropped"] == "1,180"
    health = (await async_diagnostics(hass, hass_client, entry))["broker_health"]
    assert health["dropped_messages"]["broker_total"] == 1300
    assert health["dropped_messages"]["since_followed"] == 1180
    assert health["issues"] == ["dropped_messages"]

    # The broker restarted (with higher limits, say): its count starts again.
    async_fire_mqtt_message(hass, SYS_DROPPED, "0")
    await hass.async_block_till_done()
    assert issue(hass, "dropped_messages") is None
    # Unknown payloads are ignored.
    async_fire_mqtt_message(hass, SYS_DROPPED, "many")
    await hass.async_block_till_done()
    assert issue(hass, "dropped_messages") is None

    # Its issues go with the fleet.
    async_fire_mqtt_message(hass, SYS_DROPPED, "7")
    await hass.async_block_till_done()
    assert issue(hass, "dropped_messages") is not None
    assert await hass.config_entries.async_unload(entry.entry_id)
    assert issue(hass, "dropped_messages") is None


async def test_a_count_that_changed_before_the_first_one_arrived_counts_whole(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    # The retained count was lost (dropped in the same flood): what the broker
    # publishes next is a change, and all of it is reported.
    await async_setup_fleet(hass)
    async_fire_mqtt_message(hass, SYS_DROPPED, "3787")
    await hass.async_block_till_done()
    raised = issue(hass, "dropped_messages")
    assert raised is not None
    assert raised.translation_placeholders is not None
    assert raised.translation_placeholders["dropped"] == "3,787"


async def test_the_broker_count_is_asked_again_after_a_burst(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await async_setup_fleet(hass, options=FAST)
    await async_announce(hass, *[(f"v{n:02d}", {}) for n in range(60)])
    FleetResponder(hass, fleet_mqtt)
    fleet_mqtt.async_subscribe.reset_mock()
    with patch_tuning("RECOUNT_AFTER_BURST_S", 0.01):
        await async_dispatch(hass, signal_type="aFRR", power_kw=60)
        await asyncio.sleep(0.05)
        await hass.async_block_till_done()
    topics = [call.args[0] for call in fleet_mqtt.async_subscribe.call_args_list]
    assert topics == [SYS_DROPPED]


async def test_a_fleet_that_shrinks_between_discoveries_raises_a_repair_issue(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
) -> None:
    cars = [(f"car-{n:02d}", {}) for n in range(30)]
    entry = await async_setup_fleet(hass)
    responder = FleetResponder(hass, fleet_mqtt, discovery=cars)

    async def discovery_round() -> None:
        await discover(hass)
        await asyncio.sleep(0.05)  # its answers stop: the round is over
        await hass.async_block_till_done()

    with (
        patch_tuning("DISCOVERY_WINDOW_S", 0.01),
        patch_tuning("ROUND_BUSY_S", 0.0),
        patch_tuning("ROUND_QUIET_S", 0.02),
    ):
        await discovery_round()
        assert issue(hass, "fleet_shrank") is None

        responder.discovery = cars[:12]  # the other answers were lost
        await discovery_round()
        raised = issue(hass, "fleet_shrank")
        assert raised is not None
        assert raised.translation_placeholders == {
            "fleet": "Depot",
            "answered": "12",
            "expected": "30",
        }
        health = (await async_diagnostics(hass, hass_client, entry))["broker_health"]
        assert health["last_discovery_round"] == {
            "answered": 12,
            "expected": 30,
            "gateway_answers": 0,
        }

        responder.discovery = cars[:28]  # a car or two away is no news
        await discovery_round()
        assert issue(hass, "fleet_shrank") is None


async def test_acks_missing_in_a_burst_raise_a_repair_issue(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
) -> None:
    entry = await async_setup_fleet(hass, options=FAST)
    await async_announce(hass, *[(f"v{n:02d}", {}) for n in range(60)])
    # The acks of 20 of the 60 orders are lost on the way.
    lost = {f"v{n:02d}": "ignore" for n in range(20)}
    FleetResponder(hass, fleet_mqtt, lost)
    response = await async_dispatch(hass, signal_type="aFRR", power_kw=60)
    raised = issue(hass, "acks_missing")
    assert raised is not None
    assert raised.translation_placeholders == {
        "fleet": "Depot",
        "missing": "20",
        "orders": "60",
        "dispatch_id": response["dispatch_id"],
    }
    health = (await async_diagnostics(hass, hass_client, entry))["broker_health"]
    assert health["last_large_dispatch"] == {
        "dispatch_id": response["dispatch_id"],
        "orders": 60,
        "missing_acks": 20,
    }

    # A small dispatch says nothing either way.
    FleetResponder(hass, fleet_mqtt)
    await async_dispatch(hass, signal_type="aFRR", power_kw=2, vehicles=["v00", "v01"])
    assert issue(hass, "acks_missing") is not None
    # A large one whose acks all come clears it.
    await async_dispatch(hass, signal_type="aFRR", power_kw=60)
    assert issue(hass, "acks_missing") is None
