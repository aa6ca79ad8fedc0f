"""Real mosquitto + Home Assistant's real MQTT client + the simulator as the fleet."""

from __future__ import annotations

from collections.abc import Callable
import time
from typing import Any

from homeassistant.const import STATE_UNAVAILABLE
from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.common import async_fire_time_changed

from custom_components.v2g.const import DOMAIN
from simulator import FleetSimulator

pytestmark = pytest.mark.e2e


async def discover(hass: HomeAssistant, entry_id: str) -> list[dict[str, Any]]:
    """Run the discover action and return the vehicles that answered."""
    response = await hass.services.async_call(
        DOMAIN,
        "discover",
        {"config_entry_id": entry_id},
        blocking=True,
        return_response=True,
    )
    assert response is not None
    vehicles: list[dict[str, Any]] = list(response["vehicles"])  # type: ignore[arg-type]
    await hass.async_block_till_done()
    return vehicles


async def dispatch(hass: HomeAssistant, entry_id: str, **data: Any) -> dict[str, Any]:
    """Run the dispatch action and return its response."""
    response = await hass.services.async_call(
        DOMAIN,
        "dispatch",
        {"config_entry_id": entry_id, "duration": {"minutes": 15}, **data},
        blocking=True,
        return_response=True,
    )
    assert response is not None
    await hass.async_block_till_done()
    return dict(response)


def entity_id(hass: HomeAssistant, entry_id: str, owner: str, key: str) -> str:
    """Entity id of a fleet (owner "fleet") or vehicle entity by description key."""
    found = er.async_get(hass).async_get_entity_id(
        "sensor", DOMAIN, f"{entry_id}_{owner}_{key}"
    ) or er.async_get(hass).async_get_entity_id(
        "binary_sensor", DOMAIN, f"{entry_id}_{owner}_{key}"
    )
    assert found is not None, f"no entity for {owner} {key}"
    return found


async def test_discovery_dispatch_acks_and_entity_states(
    hass: HomeAssistant,
    make_fleet: Callable[..., FleetSimulator],
    make_v2g_entry: Callable[..., Any],
) -> None:
    sim = make_fleet(count=4, connection="per-vehicle")
    entry = await make_v2g_entry()

    vehicles = await discover(hass, entry.entry_id)
    assert sorted(v["vehicle_id"] for v in vehicles) == sim.vehicle_ids

    response = await dispatch(hass, entry.entry_id, signal_type="aFRR", power_kw=20)
    assert response["status"] == "completed"
    assert response["ack_rate"] == 1.0
    assert response["acknowledged_kw"] == pytest.approx(20.0)
    assert set(response["vehicles"]) == set(sim.vehicle_ids)
    assert all(
        order["status"] == "acknowledged" and order["latency_ms"] > 0
        for order in response["vehicles"].values()
    )
    # The vehicles really applied the orders they acknowledged.
    for vehicle_id, order in response["vehicles"].items():
        assert sim.vehicle(vehicle_id)["power_kw"] == pytest.approx(order["power_kw"])
    assert sim.stats()["orders_acked"] == 4

    states = hass.states
    fleet_status = states.get(
        entity_id(hass, entry.entry_id, "fleet", "last_dispatch_status")
    )
    assert fleet_status is not None and fleet_status.state == "completed"
    last_rate = states.get(entity_id(hass, entry.entry_id, "fleet", "last_ack_rate"))
    assert last_rate is not None and float(last_rate.state) == pytest.approx(100.0)
    first = sim.vehicle_ids[0]
    setpoint = states.get(entity_id(hass, entry.entry_id, first, "setpoint"))
    assert setpoint is not None
    assert float(setpoint.state) == pytest.approx(
        response["vehicles"][first]["power_kw"]
    )


async def test_dropped_acks_give_partial_with_a_real_fallback_round(
    hass: HomeAssistant,
    make_fleet: Callable[..., FleetSimulator],
    make_v2g_entry: Callable[..., Any],
) -> None:
    reliable = make_fleet(count=2, id_prefix="ok", connection="shared")
    silent = make_fleet(count=2, id_prefix="mute", connection="shared", drop_rate=1.0)
    entry = await make_v2g_entry(ack_timeout=1.0)
    await discover(hass, entry.entry_id)

    # 4 vehicles x 10 kW; the two silent ones never acknowledge.
    response = await dispatch(hass, entry.entry_id, signal_type="aFRR", power_kw=30)

    assert response["status"] == "partial"
    for vehicle_id in silent.vehicle_ids:
        assert response["vehicles"][vehicle_id]["status"] == "timeout"
    # The fallback round was published on the broker and acknowledged.
    assert response["fallback"], response
    assert set(response["fallback"]) <= set(reliable.vehicle_ids)
    assert all(o["status"] == "acknowledged" for o in response["fallback"].values())
    first_round = len(response["vehicles"])
    assert reliable.stats()["orders_received"] == 2 + len(response["fallback"])
    # Their orders timed out: each was revoked (0 kW) before the fallback round,
    # and they drop the revokes as well.
    assert set(response["revoked"]) == set(silent.vehicle_ids)
    assert silent.stats()["orders_dropped"] == 4
    assert 0 < response["acknowledged_kw"] < 30
    published = first_round + len(response["fallback"])
    acked = 2 + len(response["fallback"])
    assert response["ack_rate"] == pytest.approx(acked / published)
    for vehicle_id, order in response["fallback"].items():
        assert reliable.vehicle(vehicle_id)["power_kw"] == pytest.approx(
            order["power_kw"]
        )


async def test_rejections_carry_the_vehicles_reason(
    hass: HomeAssistant,
    make_fleet: Callable[..., FleetSimulator],
    make_v2g_entry: Callable[..., Any],
) -> None:
    sim = make_fleet(count=2, connection="shared")
    entry = await make_v2g_entry(fallback="none")
    await discover(hass, entry.entry_id)
    unplugged = sim.vehicle_ids[0]
    # Unplugged after discovery: the integration still believes it is available.
    sim.set_available(unplugged, False)

    response = await dispatch(hass, entry.entry_id, signal_type="aFRR", power_kw=10)

    assert response["status"] == "partial"
    rejected = response["vehicles"][unplugged]
    assert rejected["status"] == "rejected"
    assert rejected["reason"] == "unavailable"
    other = response["vehicles"][sim.vehicle_ids[1]]
    assert other["status"] == "acknowledged"


async def test_disconnected_vehicle_becomes_unavailable_and_is_excluded(
    hass: HomeAssistant,
    make_fleet: Callable[..., FleetSimulator],
    make_v2g_entry: Callable[..., Any],
) -> None:
    sim = make_fleet(
        count=3,
        connection="per-vehicle",
        telemetry_push=True,
        telemetry_interval=0.2,
    )
    entry = await make_v2g_entry(stale_timeout=1.0)
    await discover(hass, entry.entry_id)
    gone, *staying = sim.vehicle_ids
    soc_entity = entity_id(hass, entry.entry_id, gone, "state_of_charge")

    sim.set_offline(gone)
    # Let the stale timeout pass while the others keep sending telemetry.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        await hass.async_block_till_done()
        await _sleep(0.1)
    async_fire_time_changed(hass, dt_util.utcnow() + dt_util.dt.timedelta(seconds=31))
    await hass.async_block_till_done()

    state = hass.states.get(soc_entity)
    assert state is not None and state.state == STATE_UNAVAILABLE
    for vehicle_id in staying:
        alive = hass.states.get(
            entity_id(hass, entry.entry_id, vehicle_id, "state_of_charge")
        )
        assert alive is not None and alive.state != STATE_UNAVAILABLE

    response = await dispatch(hass, entry.entry_id, signal_type="aFRR", power_kw=10)
    assert response["excluded"].get(gone) == "unavailable"
    assert gone not in response["vehicles"]
    assert response["status"] == "completed"
    assert set(response["vehicles"]) == set(staying)


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


async def test_gateway_mode_batches_orders_and_acks(
    hass: HomeAssistant,
    make_fleet: Callable[..., FleetSimulator],
    make_v2g_entry: Callable[..., Any],
) -> None:
    """Vehicles behind depot gateways get one batch per gateway and answer in batches."""
    depot = make_fleet(count=6, connection="shared", gateway_size=3, id_prefix="bus")
    loose = make_fleet(count=2, connection="shared", id_prefix="car")
    entry = await make_v2g_entry()
    vehicles = await discover(hass, entry.entry_id)
    gateways = {v["vehicle_id"]: v.get("gateway") for v in vehicles}
    assert {gateways[vid] for vid in depot.vehicle_ids} == set(depot.gateway_ids)
    assert all(gateways[vid] is None for vid in loose.vehicle_ids)

    response = await dispatch(hass, entry.entry_id, signal_type="aFRR", power_kw=40)

    assert response["status"] == "completed"
    assert set(response["vehicles"]) == {*depot.vehicle_ids, *loose.vehicle_ids}
    assert response["ack_rate"] == 1.0
    stats = depot.stats()
    # One commands message per gateway, all orders acknowledged through batches.
    assert stats["gateway_batches"] == len(depot.gateway_ids) == 2
    assert stats["orders_acked"] == 6
    assert stats["gateway_ack_messages"] >= 2
    assert loose.stats()["orders_acked"] == 2
    for vehicle_id in depot.vehicle_ids:
        assert depot.vehicle(vehicle_id)["power_kw"] == pytest.approx(
            response["vehicles"][vehicle_id]["power_kw"]
        )
