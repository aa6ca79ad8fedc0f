"""The history prediction engine: availability learnt from the recorder."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
import logging
from unittest.mock import patch

from freezegun.api import FrozenDateTimeFactory
from homeassistant.components.recorder import Recorder
from homeassistant.config_entries import ConfigEntryState, ConfigSubentryData
from homeassistant.core import HomeAssistant, State
from homeassistant.helpers import entity_registry as er
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_fire_time_changed,
)
from pytest_homeassistant_custom_component.components.recorder.common import (
    async_wait_recording_done,
)
from pytest_homeassistant_custom_component.typing import (
    MqttMockHAClient,
    RecorderInstanceGenerator,
)
from sqlalchemy.exc import OperationalError

from custom_components.v2g.const import (
    CONF_ACK_TIMEOUT,
    CONF_PLUGGED_ENTITY,
    CONF_PREDICTION,
    CONF_PREDICTION_LOOKBACK_DAYS,
    CONF_PREDICTION_PROFILE,
    CONF_VEHICLE_ID,
    DOMAIN,
    SUBENTRY_TYPE_VEHICLE,
)
from custom_components.v2g.engine import FleetState, StaticProfile, Vehicle
from custom_components.v2g.history import (
    REFRESH_NAME,
    HistoryPrediction,
    async_refresh_history_prediction,
    learn_profiles,
    plugged_intervals,
)

from .helpers import ENTRY_ID, async_announce, async_setup_fleet

HIGH = 2.5 / 3  # plugged in both observed hours of a bucket: (2 + 0.5) / (2 + 1)
LOW = 0.5 / 3  # plugged in neither
STATIC = ",".join(["40"] * 24)
OPTIONS = {
    CONF_ACK_TIMEOUT: 0.05,
    CONF_PREDICTION: "history",
    CONF_PREDICTION_LOOKBACK_DAYS: 14,
    CONF_PREDICTION_PROFILE: STATIC,
}
CAR = ConfigSubentryData(
    data={CONF_VEHICLE_ID: "car", CONF_PLUGGED_ENTITY: "binary_sensor.car_plug"},
    subentry_type=SUBENTRY_TYPE_VEHICLE,
    title="car",
    unique_id="car",
)


@pytest.fixture
def mock_recorder_before_hass(
    async_setup_recorder_instance: RecorderInstanceGenerator,
) -> None:
    """Prepare the recorder before ``hass`` (only ``recorder_mock`` starts it)."""


def _local(hass: HomeAssistant, *args: int) -> datetime:
    """A wall-clock time in Home Assistant's time zone (US/Pacific in tests)."""
    return datetime(*args, tzinfo=dt_util.get_default_time_zone())


async def _refreshed(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    """Wait for the background refreshes (not for every background task)."""
    tasks = [t for t in entry._background_tasks if t.get_name() == REFRESH_NAME]
    if tasks:
        await asyncio.wait(tasks)
    await hass.async_block_till_done()


def _prediction(entry: MockConfigEntry) -> HistoryPrediction:
    prediction = entry.runtime_data.prediction
    assert isinstance(prediction, HistoryPrediction)
    return prediction


async def _record_history(
    hass: HomeAssistant,
    freezer: FrozenDateTimeFactory,
    first: datetime,
    days: int,
    patterns: dict[str, Callable[[datetime], bool]],
) -> None:
    """Write one state per entity and hour for ``days`` days from ``first``."""
    previous: dict[str, str] = {}
    for hour in range(days * 24):
        when = first + timedelta(hours=hour)
        freezer.move_to(when)
        for entity_id, plugged in patterns.items():
            state = "on" if plugged(when) else "off"
            if previous.get(entity_id) != state:
                hass.states.async_set(entity_id, state)
                previous[entity_id] = state
        if hour % 24 == 23:
            await async_wait_recording_done(hass)
    await async_wait_recording_done(hass)


def _nights(when: datetime) -> bool:
    """Plugged in 18:00-07:00 local, except Saturday night."""
    local = dt_util.as_local(when)
    if local.hour >= 18:
        return local.weekday() != 5
    if local.hour < 7:
        return local.weekday() != 6
    return False


def _days(when: datetime) -> bool:
    local = dt_util.as_local(when)
    return 8 <= local.hour < 17


async def test_learns_from_recorded_plugged_in_history(
    recorder_mock: Recorder,
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    freezer: FrozenDateTimeFactory,
) -> None:
    # The vehicles' "plugged in" entities exist (registry) and have two weeks of
    # history before this start of Home Assistant. The 14-day window is
    # Monday 2025-06-02 00:00 -> Monday 2025-06-16 00:00 local.
    entry = MockConfigEntry(
        domain=DOMAIN,
        title="Depot",
        entry_id=ENTRY_ID,
        options=OPTIONS,
        subentries_data=[CAR],
    )
    entry.add_to_hass(hass)
    registry = er.async_get(hass)
    for vehicle_id in ("v1", "v2", "car"):
        registry.async_get_or_create(
            "binary_sensor",
            DOMAIN,
            f"{ENTRY_ID}_{vehicle_id}_plugged_in",
            suggested_object_id=f"{vehicle_id}_plugged_in",
            config_entry=entry,
        )
    patterns: dict[str, Callable[[datetime], bool]] = {
        "binary_sensor.v1_plugged_in": _nights,
        "binary_sensor.v2_plugged_in": _days,
        "binary_sensor.car_plug": lambda _: True,
        # The car's own entity is not its source: its configured one is.
        "binary_sensor.car_plugged_in": lambda _: False,
    }
    await _record_history(hass, freezer, _local(hass, 2025, 5, 31, 12), 16, patterns)
    now = _local(hass, 2025, 6, 16, 0)
    freezer.move_to(now)
    for entity_id in patterns:
        if entity_id != "binary_sensor.car_plug":
            hass.states.async_remove(entity_id)  # the integration's own entities
    await async_wait_recording_done(hass)

    await async_setup_fleet(hass, entry=entry)
    await async_announce(hass, ("v1", {}), ("v2", {}))
    await _refreshed(hass, entry)
    assert hass.states.get("binary_sensor.v1_plugged_in").state == "on"
    # The setup's refresh ran before v1 and v2 announced themselves.
    assert set(_prediction(entry).profile.profiles) == {"car"}

    assert await async_refresh_history_prediction(hass, entry)
    await _refreshed(hass, entry)

    prediction = _prediction(entry)
    assert prediction.learned_at == now
    assert prediction.profile is not None
    assert set(prediction.profile.profiles) == {"v1", "v2", "car"}

    def at(vehicle_id: str, *when: int) -> float:
        return prediction.availability(vehicle_id, _local(hass, *when))

    # Monday 2025-06-23 is a Monday, like every 7 days from 2025-06-02.
    assert at("v1", 2025, 6, 23, 20) == pytest.approx(HIGH)  # Monday night
    assert at("v1", 2025, 6, 23, 3) == pytest.approx(HIGH)  # Sunday night
    assert at("v1", 2025, 6, 23, 12) == pytest.approx(LOW)  # Monday noon
    assert at("v1", 2025, 6, 28, 20) == pytest.approx(LOW)  # Saturday night
    assert at("v1", 2025, 6, 29, 3) == pytest.approx(LOW)  # early Sunday
    assert at("v2", 2025, 6, 23, 12) == pytest.approx(HIGH)
    assert at("v2", 2025, 6, 23, 20) == pytest.approx(LOW)
    assert at("car", 2025, 6, 25, 12) == pytest.approx(HIGH)
    # Unknown vehicles use the static profile.
    assert at("nobody", 2025, 6, 23, 12) == pytest.approx(0.4)

    # The availability forecast sensors show the learnt value of the current hour
    # (Monday 00:00 local: v1 on Sunday nights, v2 not).
    v1 = float(hass.states.get("sensor.v1_availability_forecast").state)
    v2 = float(hass.states.get("sensor.v2_availability_forecast").state)
    assert v1 == pytest.approx(HIGH * 100, abs=0.01)
    assert v2 == pytest.approx(LOW * 100, abs=0.01)

    # A dispatch uses them: same vehicles, the likelier one scores higher.
    response = await hass.services.async_call(
        DOMAIN,
        "dispatch",
        {
            "config_entry_id": ENTRY_ID,
            "signal_type": "aFRR",
            "power_kw": 4,
            "vehicles": ["v1", "v2"],
            "strategy": "smart",
            "dry_run": True,
        },
        blocking=True,
        return_response=True,
    )
    assert response is not None
    scores = {vid: item["score"] for vid, item in response["vehicles"].items()}
    assert scores["v1"] > scores["v2"]
    assert (
        response["vehicles"]["v1"]["power_kw"] > response["vehicles"]["v2"]["power_kw"]
    )


async def test_refreshed_every_six_hours_until_unload(
    recorder_mock: Recorder,
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    freezer: FrozenDateTimeFactory,
) -> None:
    start = _local(hass, 2025, 6, 2, 0)
    freezer.move_to(start)
    entry = await async_setup_fleet(hass, options=OPTIONS, subentries=[CAR])
    hass.states.async_set("binary_sensor.car_plug", "on")
    await async_wait_recording_done(hass)
    # The first refresh runs in the background after setup.
    await _refreshed(hass, entry)
    assert _prediction(entry).learned_at == start
    assert _prediction(entry).profile is not None
    assert _prediction(entry).profile.profiles == {}

    later = start + timedelta(hours=6, seconds=1)
    freezer.move_to(later)
    async_fire_time_changed(hass, later)
    await _refreshed(hass, entry)
    await async_wait_recording_done(hass)
    await _refreshed(hass, entry)
    assert _prediction(entry).learned_at == later
    # Six hours plugged in, all of them observed: close to 1.
    assert _prediction(entry).availability("car", start + timedelta(hours=3)) > 0.5

    assert await hass.config_entries.async_unload(entry.entry_id)
    await _refreshed(hass, entry)
    with patch(
        "custom_components.v2g.history.async_refresh_history_prediction"
    ) as refresh:
        async_fire_time_changed(hass, later + timedelta(hours=12))
        await _refreshed(hass, entry)
    refresh.assert_not_called()


async def test_database_error_keeps_the_previous_profiles(
    recorder_mock: Recorder,
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    entry = await async_setup_fleet(hass, options=OPTIONS, subentries=[CAR])
    await _refreshed(hass, entry)
    previous = _prediction(entry).profile
    assert previous is not None

    with patch(
        "custom_components.v2g.history.history.get_significant_states",
        side_effect=OperationalError("SELECT", {}, Exception("locked")),
    ):
        assert not await async_refresh_history_prediction(hass, entry)

    assert _prediction(entry).profile is previous
    assert "Could not read the plugged-in history" in caplog.text


async def test_database_not_ready(
    recorder_mock: Recorder,
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    entry = await async_setup_fleet(hass, options=OPTIONS, subentries=[CAR])
    await _refreshed(hass, entry)
    not_ready = hass.loop.create_future()
    not_ready.set_result(False)

    with patch.object(recorder_mock, "async_db_ready", not_ready):
        assert not await async_refresh_history_prediction(hass, entry)

    assert "recorder database is not available" in caplog.text


async def test_no_vehicle_no_query(
    recorder_mock: Recorder, hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = await async_setup_fleet(hass, options=OPTIONS)
    await _refreshed(hass, entry)
    with patch("custom_components.v2g.history.history.get_significant_states") as query:
        assert await async_refresh_history_prediction(hass, entry)
    query.assert_not_called()
    assert _prediction(entry).profile is not None


async def test_without_recorder_the_static_profile_is_used(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    entry = await async_setup_fleet(hass, options=OPTIONS)
    await async_announce(hass, ("v1", {}))

    assert entry.state is ConfigEntryState.LOADED
    prediction = _prediction(entry)
    assert isinstance(prediction.fallback, StaticProfile)
    assert prediction.profile is None
    assert hass.states.get("sensor.v1_availability_forecast").state == "40.0"
    messages = [r.getMessage() for r in caplog.records if "recorder" in r.getMessage()]
    assert len(messages) == 1
    assert "uses the static availability profile" in messages[0]


async def test_history_mode_with_a_bad_static_profile(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = await async_setup_fleet(
        hass, options={**OPTIONS, CONF_PREDICTION_PROFILE: "1,2"}
    )
    await async_announce(hass, ("v1", {}))

    prediction = _prediction(entry)
    assert prediction.fallback is None
    assert hass.states.get("sensor.v1_availability_forecast").state == "100.0"


async def test_other_modes_are_left_alone(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    entry = await async_setup_fleet(
        hass, options={**OPTIONS, CONF_PREDICTION: "static_profile"}
    )
    assert isinstance(entry.runtime_data.prediction, StaticProfile)
    assert not await async_refresh_history_prediction(hass, entry)


# --- pure parts ------------------------------------------------------------------------


def _state(value: str, when: datetime) -> State:
    return State("binary_sensor.x", value, last_updated=when, last_changed=when)


T0 = datetime(2025, 6, 2, tzinfo=dt_util.UTC)  # a Monday


def test_intervals_start_at_the_first_known_state() -> None:
    states = [
        _state("unavailable", T0),
        _state("on", T0 + timedelta(hours=1)),
        _state("on", T0 + timedelta(hours=2)),  # attribute change
        _state("unknown", T0 + timedelta(hours=3)),
        _state("on", T0 + timedelta(hours=4)),
    ]
    intervals, known = plugged_intervals(states, T0 + timedelta(hours=5))
    assert known == T0 + timedelta(hours=1)
    assert intervals == [
        (T0 + timedelta(hours=1), T0 + timedelta(hours=3)),
        (T0 + timedelta(hours=4), T0 + timedelta(hours=5)),
    ]


def test_learn_profiles_skips_vehicles_without_known_history() -> None:
    now = T0 + timedelta(days=7)
    profiles = learn_profiles(
        {
            "never": [_state("unavailable", T0)],
            "empty": [],
            "just_now": [_state("on", now)],
            "week": [_state("on", T0)],
            "older": [_state("off", T0 - timedelta(days=30))],
        },
        now,
        timedelta(days=7),
        dt_util.UTC,
    )
    assert set(profiles) == {"week", "older"}
    assert profiles["week"] == [pytest.approx(1.5 / 2)] * 168
    assert profiles["older"] == [pytest.approx(0.5 / 2)] * 168


def test_prediction_without_fallback_and_soc_forecast() -> None:
    fleet = FleetState()
    fleet.upsert(Vehicle(vehicle_id="v1", soc=0.5, battery_kwh=10.0), 0.0)
    prediction = HistoryPrediction(None, tz=dt_util.UTC, fleet=lambda: fleet)

    assert prediction.availability("v1", T0) == 1.0
    prediction.update({"v1": [0.25] * 168}, T0)
    assert prediction.availability("v1", T0) == 0.25
    assert prediction.availability("v2", T0) == 1.0
    assert prediction.soc_forecast("v1", 1800.0) == [0.5, 0.5]
    assert prediction.soc_forecast("nobody", 1800.0) == []
