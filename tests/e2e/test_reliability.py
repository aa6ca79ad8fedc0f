"""Reliability under faults, against a real mosquitto (issue 6).

Home Assistant's real MQTT client, a real broker on loopback, the simulator as the
fleet, and a plain paho client tapping the wire (what was really published):

* broker outage in the middle of a dispatch: honest per-vehicle statuses, the
  completion event, entities unavailable, a refused dispatch while the broker is
  away; when it is back the client reconnects and resubscribes and the next
  dispatch completes (the dispatch waits for the ack subscription to be restored);
* overlapping dispatches to overlapping vehicles: the older order is superseded,
  every ack is attributed to the dispatch whose order it answers;
* order expiry: a vehicle that receives an order after its ``expires_at`` rejects
  it (``expired``) without applying it, and the dispatch reports it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import Any
from unittest.mock import patch

from homeassistant.components import mqtt
from homeassistant.const import STATE_UNAVAILABLE
from homeassistant.core import Event, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
import pytest

from custom_components.v2g.const import DOMAIN, EVENT_DISPATCH_COMPLETED
from custom_components.v2g.coordinator import V2GFleetCoordinator
from simulator import FleetSimulator
from tests.mqtt_broker import MosquittoBroker
from tests.simulator.conftest import Dispatcher as WireTap

from .test_real_broker import discover, dispatch

pytestmark = pytest.mark.e2e


@pytest.fixture
def fast_reconnect() -> Generator[None]:
    """Shorten HA's MQTT reconnect interval (10 s) and birth delay (5 s).

    The test then takes seconds; the resubscription after a reconnect is not
    delayed by either (it follows the connection at once).
    """
    with (
        patch("homeassistant.components.mqtt.client.RECONNECT_INTERVAL_SECONDS", 0.3),
        patch("homeassistant.components.mqtt.client.DISCOVERY_COOLDOWN", 0.2),
    ):
        yield


@pytest.fixture
def wire(broker: MosquittoBroker) -> Generator[WireTap]:
    """A paho client recording every order and ack that crosses the broker."""
    tap = WireTap(broker)
    tap.start()
    tap.subscribe("vehicle/+/command", "vehicle/+/ack")
    try:
        yield tap
    finally:
        tap.stop()


async def _in_thread[T](func: Callable[..., T], *args: Any) -> T:
    """Run a blocking helper (simulator, broker, wire tap) off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


async def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition that has no event of its own (bounded)."""
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"condition not met in {timeout} s")


def _connection_future(
    hass: HomeAssistant, wanted: bool
) -> tuple[asyncio.Future[float], Callable[[], None]]:
    """A future set (to the loop time) when HA's MQTT client is (dis)connected."""
    future: asyncio.Future[float] = hass.loop.create_future()

    @callback
    def _changed(connected: bool) -> None:
        if connected is wanted and not future.done():
            future.set_result(hass.loop.time())

    return future, mqtt.async_subscribe_connection_status(hass, _changed)


def _coordinator(hass: HomeAssistant, entry_id: str) -> V2GFleetCoordinator:
    entry = hass.config_entries.async_get_entry(entry_id)
    assert entry is not None
    return entry.runtime_data


async def test_broker_outage_mid_dispatch_then_recovery(
    hass: HomeAssistant,
    broker: MosquittoBroker,
    fast_reconnect: None,
    make_fleet: Callable[..., FleetSimulator],
    make_v2g_entry: Callable[..., Any],
) -> None:
    # A slow fleet (acks 1 s after each order: the broker dies before that) and a
    # fast one (acks at once) for the first dispatch after the outage.
    slow = make_fleet(count=3, id_prefix="slow", connection="shared", ack_latency=1.0)
    fast = make_fleet(count=2, id_prefix="fast", connection="shared")
    entry = await make_v2g_entry(ack_timeout=2.5, fallback="none")
    await discover(hass, entry.entry_id)
    coordinator = _coordinator(hass, entry.entry_id)
    completed: list[Event] = []
    hass.bus.async_listen(EVENT_DISPATCH_COMPLETED, completed.append)
    disconnected, stop_watching = _connection_future(hass, False)

    task = asyncio.create_task(
        dispatch(
            hass,
            entry.entry_id,
            signal_type="aFRR",
            power_kw=15,
            vehicles=slow.vehicle_ids,
        )
    )
    await _wait_for(
        lambda: slow.stats()["orders_received"] == 3
        and [r["phase"] for r in coordinator.engine.pending_dispatches()] == ["waiting"]
    )
    await _in_thread(broker.stop)
    stopped_at = hass.loop.time()
    async with asyncio.timeout(10):
        await disconnected
    stop_watching()

    # Entities go unavailable while the broker is away.
    await hass.async_block_till_done()
    for entity_id in (
        "sensor.depot_dispatches",
        f"sensor.{slow.vehicle_ids[0]}_setpoint",
    ):
        state = hass.states.get(entity_id)
        assert state is not None and state.state == STATE_UNAVAILABLE, entity_id
    # A new dispatch is refused: nothing is half-published.
    with pytest.raises(HomeAssistantError) as refused:
        await dispatch(hass, entry.entry_id, signal_type="aFRR", power_kw=5)
    assert refused.value.translation_key == "mqtt_not_connected"

    # The waiting dispatch ends at its ack timeout with what is known: published,
    # never acknowledged (the vehicles' acks died with the broker).
    async with asyncio.timeout(10):
        response = await task
    assert response["status"] == "failed"
    assert {v["status"] for v in response["vehicles"].values()} == {"timeout"}
    assert response["acknowledged_kw"] == 0.0
    assert response["ack_rate"] == 0.0
    assert [e.data["dispatch_id"] for e in completed] == [response["dispatch_id"]]
    assert completed[0].data["status"] == "failed"
    assert coordinator.engine.pending_dispatches() == []
    assert coordinator.persistence.in_flight.running == []
    latest = coordinator.dispatch_log.latest(1)[0]
    assert latest["dispatch_id"] == response["dispatch_id"]
    assert await _in_thread(slow.wait_until, lambda s: s["acks_lost_offline"] == 3, 5.0)

    # The broker comes back on the same port. HA's client is held back until the
    # fleet is connected again, then dispatches the moment it reports the
    # connection: before the broker knows its ack subscription again (HA
    # resubscribes a moment later). The dispatch must wait for that, not lose the
    # vehicles' immediate acks.
    await _wait_for(
        lambda: slow.stats()["connected"] == 0 and fast.stats()["connected"] == 0
    )
    client = hass.data[mqtt.DATA_MQTT].client
    reconnected: asyncio.Future[Any] = hass.loop.create_future()

    @callback
    def _dispatch_at_once(connected: bool) -> None:
        if connected and not reconnected.done():
            gate_open = coordinator.gate_open
            reconnected.set_result(
                (
                    hass.loop.time(),
                    gate_open,
                    asyncio.create_task(
                        dispatch(
                            hass,
                            entry.entry_id,
                            signal_type="aFRR",
                            power_kw=-9,
                            vehicles=fast.vehicle_ids,
                        )
                    ),
                )
            )

    stop_watching = mqtt.async_subscribe_connection_status(hass, _dispatch_at_once)
    async with client._connection_lock:
        await _in_thread(broker.start)
        restarted_at = hass.loop.time()
        assert await _in_thread(slow.wait_ready, 10.0)
        assert await _in_thread(fast.wait_ready, 10.0)
    async with asyncio.timeout(15):
        reconnected_at, gate_open, after_task = await reconnected
    stop_watching()
    # Until the broker confirmed the resubscription, no order may leave.
    assert not gate_open
    async with asyncio.timeout(15):
        after = await after_task
    recovered_at = hass.loop.time()
    assert after["status"] == "completed", after
    assert {v["status"] for v in after["vehicles"].values()} == {"acknowledged"}
    for vehicle_id, order in after["vehicles"].items():
        assert fast.vehicle(vehicle_id)["power_kw"] == pytest.approx(order["power_kw"])
    await hass.async_block_till_done()
    state = hass.states.get("sensor.depot_dispatches")
    assert state is not None and state.state == "2"
    # HA's client finishes its reconnect (birth message) before the test ends.
    mqtt_entry = hass.config_entries.async_entries(mqtt.DOMAIN)[0]
    await _wait_for(
        lambda: all(
            task.done() or task.get_name() != "mqtt re-subscribe and birth"
            for task in mqtt_entry._background_tasks
        )
    )
    print(
        f"outage: broker down {restarted_at - stopped_at:.2f} s; dispatch issued "
        f"at HA's reconnect completed {recovered_at - reconnected_at:.3f} s later"
    )


async def test_overlapping_dispatches_supersede_and_never_mix_acks(
    hass: HomeAssistant,
    wire: WireTap,
    make_fleet: Callable[..., FleetSimulator],
    make_v2g_entry: Callable[..., Any],
) -> None:
    sim = make_fleet(count=4, connection="shared", ack_latency=0.5)
    entry = await make_v2g_entry(ack_timeout=5, fallback="none")
    await discover(hass, entry.entry_id)
    v1, v2, v3, v4 = sim.vehicle_ids
    overlap = {v2, v3}

    first, second = await asyncio.gather(
        dispatch(
            hass,
            entry.entry_id,
            signal_type="aFRR",
            power_kw=9,
            vehicles=[v1, v2, v3],
            strategy="equal",
        ),
        dispatch(
            hass,
            entry.entry_id,
            signal_type="aFRR",
            power_kw=-6,
            vehicles=[v2, v3, v4],
            strategy="equal",
        ),
    )

    # The older order of each shared vehicle is superseded, the newer one counts.
    by_status = {
        name: {vid: o["status"] for vid, o in response["vehicles"].items()}
        for name, response in (("first", first), ("second", second))
    }
    older, newer = (
        (first, second)
        if {by_status["first"][v] for v in overlap} == {"superseded"}
        else (second, first)
    )
    for vehicle_id in overlap:
        assert older["vehicles"][vehicle_id]["status"] == "superseded", by_status
        assert newer["vehicles"][vehicle_id]["status"] == "acknowledged", by_status
    own_older = (set(older["vehicles"]) - overlap).pop()
    own_newer = (set(newer["vehicles"]) - overlap).pop()
    assert older["vehicles"][own_older]["status"] == "acknowledged"
    assert newer["vehicles"][own_newer]["status"] == "acknowledged"
    assert older["status"] == "partial"
    assert newer["status"] == "completed"
    assert older["acknowledged_kw"] == pytest.approx(
        older["vehicles"][own_older]["power_kw"]
    )
    assert newer["acknowledged_kw"] == pytest.approx(newer["requested_kw"])
    # Superseded orders are not counted as published (docs/actions.md#ack-rate).
    assert older["ack_rate"] == 1.0
    assert newer["ack_rate"] == 1.0

    # Compare with the wire: every order went out with its dispatch id and power,
    # and every ack the vehicles sent (superseded orders were acked too) is
    # attributed to the order — and the dispatch — it answers, or to none.
    sent = 6
    orders = await _in_thread(wire.wait_for, "vehicle/+/command", sent, 5.0)
    acks = await _in_thread(wire.wait_for, "vehicle/+/ack", sent, 5.0)
    on_wire = {m.json()["command_id"]: (m.topic, m.json()) for m in orders}
    acked_on_wire = {m.json()["command_id"]: m.topic for m in acks}
    assert len(on_wire) == sent
    for response in (first, second):
        for vehicle_id, outcome in response["vehicles"].items():
            topic, order = on_wire[outcome["command_id"]]
            assert topic == f"vehicle/{vehicle_id}/command"
            assert order["dispatch_id"] == response["dispatch_id"]
            assert order["power_kw"] == pytest.approx(outcome["power_kw"])
            assert acked_on_wire[outcome["command_id"]] == f"vehicle/{vehicle_id}/ack"
    counted = {
        o["command_id"]
        for r in (first, second)
        for o in r["vehicles"].values()
        if o["status"] == "acknowledged"
    }
    assert len(counted) == 4
    tracker = _coordinator(hass, entry.entry_id).engine.tracker
    # The acks of the superseded orders arrived after they were resolved: late.
    assert tracker.counters["late"] == 2
    assert tracker.counters["accepted"] == 4
    assert tracker.counters["vehicle_mismatch"] == 0
    assert tracker.pending_count == 0
    # The vehicles hold the newer setpoint.
    for vehicle_id in overlap:
        assert sim.vehicle(vehicle_id)["power_kw"] == pytest.approx(
            newer["vehicles"][vehicle_id]["power_kw"]
        )
        state = hass.states.get(f"sensor.{vehicle_id}_setpoint")
        assert state is not None
        assert float(state.state) == pytest.approx(
            newer["vehicles"][vehicle_id]["power_kw"]
        )


@pytest.mark.usefixtures("outcome_events_enabled")
async def test_stale_order_is_reported_and_not_applied(
    hass: HomeAssistant,
    make_fleet: Callable[..., FleetSimulator],
    make_v2g_entry: Callable[..., Any],
) -> None:
    # Two vehicles whose clock runs 5 minutes ahead see every 1-minute order as
    # already expired when it arrives (the same as an order delivered late).
    skewed = make_fleet(
        count=2, id_prefix="skew", connection="shared", clock_offset=300
    )
    punctual = make_fleet(count=2, id_prefix="ok", connection="shared")
    entry = await make_v2g_entry(fallback="none")
    await discover(hass, entry.entry_id)

    response = await dispatch(
        hass,
        entry.entry_id,
        signal_type="aFRR",
        power_kw=16,
        strategy="equal",
        duration={"minutes": 1},
    )

    for vehicle_id in skewed.vehicle_ids:
        outcome = response["vehicles"][vehicle_id]
        assert outcome["status"] == "rejected"
        assert outcome["reason"] == "expired"
        assert skewed.vehicle(vehicle_id)["power_kw"] == 0.0  # not acted on
        state = hass.states.get(f"event.{vehicle_id}_dispatch_outcome")
        assert state is not None
        assert state.attributes["event_type"] == "rejected"
        assert state.attributes["reason"] == "expired"
    for vehicle_id in punctual.vehicle_ids:
        assert response["vehicles"][vehicle_id]["status"] == "acknowledged"
        assert punctual.vehicle(vehicle_id)["power_kw"] == pytest.approx(4.0)
    assert skewed.stats()["orders_expired"] == 2
    assert punctual.stats()["orders_expired"] == 0
    assert response["status"] == "partial"
    assert response["acknowledged_kw"] == pytest.approx(8.0)
    assert response["signal"]["duration_s"] == 60.0  # the orders' time to live
    log = await hass.services.async_call(
        DOMAIN,
        "get_dispatch_log",
        {"config_entry_id": entry.entry_id, "vehicle_id": skewed.vehicle_ids[0]},
        blocking=True,
        return_response=True,
    )
    assert log is not None
    [logged] = log["entries"]  # type: ignore[misc]
    assert logged["vehicles"][skewed.vehicle_ids[0]]["reason"] == "expired"
