"""Home Assistant stopped in the middle of a dispatch, then started again (issue 6).

A real ``hass`` process (devtools/hass_instance.py), a real mosquitto and the
simulator. Half the fleet acknowledges at once, the other half is slow; hass gets
SIGTERM while the dispatch waits for the slow acks (a long ack timeout). On the
next start, on the same config folder, the dispatch log holds that dispatch as
``interrupted`` with what was known — the acks received before the stop kept as
acknowledged, the rest reported as ``timeout`` — and the earlier dispatch, the
discovered fleet and the acknowledged setpoints are all still there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import contextlib
import os
from pathlib import Path
import signal
from typing import Any

import pytest

from devtools.hass_instance import HassError, HassInstance
from simulator import FleetSimulator
from tests.mqtt_broker import MosquittoBroker

pytestmark = pytest.mark.e2e


async def _diagnostics(hass: HassInstance, entry_id: str) -> dict[str, Any]:
    data = await hass.rest("GET", f"/api/diagnostics/config_entry/{entry_id}")
    return dict(data["data"])


async def _wait_loaded(hass: HassInstance, timeout: float = 30.0) -> str:
    """Wait until the v2g entry is loaded (after an options reload); its id."""
    for _ in range(int(timeout / 0.2)):
        entries = await hass.entries("v2g")
        if entries and entries[0]["state"] == "loaded":
            return str(entries[0]["entry_id"])
        await asyncio.sleep(0.2)
    raise HassError(f"v2g entry not loaded: {entries}")


async def _sigterm(hass: HassInstance) -> None:
    """Stop hass the way a service manager does: SIGTERM, wait for the exit."""
    process = hass._process
    assert process is not None and hass.pid is not None
    os.killpg(hass.pid, signal.SIGTERM)
    await asyncio.to_thread(process.wait, 60)
    await hass.stop()  # closes the client session (the process is gone)


async def test_stop_during_a_dispatch_is_logged_as_interrupted(
    broker: MosquittoBroker,
    make_fleet: Callable[..., FleetSimulator],
    tmp_path: Path,
) -> None:
    fast = make_fleet(count=2, id_prefix="fast", connection="shared")
    slow = make_fleet(count=2, id_prefix="slow", connection="shared", ack_latency=120)
    hass = HassInstance(tmp_path / "config")
    hass.prepare()
    dispatch_call: asyncio.Task[Any] | None = None
    try:
        await hass.start()
        await hass.ensure_mqtt_entry(broker.port)
        entry = await hass.ensure_v2g_entry(name="Depot")
        entry_id = str(entry["entry_id"])
        await hass.set_options(entry_id, ack_timeout=120, fallback="none")
        entry_id = await _wait_loaded(hass)
        found = await hass.call_service(
            "v2g", "discover", {"config_entry_id": entry_id}, return_response=True
        )
        vehicles = sorted(v["vehicle_id"] for v in found["vehicles"])
        assert vehicles == sorted(fast.vehicle_ids + slow.vehicle_ids)

        earlier = await hass.call_service(
            "v2g",
            "dispatch",
            {
                "config_entry_id": entry_id,
                "signal_type": "FCR",
                "power_kw": 8,
                "vehicles": fast.vehicle_ids,
                "strategy": "equal",
            },
            return_response=True,
        )
        assert earlier["status"] == "completed"

        # The dispatch that will be cut short: fast vehicles ack at once, slow
        # ones would answer in 2 minutes. The call waits on its own websocket.
        dispatch_call = asyncio.create_task(
            hass.call_service(
                "v2g",
                "dispatch",
                {
                    "config_entry_id": entry_id,
                    "signal_type": "aFRR",
                    "power_kw": -12,
                    "strategy": "equal",
                    "duration": {"minutes": 30},
                },
                return_response=True,
            )
        )
        # Wait (over REST) until hass has processed the fast acks and still waits.
        in_flight: list[dict[str, Any]] = []
        for _ in range(150):
            in_flight = (await _diagnostics(hass, entry_id))["in_flight"]
            if in_flight and all(
                in_flight[0]["vehicles"].get(vid, {}).get("status") == "acknowledged"
                for vid in fast.vehicle_ids
            ):
                break
            await asyncio.sleep(0.1)
        [running] = in_flight
        assert running["phase"] == "waiting"
        assert {running["vehicles"][v]["status"] for v in slow.vehicle_ids} == {
            "pending"
        }
        assert slow.stats()["orders_received"] == 2
        acked_before_stop = {vid: running["vehicles"][vid] for vid in fast.vehicle_ids}

        await _sigterm(hass)
        with contextlib.suppress(HassError, ConnectionError, Exception):
            await dispatch_call  # its websocket died with hass
        dispatch_call = None

        # Start again on the same config folder.
        await hass.start()
        entry_id = await _wait_loaded(hass)
        log = await hass.call_service(
            "v2g",
            "get_dispatch_log",
            {"config_entry_id": entry_id},
            return_response=True,
        )
        entries = log["entries"]
        assert [e["dispatch_id"] for e in entries] == [
            earlier["dispatch_id"],
            running["dispatch_id"],
        ]
        assert entries[0] == earlier  # the earlier dispatch is intact
        interrupted = entries[1]
        assert interrupted["status"] == "interrupted"
        assert interrupted["signal"]["type"] == "aFRR"
        assert interrupted["requested_kw"] == -12.0
        assert set(interrupted["vehicles"]) == set(vehicles)
        for vehicle_id, before in acked_before_stop.items():
            outcome = interrupted["vehicles"][vehicle_id]
            assert outcome["status"] == "acknowledged"
            assert outcome["command_id"] == before["command_id"]
            assert outcome["latency_ms"] == before["latency_ms"]
        for vehicle_id in slow.vehicle_ids:
            assert interrupted["vehicles"][vehicle_id]["status"] == "timeout"
        assert interrupted["acknowledged_kw"] == pytest.approx(-6.0)
        assert interrupted["ack_rate"] == pytest.approx(0.5)

        # The fleet, the metrics and the acknowledged setpoints are back too.
        diagnostics = await _diagnostics(hass, entry_id)
        assert diagnostics["fleet"]["vehicles"] == 4
        assert diagnostics["in_flight"] == []
        assert diagnostics["metrics"]["dispatches"] == 2
        assert diagnostics["metrics"]["orders_acknowledged"] == 4
        # Entities are unavailable until HA's MQTT client is connected again.
        fast_setpoints = [f"sensor.{vid}_setpoint" for vid in fast.vehicle_ids]
        for _ in range(100):
            states = await hass.states()
            if all(states[e]["state"] != "unavailable" for e in fast_setpoints):
                break
            await asyncio.sleep(0.1)
        assert states["sensor.depot_last_dispatch_status"]["state"] == "interrupted"
        # The acknowledged setpoints of the interrupted dispatch hold (not the
        # earlier dispatch's 4 kW): the vehicles did apply them.
        sample = diagnostics["fleet"]["sample"]
        assert {vid: sample[vid]["setpoint_kw"] for vid in vehicles} == {
            **dict.fromkeys(fast.vehicle_ids, -3.0),
            **dict.fromkeys(slow.vehicle_ids, 0.0),
        }
        for entity_id in fast_setpoints:
            assert float(states[entity_id]["state"]) == pytest.approx(-3.0)
        for vehicle_id in vehicles:
            assert states[f"sensor.{vehicle_id}_state_of_charge"]["state"] not in (
                "unavailable",
                "unknown",
            )
        log_text = (tmp_path / "config" / "hass.log").read_text(encoding="utf-8")
        assert f"Dispatch {running['dispatch_id']} was interrupted" in log_text
        # Nothing of ours failed: no error logged by the integration, no traceback
        # through its files. (Home Assistant's own components may log theirs:
        # 2026.11 sets up its ffmpeg component by default, which fails on a machine
        # without the ffmpeg program.)
        assert "ERROR" not in "".join(
            line for line in log_text.splitlines() if "[custom_components.v2g" in line
        )
        assert "custom_components/v2g/" not in log_text
    finally:
        if dispatch_call is not None:
            dispatch_call.cancel()
            with contextlib.suppress(BaseException):
                await dispatch_call
        await hass.stop()
