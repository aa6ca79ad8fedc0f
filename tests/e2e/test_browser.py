"""Headless Chromium opens the demo's EV participation dashboard and reads it."""

from __future__ import annotations

import asyncio
from pathlib import Path
import re
import shutil
import time
from typing import Any

import pytest

from devtools.demo import DemoStack
from devtools.hass_instance import REPO_ROOT
from devtools.home_charger import HOME_VEHICLE_ID, HOME_VIEW_PATH
from devtools.net import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUTPUT_DIR = REPO_ROOT / "test-output" / "browser"
FAILING = "veh003"
# How the dashboard's "Last dispatches" card names a vehicle that refused.
FAILED_LINE = f"{FAILING}: rejected (refused)"

# Text of every node, shadow roots included (Lovelace cards live in shadow DOM).
DEEP_TEXT = """() => {
  const out = [];
  const walk = (node) => {
    if (node.shadowRoot) walk(node.shadowRoot);
    for (const child of node.childNodes) {
      if (child.nodeType === Node.TEXT_NODE) out.push(child.textContent.trim());
      else walk(child);
    }
  };
  walk(document.body);
  return out.filter(Boolean).join("\\n");
}"""


async def test_dashboard_shows_live_values_and_the_vehicle_that_failed(
    socket_enabled: None, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    # veh003 refuses every order; the other vehicles take its share.
    stack = DemoStack(
        tmp_path / "config",
        port=free_port(),
        broker_port=free_port(),
        vehicles=5,
        dispatch_every=15,
        trusted_networks=True,
        overrides=[f"{FAILING}:reject_rate=1"],
    )
    try:
        await stack.start()
        first = stack.first_dispatch
        assert first["status"] == "completed"
        assert first["vehicles"][FAILING]["status"] == "rejected"
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                await page.goto(f"{stack.dashboard_url}/fleet")
                await page.wait_for_selector("hui-gauge-card", timeout=90_000)
                await page.wait_for_function(
                    f"() => ({DEEP_TEXT})().includes('Completed')"
                    f" && ({DEEP_TEXT})().includes('{FAILED_LINE}')",
                    timeout=30_000,
                )
                fleet_text = await page.evaluate(DEEP_TEXT)
                OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
                shot = tmp_path / "ev-participation-fleet.png"
                await page.screenshot(path=str(shot), full_page=True)
                shutil.copy(shot, OUTPUT_DIR / shot.name)

                await page.goto(f"{stack.dashboard_url}/vehicles")
                await page.wait_for_selector("hui-glance-card", timeout=60_000)
                await page.wait_for_function(
                    f"() => ({DEEP_TEXT})().includes('kW')", timeout=30_000
                )
                vehicles_text = await page.evaluate(DEEP_TEXT)
                shot = tmp_path / "ev-participation-vehicles.png"
                await page.screenshot(path=str(shot), full_page=True)
                shutil.copy(shot, OUTPUT_DIR / shot.name)
            finally:
                await browser.close()
    finally:
        await stack.stop()

    fleet_lines = fleet_text.splitlines()
    assert "Completed" in fleet_lines  # last dispatch status, translated
    assert "Unavailable" not in fleet_lines
    assert "5" in fleet_lines  # vehicles available
    assert "30.0 kW" in fleet_lines  # last requested and acknowledged power
    # The last dispatches card: the dispatch, then the vehicle that failed and why
    # (the fleet's "Last dispatch failures" sensor shows 1).
    assert "1" in fleet_lines
    dispatch = fleet_lines.index("aFRR 30.0 kW: completed, 30.0 kW acknowledged")
    assert re.fullmatch(r"\d\d:\d\d:\d\d", fleet_lines[dispatch - 1])  # local time
    assert fleet_lines[dispatch + 1] == FAILED_LINE
    vehicle_lines = vehicles_text.splitlines()
    titles = [line for line in vehicle_lines if re.fullmatch(r"veh\d+", line)]
    assert len(titles) == 5  # one card per simulated vehicle
    assert "Unavailable" not in vehicle_lines
    assert sum(line.endswith(" kW") for line in vehicle_lines) == 5
    assert sum(line.endswith("%") for line in vehicle_lines) == 10


async def _text_changes(
    page: Any, wanted: dict[str, str], timeout: float
) -> dict[str, float]:
    """When (monotonic s) each wanted line first shows on the page, polled every 0.1 s."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(wanted) and time.monotonic() < deadline:
        lines = set((await page.evaluate(DEEP_TEXT)).splitlines())
        now = time.monotonic()
        for name, line in wanted.items():
            if name not in seen and line in lines:
                seen[name] = now
        await asyncio.sleep(0.1)
    return seen


async def test_home_view_shows_the_charger_following_the_home_car(
    socket_enabled: None, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    stack = DemoStack(
        tmp_path / "config",
        port=free_port(),
        broker_port=free_port(),
        vehicles=5,
        dispatch_every=15,
        trusted_networks=True,
        home=True,
    )
    try:
        await stack.start()
        # A mixed fleet: the home car takes its share beside the MQTT vehicles
        # (a dropped simulated ack may leave the dispatch partial).
        first = stack.first_dispatch
        assert first["status"] in {"completed", "partial"}
        assert first["vehicles"][HOME_VEHICLE_ID]["status"] == "acknowledged"
        assert len(first["vehicles"]) == 6
        home = stack.home_dispatch
        assert home["status"] == "completed"
        assert list(home["vehicles"]) == [HOME_VEHICLE_ID]
        assert home["vehicles"][HOME_VEHICLE_ID]["status"] == "acknowledged"
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                await page.goto(f"{stack.dashboard_url}/{HOME_VIEW_PATH}")
                await page.wait_for_selector("hui-entities-card", timeout=90_000)
                await page.wait_for_function(
                    f"() => ({DEEP_TEXT})().includes('-6,900 W')", timeout=30_000
                )
                discharging = (await page.evaluate(DEEP_TEXT)).splitlines()

                # Charge 4.6 kW (20 A) while the page is open: the charger
                # takes the current at once and measures the power 2 s later.
                dispatch = asyncio.create_task(
                    stack.hass.call_service(
                        "v2g",
                        "dispatch",
                        {
                            "config_entry_id": stack.entry_id,
                            "signal_type": "aFRR",
                            "power_kw": -4.6,
                            "vehicles": [HOME_VEHICLE_ID],
                        },
                        return_response=True,
                    )
                )
                seen = await _text_changes(
                    page,
                    {"current": "20 A", "power": "4,600 W", "setpoint": "-4.6 kW"},
                    timeout=30,
                )
                charging = await dispatch
                OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
                shot = tmp_path / "ev-participation-home.png"
                await page.screenshot(path=str(shot), full_page=True)
                shutil.copy(shot, OUTPUT_DIR / shot.name)
            finally:
                await browser.close()
    finally:
        await stack.stop()

    # The first dispatch restricted to the home car: 6.9 kW out of the car.
    assert HOME_VEHICLE_ID in discharging  # its card
    assert "6.9 kW" in discharging  # its setpoint
    assert "-30 A" in discharging  # the charger's control (positive = charging)
    assert "-6,900 W" in discharging  # the measured power, followed
    assert "Unavailable" not in discharging
    assert sum(line.endswith("%") for line in discharging) == 3  # SoC x2, ack rate

    assert charging["status"] == "completed"
    assert charging["acknowledged_kw"] == pytest.approx(-4.6)
    assert sorted(seen) == ["current", "power", "setpoint"]
    # The measured power follows the control after the charger's delay (2 s).
    assert seen["power"] - seen["current"] >= 1.0
    assert seen["setpoint"] >= seen["current"]
