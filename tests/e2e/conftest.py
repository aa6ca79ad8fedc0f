"""Fixtures for end-to-end tests: a real broker and Home Assistant's real MQTT client."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator
from pathlib import Path
from typing import Any

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.v2g.config_flow import default_options
from custom_components.v2g.const import CONF_NAME, DEFAULT_TOPICS, DOMAIN
from simulator import FleetSimulator, SimulatorConfig
from tests.mqtt_broker import MosquittoBroker

pytestmark = pytest.mark.e2e


@pytest.fixture
def broker(socket_enabled: None) -> Generator[MosquittoBroker]:
    """A mosquitto of our own on a free loopback port."""
    with MosquittoBroker() as running:
        yield running


@pytest.fixture
async def real_mqtt(
    hass: HomeAssistant, broker: MosquittoBroker, tmp_path: Path
) -> AsyncGenerator[MockConfigEntry]:
    """Home Assistant's MQTT integration connected to the real broker."""
    # A real MQTT entry reads configuration.yaml from the config dir.
    hass.config.config_dir = str(tmp_path)
    (tmp_path / "configuration.yaml").write_text("", encoding="utf-8")
    entry = MockConfigEntry(
        domain=mqtt.DOMAIN,
        data={"broker": broker.host, "port": broker.port},
        title="loopback broker",
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert await mqtt.util.async_wait_for_mqtt_client(hass)
    yield entry
    if entry.state is ConfigEntryState.LOADED:
        await hass.config_entries.async_unload(entry.entry_id)
        await hass.async_block_till_done()


@pytest.fixture
def make_fleet(
    broker: MosquittoBroker,
) -> Generator[Callable[..., FleetSimulator]]:
    """Start simulated fleets on the broker; every one is stopped at teardown."""
    started: list[FleetSimulator] = []

    def _make(**overrides: Any) -> FleetSimulator:
        config = SimulatorConfig(
            **{"host": broker.host, "port": broker.port, "seed": 1, **overrides}
        )
        sim = FleetSimulator(config)
        sim.start(timeout=15)
        started.append(sim)
        return sim

    yield _make
    for sim in started:
        sim.stop()


@pytest.fixture
def make_v2g_entry(
    hass: HomeAssistant, real_mqtt: MockConfigEntry
) -> Callable[..., Any]:
    """Set up a V2G entry with default topics and the given option overrides."""

    async def _make(**options: Any) -> MockConfigEntry:
        entry = MockConfigEntry(
            domain=DOMAIN,
            title="Depot",
            data={CONF_NAME: "Depot", **DEFAULT_TOPICS},
            options={**default_options(), **options},
            unique_id="vehicle/+/command",
        )
        entry.add_to_hass(hass)
        assert await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()
        assert entry.state is ConfigEntryState.LOADED
        return entry

    return _make
