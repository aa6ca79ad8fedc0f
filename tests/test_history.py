"""The history prediction engine: availability learnt from the recorder.

What was learnt is observed where a user sees it: the vehicles' availability
forecast sensors (the current hour), the scores of a dispatch, and the log.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
import logging
from unittest.mock import patch

from freezegun.api import FrozenDateTimeFactory
from homeassistant.components.recorder import Recorder
from homeassistant.config_entries import ConfigEntryState, ConfigSubentryData
from homeassistant.core import HomeAssistant
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
    CONF_STALE_TIMEOUT,
    CONF_VEHICLE_ID,
    DOMAIN,
    SUBENTRY_TYPE_VEHICLE,
)
from custom_components.v2g.history import REFRESH_INTERVAL

from .helpers import ENTRY_ID, async_announce, async_dispatch, async_setup_fleet

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
# The recorder's read of the states (patched to fail, or to count the reads).
GET_SIGNIFICANT_STATES = (
    "homeassistant.components.recorder.history.get_significant_states"
)


async def _refresh(hass: HomeAssistant) -> None:
    """Let the 6-hourly refresh run (the clock itself does not move)."""
    async_fire_time_changed(hass, dt_util.utcnow() + REFRESH_INTERVAL)
    await hass.async_block_till_done(wait_background_tasks=True)


@pytest.fixture
def mock_recorder_before_hass(
    async_setup_recorder_instance: RecorderInstanceGenerator,
) -> None:
    """Prepare the recorder before ``hass`` (only ``recorder_mock`` starts it)."""


def _local(*args: int) -> datetime:
    """A wall-clock time in Home Assistant's time zone (US/Pacific in tests)."""
    return datetime(*args, tzinfo=dt_util.get_default_time_zone())


async def _refreshed(hass: HomeAssistant) -> None:
    """Wait for the background work (the refreshes run as background tasks)."""
    await hass.async_block_till_done(wait_background_tasks=True)


def _forecast(hass: HomeAssistant, vehicle_id: str) -> float:
    """The availability forecast sensor of a vehicle, as a fraction."""
    state = hass.states.get(f"sensor.{vehicle_id}_availability_forecast")
    assert state is not None
    return float(state.state) / 100


def _learnt(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The "learnt N of M vehicles" parts of the refresh log lines."""
    return [
        r.getMessage().split(" of Depot")[0].removeprefix("Learnt the availability of ")
        for r in caplog.records
        if r.getMessage().startswith("Learnt the availability")
    ]


async def _record_history(
    hass: HomeAssistant,
    freezer: FrozenDateTimeFactory,
    first: datetime,
    last: datetime,
    patterns: dict[str, Callable[[datetime], bool]],
) -> None:
    """Write one state per entity and hour from ``first`` to ``last``."""
    previous: dict[str, str] = {}
    hours = int((last - first).total_seconds() // 3600)
    for hour in range(hours):
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


def _fridays(when: datetime) -> bool:
    return dt_util.as_local(when).weekday() == 4


async def test_learns_from_recorded_plugged_in_history(
    recorder_mock: Recorder,
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    freezer: FrozenDateTimeFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The vehicles' "plugged in" entities exist (registry) and have two weeks of
    # history before this start of Home Assistant. The 14-day window is
    # Friday 2025-05-30 16:00 -> Friday 2025-06-13 16:00 local: every hour of
    # the week is observed twice.
    caplog.set_level(logging.DEBUG, logger="custom_components.v2g")
    entry = MockConfigEntry(
        domain=DOMAIN,
        title="Depot",
        entry_id=ENTRY_ID,
        # The clock jumps hours ahead below: the vehicles must not turn stale.
        options={**OPTIONS, CONF_STALE_TIMEOUT: 86400},
        subentries_data=[CAR],
    )
    entry.add_to_hass(hass)
    registry = er.async_get(hass)
    for vehicle_id in ("v1", "v2", "v3", "car"):
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
        "binary_sensor.v3_plugged_in": _fridays,
        "binary_sensor.car_plug": lambda _: True,
        # The car's own entity is not its source: its configured one is.
        "binary_sensor.car_plugged_in": lambda _: False,
    }
    now = _local(2025, 6, 13, 16)
    await _record_history(hass, freezer, _local(2025, 5, 30, 12), now, patterns)
    freezer.move_to(now)
    for entity_id in patterns:
        if entity_id != "binary_sensor.car_plug":
            hass.states.async_remove(entity_id)  # the integration's own entities
    await async_wait_recording_done(hass)

    await async_setup_fleet(hass, entry=entry)
    await async_announce(hass, ("v1", {}), ("v2", {}), ("v3", {}))
    await _refreshed(hass)
    assert hass.states.get("binary_sensor.v1_plugged_in").state == "on"
    # The setup's refresh ran before v1, v2 and v3 announced themselves: they
    # use the static profile (40 %) until the next one.
    assert _learnt(caplog) == ["1 of 1 vehicles"]
    assert _forecast(hass, "car") == pytest.approx(HIGH, abs=1e-4)
    for vehicle_id in ("v1", "v2", "v3"):
        assert _forecast(hass, vehicle_id) == pytest.approx(0.4)

    await _refresh(hass)
    await _refreshed(hass)
    assert _learnt(caplog) == ["1 of 1 vehicles", "4 of 4 vehicles"]
    # Friday 16:00: v1 plugged in at night only, v2 in the day, v3 on Fridays.
    assert _forecast(hass, "v1") == pytest.approx(LOW, abs=1e-4)
    assert _forecast(hass, "v2") == pytest.approx(HIGH, abs=1e-4)
    assert _forecast(hass, "v3") == pytest.approx(HIGH, abs=1e-4)
    assert _forecast(hass, "car") == pytest.approx(HIGH, abs=1e-4)

    # Friday night (before the next refresh, 6 hours after setup): the sensors
    # follow the hour of the week.
    freezer.move_to(_local(2025, 6, 13, 20, 30))
    async_fire_time_changed(hass)
    await _refreshed(hass)
    assert _learnt(caplog) == ["1 of 1 vehicles", "4 of 4 vehicles"]
    assert _forecast(hass, "v1") == pytest.approx(HIGH, abs=1e-4)
    assert _forecast(hass, "v2") == pytest.approx(LOW, abs=1e-4)
    assert _forecast(hass, "v3") == pytest.approx(HIGH, abs=1e-4)
    # A vehicle without history uses the static profile.
    await async_announce(hass, ("nobody", {}))
    assert _forecast(hass, "nobody") == pytest.approx(0.4)

    # A dispatch uses them: same vehicles, the likelier one scores higher.
    response = await async_dispatch(
        hass,
        signal_type="aFRR",
        power_kw=4,
        vehicles=["v1", "v2"],
        strategy="smart",
        dry_run=True,
    )
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
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="custom_components.v2g")
    start = _local(2025, 6, 2, 0)
    freezer.move_to(start)
    hass.states.async_set("binary_sensor.car_plug", "on")
    await async_wait_recording_done(hass)
    entry = await async_setup_fleet(
        hass, options={**OPTIONS, CONF_STALE_TIMEOUT: 86400}, subentries=[CAR]
    )
    # The first refresh runs in the background after setup: no history yet.
    await _refreshed(hass)
    assert _learnt(caplog) == ["0 of 1 vehicles"]
    assert _forecast(hass, "car") == pytest.approx(0.4)

    # Six and a half hours plugged in, all of them observed. The current hour
    # (06:00-07:00) is half observed: (0.5 + 0.5) / (0.5 + 1).
    later = start + timedelta(hours=6, minutes=30)
    freezer.move_to(later)
    async_fire_time_changed(hass, later)
    await _refreshed(hass)
    assert _learnt(caplog) == ["0 of 1 vehicles", "1 of 1 vehicles"]
    assert _forecast(hass, "car") == pytest.approx(2 / 3, abs=1e-4)

    assert await hass.config_entries.async_unload(entry.entry_id)
    await _refreshed(hass)
    caplog.clear()
    with patch(GET_SIGNIFICANT_STATES) as query:
        async_fire_time_changed(hass, later + timedelta(hours=12))
        await _refreshed(hass)
    query.assert_not_called()
    assert not [r for r in caplog.records if r.name.startswith("custom_components")]


async def test_database_error_keeps_the_previous_profiles(
    recorder_mock: Recorder,
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    freezer: FrozenDateTimeFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    start = _local(2025, 6, 2, 0)
    freezer.move_to(start)
    hass.states.async_set("binary_sensor.car_plug", "on")
    await async_wait_recording_done(hass)
    await async_setup_fleet(
        hass, options={**OPTIONS, CONF_STALE_TIMEOUT: 86400}, subentries=[CAR]
    )
    await _refreshed(hass)
    # Plugged in since 00:00; at 03:30 the current hour is half observed.
    freezer.move_to(start + timedelta(hours=3, minutes=30))
    await _refresh(hass)
    await _refreshed(hass)
    learnt = _forecast(hass, "car")
    assert learnt == pytest.approx(2 / 3, abs=1e-4)

    with patch(
        GET_SIGNIFICANT_STATES,
        side_effect=OperationalError("SELECT", {}, Exception("locked")),
    ):
        await _refresh(hass)
    assert "Could not read the plugged-in history" in caplog.text

    # The entities are refreshed (housekeeping): the learnt value stays.
    freezer.tick(timedelta(seconds=31))
    async_fire_time_changed(hass)
    await _refreshed(hass)
    assert _forecast(hass, "car") == learnt


async def test_database_not_ready(
    recorder_mock: Recorder,
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await async_setup_fleet(hass, options=OPTIONS, subentries=[CAR])
    await _refreshed(hass)
    not_ready = hass.loop.create_future()
    not_ready.set_result(False)

    with (
        patch.object(recorder_mock, "async_db_ready", not_ready),
        patch(GET_SIGNIFICANT_STATES) as query,
    ):
        await _refresh(hass)

    query.assert_not_called()
    assert "recorder database is not available" in caplog.text


async def test_no_vehicle_no_query(
    recorder_mock: Recorder,
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="custom_components.v2g")
    await async_setup_fleet(hass, options=OPTIONS)
    await _refreshed(hass)
    with patch(GET_SIGNIFICANT_STATES) as query:
        await _refresh(hass)
    query.assert_not_called()
    # Learnt (nothing), not failed.
    assert _learnt(caplog) == ["0 of 0 vehicles", "0 of 0 vehicles"]


async def test_without_recorder_the_static_profile_is_used(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    entry = await async_setup_fleet(hass, options=OPTIONS)
    await async_announce(hass, ("v1", {}))

    assert entry.state is ConfigEntryState.LOADED
    assert hass.states.get("sensor.v1_availability_forecast").state == "40.0"
    messages = [r.getMessage() for r in caplog.records if "recorder" in r.getMessage()]
    assert len(messages) == 1
    assert "uses the static availability profile" in messages[0]


async def test_history_mode_with_a_bad_static_profile(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await async_setup_fleet(hass, options={**OPTIONS, CONF_PREDICTION_PROFILE: "1,2"})
    await async_announce(hass, ("v1", {}))

    # Nothing learnt, no static profile: available for sure.
    assert hass.states.get("sensor.v1_availability_forecast").state == "100.0"


async def test_other_modes_are_left_alone(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await async_setup_fleet(
        hass, options={**OPTIONS, CONF_PREDICTION: "static_profile"}
    )
    await async_announce(hass, ("v1", {}))
    assert hass.states.get("sensor.v1_availability_forecast").state == "40.0"
    with patch(GET_SIGNIFICANT_STATES) as query:
        await _refresh(hass)
    query.assert_not_called()
    assert hass.states.get("sensor.v1_availability_forecast").state == "40.0"
