"""The blueprints' null and recovery paths, with a stand-in fleet.

`tests/e2e/test_blueprints.py` runs them against the real integration; here the
fleet's answers are made up, so every null the response or the sensor can carry is
tried, and the ack-rate notification's recovery too.
"""

from __future__ import annotations

import logging
from pathlib import Path
import shutil
from typing import Any

from homeassistant.const import STATE_OFF, STATE_ON
from homeassistant.core import (
    HomeAssistant,
    ServiceCall,
    ServiceResponse,
    SupportsResponse,
)
from homeassistant.setup import async_setup_component
import pytest
from pytest_homeassistant_custom_component.typing import WebSocketGenerator

from custom_components.v2g.const import DOMAIN

BLUEPRINTS = Path(__file__).parent.parent / "blueprints" / "automation" / "v2g"
PROBLEM = "binary_sensor.depot_ack_rate_below_sla"
PRICE = "sensor.spot_price"


@pytest.fixture
async def blueprints(hass: HomeAssistant, tmp_path: Path) -> None:
    """The blueprints where Home Assistant finds imported ones."""
    hass.config.config_dir = str(tmp_path)
    shutil.copytree(BLUEPRINTS, tmp_path / "blueprints" / "automation" / "v2g")


async def _automation(hass: HomeAssistant, path: str, **inputs: Any) -> None:
    assert await async_setup_component(
        hass,
        "automation",
        {
            "automation": {
                "id": "from_blueprint",
                "alias": "From blueprint",
                "use_blueprint": {"path": f"v2g/{path}", "input": inputs},
            }
        },
    )
    await hass.async_block_till_done()
    assert hass.states.get("automation.from_blueprint") is not None


async def _notifications(
    hass: HomeAssistant, hass_ws_client: WebSocketGenerator
) -> list[tuple[str, str]]:
    """The notifications as the frontend lists them."""
    client = await hass_ws_client(hass)
    await client.send_json_auto_id({"type": "persistent_notification/get"})
    found = await client.receive_json()
    return [(n["title"], n["message"]) for n in found["result"]]


@pytest.mark.usefixtures("blueprints")
async def test_notify_quotes_the_rate_and_recovers(
    hass: HomeAssistant,
    hass_ws_client: WebSocketGenerator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert await async_setup_component(hass, "persistent_notification", {})
    hass.states.async_set(
        PROBLEM, STATE_OFF, {"ack_rate_24h": 95.0, "ack_rate_sla": 90.0}
    )
    await _automation(
        hass,
        "notify_ack_rate_problem.yaml",
        problem_sensor=PROBLEM,
        delay={"seconds": 0},
    )
    hass.states.async_set(
        PROBLEM, STATE_ON, {"ack_rate_24h": 82.4, "ack_rate_sla": 90.0}
    )
    await hass.async_block_till_done()
    # Unknown rate (nothing sent in 24 h): said so, no arithmetic on null.
    hass.states.async_set(
        PROBLEM, STATE_OFF, {"ack_rate_24h": None, "ack_rate_sla": 90.0}
    )
    await hass.async_block_till_done()
    assert sorted(await _notifications(hass, hass_ws_client)) == [
        ("V2G fleet ack rate below SLA", "24 h ack rate is now 82 % (SLA 90 %)."),
        (
            "V2G fleet ack rate recovered",
            "No order was sent in the last 24 h (SLA 90 %).",
        ),
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.usefixtures("blueprints")
@pytest.mark.parametrize(
    ("response", "message"),
    [
        (
            {
                "status": "completed",
                "requested_kw": 20.0,
                "acknowledged_kw": 20.0,
                "ack_rate": 1.0,
            },
            "completed: 20.0 of 20.0 kW acknowledged (100 % of orders).",
        ),
        (
            {
                "status": "failed",
                "requested_kw": -20.0,
                "acknowledged_kw": 0.0,
                "ack_rate": None,
            },
            "failed: 0.0 of -20.0 kW acknowledged (no order sent).",
        ),
        ({"status": "failed"}, "failed: 0.0 of 0.0 kW acknowledged (no order sent)."),
    ],
)
async def test_price_dispatch_logs_whatever_the_fleet_answers(
    hass: HomeAssistant,
    caplog: pytest.LogCaptureFixture,
    response: dict[str, Any],
    message: str,
) -> None:
    calls: list[dict[str, Any]] = []

    async def dispatch(call: ServiceCall) -> ServiceResponse:
        calls.append(dict(call.data))
        return response

    hass.services.async_register(
        DOMAIN, "dispatch", dispatch, supports_response=SupportsResponse.OPTIONAL
    )
    # The logbook's action, as the blueprint calls it (the logbook needs a recorder).
    logged: list[dict[str, Any]] = []

    async def log(call: ServiceCall) -> None:
        logged.append(dict(call.data))

    hass.services.async_register("logbook", "log", log)
    hass.states.async_set(PRICE, "0.10")
    await _automation(
        hass,
        "dispatch_on_price.yaml",
        fleet="01JFLEET000000000000000000",
        price_sensor=PRICE,
        signal_type="NEBEF",
        power_kw=20,
    )
    hass.states.async_set(PRICE, "0.01")  # below 0.05: charge
    await hass.async_block_till_done()
    assert calls == [
        {
            "config_entry_id": "01JFLEET000000000000000000",
            "signal_type": "NEBEF",
            "power_kw": -20.0,
            "duration": {"minutes": 30},
        }
    ]
    assert logged == [{"name": "V2G price dispatch", "message": message}]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
