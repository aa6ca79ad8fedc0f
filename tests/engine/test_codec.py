"""Wire codec (docs/protocol.md): orders out, acks / vehicles / telemetry in."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
import json

from hypothesis import given, settings, strategies as st
import pytest

from custom_components.v2g.engine import (
    MAX_GATEWAY_PAYLOAD_BYTES,
    MAX_PAYLOAD_BYTES,
    Ack,
    DecodeError,
    GatewayAcks,
    GatewayVehicles,
    Order,
    SignalType,
    Telemetry,
    Vehicle,
    decode_ack,
    decode_discovery,
    decode_gateway_acks,
    decode_telemetry,
    decode_vehicle,
    encode_gateway_batch,
    encode_order,
    order_payload,
    vehicle_from_mapping,
)

ORDER = Order(
    command_id="c-1",
    vehicle_id="v1",
    power_kw=12.5,
    timestamp_ms=1_720_000_000_123,
    dispatch_id="d-1",
    signal_type=SignalType.AFRR,
    duration_s=900.0,
    expires_at_ms=1_720_000_900_123,
    gateway=None,
)


# --- orders -----------------------------------------------------------------------


def test_order_payload_has_exactly_the_wire_fields() -> None:
    assert order_payload(ORDER) == {
        "command_id": "c-1",
        "vehicle_id": "v1",
        "power_kw": 12.5,
        "timestamp": 1_720_000_000_123,
        "dispatch_id": "d-1",
        "signal_type": "aFRR",
        "duration_s": 900.0,
        "expires_at": 1_720_000_900_123,
    }
    assert json.loads(encode_order(ORDER)) == order_payload(ORDER)
    assert b" " not in encode_order(ORDER)


def test_gateway_batch() -> None:
    batch = json.loads(encode_gateway_batch("d-1", [ORDER, ORDER]))
    assert batch == {"dispatch_id": "d-1", "orders": [order_payload(ORDER)] * 2}


# --- acks -------------------------------------------------------------------------


def test_bare_command_id_is_an_acceptance() -> None:
    """Go vehicles only send {"command_id"}: that is a positive ack."""
    assert decode_ack(b'{"command_id":"c-1"}') == Ack("c-1", True, None, None, None)
    assert decode_ack('{"command_id":"c-1"}').accepted


def test_ack_optional_fields() -> None:
    ack = decode_ack(
        b'{"command_id":"c","status":"REJECTED","reason":"soc too low",'
        b'"applied_power_kw":0,"vehicle_id":"v1","extra":[1,2]}'
    )
    assert ack == Ack("c", False, "soc too low", 0.0, "v1")
    assert decode_ack(b'{"command_id":"c","status":"accepted"}').accepted
    assert decode_ack(b'{"command_id":"c","status":null}').accepted


def test_ack_reason_is_truncated_and_sanitised() -> None:
    ack = decode_ack(json.dumps({"command_id": "c", "reason": "x" * 500}))
    assert ack.reason == "x" * 200
    lone_surrogate = decode_ack(b'{"command_id":"c","reason":"bad \\ud800"}')
    assert lone_surrogate.reason == "bad ?"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"[]",
        b'"c-1"',
        b"{}",
        b'{"command_id":""}',
        b'{"command_id":5}',
        b'{"command_id":"c","status":"maybe"}',
        b'{"command_id":"c","status":1}',
        b'{"command_id":"c","reason":5}',
        b'{"command_id":"c","applied_power_kw":"5"}',
        b'{"command_id":"c","applied_power_kw":true}',
        b'{"command_id":"c","applied_power_kw":NaN}',
        b'{"command_id":"c","applied_power_kw":Infinity}',
        b'{"command_id":"c","applied_power_kw":1e400}',
        b'{"command_id":"c","vehicle_id":"a/b"}',
        b'{"command_id":"c\\u0000"}',
        b"\xff\xfe{}",
        b'{"command_id":"' + b"x" * 200 + b'"}',
        b"[" * 100_000,
    ],
)
def test_malformed_acks_raise_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode_ack(payload)
    assert info.value.reason


def test_oversize_payloads_are_refused() -> None:
    big = b'{"command_id":"c","pad":"' + b"x" * MAX_PAYLOAD_BYTES + b'"}'
    with pytest.raises(DecodeError, match="too large"):
        decode_ack(big)
    with pytest.raises(DecodeError, match="too large"):
        decode_ack(big.decode())
    # Multi-byte characters: the byte size counts, not the character count.
    wide = '{"command_id":"c","pad":"' + "é" * (MAX_PAYLOAD_BYTES // 2 + 10) + '"}'
    with pytest.raises(DecodeError, match="too large"):
        decode_ack(wide)
    with pytest.raises(DecodeError):
        decode_ack(123)  # type: ignore[arg-type]


def test_deep_nesting_is_a_decode_error() -> None:
    nested = b'{"command_id":"c","x":' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    assert len(nested) < MAX_PAYLOAD_BYTES
    with pytest.raises(DecodeError, match="nested too deeply"):
        decode_ack(nested)


def test_vehicle_from_mapping_refuses_non_string_keys() -> None:
    with pytest.raises(DecodeError, match="keys"):
        vehicle_from_mapping({1: "x", "id": "v1"})  # type: ignore[dict-item]


def test_gateway_acks_skip_and_count_bad_items() -> None:
    payload = json.dumps(
        {
            "acks": [
                {"command_id": "c1", "vehicle_id": "v1"},
                {"command_id": "c2", "vehicle_id": "v2", "status": "rejected"},
                {"command_id": "c3"},  # no vehicle id
                {"vehicle_id": "v4"},
                "junk",
                {"command_id": "c5", "vehicle_id": "v5", "applied_power_kw": "x"},
            ]
        }
    )
    acks = decode_gateway_acks(payload)
    assert [a.command_id for a in acks] == ["c1", "c2"]
    assert acks[1].accepted is False
    assert acks[0].vehicle_id == "v1"
    assert acks.invalid == 4
    assert len(acks) == 2


@pytest.mark.parametrize("payload", [b"[]", b"{}", b'{"acks":{}}', b"nope"])
def test_gateway_acks_bad_envelope(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_gateway_acks(payload)


def test_gateway_acks_allow_large_depots() -> None:
    acks = [{"command_id": f"c{i:05}", "vehicle_id": f"v{i:05}"} for i in range(10_000)]
    payload = json.dumps({"acks": acks}).encode()
    assert MAX_PAYLOAD_BYTES < len(payload) < MAX_GATEWAY_PAYLOAD_BYTES
    assert len(decode_gateway_acks(payload)) == 10_000


# --- vehicles ---------------------------------------------------------------------

GO_VEHICLE = {
    "ID": "veh001",
    "SoC": 0.8,
    "IsV2G": True,
    "MaxPower": 10,
    "BatteryKWh": 40,
    "Available": True,
    "Charging": False,
    "Priority": False,
    "Departure": "0001-01-01T00:00:00Z",
    "MinSoC": 0,
    "Profile": {"ExpectedDeparture": "0001-01-01T00:00:00Z", "HistoricalUsage": None},
    "Metadata": None,
    "AvailabilityProb": 0,
    "DegradationFactor": 0,
}


def test_go_simulator_vehicle_json() -> None:
    vehicle = decode_vehicle(json.dumps(GO_VEHICLE), "veh001")
    assert vehicle.vehicle_id == "veh001"
    assert vehicle.soc == 0.8
    assert vehicle.max_power_kw == 10.0
    assert vehicle.battery_kwh == 40.0
    assert vehicle.departure is None  # Go zero time
    assert vehicle.segment == ""
    assert vehicle.gateway is None


def test_vehicle_keys_are_case_insensitive_and_snake_case_works() -> None:
    lower = decode_vehicle(
        b'{"id":"v1","soc":0.4,"isv2g":false,"maxpower":7.4,"segment":"commuter"}'
    )
    assert (lower.soc, lower.is_v2g, lower.max_power_kw, lower.segment) == (
        0.4,
        False,
        7.4,
        "commuter",
    )
    snake = decode_vehicle(
        json.dumps(
            {
                "vehicle_id": "v2",
                "soc": 0.9,
                "is_v2g": True,
                "max_power_kw": 11,
                "battery_kwh": 60,
                "available": False,
                "charging": True,
                "priority": True,
                "departure": "2025-07-07T18:00:00.123456789+02:00",
                "min_soc": 0.3,
                "segment": "captive_fleet",
                "availability_prob": 0.7,
                "degradation_factor": 0.1,
                "gateway": "depot-1",
                "charge_rate_kw": 3.7,
            }
        )
    )
    assert snake.departure == datetime(2025, 7, 7, 16, 0, 0, 123456, tzinfo=UTC)
    assert snake.gateway == "depot-1"
    assert snake.charge_rate_kw == 3.7
    assert (snake.available, snake.charging, snake.priority) == (False, True, True)
    assert snake.min_soc == 0.3
    assert snake.availability_prob == 0.7
    assert snake.degradation_factor == 0.1


def test_vehicle_id_from_topic_and_nulls() -> None:
    vehicle = decode_vehicle(b'{"SoC":0.5,"Departure":null,"gateway":""}', "v9")
    assert vehicle.vehicle_id == "v9"
    assert vehicle.gateway is None


@pytest.mark.parametrize(
    ("payload", "topic"),
    [
        (b'{"ID":"v1","SoC":1.5}', None),
        (b'{"ID":"v1","SoC":-0.1}', None),
        (b'{"ID":"v1","SoC":"0.5"}', None),
        (b'{"ID":"v1","MaxPower":true}', None),
        (b'{"ID":"v1","MaxPower":-1}', None),
        (b'{"ID":"v1","BatteryKWh":0}', None),
        (b'{"ID":"v1","IsV2G":1}', None),
        (b'{"ID":"v1","Departure":"tomorrow"}', None),
        (b'{"ID":"v1","Departure":"2025-07-07T10:00:00"}', None),
        (b'{"ID":"v1","Departure":12}', None),
        (b'{"ID":"v1","segment":5}', None),
        (b'{"ID":"v1","gateway":"a/b"}', None),
        (b'{"ID":"v1","id":"v2"}', None),
        (b'{"ID":"v1","soc":0.5,"SOC":0.6}', None),
        (b'{"ID":"v1","MaxPower":5,"max_power_kw":6}', None),
        (b'{"ID":["v1"]}', None),
        (b'{"SoC":0.5}', None),
        (b'{"ID":"v1"}', "v2"),
        (b"[1]", None),
    ],
)
def test_malformed_vehicles(payload: bytes, topic: str | None) -> None:
    with pytest.raises(DecodeError):
        decode_vehicle(payload, topic)


# --- telemetry --------------------------------------------------------------------


def test_telemetry_full_and_partial() -> None:
    full = decode_telemetry(
        b'{"vehicle_id":"v1","soc":0.42,"available":true,"charging":false,'
        b'"power_kw":-3.5,"ts":1720000000}',
        "v1",
    )
    assert full.soc == 0.42
    assert full.available is True
    assert full.charging is False
    assert full.power_kw == -3.5
    assert full.ts == datetime.fromtimestamp(1_720_000_000, UTC)
    partial = decode_telemetry(b'{"soc":0.5}', "v7")
    assert partial.vehicle_id == "v7"
    assert (partial.available, partial.charging, partial.power_kw, partial.ts) == (
        None,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("payload", "topic"),
    [
        (b'{"soc":1.5}', "v1"),
        (b'{"soc":true}', "v1"),
        (b'{"ts":1720000000000}', "v1"),
        (b'{"ts":-1}', "v1"),
        (b'{"available":"yes"}', "v1"),
        (b'{"vehicle_id":"v2"}', "v1"),
        (b'{"soc":0.5}', None),
        (b'"x"', "v1"),
    ],
)
def test_malformed_telemetry(payload: bytes, topic: str | None) -> None:
    with pytest.raises(DecodeError):
        decode_telemetry(payload, topic)


# --- fuzzing ----------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            [
                "command_id",
                "status",
                "reason",
                "applied_power_kw",
                "vehicle_id",
                "acks",
                "ID",
                "SoC",
                "soc",
                "MaxPower",
                "Departure",
                "gateway",
                "ts",
                "available",
                "BatteryKWh",
                "segment",
                "vehicles",
            ]
        )
        | st.text(max_size=8),
        children,
        max_size=6,
    ),
    max_leaves=12,
)

DECODERS: list[tuple[Callable[[bytes | str], object], type | tuple[type, ...]]] = [
    (decode_ack, Ack),
    (decode_gateway_acks, GatewayAcks),
    (decode_vehicle, Vehicle),
    (lambda p: decode_vehicle(p, "v1"), Vehicle),
    (lambda p: decode_telemetry(p, "v1"), Telemetry),
    (lambda p: decode_telemetry(p, None), Telemetry),
    (lambda p: decode_discovery(p, "gw1"), (Vehicle, GatewayVehicles)),
]


def assert_decodes_or_rejects(payload: bytes | str) -> None:
    """Every decoder either returns its type or raises DecodeError with a reason."""
    for decoder, expected in DECODERS:
        try:
            result: object = decoder(payload)
        except DecodeError as err:
            result = err
        if isinstance(result, DecodeError):
            assert result.reason
        else:
            assert isinstance(result, expected)


@settings(max_examples=150, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_decode_error(payload: bytes) -> None:
    assert_decodes_or_rejects(payload)


@settings(max_examples=150, deadline=None, database=None)
@given(JSON_VALUES)
def test_arbitrary_json_only_raises_decode_error(value: object) -> None:
    payload = json.dumps(value)  # NaN/Infinity literals included on purpose
    assert_decodes_or_rejects(payload)
    assert_decodes_or_rejects(payload.encode())


@settings(max_examples=150, deadline=None, database=None)
@given(
    st.fixed_dictionaries(
        {"command_id": st.text(max_size=5) | st.integers()},
        optional={
            "status": st.sampled_from(["accepted", "Rejected", "x"]) | st.none(),
            "reason": st.text(max_size=5) | st.integers(),
            "applied_power_kw": st.floats() | st.booleans() | st.none(),
            "vehicle_id": st.text(max_size=4),
            "SoC": st.floats() | st.integers(),
            "ID": st.text(max_size=4),
            "soc": st.floats(),
            "Departure": st.text(max_size=30) | st.datetimes().map(str),
            "ts": st.floats() | st.integers(),
        },
    )
)
def test_structured_json_only_raises_decode_error(value: dict[str, object]) -> None:
    payload = json.dumps(value)
    assert_decodes_or_rejects(payload)
    assert_decodes_or_rejects(json.dumps({"acks": [value, value]}))


# --- discovery answers: one vehicle, or a gateway's vehicles -------------------


def test_discovery_answer_of_one_vehicle() -> None:
    vehicle = decode_discovery(b'{"ID":"v1","SoC":0.4}', "v1")
    assert vehicle == Vehicle(vehicle_id="v1", soc=0.4)


def test_discovery_answer_of_a_gateway() -> None:
    payload = json.dumps(
        {
            "gateway": "gw1",
            "vehicles": [
                {"ID": "v1", "SoC": 0.4},
                {"vehicle_id": "v2", "gateway": "gw1"},
                {"ID": "v3", "gateway": "gw2"},  # another gateway's
                {"SoC": 0.5},  # no id
                {"ID": "v4", "SoC": 2},  # out of range
                ["v5"],
            ],
        }
    )
    answer = decode_discovery(payload, "gw1")
    assert isinstance(answer, GatewayVehicles)
    assert answer.gateway == "gw1"
    assert answer == [
        Vehicle(vehicle_id="v1", soc=0.4, gateway="gw1"),
        Vehicle(vehicle_id="v2", gateway="gw1"),
    ]
    assert answer.invalid == 4


def test_discovery_answer_of_a_gateway_names_it_in_the_topic_or_the_envelope() -> None:
    listed = {"vehicles": [{"ID": "v1"}]}
    from_topic = decode_discovery(json.dumps(listed), "gw1")
    assert isinstance(from_topic, GatewayVehicles)
    assert from_topic[0].gateway == "gw1"
    from_envelope = decode_discovery(json.dumps({**listed, "gateway": "gw2"}), None)
    assert isinstance(from_envelope, GatewayVehicles)
    assert from_envelope[0].gateway == "gw2"


@pytest.mark.parametrize(
    ("payload", "topic_id"),
    [
        ({"gateway": "gw2", "vehicles": []}, "gw1"),  # not the topic's gateway
        ({"vehicles": []}, None),  # no gateway at all
        ({"gateway": "a/b", "vehicles": []}, None),
        ({"gateway": "gw1", "vehicles": {"ID": "v1"}}, "gw1"),
        ([{"ID": "v1"}], "gw1"),
    ],
)
def test_bad_gateway_discovery_answer(payload: object, topic_id: str | None) -> None:
    with pytest.raises(DecodeError):
        decode_discovery(json.dumps(payload), topic_id)


def test_discovery_answer_sizes() -> None:
    padding = "x" * MAX_PAYLOAD_BYTES
    with pytest.raises(DecodeError, match="too large"):
        decode_discovery(json.dumps({"ID": "v1", "segment": padding}), "v1")
    depot = [{"ID": f"v{n}", "segment": "x" * 100} for n in range(10_000)]
    payload = json.dumps({"gateway": "gw1", "vehicles": depot})
    assert MAX_PAYLOAD_BYTES < len(payload) < MAX_GATEWAY_PAYLOAD_BYTES
    assert len(decode_discovery(payload, "gw1")) == 10_000
