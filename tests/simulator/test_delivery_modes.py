"""Delivery behaviours (issue 14: acknowledged is not delivered) and the power API.

Each Go-vehicle behaviour is off by default (the simulator is honest) and can be
switched on for the whole fleet, per vehicle (`vehicle_overrides`) or at run time
(`set_behaviour`). Telemetry always carries the power really applied.
"""

from __future__ import annotations

from collections.abc import Callable
import time
from typing import Any

import pytest

from simulator import ConfigError, FleetSimulator, SimulatorConfig, VehicleBehaviour
from simulator.cli import build_parser, config_from_args
from simulator.config import make_behaviour, parse_override
from tests.simulator.conftest import Dispatcher, by_command, order

type MakeSim = Callable[..., FleetSimulator]


def _wait_power(
    sim: FleetSimulator, vehicle_id: str, expected: float, timeout: float = 3.0
) -> float:
    """Poll a vehicle's real power until it equals `expected`; return it."""
    deadline = time.monotonic() + timeout
    while True:
        power = sim.power_kw(vehicle_id)
        if power == pytest.approx(expected) or time.monotonic() > deadline:
            return power
        time.sleep(0.02)


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- dropped acks ------------------------------------------------------------------


@pytest.mark.parametrize(("apply_dropped", "power"), [(False, 0.0), (True, 1.0)])
def test_a_dropped_order_is_lost_unless_apply_dropped(
    make_sim: MakeSim, dispatcher: Dispatcher, apply_dropped: bool, power: float
) -> None:
    sim = make_sim(
        count=2, drop_rate=1.0, apply_dropped=apply_dropped, connection="shared"
    )
    dispatcher.subscribe("vehicle/+/ack")
    for vid in sim.vehicle_ids:
        dispatcher.publish(f"vehicle/{vid}/command", order(vid, 1.0))
    assert sim.wait_until(lambda s: s["orders_dropped"] == 2)
    assert sim.powers() == {"veh001": power, "veh002": power}
    assert sim.stats()["orders_accepted"] == (2 if apply_dropped else 0)
    dispatcher.assert_quiet("vehicle/+/ack", window=0.2)


def test_behaviour_can_differ_per_vehicle_and_change_at_run_time(
    make_sim: MakeSim, dispatcher: Dispatcher
) -> None:
    sim = make_sim(
        count=3,
        connection="shared",
        vehicle_overrides={"veh002": {"drop_rate": 1.0, "apply_dropped": True}},
    )
    assert sim.behaviour("veh002").drop_rate == 1.0
    assert sim.behaviour("veh001") == VehicleBehaviour()
    dispatcher.subscribe("vehicle/+/ack")
    orders = {vid: order(vid, 2.0) for vid in sim.vehicle_ids}
    for vid, item in orders.items():
        dispatcher.publish(f"vehicle/{vid}/command", item)
    acks = dispatcher.wait_for("vehicle/+/ack", 2)
    assert sorted(m.topic for m in acks) == ["vehicle/veh001/ack", "vehicle/veh003/ack"]
    assert sim.wait_until(lambda s: s["orders_dropped"] == 1)
    assert sim.total_power_kw() == pytest.approx(6.0)  # veh002 applied its order
    assert sim.total_power_kw(["veh001", "veh002"]) == pytest.approx(4.0)

    sim.set_behaviour("veh002", drop_rate=0.0)
    sim.set_behaviour("veh003", drop_rate=1.0)
    assert sim.behaviour("veh002").apply_dropped is True  # other fields kept
    dispatcher.clear()
    for vid in ("veh002", "veh003"):
        dispatcher.publish(f"vehicle/{vid}/command", order(vid, 3.0))
    (ack,) = dispatcher.wait_for("vehicle/+/ack")
    assert ack.topic == "vehicle/veh002/ack"
    assert sim.wait_until(lambda s: s["orders_dropped"] == 2)
    assert sim.power_kw("veh003") == 2.0  # lost with its ack: still the old power
    with pytest.raises(ConfigError, match="unknown vehicle behaviour"):
        sim.set_behaviour("veh001", drop=1.0)
    with pytest.raises(ConfigError):
        sim.set_behaviour("veh001", reject_rate=2.0)


# -- refused but acknowledged (finding 1) -------------------------------------------


def test_refuse_over_limit_ack_acks_but_keeps_the_previous_power(
    make_sim: MakeSim, dispatcher: Dispatcher
) -> None:
    sim = make_sim(
        count=2,
        connection="shared",
        charge_rate_kw=7.0,
        discharge_rate_kw=8.0,
        max_power_kw=10.0,
        refuse_over_limit_ack=True,
    )
    dispatcher.subscribe("vehicle/+/ack")
    within = order("veh001", -5.0)
    dispatcher.publish("vehicle/veh001/command", within)
    dispatcher.wait_for("vehicle/+/ack")
    over_charge = order("veh001", -10.0)
    over_discharge = order("veh002", 9.0)
    over_max = order("veh002", 12.0)
    sim.set_soc("veh002", 1.0)
    full = order("veh002", -3.0)  # within the limit, but the battery is full
    for item in (over_charge, over_discharge, over_max, full):
        dispatcher.publish(f"vehicle/{item['vehicle_id']}/command", item)
    acks = by_command(dispatcher.wait_for("vehicle/+/ack", 5))
    # Acknowledged the Go way, not applied: the previous power stays.
    for item in (over_charge, over_discharge, over_max):
        assert acks[item["command_id"]] == {"command_id": item["command_id"]}
    assert acks[within["command_id"]]["applied_power_kw"] == -5.0
    assert acks[full["command_id"]]["reason"] == "battery_full"
    assert sim.powers() == {"veh001": -5.0, "veh002": 0.0}
    stats = sim.stats()
    assert (stats["orders_acked"], stats["orders_rejected"]) == (4, 1)
    assert stats["orders_refused"] == 4


# -- expiry (finding 3) --------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"expires_at_in_s": 0.3},
        {"expires_at_in_s": 60, "duration_s": 0.3},
        {"expires_at_in_s": 0.3, "duration_s": 60},
    ],
)
def test_a_setpoint_ends_at_its_expiry(
    make_sim: MakeSim, dispatcher: Dispatcher, extra: dict[str, float]
) -> None:
    sim = make_sim(count=1)
    dispatcher.subscribe("vehicle/+/ack")
    fields: dict[str, Any] = {
        "expires_at": _now_ms() + int(extra["expires_at_in_s"] * 1000)
    }
    if "duration_s" in extra:
        fields["duration_s"] = extra["duration_s"]
    dispatcher.publish("vehicle/veh001/command", order("veh001", 5.0, **fields))
    dispatcher.wait_for("vehicle/+/ack")
    assert sim.power_kw("veh001") == 5.0
    assert _wait_power(sim, "veh001", 0.0) == 0.0
    # Telemetry says so too.
    dispatcher.subscribe("v2g/vehicle/state/+")
    sim.publish_telemetry("veh001")
    (state,) = dispatcher.wait_for("v2g/vehicle/state/veh001")
    assert state.json()["power_kw"] == 0.0


def test_ignore_expiry_holds_the_setpoint_and_acts_on_late_orders(
    make_sim: MakeSim, dispatcher: Dispatcher
) -> None:
    sim = make_sim(count=2, connection="shared", ignore_expiry=True)
    dispatcher.subscribe("vehicle/+/ack")
    short = order("veh001", 5.0, duration_s=0.2, expires_at=_now_ms() + 200)
    late = order("veh002", 4.0, expires_at=_now_ms() - 1000)
    dispatcher.publish("vehicle/veh001/command", short)
    dispatcher.publish("vehicle/veh002/command", late)
    acks = by_command(dispatcher.wait_for("vehicle/+/ack", 2))
    assert acks[late["command_id"]]["status"] == "accepted"
    time.sleep(0.5)
    assert sim.powers() == {"veh001": 5.0, "veh002": 4.0}
    assert sim.stats()["orders_expired"] == 0
    # Only a new order (here 0 kW) ends it.
    idle = order("veh001", 0.0)
    dispatcher.publish("vehicle/veh001/command", idle)
    acks = by_command(dispatcher.wait_for("vehicle/+/ack", 3))
    assert acks[idle["command_id"]] == {
        "command_id": idle["command_id"],
        "status": "accepted",
        "applied_power_kw": 0.0,
    }
    assert sim.power_kw("veh001") == 0.0


def test_a_zero_order_returns_to_idle_even_when_unplugged(
    make_sim: MakeSim, dispatcher: Dispatcher
) -> None:
    sim = make_sim(count=1)
    dispatcher.subscribe("vehicle/+/ack")
    dispatcher.publish("vehicle/veh001/command", order("veh001", -6.0))
    dispatcher.wait_for("vehicle/+/ack")
    assert sim.power_kw("veh001") == -6.0
    dispatcher.publish("vehicle/veh001/command", order("veh001", 0))
    (_, ack) = dispatcher.wait_for("vehicle/+/ack", 2)
    assert ack.json()["status"] == "accepted"
    assert sim.power_kw("veh001") == 0.0
    sim.set_available("veh001", False)
    dispatcher.publish("vehicle/veh001/command", order("veh001", 0))
    acks = dispatcher.wait_for("vehicle/+/ack", 3)
    assert acks[-1].json()["status"] == "accepted"


# -- telemetry: power_kw and the charging flag (finding 4) ---------------------------


@pytest.mark.parametrize("inverted", [False, True])
def test_telemetry_carries_the_applied_power_and_the_charging_flag(
    make_sim: MakeSim, dispatcher: Dispatcher, inverted: bool
) -> None:
    sim = make_sim(count=3, connection="shared", inverted_charging_flag=inverted)
    assert sim.set_power("veh001", -5.0) == -5.0
    assert sim.set_power("veh002", 4.0) == 4.0
    dispatcher.subscribe("v2g/telemetry/response/+", "v2g/vehicle/state/+")
    dispatcher.publish("v2g/telemetry/request", b"poll")
    answers = {
        m.json()["vehicle_id"]: m.json()
        for m in dispatcher.wait_for("v2g/telemetry/response/+", 3)
    }
    assert {vid: a["power_kw"] for vid, a in answers.items()} == {
        "veh001": -5.0,
        "veh002": 4.0,
        "veh003": 0.0,
    }
    flags = {vid: a["charging"] for vid, a in answers.items()}
    if inverted:  # Go: "charging": power_kw > 0, true while discharging
        assert flags == {"veh001": False, "veh002": True, "veh003": False}
    else:
        assert flags == {"veh001": True, "veh002": False, "veh003": False}
    # Pushed telemetry is the same.
    sim.publish_telemetry("veh002")
    (pushed,) = dispatcher.wait_for("v2g/vehicle/state/+")
    assert (pushed.json()["power_kw"], pushed.json()["charging"]) == (4.0, inverted)


@pytest.mark.parametrize("announce", [True, False])
def test_discovery_answer_announces_the_charge_rate_or_not(
    make_sim: MakeSim, dispatcher: Dispatcher, announce: bool
) -> None:
    make_sim(
        count=1,
        charge_rate_kw=7.0,
        max_power_kw=10.0,
        announce_charge_rate=announce,
    )
    dispatcher.subscribe("v2g/fleet/response/+")
    dispatcher.publish("v2g/fleet/discovery", b"hello")
    (answer,) = dispatcher.wait_for("v2g/fleet/response/+")
    body = answer.json()
    assert body["MaxPower"] == 10.0
    if announce:
        assert body["ChargeRate"] == 7.0
    else:
        assert "ChargeRate" not in body


# -- the power API -------------------------------------------------------------------


def test_set_power_is_clamped_to_the_limits_and_held(make_sim: MakeSim) -> None:
    sim = make_sim(count=2, charge_rate_kw=7.0, discharge_rate_kw=8.0, max_power_kw=10)
    assert sim.set_power("veh001", -20.0) == -7.0
    assert sim.set_power("veh002", 20.0) == 8.0
    time.sleep(0.2)
    assert sim.powers() == {"veh001": -7.0, "veh002": 8.0}
    assert sim.total_power_kw() == pytest.approx(1.0)
    assert sim.vehicle("veh001")["charging"] is True
    sim.set_available("veh001", False)
    assert sim.power_kw("veh001") == 0.0
    assert sim.set_power("veh001", -3.0) == 0.0  # unplugged
    with pytest.raises(ValueError, match="finite"):
        sim.set_power("veh002", float("nan"))
    with pytest.raises(KeyError):
        sim.power_kw("nobody")


def test_power_api_works_before_start() -> None:
    sim = FleetSimulator(SimulatorConfig(count=2))
    sim.set_power("veh002", -2.0)
    assert sim.powers() == {"veh001": 0.0, "veh002": -2.0}
    sim.set_behaviour("veh001", ignore_expiry=True)
    assert sim.behaviour("veh001").ignore_expiry is True


# -- configuration and command line --------------------------------------------------


def test_behaviour_options_and_overrides_validate() -> None:
    config = SimulatorConfig(
        count=3,
        drop_rate=0.5,
        vehicle_overrides={"veh003": {"drop_rate": 0.0, "ignore_expiry": True}},
    ).validated()
    assert config.behaviour("veh001") == VehicleBehaviour(drop_rate=0.5)
    assert config.behaviour("veh003") == VehicleBehaviour(ignore_expiry=True)
    for overrides in (
        {"veh001": {"speed": 1.0}},
        {"veh001": {"drop_rate": 1.5}},
        {"veh001": {"drop_rate": True}},
        {"veh001": {"ignore_expiry": "yes"}},
    ):
        with pytest.raises(ConfigError):
            SimulatorConfig(vehicle_overrides=overrides).validated()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown vehicles: car9"):
        FleetSimulator(SimulatorConfig(vehicle_overrides={"car9": {"drop_rate": 1.0}}))
    with pytest.raises(ConfigError):
        make_behaviour({"apply_dropped": 1})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("veh002:drop_rate=1", ("veh002", {"drop_rate": 1.0})),
        (
            "veh9: drop-rate=0.5 , apply_dropped=true",
            ("veh9", {"drop_rate": 0.5, "apply_dropped": True}),
        ),
        ("a:announce_charge_rate=off", ("a", {"announce_charge_rate": False})),
    ],
)
def test_parse_override(text: str, expected: tuple[str, dict[str, Any]]) -> None:
    assert parse_override(text) == expected


@pytest.mark.parametrize(
    "text",
    ["veh002", ":drop_rate=1", "veh002:", "v:x=1", "v:drop_rate=a", "v:ack_all=2"],
)
def test_parse_override_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_override(text)


def test_command_line_flags() -> None:
    def parse(*argv: str) -> SimulatorConfig:
        return config_from_args(build_parser().parse_args(list(argv)))

    default = parse()
    assert default.behaviour() == VehicleBehaviour()
    assert default.announce_charge_rate is True
    config = parse(
        "--count=3",
        "--drop-rate=0.2",
        "--apply-dropped",
        "--refuse-over-limit-ack",
        "--ignore-expiry=true",
        "--inverted-charging-flag",
        "--no-announce-charge-rate",
        "--override=veh002:drop_rate=1",
        "--override",
        "veh002:ignore_expiry=false",
    )
    assert config.behaviour() == VehicleBehaviour(
        drop_rate=0.2,
        apply_dropped=True,
        refuse_over_limit_ack=True,
        ignore_expiry=True,
        inverted_charging_flag=True,
        announce_charge_rate=False,
    )
    assert config.vehicle_overrides == {
        "veh002": {"drop_rate": 1.0, "ignore_expiry": False}
    }
    assert parse("--announce-charge-rate=false").announce_charge_rate is False
    with pytest.raises(ConfigError):
        parse("--override=veh002:nonsense=1")
