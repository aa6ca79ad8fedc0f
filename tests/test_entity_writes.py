"""Entity state writes: only what changed, vehicle entities in chunks after the call.

Writes are counted on the bus (``state_changed`` + ``state_reported``, like the
benchmark): an entity written without a visible change shows up as
``state_reported``.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
import logging
from typing import Any
from unittest.mock import MagicMock, patch

from homeassistant.components import mqtt
from homeassistant.components.event import ATTR_EVENT_TYPE
from homeassistant.config_entries import ConfigEntryState
from homeassistant.const import (
    EVENT_STATE_CHANGED,
    EVENT_STATE_REPORTED,
    STATE_UNAVAILABLE,
    STATE_UNKNOWN,
)
from homeassistant.core import Event, HomeAssistant, callback
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers.dispatcher import async_dispatcher_send
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.v2g.const import CONF_ACK_TIMEOUT, DOMAIN
from custom_components.v2g.coordinator import V2GFleetCoordinator
from custom_components.v2g.entity import _VehicleEntityAdder

from .helpers import (
    ENTRY_ID,
    FleetResponder,
    async_announce,
    async_setup_fleet,
    loop_iterations,
)

FAST = {CONF_ACK_TIMEOUT: 0.05}
VEHICLES = [f"car{i:03d}" for i in range(1, 61)]
DISPATCHED = VEHICLES[:50]
IDLE = VEHICLES[50:]
# What a first dispatch really changes per vehicle.
CHANGED_BY_DISPATCH = {"setpoint", "ack_rate", "dispatch_outcome"}
# Enabled by default: 5 sensors (last ack latency is disabled), plugged in, outcome.
VEHICLE_ENTITIES = 7
FLEET_ENTITIES = 15  # 14 sensors, the ack-rate problem binary sensor


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

        @callback
        def _never(event: Event[Any]) -> None:
            """Never called: the filters return False."""

        self._unsubs = [
            hass.bus.async_listen(EVENT_STATE_CHANGED, _never, event_filter=_changed),
            hass.bus.async_listen(EVENT_STATE_REPORTED, _never, event_filter=_reported),
        ]

    def close(self) -> None:
        """Detach from the bus."""
        while self._unsubs:
            self._unsubs.pop()()

    @property
    def writes(self) -> int:
        """Every write counted."""
        return self.changed.total() + self.reported.total()

    def by_owner(self) -> dict[str, Counter[str]]:
        """Writes per vehicle id (or "fleet"), then per entity key."""
        registry = er.async_get(self.hass)
        result: dict[str, Counter[str]] = defaultdict(Counter)
        for entity_id, count in (self.changed + self.reported).items():
            entry = registry.async_get(entity_id)
            assert entry is not None
            _, owner, key = entry.unique_id.split("_", 2)
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


def _coordinator(hass: HomeAssistant) -> V2GFleetCoordinator:
    entry = hass.config_entries.async_get_entry(ENTRY_ID)
    assert entry is not None
    coordinator: V2GFleetCoordinator = entry.runtime_data
    return coordinator


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


@contextmanager
def calls_per_iteration(
    hass: HomeAssistant, coordinator: V2GFleetCoordinator, method: str
) -> Iterator[dict[int, list[str]]]:
    """The vehicle ids a coordinator method is called with, per loop iteration."""
    seen: dict[int, list[str]] = defaultdict(list)
    original = getattr(coordinator, method)
    with loop_iterations(hass) as iteration:

        def spy(vehicle_id: str, *args: Any) -> Any:
            seen[iteration()].append(vehicle_id)
            return original(vehicle_id, *args)

        with patch.object(coordinator, method, spy):
            yield seen


async def test_vehicle_updates_are_chunked(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass)
    FleetResponder(hass, fleet_mqtt)
    coordinator = _coordinator(hass)
    with (
        patch("custom_components.v2g.coordinator.VEHICLE_UPDATE_CHUNK", 8),
        calls_per_iteration(hass, coordinator, "_update_vehicle") as seen,
    ):
        await _dispatch(hass, DISPATCHED, 50)
        assert not seen  # nothing before the response
        await hass.async_block_till_done()

    chunks = list(seen.values())
    assert sorted(v for chunk in chunks for v in chunk) == DISPATCHED
    assert len(chunks) == 7  # 50 vehicles, 8 per loop iteration
    assert max(len(chunk) for chunk in chunks) == 8


async def test_fleet_snapshot_is_built_in_steps(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    """The snapshot after a dispatch walks the vehicles a chunk per iteration."""
    await _fleet(hass)
    FleetResponder(hass, fleet_mqtt)
    coordinator = _coordinator(hass)
    with (
        patch("custom_components.v2g.engine.steps.STEP_SIZE", 7),
        calls_per_iteration(hass, coordinator, "_vehicle_values_of") as seen,
    ):
        await _dispatch(hass, DISPATCHED, 50)

    chunks = list(seen.values())
    assert sorted(v for chunk in chunks for v in chunk) == VEHICLES
    assert len(chunks) == 9  # 60 vehicles, 7 per loop iteration
    assert max(len(chunk) for chunk in chunks) == 7
    # What a snapshot built at once shows (energy aside: the clock runs).
    at_once = coordinator._build_snapshot()
    assert replace(coordinator.data, vehicles={}) == replace(at_once, vehicles={})
    assert {
        vid: (v.setpoint_kw, v.ack_rate) for vid, v in coordinator.data.vehicles.items()
    } == {vid: (v.setpoint_kw, v.ack_rate) for vid, v in at_once.vehicles.items()}
    assert coordinator.data.vehicles["car001"].setpoint_kw == 1.0
    assert coordinator.data.vehicles["car051"].setpoint_kw == 0.0


async def test_an_older_snapshot_never_replaces_a_newer_one(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    """Two stepped builds overlap: the one begun first may finish last."""
    await _fleet(hass)
    coordinator = _coordinator(hass)
    with patch("custom_components.v2g.engine.steps.STEP_SIZE", 7):
        older = hass.async_create_task(coordinator.async_refresh_now())
        await asyncio.sleep(0)  # it has listed the 60 vehicles
        for vehicle_id in VEHICLES[10:]:
            coordinator.fleet.remove(vehicle_id)
        await coordinator.async_refresh_now()  # 10 vehicles: done first
        assert len(coordinator.data.vehicles) == 10
        await older
    assert len(coordinator.data.vehicles) == 10


async def test_back_to_back_dispatches_fire_every_event(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    """A dispatch finishing while the last one's entities are still being written."""
    await _fleet(hass)
    FleetResponder(hass, fleet_mqtt)
    coordinator = _coordinator(hass)
    with (
        patch("custom_components.v2g.coordinator.VEHICLE_UPDATE_CHUNK", 1),
        count_writes(hass) as counter,
    ):
        await _dispatch(hass, DISPATCHED, 50)
        response = await _dispatch(hass, DISPATCHED, 50)
        # The first walk is not over: the second one's events join it.
        assert coordinator._vehicle_task is not None
        await hass.async_block_till_done()
    writes = counter.by_owner()
    for vehicle_id in DISPATCHED:
        assert writes[vehicle_id]["dispatch_outcome"] == 2
    event = hass.states.get("event.car050_dispatch_outcome")
    assert event.attributes["dispatch_id"] == response["dispatch_id"]
    assert not coordinator._pending_outcomes


async def test_housekeeping_writes_only_displayed_changes(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    entity_registry: er.EntityRegistry,
) -> None:
    # Wall time is stepped by hand and housekeeping run directly: a frozen clock
    # (freezer) also freezes the loop's timers, which could stall the dispatch.
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
    coordinator = hass.config_entries.async_get_entry(ENTRY_ID).runtime_data

    async def housekeeping(seconds: float = 30) -> WriteCounter:
        with count_writes(hass) as counter:
            wall[0] += timedelta(seconds=seconds)
            await coordinator._async_housekeeping()
            await hass.async_block_till_done()
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


async def test_discovery_adds_in_batches_without_rewrites(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass, VEHICLES[:10])
    batches: dict[int, list[int]] = defaultdict(list)
    original = _VehicleEntityAdder._add_batch

    with (
        loop_iterations(hass) as iteration,
        patch("custom_components.v2g.entity.ADD_BATCH_VEHICLES", 20),
        count_writes(hass) as counter,
    ):

        def spy(adder: _VehicleEntityAdder) -> None:
            batches[iteration()].append(len(adder.queue))
            original(adder)

        with patch.object(_VehicleEntityAdder, "_add_batch", spy):
            await async_announce(hass, *[(v, {}) for v in VEHICLES[10:]])

    # 50 new vehicles, 20 at a time, per platform (sensor, binary sensor, event);
    # one batch of each platform per loop iteration at most.
    assert sorted(n for queued in batches.values() for n in queued) == [
        10,
        10,
        10,
        30,
        30,
        30,
        50,
        50,
        50,
    ]
    assert max(len(queued) for queued in batches.values()) <= 3
    assert len(batches) >= 3
    # The vehicles known before got no write; each new entity one (its first).
    writes = counter.by_owner()
    assert not set(writes) & set(VEHICLES[:10])
    assert set(writes) - {"fleet"} == set(VEHICLES[10:])
    assert all(n == 1 for owner in writes.values() for n in owner.values())
    assert hass.states.get("event.car060_dispatch_outcome") is not None


async def test_adder_skips_removed_vehicles_and_stops_on_unload(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass, VEHICLES[:4])
    entry = hass.config_entries.async_get_entry(ENTRY_ID)
    assert isinstance(entry, MockConfigEntry)
    coordinator = _coordinator(hass)
    add = MagicMock()

    with patch("custom_components.v2g.entity.ADD_BATCH_VEHICLES", 1):
        adder = _VehicleEntityAdder(entry, add, lambda vehicle_id: [vehicle_id])
        adder.async_add_new()
        assert add.call_count == 1  # the first batch right away
        # car002 leaves before its batch: skipped, and new again if it returns.
        full = coordinator.data
        coordinator.data = replace(
            full, vehicles={k: v for k, v in full.vehicles.items() if k != "car002"}
        )
        await hass.async_block_till_done()
        assert [c.args[0] for c in add.call_args_list] == [
            ["car001"],
            ["car003"],
            ["car004"],
        ]
        assert "car002" not in adder.known
        coordinator.data = full
        adder.async_add_new()
        assert add.call_args.args[0] == ["car002"]

        # Unloading stops the batches.
        add.reset_mock()
        coordinator.data = replace(
            full, vehicles={**full.vehicles, "car009": full.vehicles["car001"]}
        )
        adder.known.clear()
        adder.async_add_new()
        assert add.call_count == 1
        adder.async_cancel()
        await hass.async_block_till_done()
        assert add.call_count == 1
        assert not adder.queue
        coordinator.data = full

    assert await hass.config_entries.async_unload(ENTRY_ID)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.NOT_LOADED


async def test_unload_cancels_pending_vehicle_updates(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass)
    FleetResponder(hass, fleet_mqtt)
    coordinator = _coordinator(hass)
    with patch("custom_components.v2g.coordinator.VEHICLE_UPDATE_CHUNK", 1):
        await _dispatch(hass, DISPATCHED, 50)
        assert coordinator._vehicle_task is not None
        assert await hass.config_entries.async_unload(ENTRY_ID)
        await hass.async_block_till_done()
    assert coordinator._vehicle_task is None
    assert not coordinator._pending_vehicles
    assert not coordinator._pending_outcomes
    assert coordinator._vehicle_listeners == {}


async def test_failing_vehicle_listener_does_not_stop_the_others(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _fleet(hass, VEHICLES[:3])
    FleetResponder(hass, fleet_mqtt)
    coordinator = _coordinator(hass)

    def broken() -> None:
        raise RuntimeError("boom")

    remove = coordinator.async_add_vehicle_listener("car001", broken)
    with caplog.at_level(logging.ERROR):
        await _dispatch(hass, VEHICLES[:3], 3)
        await hass.async_block_till_done()
    assert "Error updating the entities of vehicle car001" in caplog.text
    assert hass.states.get("sensor.car002_setpoint").state == "1.0"
    remove()
    remove()  # twice is harmless
    assert coordinator._vehicle_listeners["car001"]  # the entities' own remain


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
