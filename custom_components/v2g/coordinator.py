"""Fleet runtime of one config entry: wires the engine to Home Assistant.

`V2GFleetCoordinator` is a push-style ``DataUpdateCoordinator[FleetSnapshot]``:
nothing is polled. What changes the fleet:

* MQTT input, through one table of routes (intake.py): the answers of the
  command channels (channels.py) and what vehicles tell about themselves
  (fleet_input.py);
* hand-added vehicles, the HA entities they follow and those that control them
  (manual_vehicles.py, controlled_vehicles.py: a command channel of its own);
* dispatches (dispatcher.py), whose delivery is measured afterwards
  (verification.py).

A new immutable `FleetSnapshot` (engine/snapshot.py) is built in steps by the
base class's refresh: right away after a dispatch or a discovery, through the
base class's debouncer for telemetry bursts, so state writes stay bounded.
Vehicle entities get it through vehicle_updates.py; what survives a restart
lives in persistence.py.
"""

from __future__ import annotations

from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.helpers.debounce import Debouncer
from homeassistant.helpers.event import async_track_time_interval
from homeassistant.helpers.update_coordinator import DataUpdateCoordinator
from homeassistant.util import dt as dt_util

from .channels import OrderRouter, mqtt_channels
from .const import DEFAULT_TOPICS, DISCOVERY_WINDOW_S, DOMAIN, LOGGER, TELEMETRY_PUSH
from .dispatch_log import DispatchLogStore
from .dispatcher import FleetDispatcher
from .engine import DispatchEngine, Vehicle, async_run_steps
from .engine.availability import HistoryPrediction
from .engine.snapshot import (
    FleetSnapshot,
    SnapshotBuilder,
    SnapshotInputs,
    VehicleSnapshot,
)
from .fleet_input import FleetInput
from .history import HistoryLearner
from .intake import InputLog, MqttIntake
from .manual_vehicles import ManualVehicles
from .options import FleetOptions, availability_prediction, effective_options
from .persistence import FleetData, FleetPersistence
from .runtime import HassRuntime
from .vehicle_updates import VehicleUpdates
from .verification import DeliveryVerifier

type V2GConfigEntry = ConfigEntry[V2GFleetCoordinator]

__all__ = ["FleetSnapshot", "V2GConfigEntry", "V2GFleetCoordinator", "VehicleSnapshot"]

HOUSEKEEPING_INTERVAL = timedelta(seconds=30)
TELEMETRY_COALESCE_S = 1.0


class V2GFleetCoordinator(DataUpdateCoordinator[FleetSnapshot]):
    """Runtime of one fleet (one config entry)."""

    config_entry: V2GConfigEntry

    def __init__(
        self,
        hass: HomeAssistant,
        entry: V2GConfigEntry,
        persistence: FleetPersistence,
        restored: FleetData,
    ) -> None:
        """Build the runtime around the restored fleet, from data and options."""
        # Telemetry bursts coalesce into one snapshot through the base class's
        # debouncer (kept to schedule it from callbacks without a task).
        self._refresh_debouncer: Debouncer[Coroutine[Any, Any, None]] = Debouncer(
            hass, LOGGER, cooldown=TELEMETRY_COALESCE_S, immediate=False
        )
        super().__init__(
            hass,
            LOGGER,
            config_entry=entry,
            name=f"{DOMAIN} {entry.title}",
            update_interval=None,
            always_update=True,
            request_refresh_debouncer=self._refresh_debouncer,
        )
        self.options: dict[str, Any] = effective_options(entry.options)
        self.config = FleetOptions.from_options(self.options)
        self.topics: dict[str, str] = {**DEFAULT_TOPICS, **dict(entry.data)}
        self.persistence = persistence
        self.fleet = restored.fleet
        self.metrics = restored.metrics
        self.soc_known = restored.soc_known
        self.runtime = HassRuntime(hass)
        self.connected = False
        qos = self.config.qos
        self.router = OrderRouter(hass, mqtt_channels(hass, self.topics, qos))
        self.router.before_publish = persistence.async_save_running
        self.prediction = availability_prediction(self.config, self.fleet)
        self.engine = DispatchEngine(
            self.router,
            self.runtime,
            self.config.settings,
            self.fleet,
            prediction=self.prediction,
        )
        self.input_log = InputLog()
        self.intake = MqttIntake(hass, self.input_log)
        self.manual = ManualVehicles(
            hass,
            entry,
            self.fleet,
            monotonic=self.runtime.monotonic,
            soc_known=self.soc_known,
            on_change=self._fleet_changed,
        )
        self.router.channels.insert(0, self.manual.controlled.channel)  # first wins
        self.vehicle_updates = VehicleUpdates(hass, entry)
        self.dispatcher = FleetDispatcher(
            hass,
            entry,
            self.engine,
            persistence=persistence,
            metrics=self.metrics,
            intake=self.intake,
            vehicle_updates=self.vehicle_updates,
            connected=lambda: self.connected,
            refresh=self.async_refresh,
            releases_itself=self.manual.controlled.channel.returns_to_idle_itself,
            release_at_end=self.config.release_at_end,
        )
        self.fleet_input = FleetInput(
            hass,
            self.topics,
            qos,
            fleet=self.fleet,
            soc_known=self.soc_known,
            manual=self.manual,
            monotonic=self.runtime.monotonic,
            on_change=self._fleet_changed,
            ready=self.dispatcher.async_ready_to_publish,
        )
        self.verifier = self.dispatcher.verifier = DeliveryVerifier(
            hass,
            entry,
            self.config,
            fleet=self.fleet,
            fleet_input=self.fleet_input,
            input_log=self.input_log,
            persistence=persistence,
            metrics=self.metrics,
            connected=lambda: self.connected,
            refresh=self.async_refresh,
        )
        self._snapshots = SnapshotBuilder()
        # Fleet changes seen, and how many of them the last snapshot includes.
        self._changes = 0
        self._snapshot_changes = 0
        self._unsubs: list[CALLBACK_TYPE] = []
        self.data = FleetSnapshot(connected=False, vehicles={})
        self._unsubs.append(
            self.async_add_listener(
                lambda: self.vehicle_updates.async_snapshot_published(self.data)
            )
        )

    @property
    def dispatch_log(self) -> DispatchLogStore:
        """The persisted log of finished dispatches."""
        return self.persistence.dispatch_log

    @property
    def gate_open(self) -> bool:
        """Return True once the broker confirmed the answer subscriptions."""
        return self.intake.gate.is_set

    # --- setup and teardown --------------------------------------------------------

    async def async_setup(self) -> None:
        """Record interrupted dispatches, subscribe, publish the first snapshot.

        Raises:
            HomeAssistantError: a subscription could not be made.
        """
        hass = self.hass
        self.dispatcher.record_interrupted(
            await self.persistence.async_take_interrupted()
        )
        self.manual.async_start()
        self._unsubs.append(self.manual.async_stop)
        polled = self.config.telemetry_mode != TELEMETRY_PUSH
        await self.intake.async_start(
            [
                *(
                    route
                    for channel in self.router.channels
                    for route in channel.answer_routes(self.engine)
                ),
                *self.fleet_input.routes(polled=polled),
            ]
        )
        self._unsubs.append(self.intake.async_stop)
        self.connected = mqtt.is_connected(hass)
        self._unsubs.extend(
            (
                mqtt.async_subscribe_connection_status(hass, self._handle_connection),
                async_track_time_interval(
                    hass,
                    self._async_housekeeping,
                    HOUSEKEEPING_INTERVAL,
                    name=f"{DOMAIN} housekeeping",
                ),
                self.persistence.async_follow_running(self.engine.pending_dispatches),
            )
        )
        if polled:
            self._unsubs.append(
                async_track_time_interval(
                    hass,
                    self._async_poll_telemetry_now,
                    timedelta(seconds=self.config.poll_interval),
                    name=f"{DOMAIN} telemetry poll",
                )
            )
        if isinstance(self.prediction, HistoryPrediction):
            learner = HistoryLearner(
                hass,
                self.config_entry,
                self.prediction,
                lookback_days=self.config.prediction_lookback_days,
                vehicle_ids=lambda: self.fleet.vehicles,
                configured_entities=self.manual.plugged_entities,
                on_learned=self.async_refresh,
            )
            if (stop_learning := learner.async_start()) is not None:
                self._unsubs.append(stop_learning)
        await self.async_refresh()
        if (stop_releasing := self.dispatcher.async_start()) is not None:
            self._unsubs.append(stop_releasing)
        self.config_entry.async_create_background_task(
            hass,
            self.fleet_input.async_initial_discovery(self.intake.gate),
            f"{DOMAIN} initial discovery",
        )

    async def async_shutdown(self) -> None:
        """Release every subscription, timer and listener; flush the stores.

        Registered on the entry's unload by the base class; runs once.
        """
        if self._shutdown_requested:
            return
        await super().async_shutdown()
        self.vehicle_updates.async_close()
        await self.dispatcher.async_stop()
        while self._unsubs:
            self._unsubs.pop()()
        self.runtime.close()
        await self.persistence.async_flush()

    # --- snapshots -----------------------------------------------------------------

    def stale_ids(self) -> set[str]:
        """The vehicles silent for longer than the stale timeout."""
        return set(
            self.fleet.stale_ids(self.runtime.monotonic(), self.config.stale_timeout)
        )

    async def _async_update_data(self) -> FleetSnapshot:
        """Build the snapshot in steps (the loop runs between two steps)."""
        inputs = SnapshotInputs(
            now=dt_util.utcnow(),
            stale=self.stale_ids(),
            connected=self.connected,
            safety=self.config.settings.safety,
            ack_rate_sla=self.config.ack_rate_sla,
            emission_factor=self.config.emission_factor,
            soc_known=self.soc_known,
            subentry_ids=self.manual.subentry_ids,
            prediction=self.prediction,
        )
        begun = self._changes
        snapshot = await async_run_steps(
            self._snapshots.steps(self.fleet, self.metrics, inputs)
        )
        self._snapshot_changes = begun
        return snapshot

    @callback
    def _async_refresh_finished(self) -> None:
        """Refresh again soon if the fleet changed while the snapshot was built.

        The base class drops a debounced refresh that comes while another one
        runs; a stepped build may have read a vehicle before it changed.
        """
        if self._snapshot_changes != self._changes:
            self._refresh_debouncer.async_schedule_call()

    @callback
    def _fleet_changed(self) -> None:
        """Save and publish soon; bursts of changes coalesce into one snapshot."""
        self._changes += 1
        self.persistence.async_schedule_save()
        self._refresh_debouncer.async_schedule_call()

    # --- periodic work ---------------------------------------------------------------

    async def _async_housekeeping(self, now: Any = None) -> None:
        """Refresh what changes with time: staleness, 24 h ack rate, energy."""
        self.manual.async_touch_live()
        self.persistence.async_update_running()
        self.persistence.async_schedule_save()
        await self.async_refresh()

    async def _async_poll_telemetry_now(self, now: Any = None) -> None:
        if self.connected:
            await self.fleet_input.async_poll_telemetry(self.input_log)

    @callback
    def _handle_connection(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        if connected:
            LOGGER.info("MQTT broker connected again; the fleet is available")
        else:
            # No order may leave after the reconnect before the broker confirmed
            # the ack subscriptions again (docs/protocol.md#subscription-confirmation).
            self.intake.gate.async_reset()
            LOGGER.info("MQTT broker disconnected; the fleet entities are unavailable")
        self.config_entry.async_create_task(self.hass, self.async_refresh())

    # --- vehicles, dispatch and discovery ------------------------------------------

    def is_stale(self, vehicle_id: str) -> bool:
        """Return True if the vehicle is unknown or silent for too long."""
        return vehicle_id not in self.fleet.vehicles or vehicle_id in self.stale_ids()

    @callback
    def async_remove_vehicle(self, vehicle_id: str) -> None:
        """Forget a vehicle (its device is being removed)."""
        self.fleet.remove(vehicle_id)
        self.soc_known.discard(vehicle_id)
        self.persistence.async_schedule_save()
        self.config_entry.async_create_task(self.hass, self.async_refresh())

    async def async_discover(self) -> list[Vehicle]:
        """Broadcast a discovery request and return the vehicles that answered.

        Raises:
            HomeAssistantError: MQTT is not connected or the request failed.
        """
        found = await self.fleet_input.async_discover(DISCOVERY_WINDOW_S)
        await self.async_refresh()
        return found
