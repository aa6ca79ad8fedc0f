"""Depots on the brokers people run (issue 16): what gets through, what is lost.

Per broker profile (``tests/mqtt_broker.py`` limits: ``tuned``, ``stock`` —
mosquitto's defaults —, ``addon`` — what the Mosquitto broker add-on sets), Home
Assistant's MQTT integration is pointed at a fresh mosquitto publishing
``$SYS`` every second; per mode and fleet size a :class:`DepotScenario` runs
what a user does and counts, at each step, what the fleet sent, what Home
Assistant got and what the broker says it dropped:

1. **discovery**: the entry's own request at setup, then ``v2g.discover``; the
   vehicles known once no more arrive (or all are known);
2. **dispatch**: ``v2g.dispatch`` to every known vehicle (aFRR, equal, 1 kW
   each); the first round's acks, time-outs and the fallback round;
3. **telemetry**: the delivery verification's poll (pull mode, ``verify_window``
   1 s): answers the fleet sent, answers Home Assistant received, vehicles left
   unmeasured;
4. when the poll's answers added vehicles discovery missed (telemetry of an
   unknown vehicle adds it), a **second dispatch** to every known vehicle: the
   acks of the whole fleet;
5. the repair issues the fleet raised (broker_health.py).

Modes: ``per_vehicle``; ``gateway`` (500 vehicles per gateway, a gateway answers
discovery in one message); ``gateway_per_vehicle_discovery`` (the same gateways,
but every vehicle answers discovery on its own: the protocol before issue 16).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
import gc
import json
from pathlib import Path
import time
from typing import Any

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import Event, HomeAssistant, callback
from homeassistant.helpers import entity_registry as er, issue_registry as ir

from custom_components.v2g.broker_health import broker_health

from .harness import HarnessError, HassHarness, LoopBlockMonitor, simulator_process

DOMAIN = "v2g"
PROFILES = ("tuned", "stock", "addon")
PER_VEHICLE = "per_vehicle"
GATEWAY = "gateway"
GATEWAY_PER_VEHICLE_DISCOVERY = "gateway_per_vehicle_discovery"
MODES = (PER_VEHICLE, GATEWAY, GATEWAY_PER_VEHICLE_DISCOVERY)
DEFAULT_SIZES = (1_000, 5_000, 10_000)
GATEWAY_SIZE = 500
SYS_DROPPED = "$SYS/broker/publish/messages/dropped"
SYS_INTERVAL_S = 1
# Long enough that a slow ack is not a lost one; a lost one costs this much.
ACK_TIMEOUT_S = 30.0
# No periodic poll during a scenario: the verification's poll is the one measured.
OPTIONS = {
    "ack_timeout": ACK_TIMEOUT_S,
    "telemetry_mode": "pull",
    "poll_interval": 3600,
    "stale_timeout": 7200,
    "verify_window": 1,
}
# Discovery is over when no vehicle was added for this long (or all are known).
DISCOVERY_QUIET_S = 10.0
TELEMETRY_QUIET_S = 3.0


class DroppedFollower:
    """The broker's dropped-messages count, as Home Assistant receives it."""

    def __init__(self) -> None:
        """Nothing received yet."""
        self.value: int | None = None
        self.received = 0
        self._unsub: Callable[[], None] | None = None

    async def async_start(self, hass: HomeAssistant) -> None:
        """Subscribe (the broker publishes the count every second)."""

        @callback
        def _count(msg: mqtt.ReceiveMessage) -> None:
            self.value = int(msg.payload)
            self.received += 1

        self._unsub = await mqtt.async_subscribe(hass, SYS_DROPPED, _count, qos=0)

    async def async_read(self) -> int:
        """The count, once what happened before this call is in it.

        Mosquitto publishes the count (retained) when it changed, at most every
        `sys_interval`: after two intervals it covers everything before the call.
        """
        await asyncio.sleep(2 * SYS_INTERVAL_S + 0.5)
        if self.value is None:
            raise HarnessError(f"the broker published no {SYS_DROPPED}")
        return self.value

    def stop(self) -> None:
        """Unsubscribe."""
        if self._unsub is not None:
            self._unsub()
            self._unsub = None


@dataclass(slots=True)
class Counter:
    """Messages received on a subscription of Home Assistant."""

    count: int = 0
    last_at: float = 0.0

    async def async_follow(self, hass: HomeAssistant, topic: str) -> Callable[[], None]:
        """Count the messages on `topic`; return the unsubscriber."""

        @callback
        def _count(msg: mqtt.ReceiveMessage) -> None:
            self.count += 1
            self.last_at = time.perf_counter()

        return await mqtt.async_subscribe(hass, topic, _count, qos=0)

    async def async_quiet(self, seconds: float, limit: float = 120.0) -> None:
        """Wait until no message came for `seconds` (at most `limit`)."""
        async with asyncio.timeout(limit):
            while True:
                if time.perf_counter() - self.last_at >= seconds:
                    return
                await asyncio.sleep(0.2)


async def async_drain(hass: HomeAssistant) -> None:
    """Let what a previous fleet left at the broker reach Home Assistant first.

    Home Assistant's connection stays up between scenarios: a stock broker may
    still hold answers of the previous fleet for it, which the next entry would
    take for its own (telemetry adds unknown vehicles).
    """
    traffic = Counter(last_at=time.perf_counter())
    unsubs = [
        await traffic.async_follow(hass, topic) for topic in ("v2g/#", "vehicle/#")
    ]
    try:
        await traffic.async_quiet(TELEMETRY_QUIET_S)
    finally:
        for unsub in unsubs:
            unsub()


class DepotScenario:
    """One V2G entry and one simulated depot on the current broker."""

    def __init__(
        self,
        harness: HassHarness,
        broker_port: int,
        profile: str,
        mode: str,
        size: int,
        log_dir: Path,
        dropped: DroppedFollower,
    ) -> None:
        """Prepare (run with :meth:`async_run`)."""
        self.harness = harness
        self.hass = harness.require()
        self.profile = profile
        self.mode = mode
        self.size = size
        self.dropped = dropped
        self.stats_path = log_dir / f"depot-{profile}-{mode}-{size}-stats.json"
        extra = ["--stats-file", str(self.stats_path)]
        if mode == GATEWAY_PER_VEHICLE_DISCOVERY:
            extra.append("--per-vehicle-discovery")
        self.simulator = simulator_process(
            broker_port,
            size,
            f"{profile[0]}{mode[0]}{'d' if mode.endswith('discovery') else ''}{size}-",
            log_dir / f"depot-{profile}-{mode}-{size}.log",
            gateway_size=0 if mode == PER_VEHICLE else GATEWAY_SIZE,
            extra_args=extra,
        )
        self.entry: ConfigEntry | None = None
        self.row: dict[str, Any] = {
            "profile": profile,
            "mode": mode,
            "vehicles": size,
            "gateways": 0 if mode == PER_VEHICLE else -(-size // GATEWAY_SIZE),
        }

    async def async_run(self) -> dict[str, Any]:
        """Discover, dispatch, verify; return the row (also on failure)."""
        loop = asyncio.get_running_loop()
        try:
            # Created and configured (a reload) before the fleet is there: only
            # the start below and `v2g.discover` ask it.
            self.entry = await self.harness.create_entry(
                DOMAIN,
                {
                    "name": f"depot {self.profile} {self.mode} {self.size}",
                    "advanced_topics": {},
                },
                options=OPTIONS,
            )
            # Its first request (sent once subscribed) goes before the fleet.
            async with asyncio.timeout(30):
                await self._coordinator().intake.gate.async_wait()
            await asyncio.sleep(1.0)
            await loop.run_in_executor(None, self.simulator.start)
            before = await self.dropped.async_read()
            await self._async_discover()
            after_discovery = await self.dropped.async_read()
            self.row["dropped_discovery"] = after_discovery - before
            await self._async_dispatch_and_verify()
            after_dispatch = await self.dropped.async_read()
            self.row["dropped_dispatch_and_telemetry"] = (
                after_dispatch - after_discovery
            )
            if self._known() > self.row.get("orders", 0):
                # The poll's answers added the vehicles whose discovery answers
                # were lost: a dispatch to all of them measures their acks.
                await self._async_dispatch_and_verify("after_poll_")
                after_second = await self.dropped.async_read()
                self.row["dropped_after_poll"] = after_second - after_dispatch
                after_dispatch = after_second
            self.row["dropped_total"] = after_dispatch - before
            self.row["issues"] = self._issues()
            self.row["broker_health"] = self._broker_health()
        except Exception as err:  # noqa: BLE001 - reported in the row
            self.row["error"] = f"{type(err).__name__}: {err}"
        finally:
            await self.async_stop()
        await asyncio.get_running_loop().run_in_executor(
            None, self._read_simulator_stats
        )
        return self.row

    def _coordinator(self) -> Any:
        assert self.entry is not None
        return self.entry.runtime_data

    def _known(self) -> int:
        return len(self._coordinator().fleet.vehicles)

    async def _async_discover(self) -> None:
        hass = self.hass
        assert self.entry is not None
        started = time.perf_counter()
        async with LoopBlockMonitor() as monitor:
            # As Home Assistant starting with the fleet there: the entry's own
            # request once subscribed, and an operator's `v2g.discover` a second
            # later (which joins the first while its answers still arrive).
            await hass.config_entries.async_reload(self.entry.entry_id)
            await asyncio.sleep(1.0)
            await hass.services.async_call(
                DOMAIN,
                "discover",
                {"config_entry_id": self.entry.entry_id},
                blocking=True,
                return_response=True,
            )
            known, changed_at = self._known(), time.perf_counter()
            limit = started + 60.0 + self.size / 100.0
            while known < self.size and time.perf_counter() < limit:
                await asyncio.sleep(0.2)
                now = time.perf_counter()
                if (current := self._known()) != known:
                    known, changed_at = current, now
                elif now - changed_at >= DISCOVERY_QUIET_S:
                    break
        self.row["known_after_discovery"] = known
        self.row["discovery_s"] = round(changed_at - started, 1)
        self.row["discovery_max_block_ms"] = round(monitor.max_block_ms)
        await self._async_settle_entities()

    async def _async_settle_entities(self) -> None:
        """Let the new vehicles' entities be added before dispatching."""
        assert self.entry is not None
        registry = er.async_get(self.hass)
        quiet_s = 1.0 + self.size / 5000.0
        last, changed_at = -1, time.perf_counter()
        while True:
            await self.hass.async_block_till_done()
            count = len(
                er.async_entries_for_config_entry(registry, self.entry.entry_id)
            )
            now = time.perf_counter()
            if count != last:
                last, changed_at = count, now
            elif now - changed_at >= quiet_s:
                self.row["entities"] = count
                return
            await asyncio.sleep(0.2)

    async def _async_dispatch_and_verify(self, prefix: str = "") -> None:
        """Dispatch, then wait for its verification and the poll's last answers."""
        hass = self.hass
        assert self.entry is not None
        entry_id = self.entry.entry_id
        if not self._known():
            return
        verified: asyncio.Future[dict[str, Any]] = hass.loop.create_future()

        @callback
        def _verified(event: Event[dict[str, Any]]) -> None:
            if event.data.get("config_entry_id") == entry_id and not verified.done():
                verified.set_result(dict(event.data))

        telemetry = Counter()
        unsubs = [
            hass.bus.async_listen("v2g_dispatch_verified", _verified),
            await telemetry.async_follow(hass, "v2g/telemetry/response/+"),
        ]
        try:
            await self._async_dispatch(prefix)
            async with asyncio.timeout(ACK_TIMEOUT_S + 60.0):
                event = await verified
            await telemetry.async_quiet(TELEMETRY_QUIET_S)
            self.row[f"{prefix}telemetry_received"] = telemetry.count
            self.row[f"{prefix}unmeasured"] = event.get("unmeasured")
        finally:
            for unsub in unsubs:
                unsub()

    async def _async_dispatch(self, prefix: str) -> None:
        """Dispatch to every known vehicle; its figures go to `<prefix>…` keys."""
        hass = self.hass
        assert self.entry is not None
        await hass.async_block_till_done()
        gc.collect()  # no collection debt of the discovery in the timed call
        async with LoopBlockMonitor() as monitor:
            started = time.perf_counter()
            response = await hass.services.async_call(
                DOMAIN,
                "dispatch",
                {
                    "config_entry_id": self.entry.entry_id,
                    "signal_type": "aFRR",
                    "power_kw": float(self._known()),
                    "duration": {"minutes": 15},
                    "strategy": "equal",
                },
                blocking=True,
                return_response=True,
            )
            self.row[f"{prefix}dispatch_s"] = round(time.perf_counter() - started, 3)
        self.row[f"{prefix}dispatch_max_block_ms"] = round(monitor.max_block_ms)
        self._count_orders(response, prefix)

    def _count_orders(self, response: Any, prefix: str) -> None:
        if not isinstance(response, dict):
            raise HarnessError(f"dispatch response: {response!r:.200}")
        first = response.get("vehicles") or {}
        fallback = response.get("fallback") or {}
        statuses: dict[str, int] = {}
        for order in first.values():
            status = str(order.get("status"))
            statuses[status] = statuses.get(status, 0) + 1
        figures = {
            "status": response.get("status"),
            "orders": len(first),
            "acknowledged": statuses.get("acknowledged", 0),
            "timeout": statuses.get("timeout", 0),
            "statuses": statuses,
            "fallback_orders": len(fallback),
            "fallback_acknowledged": sum(
                1 for o in fallback.values() if o.get("status") == "acknowledged"
            ),
        }
        self.row.update({f"{prefix}{key}": value for key, value in figures.items()})

    def _issues(self) -> list[str]:
        assert self.entry is not None
        suffix = f"_{self.entry.entry_id}"
        return sorted(
            issue_id.removesuffix(suffix)
            for (domain, issue_id) in ir.async_get(self.hass).issues
            if domain == DOMAIN and issue_id.endswith(suffix)
        )

    def _broker_health(self) -> dict[str, Any] | None:
        assert self.entry is not None
        health = broker_health(self.hass, self.entry.entry_id)
        return None if health is None else health.as_dict()

    async def async_stop(self) -> None:
        """Remove the entry and stop the simulator (it writes its counters)."""
        try:
            if self.entry is not None:
                await self.harness.remove_entry(self.entry.entry_id)
                self.entry = None
        finally:
            await asyncio.get_running_loop().run_in_executor(None, self.simulator.stop)

    def _read_simulator_stats(self) -> None:
        try:
            stats = json.loads(self.stats_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            self.row.setdefault("problems", []).append(f"simulator stats: {err}")
            return
        self.row["simulator"] = {
            key: stats.get(key, 0)
            for key in (
                "discovery_requests",
                "discovery_answers",
                "gateway_discovery_messages",
                "orders_received",
                "orders_acked",
                "gateway_batches",
                "gateway_ack_messages",
                "telemetry_polls",
                "telemetry_sent",
                "publish_failures",
            )
        }


async def run_depot(
    harness: HassHarness,
    profiles: Sequence[str],
    modes: Sequence[str],
    sizes: Sequence[int],
    log_dir: Path,
    new_broker: Callable[..., Any],
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Every profile, mode and size; Home Assistant's MQTT entry follows the broker."""
    rows: list[dict[str, Any]] = []
    hass = harness.require()
    for profile in profiles:
        broker = new_broker(limits=profile, sys_interval=SYS_INTERVAL_S)
        await asyncio.get_running_loop().run_in_executor(None, broker.start)
        dropped = DroppedFollower()
        try:
            await harness.switch_broker(broker.port)
            await dropped.async_start(hass)
            for mode in modes:
                for size in sizes:
                    say(f"depot: {profile} broker, {mode}, {size} vehicles")
                    await async_drain(hass)
                    scenario = DepotScenario(
                        harness, broker.port, profile, mode, size, log_dir, dropped
                    )
                    row = await scenario.async_run()
                    row["broker_config"] = broker.tuning_lines().strip().splitlines()
                    rows.append(row)
                    say(f"  {summary(row)}")
        finally:
            dropped.stop()
            await asyncio.get_running_loop().run_in_executor(None, broker.close)
    return rows


def summary(row: dict[str, Any]) -> str:
    """One line per scenario for the progress output."""
    if "error" in row:
        return f"error: {row['error']}"
    sim = row.get("simulator") or {}
    return (
        f"known {row.get('known_after_discovery')}/{row['vehicles']}"
        f" ({sim.get('discovery_answers')} announced), acked"
        f" {row.get('acknowledged')}/{row.get('orders')}"
        f" (after the poll {row.get('after_poll_acknowledged', '-')}"
        f"/{row.get('after_poll_orders', '-')}), telemetry"
        f" {row.get('telemetry_received')}/{sim.get('telemetry_sent')},"
        f" dropped {row.get('dropped_total')}, issues {row.get('issues')}"
    )
