"""A real `hass` process driven the way a user's tools drive it.

Entries are made through config flows over HTTP, a dispatch goes through the
websocket API with return_response, and states are read back over REST.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from devtools.hass_instance import HassInstance
from simulator import FleetSimulator
from tests.mqtt_broker import MosquittoBroker

pytestmark = pytest.mark.e2e


async def test_real_hass_process_dispatches_to_the_simulated_fleet(
    broker: MosquittoBroker,
    make_fleet: Callable[..., FleetSimulator],
    tmp_path: Path,
) -> None:
    sim = make_fleet(count=3, connection="per-vehicle", telemetry_push=True)
    hass = HassInstance(tmp_path / "config")
    hass.prepare()
    try:
        await hass.start()
        mqtt_entry = await hass.ensure_mqtt_entry(broker.port)
        assert mqtt_entry["state"] == "loaded"
        entry = await hass.ensure_v2g_entry(name="Depot")
        assert entry["state"] == "loaded"
        entry_id = entry["entry_id"]

        found = await hass.call_service(
            "v2g", "discover", {"config_entry_id": entry_id}, return_response=True
        )
        assert sorted(v["vehicle_id"] for v in found["vehicles"]) == sim.vehicle_ids

        response = await hass.call_service(
            "v2g",
            "dispatch",
            {
                "config_entry_id": entry_id,
                "signal_type": "FCR",
                "power_kw": 12,
                "duration": {"minutes": 5},
            },
            return_response=True,
        )
        assert response["status"] == "completed"
        assert response["strategy"] == "optimal"  # the FCR default
        assert response["acknowledged_kw"] == pytest.approx(12.0)
        assert sim.stats()["orders_acked"] == len(response["vehicles"])

        states = await hass.states()
        status = [
            s
            for entity_id, s in states.items()
            if entity_id.startswith("sensor.depot") and entity_id.endswith("status")
        ]
        assert [s["state"] for s in status] == ["completed"]
        setpoints = {
            entity_id: float(s["state"])
            for entity_id, s in states.items()
            if entity_id.startswith("sensor.") and entity_id.endswith("_setpoint")
        }
        assert sum(setpoints.values()) == pytest.approx(12.0)

        # HA's prometheus exporter publishes our entities (docs/entities.md).
        metrics = await hass.rest("GET", "/api/prometheus")
        exported = {
            line.split("entity=")[1].split('"')[1]
            for line in metrics.splitlines()
            if "entity=" in line and not line.startswith("#")
        }
        assert {
            "sensor.depot_last_dispatch_ack_rate",
            "sensor.depot_orders_acknowledged",
            f"sensor.{sim.vehicle_ids[0]}_setpoint",
        } <= exported
        rate_line = next(
            line
            for line in metrics.splitlines()
            if 'entity="sensor.depot_last_dispatch_ack_rate"' in line
            and line.startswith("homeassistant_sensor_")
        )
        assert float(rate_line.rsplit(" ", 1)[1]) == pytest.approx(100.0)
    finally:
        await hass.stop()
