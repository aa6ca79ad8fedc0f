"""Entity state writes: only what changed, vehicle entities in chunks after the call.

Writes are counted on the bus (``state_changed`` + ``state_reported``, like the
benchmark): an entity written without a visible change shows up as
``state_reported``. Chunks are seen from outside: the writes (or the entities
added) per event-loop iteration, with the integration's chunk sizes made small.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
import json
import logging
from typing import Any
from unittest.mock import patch

from homeassistant.components import mqtt
from homeassistant.components.event import ATTR_EVENT_TYPE
from homeassistant.config_entries import (
    ConfigEntryState,
    ConfigSubentry,
    ConfigSubentryData,
)
from homeassistant.const import (
    EVENT_STATE_CHANGED,
    EVENT_STATE_REPORTED,
    STATE_UNAVAILABLE,
    STATE_UNKNOWN,
)
from homeassistant.core import Event, HomeAssistant, State, callback
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers.dispatcher import async_dispatcher_send
from homeassistant.helpers.entity import Entity
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.common import (
    async_capture_events,
    async_fire_mqtt_message,
    async_fire_time_changed,
)
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.v2g.const import CONF_ACK_TIMEOUT, CONF_VERIFY_WINDOW, DOMAIN

from .helpers import (
    ENTRY_ID,
    FleetResponder,
    async_announce,
    async_setup_fleet,
    loop_iterations,
    patch_tuning,
    vehicle_payload,
)

# The outcome events are what these tests follow (disabled by default for
# discovered vehicles).
pytestmark = pytest.mark.usefixtures("outcome_events_enabled")

# The delivery verification writes the delivery sensors 10 s after a dispatch
# (tests/test_verification.py counts those writes); here it stays out of the way.
FAST = {CONF_ACK_TIMEOUT: 0.05, CONF_VERIFY_WINDOW: 600}
VEHICLES = [f"car{i:03d}" for i in range(1, 61)]
DISPATCHED = VEHICLES[:50]
IDLE = VEHICLES[50:]
# What a first dispatch really changes per vehicle.
CHANGED_BY_DISPATCH = {"setpoint", "ack_rate", "dispatch_outcome"}
# Enabled: 6 sensors (last ack latency is disabled by default), plugged in, not
# following, outcome (not responding is disabled for discovered vehicles).
VEHICLE_ENTITIES = 9
FLEET_ENTITIES = 18  # 17 sensors, the ack-rate problem binary sensor


@callback
def _never(event: Event[Any]) -> None:
    """Never called: the event filters count and return False."""


class WriteCounter:
    """Count the state writes per entity, as (vehicle id | "fleet", key)."""

    def __init__(self, hass: HomeAssistant) -> None:
        """Attach to the bus; the filters count and return False."""
        self.hass = hass
        self.changed: Counter[str] = Counter()
        self.reported: Counter[str] = Counter()

        @callback
        def _changed(data: Any) -> bool:
            self.changed[data["entity_id"]] += 1
            return False

        @callback
        def _reported(data: Any) -> bool:
            self.reported[data["entity_id"]] += 1
            return False

        self.listeners = [
            hass.bus.async_listen(EVENT_STATE_CHANGED, _never, event_filter=_changed),
            hass.bus.async_listen(EVENT_STATE_REPORTED, _never, event_filter=_reported),
        ]

    def close(self) -> None:
        """Detach from the bus."""
        while self.listeners:
            self.listeners.pop()()

    @property
    def writes(self) -> int:
        """Every write counted."""
        return self.changed.total() + self.reported.total()

    def by_owner(self) -> dict[str, Counter[str]]:
        """Writes per vehicle id (or "fleet"), then per entity key."""
        registry = er.async_get(self.hass)
        result: dict[str, Counter[str]] = defaultdict(Counter)
        for entity_id, count in (self.changed + self.reported).items():
            owner, key = _owner(registry, entity_id)
            result[owner][key] += count
        return dict(result)


@contextmanager
def count_writes(hass: HomeAssistant) -> Iterator[WriteCounter]:
    """Count the state writes made inside the block."""
    counter = WriteCounter(hass)
    try:
        yield counter
    finally:
        counter.close()


async def _fleet(hass: HomeAssistant, vehicles: list[str] = VEHICLES) -> None:
    await async_setup_fleet(hass, options=FAST)
    await async_announce(hass, *[(vehicle_id, {}) for vehicle_id in vehicles])


async def _dispatch(
    hass: HomeAssistant, vehicles: list[str], power_kw: float
) -> dict[str, Any]:
    response = await hass.services.async_call(
        DOMAIN,
        "dispatch",
        {
            "config_entry_id": ENTRY_ID,
            "signal_type": "aFRR",
            "power_kw": power_kw,
            "strategy": "equal",
            "vehicles": vehicles,
        },
        blocking=True,
        return_response=True,
    )
    assert isinstance(response, dict)
    assert {o["status"] for o in response["vehicles"].values()} == {"acknowledged"}
    return response


def _owner(registry: er.EntityRegistry, entity_id: str) -> tuple[str, str]:
    """(vehicle id | "fleet", entity key) of one of the fleet's entities."""
    entry = registry.async_get(entity_id)
    assert entry is not None
    _, owner, key = entry.unique_id.split("_", 2)
    return owner, key


def _shown(hass: HomeAssistant) -> dict[str, tuple[str, dict[str, Any]]]:
    """What the fleet's entities show (state, attributes), by entity id."""
    registry = er.async_get(hass)
    return {
        entry.entity_id: (state.state, dict(state.attributes))
        for entry in er.async_entries_for_config_entry(registry, ENTRY_ID)
        if (state := hass.states.get(entry.entity_id)) is not None
    }


@contextmanager
def vehicles_written_per_iteration(
    hass: HomeAssistant,
) -> Iterator[dict[int, list[str]]]:
    """The vehicles whose entities are written, per event-loop iteration."""
    registry = er.async_get(hass)
    seen: dict[int, list[str]] = defaultdict(list)
    with loop_iterations(hass) as iteration:

        @callback
        def _written(data: Any) -> bool:
            owner, _ = _owner(registry, data["entity_id"])
            if owner != "fleet" and owner not in (chunk := seen[iteration()]):
                chunk.append(owner)
            return False

        unsubs = [
            hass.bus.async_listen(event_type, _never, event_filter=_written)
            for event_type in (EVENT_STATE_CHANGED, EVENT_STATE_REPORTED)
        ]
        try:
            yield seen
        finally:
            for unsub in unsubs:
                unsub()


async def test_dispatch_writes_only_what_changed(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass)
    FleetResponder(hass, fleet_mqtt)

    with count_writes(hass) as counter:
        response = await _dispatch(hass, DISPATCHED, 50)
        # The response comes first: no vehicle entity is written yet.
        assert set(counter.by_owner()) <= {"fleet"}
        assert hass.states.get("sensor.car001_setpoint").state == "0.0"
        await hass.async_block_till_done()

    writes = counter.by_owner()
    # Only the dispatched vehicles, only the entities whose value changed, once.
    assert set(writes) == {"fleet", *DISPATCHED}
    for vehicle_id in DISPATCHED:
        assert writes[vehicle_id] == dict.fromkeys(CHANGED_BY_DISPATCH, 1)
    assert max(writes["fleet"].values()) == 1
    assert not counter.reported  # nothing written without a visible change
    assert counter.writes <= len(DISPATCHED) * len(CHANGED_BY_DISPATCH) + (
        FLEET_ENTITIES
    )
    # The states are final after async_block_till_done.
    assert hass.states.get("sensor.car001_setpoint").state == "1.0"
    assert hass.states.get("sensor.car001_ack_rate").state == "100.0"
    assert hass.states.get("sensor.car051_setpoint").state == "0.0"
    event = hass.states.get("event.car050_dispatch_outcome")
    assert event.attributes[ATTR_EVENT_TYPE] == "acknowledged"
    assert event.attributes["dispatch_id"] == response["dispatch_id"]

    # The same dispatch again: the events fire (once each); setpoint and ack
    # rate stay as they are.
    with count_writes(hass) as counter:
        response = await _dispatch(hass, DISPATCHED, 50)
        await hass.async_block_till_done()
    writes = counter.by_owner()
    assert set(writes) <= {"fleet", *DISPATCHED}
    for vehicle_id in DISPATCHED:
        assert writes[vehicle_id]["dispatch_outcome"] == 1
        assert set(writes[vehicle_id]) == {"dispatch_outcome"}
    assert not counter.reported
    event = hass.states.get("event.car001_dispatch_outcome")
    assert event.attributes["dispatch_id"] == response["dispatch_id"]


async def test_vehicle_updates_are_chunked(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass)
    FleetResponder(hass, fleet_mqtt)
    with (
        patch_tuning("VEHICLE_UPDATE_CHUNK", 8),
        vehicles_written_per_iteration(hass) as seen,
    ):
        await _dispatch(hass, DISPATCHED, 50)
        assert not seen  # nothing before the response
        await hass.async_block_till_done()

    chunks = list(seen.values())
    # Each vehicle's entities are written together, once.
    assert sorted(v for chunk in chunks for v in chunk) == DISPATCHED
    assert len(chunks) == 7  # 50 vehicles, 8 per loop iteration
    assert max(len(chunk) for chunk in chunks) == 8


async def test_fleet_snapshot_is_built_in_steps(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    """A snapshot walks the vehicles a chunk per iteration; the result is whole."""
    await _fleet(hass)
    FleetResponder(hass, fleet_mqtt)

    async def iterations_of_a_snapshot(soc: float) -> int:
        """Loop iterations from a telemetry snapshot's start to its last write."""
        async_fire_mqtt_message(
            hass, "v2g/vehicle/state/car060", json.dumps({"soc": soc})
        )
        await hass.async_block_till_done()
        with loop_iterations(hass) as iteration:
            async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=2))
            await hass.async_block_till_done()
            assert hass.states.get("sensor.car060_state_of_charge").state == (
                f"{soc * 100:.1f}"
            )
            return iteration()

    at_once = await iterations_of_a_snapshot(0.5)
    with patch_tuning("STEP_SIZE", 7):
        stepped = await iterations_of_a_snapshot(0.6)
    # 60 vehicles, then the flexibility up and down of the 60: 3 walks of
    # 9 chunks of 7, one loop iteration each (at once: 3 walks of one chunk).
    assert stepped >= 27
    assert stepped - at_once >= 20

    with patch_tuning("STEP_SIZE", 7):
        await _dispatch(hass, DISPATCHED, 50)
        await hass.async_block_till_done()
    assert hass.states.get("sensor.car001_setpoint").state == "1.0"
    assert hass.states.get("sensor.car051_setpoint").state == "0.0"
    assert hass.states.get("sensor.depot_vehicles_available").state == "60"
    shown = _shown(hass)
    # A snapshot built at once (housekeeping, default steps) shows the same
    # (energy aside: the clock runs).
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=31))
    await hass.async_block_till_done(wait_background_tasks=True)
    now_shown = _shown(hass)
    for entity_id, (state, attributes) in shown.items():
        if not entity_id.endswith(("_energy_discharged", "_co2_avoided")):
            assert now_shown[entity_id] == (state, attributes), entity_id


async def test_an_older_snapshot_never_replaces_a_newer_one(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    """Two stepped builds overlap: the one begun first may finish last."""
    await _fleet(hass)
    soc_writes = async_capture_events(hass, EVENT_STATE_CHANGED)
    with patch_tuning("STEP_SIZE", 1):
        # Housekeeping begins a snapshot, one vehicle per loop iteration...
        async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=31))
        for _ in range(3):
            await asyncio.sleep(0)  # ...and has read car001 (SoC 80 %)
    # car001 reports a new SoC: its snapshot (one chunk) is done first.
    async_fire_mqtt_message(hass, "v2g/vehicle/state/car001", json.dumps({"soc": 0.5}))
    # The debounced refresh comes while the older build runs: it is refreshed
    # again once that one is done.
    for _ in range(2):
        async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=2))
        await hass.async_block_till_done(wait_background_tasks=True)
    assert [
        event.data["new_state"].state
        for event in soc_writes
        if event.data["entity_id"] == "sensor.car001_state_of_charge"
    ] == ["50.0"]


async def test_back_to_back_dispatches_fire_every_event(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    """A dispatch finishing while the last one's entities are still being written."""
    await _fleet(hass)
    FleetResponder(hass, fleet_mqtt)
    with (
        patch_tuning("VEHICLE_UPDATE_CHUNK", 1),
        count_writes(hass) as counter,
    ):
        await _dispatch(hass, DISPATCHED, 50)
        response = await _dispatch(hass, DISPATCHED, 50)
        # The first walk is not over (car050 is last): the second one's events
        # join it.
        assert "car050" not in counter.by_owner()
        await hass.async_block_till_done()
    writes = counter.by_owner()
    for vehicle_id in DISPATCHED:
        assert writes[vehicle_id]["dispatch_outcome"] == 2
        assert writes[vehicle_id]["setpoint"] == 1
    event = hass.states.get("event.car050_dispatch_outcome")
    assert event.attributes["dispatch_id"] == response["dispatch_id"]
    # Nothing is left over for later.
    with count_writes(hass) as counter:
        async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=2))
        await hass.async_block_till_done()
    assert counter.writes == 0


async def test_housekeeping_writes_only_displayed_changes(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    entity_registry: er.EntityRegistry,
) -> None:
    # Wall time is stepped by hand: a frozen clock (freezer) also freezes the
    # loop's timers, which could stall the dispatch.
    wall = [dt_util.utcnow()]
    with patch.object(dt_util, "utcnow", side_effect=lambda: wall[0]):
        await _check_housekeeping_writes(hass, fleet_mqtt, entity_registry, wall)


async def _check_housekeeping_writes(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    entity_registry: er.EntityRegistry,
    wall: list[datetime],
) -> None:
    await _fleet(hass, VEHICLES[:3])
    FleetResponder(hass, fleet_mqtt)

    async def housekeeping(seconds: float = 30) -> WriteCounter:
        """Step the wall clock; let housekeeping's timer fire."""
        with count_writes(hass) as counter:
            wall[0] += timedelta(seconds=seconds)
            # The loop's timers follow the real clock.
            async_fire_time_changed(hass, datetime.now(UTC) + timedelta(seconds=31))
            await hass.async_block_till_done(wait_background_tasks=True)
        return counter

    # Nothing changes with time: nothing is written.
    assert (await housekeeping()).writes == 0

    # 0.24 kW: 0.002 kWh per 30 s; the sensor shows 2 decimals.
    await _dispatch(hass, ["car001"], 0.24)
    await hass.async_block_till_done()
    energy = "sensor.car001_energy_discharged"
    assert (await housekeeping()).writes == 0  # 0.002 kWh shows as 0.00
    assert hass.states.get(energy).state == "0.0"
    counter = await housekeeping(60)  # 0.006 kWh: 0.01
    assert counter.by_owner() == {"car001": {"energy_discharged": 1}}
    assert float(hass.states.get(energy).state) == pytest.approx(0.006)
    assert (await housekeeping()).writes == 0  # 0.008 kWh: still 0.01

    # Shown in another unit (converted by HA): the exact value counts.
    entity_registry.async_update_entity_options(
        energy, "sensor", {"unit_of_measurement": "Wh"}
    )
    await hass.async_block_till_done()
    counter = await housekeeping()  # 0.010 kWh: 0.01 again, but 10 Wh
    assert counter.by_owner() == {"car001": {"energy_discharged": 1}}
    assert float(hass.states.get(energy).state) == pytest.approx(10.0)
    # A precision the user chose counts.
    entity_registry.async_update_entity_options(
        energy, "sensor", {"display_precision": 4}
    )
    await hass.async_block_till_done()
    counter = await housekeeping()  # 0.012 kWh
    assert counter.by_owner() == {"car001": {"energy_discharged": 1}}
    assert float(hass.states.get(energy).state) == pytest.approx(0.012)


async def test_connection_loss_writes_every_entity_once(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass, VEHICLES[:5])
    for connected, expected in ((False, STATE_UNAVAILABLE), (True, STATE_UNKNOWN)):
        with count_writes(hass) as counter:
            async_dispatcher_send(hass, mqtt.MQTT_CONNECTION_STATE, connected)
            await hass.async_block_till_done()
        writes = counter.by_owner()
        assert set(writes) == {"fleet", *VEHICLES[:5]}
        for vehicle_id in VEHICLES[:5]:
            assert len(writes[vehicle_id]) == VEHICLE_ENTITIES
            assert max(writes[vehicle_id].values()) == 1
        assert len(writes["fleet"]) == FLEET_ENTITIES
        assert hass.states.get("event.car005_dispatch_outcome").state == expected


@contextmanager
def entities_added_per_iteration(
    hass: HomeAssistant,
) -> Iterator[dict[int, Counter[str]]]:
    """Vehicles whose entities are registered, per loop iteration and platform."""
    added: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    registry = er.async_get(hass)

    @callback
    def _created(data: Any) -> bool:
        if data["action"] == "create":
            entity_id: str = data["entity_id"]
            owner, _ = _owner(registry, entity_id)
            added[iteration()][entity_id.split(".")[0]].add(owner)
        return False

    result: dict[int, Counter[str]] = {}
    with loop_iterations(hass) as iteration:
        unsub = hass.bus.async_listen(
            er.EVENT_ENTITY_REGISTRY_UPDATED, _never, event_filter=_created
        )
        try:
            yield result
        finally:
            unsub()
    result.update(
        {
            i: Counter({platform: len(v) for platform, v in platforms.items()})
            for i, platforms in added.items()
        }
    )


async def test_discovery_adds_in_batches_without_rewrites(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass, VEHICLES[:10])
    with (
        patch_tuning("ADD_BATCH_VEHICLES", 20),
        entities_added_per_iteration(hass) as batches,
        count_writes(hass) as counter,
    ):
        await async_announce(hass, *[(v, {}) for v in VEHICLES[10:]])

    # 50 new vehicles, 20 at a time, per platform (sensor, binary sensor, event);
    # one batch of each platform per loop iteration at most.
    for platform in ("sensor", "binary_sensor", "event"):
        sizes = [b[platform] for _, b in sorted(batches.items()) if b[platform]]
        assert sizes == [20, 20, 10], platform
    assert len(batches) >= 3
    # The vehicles known before got no write; each new entity one (its first).
    writes = counter.by_owner()
    assert not set(writes) & set(VEHICLES[:10])
    assert set(writes) - {"fleet"} == set(VEHICLES[10:])
    assert all(n == 1 for owner in writes.values() for n in owner.values())
    assert hass.states.get("event.car060_dispatch_outcome") is not None


def _van(vehicle_id: str) -> ConfigSubentry:
    """A vehicle added by hand."""
    return ConfigSubentry(
        **ConfigSubentryData(
            data={"vehicle_id": vehicle_id},
            subentry_type="vehicle",
            title=vehicle_id,
            unique_id=vehicle_id,
        )
    )


async def _until(hass: HomeAssistant, entity_id: str) -> None:
    """Let the loop run until an entity has a state (a few iterations)."""
    for _ in range(100):
        if hass.states.get(entity_id) is not None:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{entity_id} never appeared")


async def test_adder_skips_removed_vehicles_and_stops_on_unload(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    entity_registry: er.EntityRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    entry = await async_setup_fleet(hass, options=FAST)

    def registered() -> set[str]:
        return {
            e.entity_id
            for e in er.async_entries_for_config_entry(entity_registry, ENTRY_ID)
        }

    with patch_tuning("ADD_BATCH_VEHICLES", 1):
        # 30 vehicles announce themselves and a van is added by hand: its
        # entities are queued last, one vehicle per loop iteration.
        for vehicle_id in VEHICLES[:30]:
            async_fire_mqtt_message(
                hass, f"v2g/fleet/response/{vehicle_id}", vehicle_payload(vehicle_id)
            )
        van = _van("van")
        hass.config_entries.async_add_subentry(entry, van)
        async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=2))
        await _until(hass, "sensor.car001_setpoint")
        for _ in range(3):
            await asyncio.sleep(0)  # the snapshot's debouncer call ends
        # The van leaves before its turn; the next snapshot knows it.
        hass.config_entries.async_remove_subentry(entry, van.subentry_id)
        async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=2))
        await hass.async_block_till_done()
    assert hass.states.get("sensor.car030_setpoint") is not None
    assert hass.states.get("sensor.van_setpoint") is None
    assert not [e for e in registered() if e.split(".")[1].startswith("van_")]
    # It is new again when it returns.
    hass.config_entries.async_add_subentry(entry, _van("van"))
    await async_announce(hass)
    assert hass.states.get("sensor.van_setpoint") is not None

    # Unloading stops the batches.
    with patch_tuning("ADD_BATCH_VEHICLES", 1):
        for vehicle_id in VEHICLES[30:]:
            async_fire_mqtt_message(
                hass, f"v2g/fleet/response/{vehicle_id}", vehicle_payload(vehicle_id)
            )
        async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=2))
        await _until(hass, "sensor.car031_setpoint")
        assert await hass.config_entries.async_unload(ENTRY_ID)
        left = registered()
        assert entry.state is ConfigEntryState.NOT_LOADED
        async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=60))
        await hass.async_block_till_done()
    assert registered() == left
    assert "sensor.car060_setpoint" not in left  # its turn never came
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_unload_cancels_pending_vehicle_updates(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _fleet(hass)
    FleetResponder(hass, fleet_mqtt)
    with patch_tuning("VEHICLE_UPDATE_CHUNK", 1):
        response = await _dispatch(hass, DISPATCHED, 50)
        # The response comes first: car050's entities are not written yet.
        assert hass.states.get("sensor.car050_setpoint").state == "0.0"
        assert await hass.config_entries.async_unload(ENTRY_ID)
        after_unload: list[State] = []

        @callback
        def _written(data: Any) -> bool:
            after_unload.append(data["new_state"])
            return False

        unsub = hass.bus.async_listen(
            EVENT_STATE_CHANGED, _never, event_filter=_written
        )
        await hass.async_block_till_done()
        async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=60))
        await hass.async_block_till_done()
        unsub()
    # Nothing of the fleet is written after the unload: the walk stopped.
    assert not [
        state.entity_id
        for state in after_unload
        if state is not None and state.entity_id.startswith(("sensor.", "event."))
    ]
    outcome = hass.states.get("event.car050_dispatch_outcome")
    assert outcome.state == STATE_UNAVAILABLE
    assert outcome.attributes.get("dispatch_id") != response["dispatch_id"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_failing_vehicle_listener_does_not_stop_the_others(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _fleet(hass, VEHICLES[:3])
    FleetResponder(hass, fleet_mqtt)
    write = Entity.async_write_ha_state

    def broken_setpoint(entity: Entity) -> None:
        """One entity of car001 fails to write its state."""
        if entity.entity_id == "sensor.car001_setpoint":
            raise RuntimeError("boom")
        write(entity)

    with (
        caplog.at_level(logging.ERROR),
        patch.object(Entity, "async_write_ha_state", broken_setpoint),
    ):
        await _dispatch(hass, VEHICLES[:3], 3)
        await hass.async_block_till_done()
    assert "Error updating the entities of vehicle car001" in caplog.text
    assert hass.states.get("sensor.car001_setpoint").state == "0.0"
    assert hass.states.get("sensor.car002_setpoint").state == "1.0"
    assert hass.states.get("sensor.car003_setpoint").state == "1.0"
    # car001's entities still follow it.
    await _dispatch(hass, VEHICLES[:3], 6)
    await hass.async_block_till_done()
    assert hass.states.get("sensor.car001_setpoint").state == "2.0"
    assert hass.states.get("sensor.car002_setpoint").state == "2.0"


async def test_new_telemetry_writes_only_changed_entities(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass, VEHICLES[:2])
    with count_writes(hass) as counter:
        await async_announce(hass, ("car001", {"SoC": 0.5}))
    writes = counter.by_owner()
    assert set(writes) <= {"fleet", "car001"}
    assert writes["car001"] == {"state_of_charge": 1}
    assert hass.states.get("sensor.car001_state_of_charge").state == "50.0"
