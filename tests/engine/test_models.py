"""Domain model validation: vehicles, signals, enums and errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from custom_components.v2g.engine import (
    FlexibilitySignal,
    InvalidValueError,
    SignalType,
    Strategy,
    Vehicle,
    parse_utc_time,
    validate_vehicle_id,
)

START = datetime(2025, 7, 7, 10, 0, tzinfo=UTC)


def test_invalid_value_error_carries_field_and_reason() -> None:
    err = InvalidValueError("soc", "must be between 0 and 1")
    assert err.field == "soc"
    assert err.reason == "must be between 0 and 1"
    assert str(err) == "soc: must be between 0 and 1"
    assert isinstance(err, ValueError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("FCR", SignalType.FCR),
        ("fcr", SignalType.FCR),
        ("afrr", SignalType.AFRR),
        ("AFRR", SignalType.AFRR),
        (" ma ", SignalType.MA),
        ("nebef", SignalType.NEBEF),
        ("ECOWATT", SignalType.ECOWATT),
    ],
)
def test_signal_type_parse_is_case_insensitive(text: str, expected: SignalType) -> None:
    assert SignalType.parse(text) is expected


@pytest.mark.parametrize("text", ["", "DELESTAGE", "fcr2", 3])
def test_signal_type_parse_rejects_unknown(text: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        SignalType.parse(text)
    assert info.value.field == "signal_type"


def test_strategy_parse() -> None:
    assert Strategy.parse("Optimal") is Strategy.OPTIMAL
    with pytest.raises(InvalidValueError) as info:
        Strategy.parse("lp")
    assert info.value.field == "strategy"


def test_vehicle_defaults_and_dict_round_trip() -> None:
    vehicle = Vehicle(vehicle_id="v1", departure=START)
    assert vehicle.soc == 0.5
    assert vehicle.effective_charge_rate_kw == 7.0
    data = vehicle.as_dict()
    assert data["departure"] == "2025-07-07T10:00:00+00:00"
    assert data["vehicle_id"] == "v1"
    assert Vehicle(vehicle_id="v1", charge_rate_kw=3.6).effective_charge_rate_kw == 3.6
    assert vehicle.with_changes(soc=0.9).soc == 0.9


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"vehicle_id": ""}, "vehicle_id"),
        ({"vehicle_id": "a/b"}, "vehicle_id"),
        ({"vehicle_id": "a+"}, "vehicle_id"),
        ({"vehicle_id": "#"}, "vehicle_id"),
        ({"vehicle_id": "tab\there"}, "vehicle_id"),
        ({"vehicle_id": "x" * 129}, "vehicle_id"),
        ({"soc": 1.2}, "soc"),
        ({"soc": -0.1}, "soc"),
        ({"soc": float("nan")}, "soc"),
        ({"soc": True}, "soc"),
        ({"min_soc": 2}, "min_soc"),
        ({"availability_prob": 1.5}, "availability_prob"),
        ({"degradation_factor": -1}, "degradation_factor"),
        ({"max_power_kw": -1}, "max_power_kw"),
        ({"max_power_kw": float("inf")}, "max_power_kw"),
        ({"battery_kwh": 0}, "battery_kwh"),
        ({"charge_rate_kw": -2}, "charge_rate_kw"),
        ({"is_v2g": 1}, "is_v2g"),
        ({"available": "yes"}, "available"),
        ({"departure": datetime(2025, 1, 1)}, "departure"),
        ({"departure": "2025-01-01"}, "departure"),
        ({"segment": 3}, "segment"),
        ({"gateway": "depot/1"}, "gateway"),
    ],
)
def test_vehicle_validation(changes: dict[str, object], field: str) -> None:
    kwargs: dict[str, object] = {"vehicle_id": "v1", **changes}
    with pytest.raises(InvalidValueError) as info:
        Vehicle(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_validate_vehicle_id_rejects_non_strings() -> None:
    with pytest.raises(InvalidValueError):
        validate_vehicle_id(42)
    assert validate_vehicle_id("veh001") == "veh001"


def test_signal_properties() -> None:
    signal = FlexibilitySignal(
        signal_type=SignalType.FCR, power_kw=-20, duration_s=900, start=START
    )
    assert signal.end == START + timedelta(minutes=15)
    assert signal.duration_h == 0.25
    assert signal.direction == -1
    assert signal.as_dict() == {
        "type": "FCR",
        "power_kw": -20,
        "duration_s": 900,
        "start": "2025-07-07T10:00:00+00:00",
    }
    assert (
        FlexibilitySignal(
            signal_type=SignalType.MA, power_kw=0, duration_s=1, start=START
        ).direction
        == 0
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"signal_type": "FCR"}, "signal_type"),
        ({"power_kw": float("nan")}, "power_kw"),
        ({"duration_s": 0}, "duration_s"),
        ({"duration_s": 86_401}, "duration_s"),
        ({"start": datetime(2025, 1, 1)}, "start"),
    ],
)
def test_signal_validation(changes: dict[str, object], field: str) -> None:
    kwargs: dict[str, object] = {
        "signal_type": SignalType.FCR,
        "power_kw": 10.0,
        "duration_s": 60.0,
        "start": START,
        **changes,
    }
    with pytest.raises(InvalidValueError) as info:
        FlexibilitySignal(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_times_without_a_utc_equivalent_are_refused() -> None:
    """Found by fuzzing discovery answers: year 9999 at +14:00 has no UTC time."""
    from datetime import datetime, timedelta, timezone

    from custom_components.v2g.engine import InvalidValueError, Vehicle

    edge = datetime(9999, 12, 31, 23, 0, tzinfo=timezone(-timedelta(hours=14)))
    with pytest.raises(InvalidValueError, match="departure"):
        Vehicle(vehicle_id="v1", departure=edge)


PARIS_SUMMER = timezone(timedelta(hours=2))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-07-07T10:00:00+00:00", START),
        ("2025-07-07T10:00:00Z", START),
        ("2025-07-07T10:00:00z", START),
        ("2025-07-07t10:00:00Z", START),
        ("2025-07-07T12:00:00+02:00", START),
        ("2025-07-07T12:00:00+0200", START),
        ("2025-07-07 10:00", START),
        ("20250707T100000Z", START),
        ("2025-07-07T10:00:00.250+00:00", START + timedelta(milliseconds=250)),
        # No offset: read as UTC.
        ("2025-07-07T10:00:00", START),
        ("2025-07-07", START.replace(hour=0)),
        (START, START),
        (START.astimezone(PARIS_SUMMER), START),
        (START.replace(tzinfo=None), START),
    ],
)
def test_parse_utc_time_reads_iso_8601(value: object, expected: datetime) -> None:
    parsed = parse_utc_time(value)
    assert parsed == expected
    assert parsed is not None
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        " 2025-07-07T10:00:00Z",
        "yesterday",
        "2025-02-30T10:00:00Z",
        "2025-07-07T25:00:00Z",
        "2025-07-07T10:00:00\ud800",
        "0001-01-01T00:00:00+01:00",
        datetime(1, 1, 1, tzinfo=PARIS_SUMMER),
        datetime.max.replace(tzinfo=timezone(-timedelta(hours=1))),
        1_751_882_400,
        1.5,
        True,
        START.date(),
        ["2025-07-07T10:00:00Z"],
        {"start": "2025-07-07T10:00:00Z"},
    ],
)
def test_parse_utc_time_gives_none_for_anything_else(value: object) -> None:
    assert parse_utc_time(value) is None
