"""Headless Chromium opens the demo's EV participation dashboard and reads it."""

from __future__ import annotations

from pathlib import Path
import re
import shutil

import pytest

from devtools.demo import DemoStack
from devtools.hass_instance import REPO_ROOT
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


async def test_dashboard_shows_live_values(
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
    )
    try:
        await stack.start()
        assert stack.first_dispatch["status"] == "completed"
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                await page.goto(f"{stack.dashboard_url}/fleet")
                await page.wait_for_selector("hui-gauge-card", timeout=90_000)
                await page.wait_for_function(
                    f"() => ({DEEP_TEXT})().includes('Completed')", timeout=30_000
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
    vehicle_lines = vehicles_text.splitlines()
    titles = [line for line in vehicle_lines if re.fullmatch(r"veh\d+", line)]
    assert len(titles) == 5  # one card per simulated vehicle
    assert "Unavailable" not in vehicle_lines
    assert sum(line.endswith(" kW") for line in vehicle_lines) == 5
    assert sum(line.endswith("%") for line in vehicle_lines) == 10
