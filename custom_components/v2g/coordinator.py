"""Fleet runtime of one config entry: wires the engine to Home Assistant.

`V2GFleetCoordinator` is a push-style ``DataUpdateCoordinator[FleetSnapshot]``:
nothing is polled. MQTT input (intake.py), hand-added vehicles
(manual_vehicles.py) and dispatches change the fleet; a new immutable
`FleetSnapshot` (engine/snapshot.py) is built in steps by the base class's
refresh: right away after a dispatch or a discovery, through the base class's
debouncer for telemetry, so state writes stay bounded. Orders go out through
the command channels (channels.py); what survives a restart lives in
persistence.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from datetime import timedelta
from typing import Any

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry
from homeassistant.const import ATTR_CONFIG_ENTRY_ID, EVENT_HOMEASSISTANT_STOP
from homeassistant.core import CALLBACK_TYPE, Event, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.debounce import Debouncer
from homeassistant.helpers.event import async_track_time_interval
from homeassistant.helpers.update_coordinator import DataUpdateCoordinator
from homeassistant.util import dt as dt_util

from .channels import GatewayChannel, OrderRouter, VehicleChannel
from .const import (
    CONF_ACK_TOPIC,
    CONF_COMMAND_TOPIC,
    CONF_DISCOVERY_RESPONSE_TOPIC,
    CONF_DISCOVERY_TOPIC,
    CONF_GATEWAY_ACK_TOPIC,
    CONF_GATEWAY_COMMAND_TOPIC,
    CONF_STATE_TOPIC,
    CONF_TELEMETRY_REQUEST_TOPIC,
    CONF_TELEMETRY_RESPONSE_TOPIC,
    DEFAULT_TOPICS,
    DISCOVERY_PAYLOAD,
    DISCOVERY_WINDOW_S,
    DOMAIN,
    EVENT_DISPATCH_COMPLETED,
    LOGGER,
    MAX_VEHICLE_PAYLOAD_BYTES,
    TELEMETRY_POLL_PAYLOAD,
    TELEMETRY_PUSH,
)
from .dispatching import build_request, invalid_value, starting_record
from .engine import (
    DispatchEngine,
    DispatchResult,
    EngineError,
    InvalidValueError,
    SignalType,
    Strategy,
    Vehicle,
    async_run_steps,
    decode_telemetry,
    decode_vehicle,
)
from .engine.availability import HistoryPrediction
from .engine.metrics import parse_iso_time
from .engine.snapshot import (
    FleetSnapshot,
    SnapshotBuilder,
    SnapshotInputs,
    VehicleSnapshot,
)
from .history import HistoryLearner
from .intake import InputLog, MqttIntake, Route
from .manual_vehicles import ManualVehicles
from .options import FleetOptions, availability_prediction, effective_options
from .persistence import FleetData, FleetPersistence
from .runtime import HassRuntime
from .storage import DispatchLogStore, interrupted_entry
from .transport import TopicTemplate, gateway_template
from .vehicle_updates import VehicleUpdates

type V2GConfigEntry = ConfigEntry[V2GFleetCoordinator]

__all__ = ["FleetSnapshot", "V2GConfigEntry", "V2GFleetCoordinator", "VehicleSnapshot"]

SUBSCRIBE_CONFIRM_TIMEOUT_S = 10.0
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
        self.qos = self.config.qos
        self.settings = self.config.settings
        self.persistence = persistence
        self.fleet = restored.fleet
        self.metrics = restored.metrics
        self.soc_known = restored.soc_known
        self.runtime = HassRuntime(hass)
        self.router = OrderRouter(
            hass,
            [
                GatewayChannel(
                    hass,
                    gateway_template(self.topics[CONF_GATEWAY_COMMAND_TOPIC]),
                    gateway_template(self.topics[CONF_GATEWAY_ACK_TOPIC]),
                    self.qos,
                ),
                VehicleChannel(
                    hass,
                    self._template(CONF_COMMAND_TOPIC),
                    self._template(CONF_ACK_TOPIC),
                    self.qos,
                ),
            ],
        )
        self.router.before_publish = self._async_save_running
        self.prediction = availability_prediction(self.config, self.fleet)
        self.engine = DispatchEngine(
            self.router,
            self.runtime,
            self.settings,
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
        self.vehicle_updates = VehicleUpdates(hass, entry)
        self.connected = False
        self._snapshots = SnapshotBuilder()
        self._discovery_sessions: list[dict[str, Vehicle]] = []
        self._dispatch_tasks: set[asyncio.Task[Any]] = set()
        self._unsubs: list[CALLBACK_TYPE] = []
        self.data = FleetSnapshot(connected=False, vehicles={})
        self._unsubs.append(
            self.async_add_listener(
                lambda: self.vehicle_updates.async_snapshot_published(self.data)
            )
        )

    def _template(self, key: str) -> TopicTemplate:
        return TopicTemplate(self.topics[key])

    @property
    def dispatch_log(self) -> DispatchLogStore:
        """The persisted log of finished dispatches (`storage.DispatchLogStore`)."""
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
        for record in await self.persistence.async_take_interrupted():
            completed = parse_iso_time(record.get("updated_at")) or dt_util.utcnow()
            response = self._interrupted(record, completed)
            LOGGER.warning(
                "Dispatch %s was interrupted by a stop of Home Assistant; "
                "recorded as interrupted",
                response.get("dispatch_id"),
            )
            self._record_finished(response)
        self.manual.async_start()
        self._unsubs.append(self.manual.async_stop)
        await self.intake.async_start(self._routes())
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
                hass.bus.async_listen(EVENT_HOMEASSISTANT_STOP, self._handle_stop),
            )
        )
        if self.config.telemetry_mode != TELEMETRY_PUSH:
            self._unsubs.append(
                async_track_time_interval(
                    hass,
                    self._async_poll_telemetry,
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
        self.config_entry.async_create_background_task(
            hass, self._async_initial_discovery(), f"{DOMAIN} initial discovery"
        )

    def _interrupted(self, record: dict[str, Any], now: Any) -> dict[str, Any]:
        # TEMPORARY until the engine's converter never raises.
        try:
            return self.engine.record_interrupted(record, now)
        except (EngineError, KeyError, TypeError, ValueError):
            return interrupted_entry(record, now)

    def _routes(self) -> list[Route]:
        """Answers of every channel, then discovery answers and telemetry."""
        routes = [
            route
            for channel in (*self.router.channels,)
            for route in channel.answer_routes(self.engine)
        ]
        routes.append(
            Route(
                "discovery",
                self._template(CONF_DISCOVERY_RESPONSE_TOPIC),
                MAX_VEHICLE_PAYLOAD_BYTES,
                self._apply_discovery,
                self.qos,
                needs_id=False,
            )
        )
        telemetry_keys = [CONF_STATE_TOPIC]
        if self.config.telemetry_mode != TELEMETRY_PUSH:
            telemetry_keys.append(CONF_TELEMETRY_RESPONSE_TOPIC)
        routes.extend(
            Route(
                "telemetry",
                self._template(key),
                MAX_VEHICLE_PAYLOAD_BYTES,
                self._apply_telemetry,
                0,
                needs_id=False,
            )
            for key in telemetry_keys
        )
        return routes

    async def async_shutdown(self) -> None:
        """Release every subscription, timer and listener; flush the stores.

        Registered on the entry's unload by the base class; runs once.
        """
        if self._shutdown_requested:
            return
        await super().async_shutdown()
        self.vehicle_updates.async_close()
        running = self.engine.pending_dispatches()
        for task in list(self._dispatch_tasks):
            task.cancel()
        if self._dispatch_tasks:
            await asyncio.wait(list(self._dispatch_tasks), timeout=5)
        now = dt_util.utcnow()
        for record in running:
            self._record_finished(self._interrupted(record, now))
            self.persistence.async_clear(str(record.get("dispatch_id")))
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
            safety=self.settings.safety,
            ack_rate_sla=self.config.ack_rate_sla,
            emission_factor=self.config.emission_factor,
            soc_known=self.soc_known,
            subentry_ids=self.manual.subentry_ids,
            prediction=self.prediction,
        )
        return await async_run_steps(
            self._snapshots.steps(self.fleet, self.metrics, inputs)
        )

    @callback
    def _fleet_changed(self) -> None:
        """Save and publish soon; bursts of changes coalesce into one snapshot."""
        self.persistence.async_schedule_save()
        self._refresh_debouncer.async_schedule_call()

    # --- periodic work ---------------------------------------------------------------

    async def _async_housekeeping(self, now: Any = None) -> None:
        """Refresh what changes with time: staleness, 24 h ack rate, energy."""
        self.manual.async_touch_live()
        if self.persistence.has_running:
            self.persistence.async_update_running(self.engine.pending_dispatches())
        self.persistence.async_schedule_save()
        await self.async_refresh()

    async def _async_save_running(self) -> None:
        """Save what the running dispatches know (their orders) before sending."""
        await self.persistence.async_save_running(self.engine.pending_dispatches())

    @callback
    def _handle_stop(self, event: Event) -> None:
        """Save what the running dispatches know before Home Assistant stops."""
        self.persistence.async_update_running(self.engine.pending_dispatches())

    async def _async_poll_telemetry(self, now: Any = None) -> None:
        if not self.connected:
            return
        try:
            await mqtt.async_publish(
                self.hass,
                self.topics[CONF_TELEMETRY_REQUEST_TOPIC],
                TELEMETRY_POLL_PAYLOAD,
                qos=self.qos,
                retain=False,
            )
        except HomeAssistantError as err:
            self.input_log.log_once(
                "poll_failed", "Telemetry poll not published: %s", err
            )

    # --- fleet input -----------------------------------------------------------------

    def _apply_discovery(self, vehicle_id: str | None, payload: bytes) -> bool:
        try:
            vehicle = self.manual.overlay(decode_vehicle(payload, vehicle_id))
        except EngineError:
            return False
        if self.fleet.upsert(vehicle, self.runtime.monotonic()):
            LOGGER.debug("Discovered vehicle %s", vehicle.vehicle_id)
        self.soc_known.add(vehicle.vehicle_id)
        for session in self._discovery_sessions:
            session.setdefault(vehicle.vehicle_id, vehicle)
        self._fleet_changed()
        return True

    def _apply_telemetry(self, vehicle_id: str | None, payload: bytes) -> bool:
        try:
            telemetry = decode_telemetry(payload, vehicle_id)
        except EngineError:
            return False
        self.fleet.apply_telemetry(telemetry, self.runtime.monotonic())
        if telemetry.soc is not None:
            self.soc_known.add(telemetry.vehicle_id)
        self._fleet_changed()
        return True

    @callback
    def _handle_connection(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        if connected:
            LOGGER.info("MQTT broker connected again; the fleet is available")
        else:
            # No order may leave after the reconnect before the broker confirmed
            # the ack subscriptions again (docs/protocol.md#subscriptions).
            self.intake.gate.async_reset()
            LOGGER.info("MQTT broker disconnected; the fleet entities are unavailable")
        self.config_entry.async_create_task(self.hass, self.async_refresh())

    # --- vehicles ------------------------------------------------------------------

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

    # --- dispatch and discovery ------------------------------------------------------

    async def async_dispatch(
        self,
        signal_type: SignalType | str,
        power_kw: float,
        duration_s: float,
        *,
        vehicle_ids: Sequence[str] | None = None,
        strategy: Strategy | str | None = None,
        dry_run: bool = False,
    ) -> DispatchResult:
        """Run one dispatch to the end and record it (docs/actions.md#v2gdispatch).

        Raises:
            ServiceValidationError: bad values or unknown vehicle ids.
            HomeAssistantError: MQTT is not connected / the ack subscription is not
                confirmed (nothing was published), or the fleet was unloaded.
        """
        request = build_request(
            signal_type,
            power_kw,
            duration_s,
            vehicle_ids=vehicle_ids,
            strategy=strategy,
            dry_run=dry_run,
            known=self.fleet.vehicles,
        )
        if not dry_run:
            await self._async_ready_to_publish()
            self.persistence.async_mark_started(
                starting_record(
                    request,
                    request.strategy
                    or self.settings.strategy_for(request.signal.signal_type),
                )
            )
        task = asyncio.current_task()
        if task is not None:
            self._dispatch_tasks.add(task)
        try:
            result = await self.engine.dispatch(request)
        except asyncio.CancelledError:
            if not self._shutdown_requested or task is None:
                raise
            task.uncancel()
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="dispatch_interrupted",
                translation_placeholders={"dispatch_id": request.dispatch_id},
            ) from None
        except InvalidValueError as err:
            self.persistence.async_clear(request.dispatch_id)
            raise invalid_value(err) from err
        finally:
            if task is not None:
                self._dispatch_tasks.discard(task)
        self.persistence.async_clear(request.dispatch_id)
        await asyncio.sleep(0)  # the engine's last step learnt from every order
        self._record_finished(result.as_response())
        await asyncio.sleep(0)  # 10,000 orders: two steps of ~15 ms
        self.vehicle_updates.stage_outcomes(result)
        # The new snapshot in steps of their own: recording and publishing
        # 10,000 vehicles at once would block the loop for > 100 ms.
        await asyncio.sleep(0)
        await self.async_refresh()
        return result

    async def _async_ready_to_publish(self) -> None:
        if not self.connected:
            raise HomeAssistantError(
                translation_domain=DOMAIN, translation_key="mqtt_not_connected"
            )
        try:
            async with asyncio.timeout(SUBSCRIBE_CONFIRM_TIMEOUT_S):
                await self.intake.gate.async_wait()
        except TimeoutError as err:
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="subscription_not_confirmed",
            ) from err

    def _record_finished(self, response: dict[str, Any]) -> None:
        """Account, log and announce a finished dispatch (docs/actions.md#events)."""
        self.metrics.record(response, dt_util.utcnow())
        self.persistence.dispatch_log.append(response)
        self.persistence.async_schedule_save()  # the metrics live in the fleet store
        self.hass.bus.async_fire(
            EVENT_DISPATCH_COMPLETED,
            {**response, ATTR_CONFIG_ENTRY_ID: self.config_entry.entry_id},
        )

    async def async_discover(self) -> list[Vehicle]:
        """Broadcast a discovery request and return the vehicles that answered.

        Raises:
            HomeAssistantError: MQTT is not connected or the request failed.
        """
        await self._async_ready_to_publish()
        session: dict[str, Vehicle] = {}
        self._discovery_sessions.append(session)
        try:
            try:
                await self._async_publish_discovery()
            except HomeAssistantError as err:
                raise HomeAssistantError(
                    translation_domain=DOMAIN,
                    translation_key="discovery_failed",
                    translation_placeholders={"error": str(err)},
                ) from err
            await asyncio.sleep(DISCOVERY_WINDOW_S)
        finally:
            self._discovery_sessions.remove(session)
        await self.async_refresh()
        return list(session.values())

    async def _async_initial_discovery(self) -> None:
        """Ask the fleet to introduce itself once the subscriptions are live."""
        try:
            async with asyncio.timeout(SUBSCRIBE_CONFIRM_TIMEOUT_S):
                await self.intake.gate.async_wait()
            await self._async_publish_discovery()
        except (TimeoutError, HomeAssistantError) as err:
            LOGGER.debug("Initial discovery request not sent: %s", err)

    async def _async_publish_discovery(self) -> None:
        await mqtt.async_publish(
            self.hass,
            self.topics[CONF_DISCOVERY_TOPIC],
            DISCOVERY_PAYLOAD,
            qos=self.qos,
            retain=False,
        )
