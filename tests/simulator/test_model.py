"""Battery model, order rules, fleet generation, config and codec (no broker)."""

from __future__ import annotations

from datetime import UTC, datetime
import json
from pathlib import Path
import random

import pytest

from simulator import (
    Battery,
    ConfigError,
    SimulatorConfig,
    TopicConfig,
    TopicTemplate,
    generate_fleet,
    load_availability_file,
    load_departures,
    make_ids,
    parse_broker,
    parse_duration,
    refusal_reason,
)
from simulator.codec import DecodeError, decode_gateway_batch, decode_order
from simulator.fleet import COMMUTER, OPPORTUNISTIC_CHARGER, SimVehicle

# -- battery model (seed §7.3, positive = discharge) ------------------------------


def test_discharge_is_limited_by_rate_and_lowers_soc() -> None:
    battery = Battery(capacity_kwh=40, charge_rate_kw=7, discharge_rate_kw=10, soc=0.5)
    applied = battery.apply_power(20, 3600)
    assert applied == 10
    assert battery.soc == pytest.approx(0.25)


def test_discharge_stops_at_empty_and_reports_reduced_power() -> None:
    battery = Battery(capacity_kwh=10, charge_rate_kw=7, discharge_rate_kw=10, soc=0.1)
    applied = battery.apply_power(10, 3600)  # 1 kWh left: 1 kW average over 1 h
    assert applied == pytest.approx(1.0)
    assert battery.soc == 0
    assert battery.apply_power(10, 60) == 0


def test_charge_is_limited_by_rate_and_room() -> None:
    battery = Battery(capacity_kwh=40, charge_rate_kw=7, discharge_rate_kw=10, soc=0.5)
    assert battery.apply_power(-11, 3600) == -7
    assert battery.soc == pytest.approx(0.675)
    battery.soc = 0.99
    applied = battery.apply_power(-7, 3600)  # 0.4 kWh of room
    assert applied == pytest.approx(-0.4)
    assert battery.soc == 1.0


def test_no_time_or_no_power_changes_nothing() -> None:
    battery = Battery(capacity_kwh=40, charge_rate_kw=7, discharge_rate_kw=10, soc=0.5)
    assert battery.apply_power(5, 0) == 0
    assert battery.apply_power(5, -1) == 0
    assert battery.apply_power(0, 60) == 0
    assert battery.soc == 0.5


@pytest.mark.parametrize(
    ("soc", "power", "available", "reason"),
    [
        (0.5, 5, True, None),
        (0.5, -5, True, None),
        (0.5, 0, False, None),  # idle is always fine
        (0.5, 8, True, None),  # exactly the discharge rate
        (0.5, -7, True, None),  # exactly the charge rate
        (0.5, 12, True, "exceeds_max_power"),
        (0.5, -12, True, "exceeds_max_power"),
        (0.5, 9, True, "exceeds_discharge_rate"),
        (0.5, -8, True, "exceeds_charge_rate"),
        (0.0, 5, True, "battery_empty"),
        (1.0, -5, True, "battery_full"),
        (1.0, 5, True, None),
        (0.0, -5, True, None),
        (0.5, 5, False, "unavailable"),
        (0.5, -5, False, "unavailable"),
    ],
)
def test_refusal_reasons(
    soc: float, power: float, available: bool, reason: str | None
) -> None:
    battery = Battery(capacity_kwh=40, charge_rate_kw=7, discharge_rate_kw=8, soc=soc)
    assert refusal_reason(battery, 10, power, available=available) == reason


def test_vehicle_setpoint_runs_for_its_duration_then_idles() -> None:
    vehicle = SimVehicle(
        vehicle_id="v",
        battery=Battery(capacity_kwh=36, charge_rate_kw=7, discharge_rate_kw=10),
        max_power_kw=10,
        segment=COMMUTER,
    )
    vehicle.power_kw = 9.0
    vehicle.setpoint_until = 360.0
    vehicle.advance(1000.0)  # only 360 s at 9 kW = 0.9 kWh
    assert vehicle.power_kw == 0
    assert vehicle.setpoint_until is None
    assert vehicle.battery.soc == pytest.approx(0.8 - 0.9 / 36)
    vehicle.power_kw = -3.6
    vehicle.advance(2000.0)  # 1000 s at -3.6 kW = 1 kWh
    assert vehicle.charging
    assert vehicle.battery.soc == pytest.approx(0.8 - 0.9 / 36 + 1 / 36)


# -- fleet generation (seed §7.2) ------------------------------------------------


def test_ids_like_go_and_width_grows() -> None:
    assert make_ids("veh", 5) == ["veh001", "veh002", "veh003", "veh004", "veh005"]
    ids = make_ids("veh", 1000)
    assert ids[0] == "veh0001"
    assert ids[-1] == "veh1000"
    assert make_ids("car", 10_000)[-1] == "car10000"


def test_commuter_ratio_is_seeded_and_close_to_the_option() -> None:
    config = SimulatorConfig(count=100, commuter_pct=0.6, seed=7).validated()
    fleet = generate_fleet(config, random.Random(7))
    commuters = sum(v.segment == COMMUTER for v in fleet)
    assert 40 <= commuters <= 80
    assert {v.segment for v in fleet} == {COMMUTER, OPPORTUNISTIC_CHARGER}
    again = generate_fleet(config, random.Random(7))
    assert [v.segment for v in again] == [v.segment for v in fleet]


def test_fleet_defaults_and_soc_spread() -> None:
    config = SimulatorConfig(count=50, soc_spread=0.1).validated()
    fleet = generate_fleet(config, random.Random(3))
    assert all(0.7 <= v.battery.soc <= 0.9 for v in fleet)
    assert len({round(v.battery.soc, 6) for v in fleet}) > 1
    plain = generate_fleet(SimulatorConfig(count=2).validated(), random.Random(1))
    assert [v.battery.soc for v in plain] == [0.8, 0.8]
    assert all(v.segment == OPPORTUNISTIC_CHARGER for v in plain)
    assert all(v.gateway is None for v in plain)


def test_gateway_grouping() -> None:
    by_count = generate_fleet(
        SimulatorConfig(count=10, gateways=3).validated(), random.Random(1)
    )
    groups = [v.gateway for v in by_count]
    assert sorted(set(groups), key=str) == ["gw01", "gw02", "gw03"]
    assert (
        max(groups.count(g) for g in set(groups))
        - min(groups.count(g) for g in set(groups))
        <= 1
    )
    by_size = generate_fleet(
        SimulatorConfig(count=10, gateway_size=4).validated(), random.Random(1)
    )
    assert [v.gateway for v in by_size] == ["gw01"] * 4 + ["gw02"] * 4 + ["gw03"] * 2


def test_battery_profiles_and_departures_applied() -> None:
    when = datetime(2030, 1, 1, 7, 30, tzinfo=UTC)
    config = SimulatorConfig(
        count=2, battery_profile="large", departures={"veh002": when}
    ).validated()
    assert (config.capacity_kwh, config.charge_rate_kw, config.discharge_rate_kw) == (
        80,
        11,
        20,
    )
    fleet = generate_fleet(config, random.Random(1))
    assert fleet[0].departure is None
    assert fleet[1].departure == when
    assert fleet[1].battery.capacity_kwh == 80


# -- configuration ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0.05", 0.05),
        ("50ms", 0.05),
        ("1s", 1.0),
        ("1m30s", 90.0),
        ("250us", 0.00025),
        ("2h", 7200.0),
        ("0", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "fast", "10 parsecs", "-1", "5ms3", "nan"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:1884", ("127.0.0.1", 1884)),
        ("mqtt://127.0.0.1:1885", ("127.0.0.1", 1885)),
        ("tcp://localhost:1883", ("127.0.0.1", 1883)),
        ("127.0.0.1", ("127.0.0.1", 1883)),
        ("[::1]:1886", ("::1", 1886)),
    ],
)
def test_parse_broker(text: str, expected: tuple[str, int]) -> None:
    assert parse_broker(text) == expected


def test_remote_brokers_need_permission() -> None:
    with pytest.raises(ConfigError, match="loopback"):
        SimulatorConfig(host="192.0.2.10").validated()
    with pytest.raises(ConfigError, match="loopback"):
        SimulatorConfig(host="broker.example").validated()
    assert SimulatorConfig(host="192.0.2.10", allow_remote=True).validated()
    assert SimulatorConfig(host="127.0.0.5").validated()
    with pytest.raises(ConfigError):
        parse_broker("ws://127.0.0.1:80")


@pytest.mark.parametrize(
    "options",
    [
        {"count": 0},
        {"drop_rate": 1.5},
        {"disconnect_rate": -0.1},
        {"capacity_kwh": 0},
        {"max_power_kw": -1},
        {"battery_profile": "huge"},
        {"qos": 3},
        {"gateways": 2, "gateway_size": 5},
        {"id_prefix": "a/b"},
        {"topics": TopicConfig(command="vehicle/command")},
        {"topics": TopicConfig(ack="vehicle/x{vehicle_id}/ack")},
        {"topics": TopicConfig(discovery="v2g/+/discovery")},
        {"availability": (1.0,) * 23},
    ],
)
def test_invalid_options(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SimulatorConfig(**options).validated()  # type: ignore[arg-type]


def test_availability_file(tmp_path: Path) -> None:
    path = tmp_path / "availability.json"
    path.write_text(json.dumps({"2": 0.3, "23": 1, "24": 0.5, "x": 0.2}))
    profile = load_availability_file(path)
    assert len(profile) == 24
    assert profile[2] == 0.3
    assert profile[23] == 1.0
    assert profile[0] == 0.0
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_availability_file(path)
    path.write_text(json.dumps({"3": 1.5}))
    with pytest.raises(ConfigError):
        load_availability_file(path)


def test_schedule_and_template_files(tmp_path: Path) -> None:
    schedule = tmp_path / "schedule.json"
    schedule.write_text(json.dumps({"veh001": "2030-01-01T07:00:00Z", "veh003": "x"}))
    template = tmp_path / "template.json"
    template.write_text(
        json.dumps(
            {
                "veh001": {"departure": "2030-01-01T09:00:00Z"},
                "veh002": {"departure": "2030-01-01T08:00:00+01:00"},
                "veh004": {"departure": 5},
            }
        )
    )
    departures = load_departures(schedule, template)
    assert departures == {
        "veh001": datetime(2030, 1, 1, 7, tzinfo=UTC),
        "veh002": datetime(2030, 1, 1, 7, tzinfo=UTC),
    }


# -- codec -----------------------------------------------------------------------


def test_topic_template() -> None:
    template = TopicTemplate("vehicle/{vehicle_id}/command", "{vehicle_id}")
    assert template.format("veh001") == "vehicle/veh001/command"
    assert template.wildcard == "vehicle/+/command"
    assert template.match("vehicle/veh001/command") == "veh001"
    assert template.match("vehicle/a/b/command") is None
    assert template.match("vehicle//command") is None
    assert template.match("vehicle/veh001/ack") is None
    tail = TopicTemplate("v2g/fleet/response/{vehicle_id}", "{vehicle_id}")
    assert tail.match("v2g/fleet/response/veh9") == "veh9"


def test_decode_order_fields() -> None:
    order = decode_order(
        json.dumps(
            {
                "command_id": "c1",
                "vehicle_id": "veh001",
                "power_kw": -3,
                "timestamp": 1,
                "dispatch_id": "d",
                "signal_type": "FCR",
                "duration_s": 900,
                "expires_at": 2,
            }
        ).encode()
    )
    assert (order.command_id, order.power_kw, order.duration_s) == ("c1", -3.0, 900)
    assert (order.expires_at_ms, order.signal_type, order.dispatch_id) == (
        2,
        "FCR",
        "d",
    )


@pytest.mark.parametrize(
    ("payload", "command_id"),
    [
        (b"{", None),
        (b"[]", None),
        (b'{"power_kw": 1}', None),
        (b'{"command_id": 5, "power_kw": 1}', None),
        (b'{"command_id": "c", "power_kw": "1"}', "c"),
        (b'{"command_id": "c", "power_kw": true}', "c"),
        (b'{"command_id": "c", "power_kw": NaN}', "c"),
        (b'{"command_id": "c"}', "c"),
        (b'{"command_id": "c", "power_kw": 1, "expires_at": "soon"}', "c"),
        (b'{"command_id": "c", "power_kw": 1, "duration_s": -5}', "c"),
        (b"x" * 70_000, None),
    ],
)
def test_decode_order_errors(payload: bytes, command_id: str | None) -> None:
    with pytest.raises(DecodeError) as err:
        decode_order(payload)
    assert err.value.command_id == command_id


def test_decode_gateway_batch() -> None:
    dispatch_id, items = decode_gateway_batch(
        b'{"dispatch_id": "d1", "orders": [{"command_id": "a"}, 3]}'
    )
    assert dispatch_id == "d1"
    assert len(items) == 2
    with pytest.raises(DecodeError):
        decode_gateway_batch(b'{"orders": {}}')
