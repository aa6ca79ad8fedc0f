"""The integration's blueprints run in a real `hass` on a fresh instance.

Automations are made from the blueprints as the UI writes them (`use_blueprint`
in automations.yaml), their triggers are fired the way they fire for a user (a
price sensor crossing its threshold, the fleet's ack rate falling below its SLA),
and what their actions did is read back: logbook lines over REST, notifications
over the websocket API, and no error in Home Assistant's log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
import re
import time
from typing import Any

import pytest

from devtools.hass_instance import HassInstance
from simulator import FleetSimulator
from tests.mqtt_broker import MosquittoBroker

pytestmark = pytest.mark.e2e

PRICE = "sensor.test_spot_price"
PROBLEM = "binary_sensor.depot_ack_rate_below_sla"


def automations_yaml(entry_id: str) -> str:
    """Three automations from the two blueprints, as the UI saves them."""
    return f"""\
- id: price_nebef
  alias: Price dispatch NEBEF
  use_blueprint:
    path: v2g/dispatch_on_price.yaml
    input:
      fleet: {entry_id}
      price_sensor: {PRICE}
      signal_type: NEBEF
      power_kw: 5
- id: price_afrr
  alias: Price dispatch aFRR
  use_blueprint:
    path: v2g/dispatch_on_price.yaml
    input:
      fleet: {entry_id}
      price_sensor: {PRICE}
      signal_type: aFRR
      power_kw: 25
- id: ack_rate_notify
  alias: Ack rate notification
  use_blueprint:
    path: v2g/notify_ack_rate_problem.yaml
    input:
      problem_sensor: {PROBLEM}
      delay:
        seconds: 0
"""


async def _until[T](
    read: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float = 30
) -> T:
    """Poll `read` every 0.5 s until `done` says so; the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.5)


async def _logbook(hass: HassInstance, since: datetime) -> list[dict[str, Any]]:
    entries = await hass.rest("GET", f"/api/logbook/{since.isoformat()}")
    return list(entries)


async def _notifications(hass: HassInstance) -> list[dict[str, Any]]:
    return list(await hass.ws("persistent_notification/get"))


async def test_blueprints_run_on_a_fresh_instance(
    broker: MosquittoBroker,
    make_fleet: Callable[..., FleetSimulator],
    tmp_path: Path,
) -> None:
    # veh003 refuses every order: the aFRR dispatch is partial and the ack rate
    # falls below an SLA of 100 %.
    make_fleet(
        count=3,
        connection="per-vehicle",
        vehicle_overrides={"veh003": {"reject_rate": 1.0}},
    )
    config_dir = tmp_path / "config"
    hass = HassInstance(config_dir)
    hass.prepare()
    try:
        await hass.start()
        await hass.ensure_mqtt_entry(broker.port)
        entry_id = (await hass.ensure_v2g_entry(name="Depot"))["entry_id"]
        await hass.set_options(entry_id, ack_rate_sla=100)
        await hass.wait_loaded(entry_id)
        await hass.call_service(
            "v2g", "discover", {"config_entry_id": entry_id}, return_response=True
        )
        await hass.rest("POST", f"/api/states/{PRICE}", {"state": "0.10"})
        (config_dir / "automations.yaml").write_text(
            automations_yaml(entry_id), encoding="utf-8"
        )
        await hass.call_service("automation", "reload", {})
        states = await hass.wait_for_states([PROBLEM])
        assert states[PROBLEM]["state"] == "unknown"  # nothing sent yet
        automations = {
            s["attributes"].get("id"): s["state"]
            for entity_id, s in (await hass.states()).items()
            if entity_id.startswith("automation.")
        }
        assert automations == dict.fromkeys(
            ("price_nebef", "price_afrr", "ack_rate_notify"), "on"
        )

        # The price rises above 0.25: both price automations dispatch.
        since = datetime.now(UTC) - timedelta(seconds=1)
        await hass.rest("POST", f"/api/states/{PRICE}", {"state": "0.30"})

        def price_lines(entries: list[dict[str, Any]]) -> list[str]:
            return sorted(
                e["message"] for e in entries if e.get("name") == "V2G price dispatch"
            )

        entries = await _until(
            lambda: _logbook(hass, since), lambda e: len(price_lines(e)) == 2
        )
        notifications = await _until(
            lambda: _notifications(hass), lambda n: len(n) == 1
        )
        log = (config_dir / "hass.log").read_text(encoding="utf-8")
    finally:
        await hass.stop()

    assert len(price_lines(entries)) == 2, entries  # each automation logged
    nebef, afrr = sorted(price_lines(entries), key=lambda m: "(no order" not in m)
    # NEBEF: no car is charging, nothing eligible, ack_rate null.
    assert nebef == "failed: 0.0 of 5.0 kW acknowledged (no order sent)."
    assert re.fullmatch(
        r"partial: 20\.0 of 25\.0 kW acknowledged \(\d+ % of orders\)\.", afrr
    )
    rate = afrr.split("(")[1].split(" %")[0]
    # The fleet's own lines: one per dispatch, naming the vehicle that failed;
    # none per order (the outcome events of discovered vehicles are off).
    fleet_lines = sorted(
        e["message"] for e in entries if e.get("domain") == "v2g" and e.get("name")
    )
    assert fleet_lines == [
        f"dispatched 25 kW aFRR: partial, {rate} % acknowledged; "
        "1 vehicle failed: veh003 (rejected: refused)",
        "dispatched 5 kW NEBEF: failed, no order sent (3 vehicles excluded)",
    ]
    assert not [e for e in entries if str(e.get("entity_id")).startswith("event.")]
    # The ack-rate blueprint notified in Home Assistant (its default action).
    assert [(n["title"], n["message"]) for n in notifications] == [
        ("V2G fleet ack rate below SLA", f"24 h ack rate is now {rate} % (SLA 100 %).")
    ]
    # Nothing of ours or of the blueprints failed. (Home Assistant's own components
    # may log theirs: 2026.11 sets up ffmpeg by default, which fails without the
    # ffmpeg program.)
    ours = (
        "[custom_components.v2g",
        "[homeassistant.components.automation",
        "[homeassistant.components.script",
        "[homeassistant.components.blueprint",
    )
    errors = [
        line
        for line in log.splitlines()
        if " ERROR " in line and any(logger in line for logger in ours)
    ]
    assert errors == []
    assert "custom_components/v2g/" not in log
