"""Shared helpers of the integration tests: set up a fleet, play the vehicles."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from datetime import timedelta
import json
from pathlib import Path
import re
import sys
from typing import Any
from unittest.mock import patch

from homeassistant.config_entries import ConfigSubentryData
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import device_registry as dr
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_fire_mqtt_message,
    async_fire_time_changed,
)
from pytest_homeassistant_custom_component.components.diagnostics import (
    get_diagnostics_for_config_entry,
)
from pytest_homeassistant_custom_component.typing import (
    ClientSessionGenerator,
    MqttMockHAClient,
)

from custom_components.v2g.const import DOMAIN

ENTRY_ID = "01JFLEET000000000000000000"
COMPONENT_DIR = Path(__file__).parent.parent / "custom_components" / DOMAIN
# The English strings (translations/en.json): what users read.
STRINGS: dict[str, Any] = json.loads(
    (COMPONENT_DIR / "translations" / "en.json").read_text(encoding="utf-8")
)
COMMAND_RE = re.compile(r"^vehicle/([^/]+)/command$")
GATEWAY_COMMAND_RE = re.compile(r"^v2g/gateway/([^/]+)/commands$")

# What a simulated vehicle does with an order:
#   "ack" | "reject" | "ignore" (never answers -> timeout) | "fail" (publish raises)
#   | ("partial", applied_kw) | ("reject", reason)
#   | a callable(order) returning one of those.
type Behaviour = str | tuple[str, float] | Callable[[dict[str, Any]], Any]


def vehicle_payload(vehicle_id: str, **fields: Any) -> str:
    """Return a Go-cased discovery answer."""
    data: dict[str, Any] = {
        "ID": vehicle_id,
        "SoC": 0.8,
        "IsV2G": True,
        "MaxPower": 10.0,
        "BatteryKWh": 60.0,
        "Available": True,
    }
    data.update(fields)
    return json.dumps(data)


# Loop iterations per round of flush_subscriptions (see there).
SUBSCRIBE_ROUND_ITERATIONS = 50


async def flush_subscriptions(hass: HomeAssistant) -> None:
    """Let the MQTT client's subscribe debouncer run (confirms subscriptions).

    The client's job needs a little real loop time; under a frozen clock (the
    loop does not advance) timers due "now" run without it. The job is not a task
    that ``async_block_till_done`` waits for, and it subscribes to each wildcard
    topic on its own with MQTT 5 (the test plugin's default from 2026.10 on),
    awaiting each acknowledgement: every round lets the loop turn
    ``SUBSCRIBE_ROUND_ITERATIONS`` times.
    """
    for _ in range(5):
        async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=1))
        await hass.async_block_till_done()
        before = hass.loop.time()
        for _ in range(SUBSCRIBE_ROUND_ITERATIONS):
            await asyncio.sleep(0)
        if hass.loop.time() != before:
            await asyncio.sleep(0.002)


async def async_setup_fleet(
    hass: HomeAssistant,
    *,
    options: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    subentries: list[ConfigSubentryData] | None = None,
    entry: MockConfigEntry | None = None,
) -> MockConfigEntry:
    """Add (unless given) and set up a fleet entry; wait for its subscriptions."""
    if entry is None:
        entry = MockConfigEntry(
            domain=DOMAIN,
            title="Depot",
            entry_id=ENTRY_ID,
            data=dict(data or {}),
            options=dict(options or {}),
            subentries_data=subentries or (),
        )
        entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    await flush_subscriptions(hass)
    return entry


async def async_announce(
    hass: HomeAssistant, *vehicles: tuple[str, dict[str, Any]]
) -> None:
    """Publish discovery answers for vehicles ``(id, fields)``."""
    for vehicle_id, fields in vehicles:
        async_fire_mqtt_message(
            hass,
            f"v2g/fleet/response/{vehicle_id}",
            vehicle_payload(vehicle_id, **fields),
        )
    await hass.async_block_till_done()
    # Telemetry and discovery updates are coalesced by a short debouncer.
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=2))
    await hass.async_block_till_done()


async def async_settle(hass: HomeAssistant, seconds: float = 2) -> None:
    """Run the coalescing debouncer (and anything due within ``seconds``)."""
    await hass.async_block_till_done()
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=seconds))
    await hass.async_block_till_done()


async def async_dispatch(
    hass: HomeAssistant, entry_id: str = ENTRY_ID, **data: Any
) -> dict[str, Any]:
    """Run the ``v2g.dispatch`` action on a fleet; return its response."""
    response = await hass.services.async_call(
        DOMAIN,
        "dispatch",
        {"config_entry_id": entry_id, **data},
        blocking=True,
        return_response=True,
    )
    assert isinstance(response, dict)
    return response


async def async_dispatch_log(
    hass: HomeAssistant, entry_id: str = ENTRY_ID, **filters: Any
) -> list[dict[str, Any]]:
    """Return the entries of the ``v2g.get_dispatch_log`` action, oldest first."""
    response = await hass.services.async_call(
        DOMAIN,
        "get_dispatch_log",
        {"config_entry_id": entry_id, **filters},
        blocking=True,
        return_response=True,
    )
    assert isinstance(response, dict)
    entries: list[dict[str, Any]] = response["entries"]
    assert response["count"] == len(entries)
    return entries


async def async_diagnostics(
    hass: HomeAssistant, hass_client: ClientSessionGenerator, entry: MockConfigEntry
) -> dict[str, Any]:
    """Return the diagnostics of a fleet entry, as the frontend downloads them."""
    diagnostics: dict[str, Any] = await get_diagnostics_for_config_entry(
        hass, hass_client, entry
    )
    return diagnostics


@contextmanager
def patch_tuning(name: str, value: Any) -> Iterator[None]:
    """Set a tuning constant (chunk and batch sizes) of the integration.

    It is patched in every loaded module of the integration that defines it, so
    the test does not depend on which module holds it. Fails if none does.
    """
    modules = [
        module
        for module_name, module in list(sys.modules.items())
        if (
            module_name == "custom_components.v2g"
            or module_name.startswith("custom_components.v2g.")
        )
        and hasattr(module, name)
    ]
    assert modules, f"no module of the integration defines {name}"
    with ExitStack() as stack:
        for module in modules:
            stack.enter_context(patch.object(module, name, value))
        yield


class FleetResponder:
    """Answers the orders HA publishes, as vehicles (or gateways) would."""

    def __init__(
        self,
        hass: HomeAssistant,
        mqtt_mock: MqttMockHAClient,
        behaviours: Mapping[str, Behaviour] | None = None,
        *,
        default: Behaviour = "ack",
        discovery: list[tuple[str, dict[str, Any]]] | None = None,
        idle: Behaviour | None = None,
    ) -> None:
        """Install the responder as the side effect of ``async_publish``.

        ``discovery`` lists the vehicles ``(id, fields)`` that answer a discovery
        request; ``idle``, if given, is how every vehicle answers 0 kW orders
        (revokes, releases) instead of its behaviour.
        """
        self.hass = hass
        self.discovery = list(discovery or [])
        self.behaviours: dict[str, Behaviour] = dict(behaviours or {})
        self.default = default
        self.idle = idle
        self.orders: list[dict[str, Any]] = []
        self.publishes: list[tuple[str, Any, int, bool]] = []
        mqtt_mock.async_publish.reset_mock()
        mqtt_mock.async_publish.side_effect = self._publish

    def orders_for(self, vehicle_id: str) -> list[dict[str, Any]]:
        """Return the orders sent to one vehicle, oldest first."""
        return [o for o in self.orders if o["vehicle_id"] == vehicle_id]

    def _decide(self, order: dict[str, Any]) -> Any:
        if self.idle is not None and order["power_kw"] == 0.0:
            return self.idle
        behaviour = self.behaviours.get(order["vehicle_id"], self.default)
        if callable(behaviour):
            behaviour = behaviour(order)
        return behaviour

    @staticmethod
    def _answer(order: dict[str, Any], behaviour: Any) -> dict[str, Any] | None:
        if behaviour == "ack":
            return {"command_id": order["command_id"]}
        if behaviour == "reject":
            return {
                "command_id": order["command_id"],
                "status": "rejected",
                "reason": "battery too hot",
            }
        if isinstance(behaviour, tuple) and behaviour[0] == "reject":
            return {
                "command_id": order["command_id"],
                "status": "rejected",
                "reason": behaviour[1],
            }
        if isinstance(behaviour, tuple) and behaviour[0] == "partial":
            return {
                "command_id": order["command_id"],
                "status": "accepted",
                "applied_power_kw": behaviour[1],
            }
        return None

    def _fire(self, topic: str, payload: str) -> None:
        self.hass.loop.call_soon(async_fire_mqtt_message, self.hass, topic, payload)

    def _vehicle_order(self, order: dict[str, Any]) -> dict[str, Any] | None:
        """Record an order; return its ack (None: no answer). Raises on "fail"."""
        behaviour = self._decide(order)
        if behaviour == "fail":
            raise HomeAssistantError("broker refused the message")
        self.orders.append(order)
        return self._answer(order, behaviour)

    async def _publish(
        self, topic: str, payload: Any, qos: int, retain: bool, **_: Any
    ) -> None:
        # Newer Home Assistant passes more keywords (message_expiry_interval= from
        # 2026.10 on); the responder reads the four it always had.
        self.publishes.append((topic, payload, qos, retain))
        if topic == "v2g/fleet/discovery":
            for vehicle_id, fields in self.discovery:
                self._fire(
                    f"v2g/fleet/response/{vehicle_id}",
                    vehicle_payload(vehicle_id, **fields),
                )
        elif match := COMMAND_RE.match(topic):
            order = json.loads(payload)
            assert order["vehicle_id"] == match.group(1)
            if (answer := self._vehicle_order(order)) is not None:
                self._fire(f"vehicle/{order['vehicle_id']}/ack", json.dumps(answer))
        elif match := GATEWAY_COMMAND_RE.match(topic):
            batch = json.loads(payload)
            acks = [
                {**answer, "vehicle_id": order["vehicle_id"]}
                for order in batch["orders"]
                if (answer := self._vehicle_order(order)) is not None
            ]
            if acks:
                self._fire(
                    f"v2g/gateway/{match.group(1)}/acks", json.dumps({"acks": acks})
                )

    def topics(self) -> list[str]:
        """Return every topic published to, in order."""
        return [topic for topic, *_ in self.publishes]

    def command_publishes(self) -> list[str]:
        """Return the topics of the order publishes (vehicle or gateway), in order."""
        return [
            topic
            for topic in self.topics()
            if COMMAND_RE.match(topic) or GATEWAY_COMMAND_RE.match(topic)
        ]

    def payloads(self, topic: str) -> list[Any]:
        """Return the payloads published to one topic, in order."""
        return [payload for t, payload, *_ in self.publishes if t == topic]


@contextmanager
def loop_iterations(hass: HomeAssistant) -> Iterator[Callable[[], int]]:
    """A counter of event-loop iterations (a callback that reschedules itself)."""
    ticks = 0
    running = True

    def _tick() -> None:
        nonlocal ticks
        ticks += 1
        if running:
            hass.loop.call_soon(_tick)

    hass.loop.call_soon(_tick)
    try:
        yield lambda: ticks
    finally:
        running = False


def find_device(
    registry: dr.DeviceRegistry, identifier: tuple[str, str]
) -> dr.DeviceEntry | None:
    """The device with ``identifier``.

    `async_get_device` raises in tests on 2026.11, and `registry.devices` is no
    longer a mapping there: the fleet devices of every entry are walked.
    """
    for entry in registry.hass.config_entries.async_entries():
        for device in dr.async_entries_for_config_entry(registry, entry.entry_id):
            if identifier in device.identifiers:
                return device
    return None


def device_subentries(device: dr.DeviceEntry, entry_id: str) -> set[str | None]:
    """The subentries of entry ``entry_id`` a device belongs to (None: the entry).

    2026.11 gives a device one entry and subentry (`config_subentry_id`) and
    deprecates `config_entries_subentries`, the only way on 2026.2.
    """
    if hasattr(device, "config_subentry_id"):
        owned = device.config_entry_id == entry_id
        return {device.config_subentry_id} if owned else set()
    return set(device.config_entries_subentries.get(entry_id, set()))
