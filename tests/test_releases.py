"""Release at the end and revoke before re-allocating, through Home Assistant.

Driven from outside: the dispatch action, MQTT answers, time, the dispatch log,
entity states and a reload of the entry (a restart of Home Assistant).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from freezegun.api import FrozenDateTimeFactory
from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.common import async_fire_time_changed
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.v2g.const import CONF_ACK_TIMEOUT, CONF_RELEASE_AT_END, DOMAIN

from .helpers import (
    ENTRY_ID,
    FleetResponder,
    async_announce,
    async_dispatch,
    async_dispatch_log,
    async_setup_fleet,
    flush_subscriptions,
)

FAST = {CONF_ACK_TIMEOUT: 1.0}


async def _fleet(hass: HomeAssistant, **options: Any) -> None:
    await async_setup_fleet(hass, options={**FAST, **options})
    await async_announce(hass, ("v1", {}), ("v2", {}))


async def _advance(
    hass: HomeAssistant, freezer: FrozenDateTimeFactory, seconds: float
) -> None:
    freezer.tick(timedelta(seconds=seconds))
    async_fire_time_changed(hass, dt_util.utcnow())
    # Releases run as a background task of the entry.
    await hass.async_block_till_done(wait_background_tasks=True)
    await hass.async_block_till_done(wait_background_tasks=True)


async def _tick_until(
    hass: HomeAssistant,
    freezer: FrozenDateTimeFactory,
    seconds: float,
    sent: Callable[[], bool],
) -> None:
    """Advance time; wait until a release was sent (it then waits for its acks)."""
    freezer.tick(timedelta(seconds=seconds))
    async_fire_time_changed(hass, dt_util.utcnow())
    for _ in range(200):
        if sent():
            break
        await asyncio.sleep(0)
    else:
        raise AssertionError("no release was sent")
    # Let the round set its ack deadline (after its publish call returned).
    for _ in range(20):
        await asyncio.sleep(0)


def _setpoint(hass: HomeAssistant, vehicle_id: str) -> str:
    entity_id = er.async_get(hass).async_get_entity_id(
        "sensor", DOMAIN, f"{ENTRY_ID}_{vehicle_id}_setpoint"
    )
    assert entity_id is not None
    state = hass.states.get(entity_id)
    assert state is not None
    return state.state


async def test_vehicles_are_released_when_the_dispatch_ends(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, freezer: FrozenDateTimeFactory
) -> None:
    await _fleet(hass)
    responder = FleetResponder(hass, fleet_mqtt)
    response = await async_dispatch(
        hass, signal_type="aFRR", power_kw=10, duration={"seconds": 10}
    )
    await hass.async_block_till_done()
    assert _setpoint(hass, "v1") == "5.0"
    assert len(responder.orders) == 2

    await _advance(hass, freezer, 5)
    assert len(responder.orders) == 2  # not before the end

    await _advance(hass, freezer, 6)
    releases = responder.orders[2:]
    assert sorted(o["vehicle_id"] for o in releases) == ["v1", "v2"]
    for order in releases:
        assert order["power_kw"] == 0.0
        assert order["dispatch_id"] == response["dispatch_id"]
        assert order["signal_type"] == "aFRR"
    assert _setpoint(hass, "v1") == "0.0"
    (entry,) = await async_dispatch_log(hass)
    assert entry["released"]["vehicles"] == {"v1": "acknowledged", "v2": "acknowledged"}

    await _advance(hass, freezer, 60)
    assert len(responder.orders) == 4  # released once


async def test_newer_order_is_not_released(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, freezer: FrozenDateTimeFactory
) -> None:
    await _fleet(hass)
    responder = FleetResponder(hass, fleet_mqtt)
    await async_dispatch(
        hass, signal_type="aFRR", power_kw=10, duration={"seconds": 10}
    )
    await async_dispatch(
        hass,
        signal_type="FCR",
        power_kw=4,
        duration={"minutes": 15},
        vehicles=["v1"],
    )
    await _advance(hass, freezer, 11)
    releases = responder.orders[3:]
    assert [(o["vehicle_id"], o["power_kw"]) for o in releases] == [("v2", 0.0)]
    assert _setpoint(hass, "v1") == "4.0"


async def test_unanswered_release_is_tried_again_then_given_up(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    freezer: FrozenDateTimeFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _fleet(hass)
    responder = FleetResponder(hass, fleet_mqtt)
    await async_dispatch(
        hass, signal_type="aFRR", power_kw=10, duration={"seconds": 10}
    )
    responder.behaviours["v2"] = "ignore"

    def releases_to_v2() -> int:
        return len([o for o in responder.orders_for("v2") if o["power_kw"] == 0.0])

    await _tick_until(hass, freezer, 11, lambda: releases_to_v2() == 1)
    await _advance(hass, freezer, 1.5)  # the release's ack timeout
    for attempt in (2, 3):
        await _advance(hass, freezer, 20)
        assert releases_to_v2() == attempt - 1  # 30 s between two attempts
        await _tick_until(hass, freezer, 11, lambda n=attempt: releases_to_v2() == n)
        await _advance(hass, freezer, 1.5)
    await _advance(hass, freezer, 60)
    assert releases_to_v2() == 3  # given up
    assert len([o for o in responder.orders_for("v1") if o["power_kw"] == 0.0]) == 1
    assert "did not acknowledge the end of dispatch" in caplog.text
    (entry,) = await async_dispatch_log(hass)
    assert entry["released"]["vehicles"] == {"v1": "acknowledged", "v2": "timeout"}


async def test_release_option_off_sends_nothing(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, freezer: FrozenDateTimeFactory
) -> None:
    await _fleet(hass, **{CONF_RELEASE_AT_END: False})
    responder = FleetResponder(hass, fleet_mqtt)
    await async_dispatch(
        hass, signal_type="aFRR", power_kw=10, duration={"seconds": 10}
    )
    await _advance(hass, freezer, 11)
    assert len(responder.orders) == 2
    (entry,) = await async_dispatch_log(hass)
    assert "released" not in entry


async def test_setpoints_that_ended_while_stopped_are_released_at_start(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, freezer: FrozenDateTimeFactory
) -> None:
    await _fleet(hass)
    responder = FleetResponder(hass, fleet_mqtt)
    response = await async_dispatch(
        hass, signal_type="aFRR", power_kw=10, duration={"seconds": 10}
    )
    assert await hass.config_entries.async_unload(ENTRY_ID)
    await hass.async_block_till_done()
    freezer.tick(timedelta(minutes=5))  # Home Assistant is down past the end
    assert len(responder.orders) == 2

    assert await hass.config_entries.async_setup(ENTRY_ID)
    await hass.async_block_till_done()
    await flush_subscriptions(hass)
    await hass.async_block_till_done(wait_background_tasks=True)
    releases = responder.orders[2:]
    assert sorted(o["vehicle_id"] for o in releases) == ["v1", "v2"]
    assert {o["dispatch_id"] for o in releases} == {response["dispatch_id"]}
    assert {o["power_kw"] for o in releases} == {0.0}


async def test_timed_out_order_is_revoked_before_fallback(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> None:
    await _fleet(hass)
    await async_announce(hass, ("v3", {}))
    # v1 applies its orders but its acks are lost; it acknowledges 0 kW.
    responder = FleetResponder(
        hass,
        fleet_mqtt,
        {"v1": lambda order: "ack" if order["power_kw"] == 0.0 else "ignore"},
    )
    response = await async_dispatch(
        hass, signal_type="aFRR", power_kw=15, strategy="equal"
    )
    await hass.async_block_till_done()
    assert response["vehicles"]["v1"]["status"] == "timeout"
    to_v1 = responder.orders_for("v1")
    assert [o["power_kw"] for o in to_v1] == [5.0, 0.0]
    revoke = to_v1[1]
    assert revoke["dispatch_id"] == response["dispatch_id"]
    # The revoke left before the fallback round's orders.
    order_ids = [o["command_id"] for o in responder.orders]
    fallback_ids = [v["command_id"] for v in response["fallback"].values()]
    assert order_ids.index(revoke["command_id"]) < min(
        order_ids.index(cid) for cid in fallback_ids
    )
    assert response["revoked"]["v1"]["command_id"] == revoke["command_id"]
    assert _setpoint(hass, "v1") == "0.0"
