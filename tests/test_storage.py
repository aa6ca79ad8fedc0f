"""Stores: fleet state, bounded dispatch log with filters, in-flight markers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
import threading
from typing import Any

from freezegun.api import FrozenDateTimeFactory
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import async_fire_time_changed

from custom_components.v2g.engine import Steps
from custom_components.v2g.storage import DispatchLogStore, FleetStore, InFlightStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _entry(
    dispatch_id: str,
    signal_type: str,
    started: datetime,
    vehicles: dict[str, Any] | None = None,
    fallback: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "dispatch_id": dispatch_id,
        "status": "completed",
        "signal": {"type": signal_type, "power_kw": 10.0},
        "vehicles": vehicles or {},
        "fallback": fallback or {},
        "started_at": started.isoformat(),
    }


async def test_log_query_filters(hass: HomeAssistant) -> None:
    log = DispatchLogStore(hass, "e1")
    await log.async_load()
    types = ["FCR", "aFRR", "MA", "NEBEF", "EcoWatt"]
    for index, kind in enumerate(types):
        log.append(
            _entry(
                f"d{index}",
                kind,
                T0 + timedelta(minutes=index),
                vehicles={f"v{index}": {"power_kw": 1.0}},
                fallback={"vx": {"power_kw": 1.0}} if index == 4 else None,
            )
        )
    assert len(log) == 5
    # Every signal type can be filtered, case-insensitively.
    for index, kind in enumerate(types):
        assert [e["dispatch_id"] for e in log.query(signal_type=kind)] == [f"d{index}"]
    assert [e["dispatch_id"] for e in log.query(signal_type="afrr")] == ["d1"]
    # Time bounds are inclusive.
    got = log.query(start=T0 + timedelta(minutes=1), end=T0 + timedelta(minutes=3))
    assert [e["dispatch_id"] for e in got] == ["d1", "d2", "d3"]
    # Vehicles of both rounds match.
    assert [e["dispatch_id"] for e in log.query(vehicle_id="v2")] == ["d2"]
    assert [e["dispatch_id"] for e in log.query(vehicle_id="vx")] == ["d4"]
    assert log.query(vehicle_id="nobody") == []
    assert [e["dispatch_id"] for e in log.latest(2)] == ["d3", "d4"]
    assert log.latest(0) == []
    # An entry without a start time does not match a time filter.
    log.append({"dispatch_id": "broken", "signal": "FCR"})
    assert len(log.query(start=T0)) == 5
    assert len(log.query(signal_type="FCR")) == 1


async def test_log_is_bounded_and_persisted(
    hass: HomeAssistant, hass_storage: dict[str, Any], freezer: FrozenDateTimeFactory
) -> None:
    log = DispatchLogStore(hass, "e1", max_entries=3)
    await log.async_load()
    for index in range(5):
        log.append(_entry(f"d{index}", "FCR", T0 + timedelta(minutes=index)))
    assert [e["dispatch_id"] for e in log.query()] == ["d2", "d3", "d4"]
    freezer.tick(timedelta(seconds=2))
    async_fire_time_changed(hass)
    await hass.async_block_till_done()
    saved = hass_storage["v2g.e1.dispatch_log"]["data"]["entries"]
    assert [e["dispatch_id"] for e in saved] == ["d2", "d3", "d4"]

    again = DispatchLogStore(hass, "e1", max_entries=3)
    await again.async_load()
    assert [e["dispatch_id"] for e in again.query()] == ["d2", "d3", "d4"]
    await again.async_flush()  # nothing pending: no write
    again.append(_entry("d5", "MA", T0))
    await again.async_flush()
    assert len(hass_storage["v2g.e1.dispatch_log"]["data"]["entries"]) == 3
    await again.async_remove()
    assert "v2g.e1.dispatch_log" not in hass_storage


async def test_log_is_bounded_by_the_orders_it_holds(
    hass: HomeAssistant, hass_storage: dict[str, Any]
) -> None:
    """Big dispatches push old ones out sooner; memory and file size stay bounded."""

    def big(dispatch_id: str, count: int) -> dict[str, Any]:
        orders = {f"v{i}": {"power_kw": 1.0} for i in range(count)}
        return _entry(
            dispatch_id, "aFRR", T0, vehicles=orders, fallback={"v0": {"power_kw": 2}}
        )

    log = DispatchLogStore(hass, "e1", max_entries=100, max_orders=10)
    await log.async_load()
    for index in range(4):
        log.append(big(f"d{index}", 3))  # 4 orders each
    assert [e["dispatch_id"] for e in log.query()] == ["d2", "d3"]
    # An entry bigger than the whole budget is still kept (alone).
    log.append(big("huge", 20))
    assert [e["dispatch_id"] for e in log.query()] == ["huge"]
    log.append(_entry("small", "FCR", T0, vehicles={"a": {}}))
    assert [e["dispatch_id"] for e in log.query()] == ["small"]
    log.append(_entry("bare", "FCR", T0))
    await log.async_flush()

    # Loading applies the bounds too.
    hass_storage["v2g.e1.dispatch_log"]["data"]["entries"] = [
        big(f"s{index}", 1) for index in range(6)
    ]
    again = DispatchLogStore(hass, "e1", max_entries=100, max_orders=5)
    await again.async_load()
    assert [e["dispatch_id"] for e in again.query()] == ["s4", "s5"]


async def test_fleet_store_debounce_and_flush(
    hass: HomeAssistant, hass_storage: dict[str, Any]
) -> None:
    store = FleetStore(hass, "e1")
    assert await store.async_load() is None
    await store.async_flush()  # nothing scheduled
    store.async_schedule_save(lambda: _steps({"fleet": {"v1": 1}}))
    assert "v2g.e1.fleet" not in hass_storage
    await store.async_flush()
    assert hass_storage["v2g.e1.fleet"]["data"] == {"fleet": {"v1": 1}}
    await store.async_flush()  # nothing new: no second write
    assert await FleetStore(hass, "e1").async_load() == {"fleet": {"v1": 1}}
    await store.async_remove()
    assert "v2g.e1.fleet" not in hass_storage


def _steps(data: dict[str, Any], steps: int = 1) -> Steps[dict[str, Any]]:
    for _ in range(steps):
        yield
    return data


async def test_fleet_store_builds_on_the_loop_for_the_writer_thread(
    hass: HomeAssistant,
) -> None:
    """The Store's writer thread gets data built on the loop, in steps."""
    store = FleetStore(hass, "e1")
    built_in: list[int] = []
    ticks: list[int] = []

    def build() -> Steps[dict[str, Any]]:
        for step in range(3):
            built_in.append(threading.get_ident())
            # The loop ran something else since the previous step.
            hass.loop.call_soon(ticks.append, step)
            yield
        assert ticks == [0, 1, 2]
        return {"fleet": "built"}

    store.async_schedule_save(build)
    data = await hass.async_add_executor_job(store._data)
    assert data == {"fleet": "built"}
    assert set(built_in) == {hass.loop_thread_id}
    # Called on the loop (the test suite's mocked storage does), it runs at once.
    store.async_schedule_save(lambda: _steps({"fleet": "now"}, 3))
    assert store._data() == {"fleet": "now"}
    await store.async_remove()


async def test_in_flight_marker_lifecycle(
    hass: HomeAssistant,
    hass_storage: dict[str, Any],
    freezer: FrozenDateTimeFactory,
) -> None:
    store = InFlightStore(hass, "e1")
    assert await store.async_take() == []
    store.mark("d1", {"dispatch_id": "d1", "started_at": T0.isoformat()})
    # Held in memory; written with its orders before the first publish.
    assert "v2g.e1.in_flight" not in hass_storage
    await store.async_save(
        [{"dispatch_id": "d1", "vehicles": {"v1": {"power_kw": 5.0}}}]
    )
    saved = hass_storage["v2g.e1.in_flight"]["data"]["dispatches"]
    assert saved["d1"]["vehicles"] == {"v1": {"power_kw": 5.0}}
    store.async_update(
        [
            {"dispatch_id": "d1", "vehicles": {"v1": {"power_kw": 6.0}}},
            {"dispatch_id": "unknown"},
        ]
    )
    assert store.running[0]["vehicles"] == {"v1": {"power_kw": 6.0}}
    store.clear("d1")
    store.clear("d1")
    assert store.running == []
    # The clear is written with the dispatch log's delay, not at once.
    assert "d1" in hass_storage["v2g.e1.in_flight"]["data"]["dispatches"]
    freezer.tick(timedelta(seconds=2))
    async_fire_time_changed(hass)
    await hass.async_block_till_done()
    assert hass_storage["v2g.e1.in_flight"]["data"]["dispatches"] == {}
    await store.async_flush()  # nothing pending

    store.mark("d2", {"dispatch_id": "d2"})
    await store.async_save([])
    # A new run finds the marker once.
    again = InFlightStore(hass, "e1")
    assert await again.async_take() == [{"dispatch_id": "d2"}]
    assert await InFlightStore(hass, "e1").async_take() == []
    await again.async_remove()


async def test_in_flight_clear_is_flushed_on_unload(
    hass: HomeAssistant, hass_storage: dict[str, Any]
) -> None:
    store = InFlightStore(hass, "e1")
    store.mark("d1", {"dispatch_id": "d1"})
    await store.async_save([])
    store.clear("d1")
    await store.async_flush()
    assert hass_storage["v2g.e1.in_flight"]["data"]["dispatches"] == {}
