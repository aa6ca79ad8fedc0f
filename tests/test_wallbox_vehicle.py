"""A Wallbox Quasar driven through Home Assistant's own `wallbox` integration.

The integration is core's, unchanged; only its cloud client (`wallbox.Wallbox`)
is replaced, where core's own wallbox tests replace it, by a fake charger that
keeps the current it was last given. Its part number starts with "QS"
(bidirectional), so the "Maximum charging current" number goes from minus to
plus the charger's maximum: a negative current discharges.
"""

from __future__ import annotations

from collections.abc import Generator
import copy
from datetime import datetime, timedelta
from typing import Any
from unittest.mock import MagicMock, call, patch

from homeassistant.components.wallbox.const import (
    CHARGER_JWT_REFRESH_TOKEN,
    CHARGER_JWT_REFRESH_TTL,
    CHARGER_JWT_TOKEN,
    CHARGER_JWT_TTL,
    CONF_STATION,
)
from homeassistant.const import CONF_PASSWORD, CONF_USERNAME
from homeassistant.core import HomeAssistant
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_fire_time_changed,
)
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.v2g.const import CONF_ACK_TIMEOUT

from .controlled_helpers import async_add_controlled_vehicle, async_dispatch_afrr
from .helpers import async_setup_fleet

STATION = "20000"
NUMBER = "number.wallbox_quasar_maximum_charging_current"
MAX_CURRENT = 32


class FakeQuasar:
    """The cloud's view of one Quasar: status, and the current it was given."""

    def __init__(self) -> None:
        """Idle, plugged in, 32 A at most."""
        self.current = 0.0
        self.client = MagicMock()
        self.client.jwtToken = "token"
        self.client.jwtRefreshToken = "refresh"
        self.client.jwtTokenTtl = 0
        self.client.jwtRefreshTokenTtl = 0
        self.client.getChargerStatus.side_effect = self.status
        self.client.setMaxChargingCurrent.side_effect = self.set_current

    def status(self, station: str) -> dict[str, Any]:
        assert station == STATION
        return copy.deepcopy(
            {
                "name": "Quasar",
                "status_id": 181,  # waiting for car demand
                "max_available_power": MAX_CURRENT,
                "charging_power": 0.0,
                "charging_speed": 0,
                "added_range": 0,
                "added_energy": 0.0,
                "state_of_charge": 64,
                "config_data": {
                    "max_charging_current": self.current,
                    "locked": 0,
                    "energy_price": 0.25,
                    "currency": {"code": "EUR"},
                    "part_number": "QSX-000-0-0-0-000",
                    "serial_number": STATION,
                    "software": {"currentVersion": "6.7.0"},
                    "plan": {"features": []},
                },
            }
        )

    def set_current(self, station: str, current: float) -> dict[str, Any]:
        assert station == STATION
        self.current = current
        return {"data": {"chargerData": {"maxChargingCurrent": current}}}


@pytest.fixture
def quasar() -> Generator[FakeQuasar]:
    """Replace the wallbox client where core's wallbox tests replace it."""
    charger = FakeQuasar()
    with patch("homeassistant.components.wallbox.Wallbox", return_value=charger.client):
        yield charger


async def _setup_wallbox(hass: HomeAssistant) -> None:
    valid_until = (datetime.now() + timedelta(hours=1)).timestamp() * 1000
    entry = MockConfigEntry(
        domain="wallbox",
        data={
            CONF_USERNAME: "owner@example.org",
            CONF_PASSWORD: "secret",
            CONF_STATION: STATION,
            CHARGER_JWT_TOKEN: "token",
            CHARGER_JWT_REFRESH_TOKEN: "refresh",
            CHARGER_JWT_TTL: valid_until,
            CHARGER_JWT_REFRESH_TTL: valid_until,
        },
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()


async def test_quasar_discharges_charges_and_returns_to_idle(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient, quasar: FakeQuasar
) -> None:
    await _setup_wallbox(hass)
    number = hass.states.get(NUMBER)
    assert number is not None
    assert number.attributes["min"] == -MAX_CURRENT  # bidirectional (QS...)
    assert number.attributes["max"] == MAX_CURRENT

    entry = await async_setup_fleet(hass, options={CONF_ACK_TIMEOUT: 5})
    await async_add_controlled_vehicle(
        hass,
        entry,
        {
            "vehicle_id": "quasar",
            "control_entity": NUMBER,
            "control_unit": "A",
            "voltage": 230,
            "phases": 1,
            "sign_convention": "positive_charging",
        },
    )

    # +7 kW: discharge. 7000 W / 230 V = 30.4 A, 1 A steps: -30 A.
    response = await async_dispatch_afrr(hass, 7)
    assert quasar.client.setMaxChargingCurrent.call_args_list == [call(STATION, -30.0)]
    assert float(hass.states.get(NUMBER).state) == -30
    order = response["vehicles"]["quasar"]
    assert order["status"] == "acknowledged"
    assert order["latency_ms"] is not None
    assert response["acknowledged_kw"] == 6.9

    # -7 kW: charge at +30 A.
    response = await async_dispatch_afrr(hass, -7)
    assert quasar.client.setMaxChargingCurrent.call_args_list[-1] == call(STATION, 30.0)
    assert response["vehicles"]["quasar"]["status"] == "acknowledged"
    assert response["acknowledged_kw"] == -6.9

    # The order's 15 minutes are over: back to idle (0 A), and it stays there
    # when the integration polls the cloud again.
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(minutes=16))
    await hass.async_block_till_done()
    assert quasar.client.setMaxChargingCurrent.call_args_list[-1] == call(STATION, 0.0)
    assert float(hass.states.get(NUMBER).state) == 0
    assert quasar.current == 0
