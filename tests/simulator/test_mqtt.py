"""The simulator against a real mosquitto, driven by a plain paho "dispatcher"."""

from __future__ import annotations

from collections.abc import Callable
import time
from typing import Any

import pytest

from simulator import FleetSimulator
from tests.mqtt_broker import MosquittoBroker
from tests.simulator.conftest import Dispatcher, Message, by_command, order

type MakeSim = Callable[..., FleetSimulator]

VEHICLE_KEYS = {
    "ID",
    "SoC",
    "IsV2G",
    "MaxPower",
    "ChargeRate",
    "BatteryKWh",
    "Available",
    "Charging",
    "Priority",
    "Departure",
    "MinSoC",
    "segment",
    "AvailabilityProb",
    "DegradationFactor",
}


# -- discovery -------------------------------------------------------------------


@pytest.mark.parametrize("connection", ["per-vehicle", "shared"])
def test_discovery_answers(
    make_sim: MakeSim, dispatcher: Dispatcher, connection: str
) -> None:
    sim = make_sim(count=3, connection=connection, commuter_pct=1.0, min_soc=0.2)
    dispatcher.subscribe("v2g/fleet/response/+")
    dispatcher.publish("v2g/fleet/discovery", b"hello")
    answers = dispatcher.wait_for("v2g/fleet/response/+", 3)
    assert {m.topic for m in answers} == {
        "v2g/fleet/response/veh001",
        "v2g/fleet/response/veh002",
        "v2g/fleet/response/veh003",
    }
    first = next(m for m in answers if m.topic.endswith("veh001"))
    body = first.json()
    assert set(body) == VEHICLE_KEYS
    assert body["ID"] == "veh001"
    assert body["SoC"] == 0.8
    assert body["IsV2G"] is True
    assert body["MaxPower"] == 10.0
    assert body["ChargeRate"] == 7.0
    assert body["BatteryKWh"] == 40.0
    assert body["Available"] is True
    assert body["Charging"] is False
    assert body["MinSoC"] == 0.2
    assert body["segment"] == "commuter"
    assert body["Departure"] is None
    assert not any(m.retain for m in answers)
    assert sim.stats()["discovery_answers"] == 3


def test_discovery_needs_the_magic_word(
    make_sim: MakeSim, dispatcher: Dispatcher
) -> None:
    sim = make_sim(count=2, connection="shared")
    dispatcher.subscribe("v2g/fleet/response/+")
    dispatcher.publish("v2g/fleet/discovery", b"HELLO?")
    assert sim.wait_until(lambda s: s["malformed"] == 1)
    dispatcher.publish("v2g/fleet/discovery", b"hello")
    dispatcher.wait_for("v2g/fleet/response/+", 2)
    assert len(dispatcher.matching("v2g/fleet/response/+")) == 2


def test_shared_connection_serves_a_larger_fleet(
    make_sim: MakeSim, dispatcher: Dispatcher
) -> None:
    sim = make_sim(count=300, connection="shared")
    assert sim.stats()["connected"] == 1
    dispatcher.subscribe("v2g/fleet/response/+", "vehicle/+/ack")
    dispatcher.publish("v2g/fleet/discovery", b"hello")
    dispatcher.wait_for("v2g/fleet/response/+", 300)
    orders = [order(vid, 2.0) for vid in sim.vehicle_ids]
    for item in orders:
        dispatcher.publish(f"vehicle/{item['vehicle_id']}/command", item)
    acks = by_command(dispatcher.wait_for("vehicle/+/ack", 300))
    assert set(acks) == {o["command_id"] for o in orders}
    assert all(a["status"] == "accepted" for a in acks.values())


# -- orders ----------------------------------------------------------------------


@pytest.mark.parametrize("connection", ["per-vehicle", "shared"])
def test_order_is_applied_and_acked(
    make_sim: MakeSim, dispatcher: Dispatcher, connection: str
) -> None:
    sim = make_sim(count=2, connection=connection)
    dispatcher.subscribe("vehicle/+/ack")
    discharge = order("veh002", 6.5, dispatch_id="d1", signal_type="FCR")
    dispatcher.publish("vehicle/veh002/command", discharge)
    (ack,) = dispatcher.wait_for("vehicle/+/ack")
    assert ack.topic == "vehicle/veh002/ack"
    assert not ack.retain
    assert ack.json() == {
        "command_id": discharge["command_id"],
        "status": "accepted",
        "applied_power_kw": 6.5,
    }
    state = sim.vehicle("veh002")
    assert state["power_kw"] == 6.5
    assert state["charging"] is False
    assert sim.vehicle("veh001")["power_kw"] == 0
    charge = order("veh002", -7.0)
    dispatcher.publish("vehicle/veh002/command", charge)
    dispatcher.wait_for("vehicle/+/ack", 2)
    assert sim.vehicle("veh002")["charging"] is True
    stats = sim.stats()
    assert stats["orders_received"] == 2
    assert stats["orders_acked"] == 2


def _prepare(sim: FleetSimulator, case: str) -> None:
    if case == "battery_full":
        sim.set_soc("veh001", 1.0)
    elif case == "battery_empty":
        sim.set_soc("veh001", 0.0)
    elif case == "unavailable":
        sim.set_available("veh001", False)


@pytest.mark.parametrize(
    ("power", "case"),
    [
        (25.0, "exceeds_max_power"),
        (15.0, "exceeds_discharge_rate"),
        (-9.0, "exceeds_charge_rate"),
        (-5.0, "battery_full"),
        (5.0, "battery_empty"),
        (5.0, "unavailable"),
    ],
)
def test_refused_orders_are_rejected_with_a_reason(
    make_sim: MakeSim, dispatcher: Dispatcher, power: float, case: str
) -> None:
    sim = make_sim(count=1, max_power_kw=20, discharge_rate_kw=10, charge_rate_kw=7)
    _prepare(sim, case)
    dispatcher.subscribe("vehicle/+/ack")
    item = order("veh001", power)
    dispatcher.publish("vehicle/veh001/command", item)
    (ack,) = dispatcher.wait_for("vehicle/veh001/ack")
    assert ack.json() == {
        "command_id": item["command_id"],
        "status": "rejected",
        "reason": case,
    }
    assert sim.vehicle("veh001")["power_kw"] == 0
    stats = sim.stats()
    assert (stats["orders_rejected"], stats["orders_refused"]) == (1, 1)


def test_ack_all_keeps_acking_refused_orders(
    make_sim: MakeSim, dispatcher: Dispatcher
) -> None:
    sim = make_sim(count=1, ack_all=True)
    dispatcher.subscribe("vehicle/+/ack")
    refused = order("veh001", 50.0)
    accepted = order("veh001", 3.0)
    dispatcher.publish("vehicle/veh001/command", refused)
    dispatcher.publish("vehicle/veh001/command", accepted)
    acks = by_command(dispatcher.wait_for("vehicle/+/ack", 2))
    assert acks[refused["command_id"]] == {"command_id": refused["command_id"]}
    assert acks[accepted["command_id"]]["status"] == "accepted"
    assert sim.vehicle("veh001")["power_kw"] == 3.0
    stats = sim.stats()
    assert (stats["orders_acked"], stats["orders_refused"]) == (2, 1)


def test_expired_order_is_not_applied(
    make_sim: MakeSim, dispatcher: Dispatcher
) -> None:
    sim = make_sim(count=1)
    dispatcher.subscribe("vehicle/+/ack")
    now_ms = int(time.time() * 1000)
    stale = order("veh001", 5.0, expires_at=now_ms - 1000)
    fresh = order("veh001", 4.0, expires_at=now_ms + 60_000)
    dispatcher.publish("vehicle/veh001/command", stale)
    dispatcher.publish("vehicle/veh001/command", fresh)
    acks = by_command(dispatcher.wait_for("vehicle/+/ack", 2))
    assert acks[stale["command_id"]] == {
        "command_id": stale["command_id"],
        "status": "rejected",
        "reason": "expired",
    }
    assert acks[fresh["command_id"]]["applied_power_kw"] == 4.0
    assert sim.vehicle("veh001")["power_kw"] == 4.0
    assert sim.stats()["orders_expired"] == 1


def test_ack_latency_delays_the_ack(make_sim: MakeSim, dispatcher: Dispatcher) -> None:
    make_sim(count=1, ack_latency=0.25, ack_jitter=0.05)
    dispatcher.subscribe("vehicle/+/ack")
    sent = time.monotonic()
    dispatcher.publish("vehicle/veh001/command", order("veh001", 1.0))
    dispatcher.wait_for("vehicle/+/ack")
    assert time.monotonic() - sent >= 0.25


def test_minimal_acks_are_go_shaped(make_sim: MakeSim, dispatcher: Dispatcher) -> None:
    make_sim(count=1, minimal_acks=True)
    dispatcher.subscribe("vehicle/+/ack")
    item = order("veh001", 1.0)
    dispatcher.publish("vehicle/veh001/command", item)
    (ack,) = dispatcher.wait_for("vehicle/+/ack")
    assert ack.json() == {"command_id": item["command_id"]}


def test_malformed_input_never_crashes(
    make_sim: MakeSim, dispatcher: Dispatcher
) -> None:
    sim = make_sim(count=1, connection="shared")
    dispatcher.subscribe("vehicle/+/ack", "v2g/gateway/+/acks")
    for payload in (
        b"",
        b"{",
        b"[1, 2]",
        b'{"power_kw": 5}',
        b"\xff\xfe",
        b'{"command_id": "x", "power_kw": 1e400}',
        b"9" * 100_000,
    ):
        dispatcher.publish("vehicle/veh001/command", payload)
    dispatcher.publish("vehicle/veh001/command", order("veh001", "5", "bad-power"))
    mismatch = order("veh002", 1.0)
    dispatcher.publish("vehicle/veh001/command", mismatch)
    dispatcher.publish("vehicle/nobody/command", order("nobody", 1.0))
    dispatcher.publish("v2g/gateway/gw01/commands", b'{"orders": []}')
    dispatcher.publish("v2g/telemetry/request/nobody", b"poll")
    good = order("veh001", 2.0)
    dispatcher.publish("vehicle/veh001/command", good)
    acks = by_command(dispatcher.wait_for("vehicle/+/ack", 4))
    assert acks["bad-power"]["reason"] == "invalid_order"
    assert acks["x"]["reason"] == "invalid_order"
    assert acks[mismatch["command_id"]]["reason"] == "vehicle_mismatch"
    assert acks[good["command_id"]]["status"] == "accepted"
    stats = sim.stats()
    assert stats["malformed"] == 8
    assert stats["unknown_vehicle"] == 2  # no gateway here: gw topics unsubscribed
    assert stats["errors"] == 0


# -- gateways --------------------------------------------------------------------


@pytest.mark.parametrize("connection", ["per-vehicle", "shared"])
def test_gateway_batches(
    make_sim: MakeSim, dispatcher: Dispatcher, connection: str
) -> None:
    sim = make_sim(
        count=6,
        gateway_size=3,
        connection=connection,
        gateway_batch_max=2,
        ack_jitter=0.02,
    )
    assert sim.gateway_ids == ["gw01", "gw02"]
    if connection == "per-vehicle":
        assert sim.stats()["connected"] == 2
    dispatcher.subscribe("v2g/fleet/response/+", "v2g/gateway/+/acks")
    dispatcher.publish("v2g/fleet/discovery", b"hello")
    # Each gateway answers for its vehicles, at most two a message.
    messages = dispatcher.wait_for("v2g/fleet/response/+", 4)
    assert sorted(m.topic for m in messages) == [
        "v2g/fleet/response/gw01",
        "v2g/fleet/response/gw01",
        "v2g/fleet/response/gw02",
        "v2g/fleet/response/gw02",
    ]
    answers = {
        vehicle["ID"]: vehicle
        for m in messages
        for vehicle in m.json()["vehicles"]
        if m.json()["gateway"] == vehicle["gateway"]
    }
    assert sorted(answers) == sim.vehicle_ids
    assert answers["veh001"]["gateway"] == "gw01"
    assert answers["veh006"]["gateway"] == "gw02"
    assert sim.stats()["gateway_discovery_messages"] == 4
    assert sim.stats()["discovery_answers"] == 6

    sim.set_soc("veh003", 1.0)
    orders = [
        order("veh001", 5.0),
        order("veh002", -3.0),
        order("veh003", -3.0),  # battery full
        order("veh004", 1.0),  # behind gw02, not gw01
    ]
    dispatcher.publish(
        "v2g/gateway/gw01/commands", {"dispatch_id": "d1", "orders": orders}
    )

    def gateway_acks(messages: list[Message]) -> dict[str, dict[str, Any]]:
        return {
            ack["command_id"]: ack
            for m in messages
            if m.topic == "v2g/gateway/gw01/acks"
            for ack in m.json()["acks"]
        }

    acks = gateway_acks(
        dispatcher.wait_until(lambda msgs: len(gateway_acks(msgs)) >= 4)
    )
    messages = dispatcher.matching("v2g/gateway/gw01/acks")
    assert len(messages) >= 2
    c1, c2, c3, c4 = (o["command_id"] for o in orders)
    assert acks[c1] == {
        "command_id": c1,
        "vehicle_id": "veh001",
        "status": "accepted",
        "applied_power_kw": 5.0,
    }
    assert acks[c2]["applied_power_kw"] == -3.0
    assert acks[c3] == {
        "command_id": c3,
        "vehicle_id": "veh003",
        "status": "rejected",
        "reason": "battery_full",
    }
    assert acks[c4]["reason"] == "unknown_vehicle"
    assert all(len(m.json()["acks"]) <= 2 for m in messages)
    assert not dispatcher.matching("v2g/gateway/gw02/acks")
    assert sim.vehicle("veh002")["power_kw"] == -3.0
    assert sim.stats()["gateway_batches"] == 1


def test_gateway_vehicles_may_answer_discovery_one_by_one(
    make_sim: MakeSim, dispatcher: Dispatcher
) -> None:
    make_sim(count=4, gateway_size=2, connection="shared", gateway_discovery=False)
    dispatcher.subscribe("v2g/fleet/response/+")
    dispatcher.publish("v2g/fleet/discovery", b"hello")
    messages = dispatcher.wait_for("v2g/fleet/response/+", 4)
    assert sorted(m.topic for m in messages) == [
        f"v2g/fleet/response/veh00{n}" for n in range(1, 5)
    ]
    assert {m.json()["gateway"] for m in messages} == {"gw01", "gw02"}


def test_offline_vehicle_behind_gateway_is_silent(
    make_sim: MakeSim, dispatcher: Dispatcher
) -> None:
    sim = make_sim(count=2, gateways=1)
    sim.set_offline("veh002")
    dispatcher.subscribe("v2g/gateway/+/acks", "v2g/fleet/response/+")
    orders = [order("veh001", 1.0), order("veh002", 1.0)]
    dispatcher.publish(
        "v2g/gateway/gw01/commands", {"dispatch_id": "d", "orders": orders}
    )
    (message,) = dispatcher.wait_for("v2g/gateway/gw01/acks")
    assert [a["vehicle_id"] for a in message.json()["acks"]] == ["veh001"]
    assert sim.stats()["orders_ignored"] == 1
    sim.set_offline("gw01")
    assert sim.stats()["connected"] == 0
    sim.set_online("gw01")
    assert sim.wait_ready(5)
    dispatcher.publish("v2g/fleet/discovery", b"hello")
    (answer,) = dispatcher.wait_for("v2g/fleet/response/+")
    assert answer.topic == "v2g/fleet/response/gw01"
    assert [v["ID"] for v in answer.json()["vehicles"]] == ["veh001"]


# -- telemetry -------------------------------------------------------------------


def test_telemetry_push(make_sim: MakeSim, dispatcher: Dispatcher) -> None:
    dispatcher.subscribe("v2g/vehicle/state/+")
    sim = make_sim(count=2, telemetry_push=True, telemetry_interval=0.2)
    sim.set_soc("veh001", 0.5)
    dispatcher.publish("vehicle/veh001/command", order("veh001", -7.0))
    assert sim.wait_until(lambda s: s["orders_accepted"] == 1)

    def charging_states(messages: list[Message]) -> list[dict[str, Any]]:
        return [
            m.json()
            for m in messages
            if m.topic == "v2g/vehicle/state/veh001" and m.json()["power_kw"]
        ]

    body = charging_states(
        dispatcher.wait_until(lambda msgs: bool(charging_states(msgs)), timeout=3)
    )[0]
    assert set(body) == {"vehicle_id", "soc", "available", "charging", "power_kw", "ts"}
    assert body["vehicle_id"] == "veh001"
    assert body["charging"] is True
    assert body["power_kw"] == -7.0
    assert body["available"] is True
    assert body["soc"] > 0.5
    assert abs(body["ts"] - time.time()) < 5
    dispatcher.wait_for("v2g/vehicle/state/veh002", 1, timeout=3)
    assert not any(m.retain for m in dispatcher.messages)


def test_telemetry_pull(make_sim: MakeSim, dispatcher: Dispatcher) -> None:
    sim = make_sim(count=3, connection="shared")
    dispatcher.subscribe("v2g/telemetry/response/+", "v2g/vehicle/state/+")
    dispatcher.publish("v2g/telemetry/request", b"poll")
    answers = dispatcher.wait_for("v2g/telemetry/response/+", 3)
    assert {m.json()["vehicle_id"] for m in answers} == {"veh001", "veh002", "veh003"}
    assert answers[0].json()["charging"] is False
    dispatcher.clear()
    dispatcher.publish("v2g/telemetry/request/veh002", b"poll")
    (answer,) = dispatcher.wait_for("v2g/telemetry/response/+")
    assert answer.topic == "v2g/telemetry/response/veh002"
    assert sim.stats()["telemetry_sent"] == 4
    assert not dispatcher.matching("v2g/vehicle/state/+")


# -- availability ----------------------------------------------------------------


@pytest.mark.parametrize("connection", ["per-vehicle", "shared"])
def test_offline_vehicle_is_silent(
    make_sim: MakeSim, dispatcher: Dispatcher, connection: str
) -> None:
    sim = make_sim(count=2, connection=connection)
    dispatcher.subscribe(
        "v2g/fleet/response/+", "vehicle/+/ack", "v2g/telemetry/response/+"
    )
    sim.set_offline("veh001")
    assert sim.vehicle("veh001")["silent"]
    if connection == "per-vehicle":
        assert sim.stats()["connected"] == 1
    dispatcher.publish("v2g/fleet/discovery", b"hello")
    dispatcher.publish("vehicle/veh001/command", order("veh001", 1.0))
    dispatcher.publish("v2g/telemetry/request", b"poll")
    dispatcher.wait_for("v2g/fleet/response/veh002")
    dispatcher.wait_for("v2g/telemetry/response/veh002")
    if connection == "shared":
        assert sim.wait_until(lambda s: s["orders_ignored"] == 1)
    dispatcher.assert_quiet("v2g/+/+/veh001", window=0.2)
    assert not dispatcher.matching("vehicle/veh001/ack")

    sim.set_online("veh001")
    assert sim.wait_ready(5)
    item = order("veh001", 1.0)
    dispatcher.publish("vehicle/veh001/command", item)
    (ack,) = dispatcher.wait_for("vehicle/veh001/ack")
    assert ack.json()["command_id"] == item["command_id"]


def test_random_disconnects_silence_the_fleet(make_sim: MakeSim) -> None:
    sim = make_sim(
        count=3,
        disconnect_rate=1.0,
        availability_interval=0.1,
        availability=(0.0,) * 24,
    )
    assert sim.wait_until(lambda s: s["vehicles_online"] == 0, timeout=5)
    assert sim.wait_until(lambda s: s["connected"] == 0, timeout=5)
    assert sim.vehicle("veh002")["offline_reason"] == "disconnect"


def test_departure_makes_the_vehicle_leave(
    make_sim: MakeSim, dispatcher: Dispatcher
) -> None:
    from datetime import UTC, datetime, timedelta

    soon = datetime.now(UTC) + timedelta(seconds=0.3)
    sim = make_sim(count=2, connection="shared", departures={"veh002": soon})
    dispatcher.subscribe("v2g/fleet/response/+")
    dispatcher.publish("v2g/fleet/discovery", b"hello")
    answers = {
        m.json()["ID"]: m.json() for m in dispatcher.wait_for("v2g/fleet/response/+", 2)
    }
    assert answers["veh002"]["Departure"].endswith("Z")
    assert sim.wait_until(lambda s: s["vehicles_online"] == 1, timeout=5)
    assert sim.vehicle("veh002")["offline_reason"] == "departed"


def test_broker_restart_resubscribes_everything(
    broker: MosquittoBroker, make_sim: MakeSim
) -> None:
    sim = make_sim(count=2, connection="shared")
    broker.stop()
    assert sim.wait_until(lambda s: s["connected"] == 0, timeout=5)
    broker.start()
    assert sim.wait_ready(10)
    dispatcher = Dispatcher(broker)
    dispatcher.start()
    try:
        dispatcher.subscribe(
            "v2g/fleet/response/+", "vehicle/+/ack", "v2g/telemetry/response/+"
        )
        dispatcher.publish("v2g/fleet/discovery", b"hello")
        dispatcher.wait_for("v2g/fleet/response/+", 2)
        dispatcher.publish("v2g/telemetry/request", b"poll")
        dispatcher.wait_for("v2g/telemetry/response/+", 2)
        dispatcher.publish("vehicle/veh001/command", order("veh001", 1.0))
        dispatcher.wait_for("vehicle/+/ack")
    finally:
        dispatcher.stop()
    assert sim.stats()["connects"] >= 2


def test_custom_topics(make_sim: MakeSim, dispatcher: Dispatcher) -> None:
    from simulator import TopicConfig

    topics = TopicConfig(
        command="depot/{vehicle_id}/orders",
        ack="depot/{vehicle_id}/acks",
        discovery="depot/discover",
        discovery_response="depot/{vehicle_id}/hello",
    )
    make_sim(count=1, id_prefix="car", topics=topics, connection="shared")
    dispatcher.subscribe("depot/#")
    dispatcher.publish("depot/discover", b"hello")
    dispatcher.wait_for("depot/car001/hello")
    dispatcher.publish("depot/car001/orders", order("car001", 1.0))
    dispatcher.wait_for("depot/car001/acks")


def test_start_fails_cleanly_without_a_broker(socket_enabled: None) -> None:
    from simulator import SimulatorConfig, SimulatorError
    from tests.mqtt_broker import free_port

    sim = FleetSimulator(SimulatorConfig(port=free_port(), count=2))
    with pytest.raises(SimulatorError, match="not connected"):
        sim.start(timeout=0.3)
    assert not sim.running
