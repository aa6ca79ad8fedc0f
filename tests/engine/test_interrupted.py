"""An interrupted dispatch keeps what its vehicles answered (issue 6, restart).

`DispatchEngine.record_interrupted` closes a stored in-flight record after a stop
of Home Assistant: acknowledged orders keep their setpoints, ack statistics and
participation in the fleet; rejections count; orders that were still waiting are
reported as `timeout` but teach the fleet nothing (the stop cut them short).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
import json

import pytest

from custom_components.v2g.engine import (
    DispatchRequest,
    DispatchSettings,
    FleetState,
    OrderStatus,
)

from .fakes import START, Rule, make_signal, make_vehicle
from .test_dispatch import Harness, assert_design_shape


async def _record_in_flight() -> dict[str, object]:
    """A dispatch cut short: v1 acknowledged, v2 rejected, v3 still waiting."""
    harness = Harness(
        [make_vehicle("v1"), make_vehicle("v2"), make_vehicle("v3")],
        {
            "v2": Rule(action="reject", reason="too hot"),
            "v3": Rule(action="silent"),
        },
    )
    request = DispatchRequest(signal=make_signal(-15.0), dispatch_id="d-cut")
    task = asyncio.ensure_future(harness.engine.dispatch(request))
    for _ in range(20):
        await asyncio.sleep(0)
    harness.runtime.fire_next()  # the v1 and v2 answers arrive
    for _ in range(20):
        await asyncio.sleep(0)
    [record] = harness.engine.pending_dispatches()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Stored as JSON, read back after the restart.
    return dict(json.loads(json.dumps(record)))


async def test_restart_keeps_the_acknowledged_setpoints() -> None:
    record = await _record_in_flight()
    assert {k: v["status"] for k, v in record["vehicles"].items()} == {  # type: ignore[attr-defined]
        "v1": "acknowledged",
        "v2": "rejected",
        "v3": "pending",
    }
    # A new process: a fleet restored with an older setpoint for v1.
    restarted = Harness(
        [make_vehicle("v1"), make_vehicle("v2"), make_vehicle("v3")],
        settings=DispatchSettings(),
    )
    fleet: FleetState = restarted.fleet
    fleet.record_outcome(
        "v1", OrderStatus.ACKNOWLEDGED, 4.0, 5.0, START - timedelta(hours=1)
    )
    completed = START + timedelta(seconds=3)

    response = restarted.engine.record_interrupted(record, completed)

    assert_design_shape(response)
    assert response["status"] == "interrupted"
    statuses = {k: v["status"] for k, v in response["vehicles"].items()}
    assert statuses == {"v1": "acknowledged", "v2": "rejected", "v3": "timeout"}
    assert response["acknowledged_kw"] == pytest.approx(-5.0)
    # The acknowledged setpoint replaces the older one, until the order expires.
    assert fleet.setpoints == {"v1": pytest.approx(-5.0)}
    setpoint = fleet.setpoint("v1")
    assert setpoint is not None
    assert setpoint.expires_at == START + timedelta(seconds=900)
    assert fleet.stats["v1"].acknowledged == 2
    assert fleet.stats["v1"].last_latency_ms == response["vehicles"]["v1"]["latency_ms"]
    assert fleet.participation["v1"] == 1
    # The rejection is learnt; the order cut short is not held against v3.
    assert fleet.stats["v2"].rejected == 1
    assert "v3" not in fleet.stats
    assert fleet.reliability("v3") == 1.0


async def test_order_ttl_option_sets_the_kept_setpoints_expiry() -> None:
    record = await _record_in_flight()
    restarted = Harness([make_vehicle("v1")], settings=DispatchSettings(order_ttl_s=60))
    restarted.engine.record_interrupted(record, START + timedelta(seconds=3))
    setpoint = restarted.fleet.setpoint("v1")
    assert setpoint is not None
    assert setpoint.expires_at == START + timedelta(seconds=60)
    # Vehicles the fleet no longer knows are skipped.
    assert set(restarted.fleet.stats) == {"v1"}


async def test_malformed_record_raises() -> None:
    harness = Harness([make_vehicle("v1")])
    with pytest.raises(KeyError):
        harness.engine.record_interrupted({"dispatch_id": "x"}, START)
