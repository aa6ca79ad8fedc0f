"""A mosquitto with its stock limits, as users run it (issue 16).

Stock mosquitto keeps 20 messages in flight and 1,000 queued per client and
drops the rest. The integration follows the broker's dropped-messages count
(a repair issue tells the operator), and a depot behind gateways fits through
it: one discovery answer and a few ack batches per gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
import time
from typing import Any

from homeassistant.core import HomeAssistant
from homeassistant.helpers import issue_registry as ir
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
import pytest
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator

from custom_components.v2g.const import DOMAIN
from simulator import FleetSimulator
from tests.helpers import async_diagnostics
from tests.mqtt_broker import MosquittoBroker

from .test_real_broker import discover, dispatch

pytestmark = pytest.mark.e2e


@pytest.fixture
def broker(socket_enabled: None) -> Generator[MosquittoBroker]:
    """Mosquitto with its default limits, publishing `$SYS` every second."""
    with MosquittoBroker(limits="stock", sys_interval=1) as running:
        yield running


def _client(broker: MosquittoBroker, name: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name)
    client.connect(broker.host, broker.port)
    return client


def flood_a_stuck_client(broker: MosquittoBroker, messages: int) -> None:
    """A client that subscribed, then stopped reading; `messages` QoS 1 to it.

    The broker holds 20 in flight and 1,000 queued for it, and drops the rest.
    """
    stuck = _client(broker, "stuck-gateway")
    stuck.loop_start()
    subscribed = stuck.subscribe("depot/stuck/#", qos=1)
    assert subscribed[0] == paho.MQTT_ERR_SUCCESS
    time.sleep(0.3)  # SUBACK
    stuck.loop_stop()  # connected, but never reads nor acks again
    sender = _client(broker, "sender")
    sender.loop_start()
    infos = [sender.publish("depot/stuck/x", b"x", qos=1) for _ in range(messages)]
    for info in infos:
        info.wait_for_publish(10)
    sender.loop_stop()
    sender.disconnect()
    if (sock := stuck.socket()) is not None:
        sock.close()


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll until `predicate()` is truthy (real time: the broker works meanwhile)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)
    return value


async def test_dropped_messages_raise_a_repair_issue(
    hass: HomeAssistant,
    broker: MosquittoBroker,
    make_v2g_entry: Callable[..., Any],
    hass_client: ClientSessionGenerator,
) -> None:
    entry = await make_v2g_entry()
    issues = ir.async_get(hass)
    issue_id = f"dropped_messages_{entry.entry_id}"
    await asyncio.sleep(1.5)  # the broker's count is followed (nothing dropped)
    assert issues.async_get_issue(DOMAIN, issue_id) is None

    await hass.async_add_executor_job(flood_a_stuck_client, broker, 1_100)

    issue = await wait_for(lambda: issues.async_get_issue(DOMAIN, issue_id))
    assert issue.translation_key == "dropped_messages"
    assert issue.severity is ir.IssueSeverity.WARNING
    # 1,100 sent, 20 in flight + 1,000 queued: the broker dropped the other 80.
    assert issue.translation_placeholders["dropped"] == "80"
    assert issue.translation_placeholders["fleet"] == "Depot"
    diagnostics = await async_diagnostics(hass, hass_client, entry)
    health = diagnostics["broker_health"]
    assert health["dropped_messages"]["since_followed"] == 80
    assert health["issues"] == ["dropped_messages"]


async def test_a_depot_behind_gateways_fits_through_a_stock_broker(
    hass: HomeAssistant,
    make_fleet: Callable[..., FleetSimulator],
    make_v2g_entry: Callable[..., Any],
) -> None:
    size = 2_000
    sim = make_fleet(count=size, connection="shared", gateway_size=500)
    entry = await make_v2g_entry()

    vehicles = await discover(hass, entry.entry_id)
    fleet = entry.runtime_data.fleet
    await wait_for(lambda: len(fleet.vehicles) == size)
    assert len(vehicles) == size
    stats = sim.stats()
    # One message per gateway and request (the entry's own at setup, the action's).
    assert stats["gateway_discovery_messages"] == 4 * stats["discovery_requests"]

    response = await dispatch(
        hass, entry.entry_id, signal_type="aFRR", power_kw=size, strategy="equal"
    )
    assert response["status"] == "completed"
    assert len(response["vehicles"]) == size
    assert {order["status"] for order in response["vehicles"].values()} == {
        "acknowledged"
    }
    assert (
        ir.async_get(hass).async_get_issue(DOMAIN, f"dropped_messages_{entry.entry_id}")
        is None
    )


async def test_per_vehicle_answers_of_a_depot_are_dropped_and_reported(
    hass: HomeAssistant,
    make_fleet: Callable[..., FleetSimulator],
    make_v2g_entry: Callable[..., Any],
) -> None:
    # The same depot, its vehicles answering discovery one message each (the
    # protocol before gateway discovery answers): a burst of 2,000 messages.
    size = 2_000
    sim = make_fleet(
        count=size, connection="shared", gateway_size=500, gateway_discovery=False
    )
    entry = await make_v2g_entry()
    await discover(hass, entry.entry_id)

    issue = await wait_for(
        lambda: ir.async_get(hass).async_get_issue(
            DOMAIN, f"dropped_messages_{entry.entry_id}"
        )
    )
    known = len(entry.runtime_data.fleet.vehicles)
    answers = sim.stats()["discovery_answers"]
    assert known < size <= answers
    # What never reached Home Assistant is what the broker says it dropped.
    assert int(issue.translation_placeholders["dropped"].replace(",", "")) > 0
