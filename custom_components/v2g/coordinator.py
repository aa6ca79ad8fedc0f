"""Fleet runtime: the engine, the MQTT transport, the stores and the entity data.

`V2GFleetCoordinator` is a push-style ``DataUpdateCoordinator[FleetSnapshot]``:
nothing is polled; MQTT callbacks, tracked HA entities and dispatches change the
fleet, and a new immutable :class:`FleetSnapshot` is published at most once per
dispatch and coalesced for telemetry, so state writes stay bounded.

Error mapping happens here, at one boundary: engine validation errors become
translated ``ServiceValidationError``; MQTT trouble becomes a translated
``HomeAssistantError``; input from the wire never raises (it is counted).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
import functools
from itertools import islice
import math
from typing import Any

from homeassistant.components import mqtt
from homeassistant.config_entries import (
    SIGNAL_CONFIG_ENTRY_CHANGED,
    ConfigEntry,
    ConfigEntryChange,
)
from homeassistant.const import (
    EVENT_HOMEASSISTANT_STOP,
    STATE_ON,
    STATE_UNAVAILABLE,
    STATE_UNKNOWN,
)
from homeassistant.core import (
    CALLBACK_TYPE,
    Event,
    EventStateChangedData,
    HomeAssistant,
    callback,
)
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers.debounce import Debouncer
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.event import (
    async_track_state_change_event,
    async_track_time_interval,
)
from homeassistant.helpers.update_coordinator import DataUpdateCoordinator
from homeassistant.util import dt as dt_util, ulid as ulid_util

from .config_flow import default_options
from .const import (
    ATTR_CONFIG_ENTRY_ID,
    CONF_ACK_RATE_SLA,
    CONF_ACK_TIMEOUT,
    CONF_ACK_TOPIC,
    CONF_BATTERY_KWH,
    CONF_COMMAND_TOPIC,
    CONF_DISCOVERY_RESPONSE_TOPIC,
    CONF_DISCOVERY_TOPIC,
    CONF_EMISSION_FACTOR,
    CONF_FALLBACK,
    CONF_GATEWAY_ACK_TOPIC,
    CONF_GATEWAY_COMMAND_TOPIC,
    CONF_IS_V2G,
    CONF_MAX_POWER,
    CONF_MIN_SOC,
    CONF_PLUGGED_ENTITY,
    CONF_POLL_INTERVAL,
    CONF_PREDICTION,
    CONF_PREDICTION_PROFILE,
    CONF_QOS,
    CONF_SAFE_DISCHARGE_FLOOR,
    CONF_SOC_CONSTRAINTS,
    CONF_SOC_ENTITY,
    CONF_STALE_TIMEOUT,
    CONF_STATE_TOPIC,
    CONF_STRATEGY_PREFIX,
    CONF_TELEMETRY_MODE,
    CONF_TELEMETRY_REQUEST_TOPIC,
    CONF_TELEMETRY_RESPONSE_TOPIC,
    CONF_VEHICLE_ID,
    DEFAULT_TOPICS,
    DISCOVERY_PAYLOAD,
    DISCOVERY_WINDOW_S,
    DOMAIN,
    EVENT_DISPATCH_COMPLETED,
    LOGGER,
    MAX_VEHICLE_PAYLOAD_BYTES,
    PREDICTION_HISTORY,
    PREDICTION_STATIC,
    SUBENTRY_TYPE_VEHICLE,
    TELEMETRY_POLL_PAYLOAD,
    TELEMETRY_PUSH,
)
from .engine import (
    MAX_GATEWAY_PAYLOAD_BYTES,
    DispatchEngine,
    DispatchRequest,
    DispatchResult,
    DispatchSettings,
    EngineError,
    FallbackMode,
    FleetState,
    FlexibilitySignal,
    InfeasiblePlanError,
    InvalidValueError,
    OrderOutcome,
    OrderStatus,
    PredictionEngine,
    SafetySettings,
    SignalType,
    StaticProfile,
    Steps,
    Strategy,
    Vehicle,
    async_run_steps,
    chunks,
    co2_avoided_g,
    decode_telemetry,
    decode_vehicle,
    evaluate_eligibility,
    parse_hourly_profile,
    plan_day_ahead,
    run_steps,
)
from .history import HistoryPrediction
from .storage import DispatchLogStore, FleetStore, InFlightStore
from .transport import (
    MqttOrderTransport,
    SubscriptionGate,
    TopicTemplate,
    async_subscribe_all,
    gateway_template,
)

type V2GConfigEntry = ConfigEntry[V2GFleetCoordinator]

OUTCOME_EVENT_TYPES: tuple[str, ...] = (
    OrderStatus.ACKNOWLEDGED.value,
    OrderStatus.REJECTED.value,
    OrderStatus.TIMEOUT.value,
)
_OUTCOME_STATUSES = frozenset(OrderStatus(value) for value in OUTCOME_EVENT_TYPES)

SUBSCRIBE_CONFIRM_TIMEOUT_S = 10.0
HOUSEKEEPING_INTERVAL = timedelta(seconds=30)
TELEMETRY_COALESCE_S = 1.0
ACK_RATE_WINDOW = timedelta(hours=24)
LATENCY_SAMPLES = 1000
FLEXIBILITY_PROBE_S = 900.0
METRICS_VERSION = 1
# Vehicles whose entities are updated between two yields to the event loop (a
# vehicle costs up to ~8 state writes of ~50 µs).
VEHICLE_UPDATE_CHUNK = 100

type OutcomeCallback = Callable[[str, dict[str, Any]], None]
# An outcome event waiting for its vehicle's entity update: result, outcome, round.
type _QueuedOutcome = tuple[DispatchResult, OrderOutcome, str]


# --- entity data ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class VehicleSnapshot:
    """What the entities of one vehicle show."""

    vehicle_id: str
    is_v2g: bool
    subentry_id: str | None
    stale: bool
    soc: float | None
    plugged_in: bool | None
    setpoint_kw: float
    ack_rate: float | None
    last_ack_latency_ms: float | None
    energy_discharged_kwh: float
    energy_charged_kwh: float
    co2_avoided_g: float
    availability_forecast: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetSnapshot:
    """What the fleet entities show (fractions for rates)."""

    connected: bool
    vehicles: Mapping[str, VehicleSnapshot]
    vehicles_available: int = 0
    flexibility_up_kw: float = 0.0
    flexibility_down_kw: float = 0.0
    last_ack_rate: float | None = None
    ack_rate_24h: float | None = None
    ack_rate_sla: float = 0.9
    last_dispatch_at: datetime | None = None
    last_status: str | None = None
    last_requested_kw: float | None = None
    last_acknowledged_kw: float | None = None
    dispatches: int = 0
    orders_sent: int = 0
    orders_acknowledged: int = 0
    publish_failures: int = 0
    ack_latency_p95_ms: float | None = None


# --- metrics ----------------------------------------------------------------------


@dataclass(slots=True)
class DispatchMetrics:
    """Totals and recent samples of the dispatches (persisted)."""

    dispatches: int = 0
    orders_sent: int = 0
    orders_acknowledged: int = 0
    publish_failures: int = 0
    # (completed_at unix seconds, acknowledged orders, sent orders)
    window: deque[tuple[float, int, int]] = field(default_factory=deque)
    latencies_ms: deque[float] = field(
        default_factory=lambda: deque(maxlen=LATENCY_SAMPLES)
    )
    last: dict[str, Any] | None = None

    def record(self, response: Mapping[str, Any], outcomes: Sequence[Any]) -> None:
        """Account a finished dispatch (dry runs only update ``last``)."""
        self.last = {
            key: response.get(key)
            for key in (
                "dispatch_id",
                "status",
                "requested_kw",
                "acknowledged_kw",
                "ack_rate",
                "started_at",
                "completed_at",
            )
        }
        if response.get("status") == "planned":
            return
        sent = acked = failed = 0
        for outcome in outcomes:
            status = outcome.get("status")
            if status == OrderStatus.PUBLISH_FAILED:
                failed += 1
            if status in (
                OrderStatus.ACKNOWLEDGED,
                OrderStatus.REJECTED,
                OrderStatus.TIMEOUT,
            ):
                sent += 1
            if status == OrderStatus.ACKNOWLEDGED:
                acked += 1
                latency = outcome.get("latency_ms")
                if isinstance(latency, (int, float)):
                    self.latencies_ms.append(float(latency))
        self.dispatches += 1
        self.orders_sent += sent
        self.orders_acknowledged += acked
        self.publish_failures += failed
        completed = _parse_time(response.get("completed_at")) or dt_util.utcnow()
        self.window.append((completed.timestamp(), acked, sent))

    def ack_rate_24h(self, now: datetime) -> float | None:
        """Acknowledged / sent orders of the dispatches of the last 24 h."""
        horizon = (now - ACK_RATE_WINDOW).timestamp()
        while self.window and self.window[0][0] < horizon:
            self.window.popleft()
        sent = sum(item[2] for item in self.window)
        if not sent:
            return None
        return sum(item[1] for item in self.window) / sent

    def latency_p95(self) -> float | None:
        """95th percentile of the recent ack latencies (nearest rank)."""
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        rank = max(math.ceil(0.95 * len(ordered)) - 1, 0)
        return round(ordered[rank], 3)

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict."""
        return {
            "version": METRICS_VERSION,
            "dispatches": self.dispatches,
            "orders_sent": self.orders_sent,
            "orders_acknowledged": self.orders_acknowledged,
            "publish_failures": self.publish_failures,
            "window": [list(item) for item in self.window],
            "latencies_ms": list(self.latencies_ms),
            "last": self.last,
        }

    @classmethod
    def from_dict(cls, data: Any) -> DispatchMetrics:
        """Inverse of `as_dict`; anything unreadable starts from zero."""
        metrics = cls()
        if not isinstance(data, dict) or data.get("version") != METRICS_VERSION:
            return metrics
        try:
            metrics.dispatches = int(data.get("dispatches", 0))
            metrics.orders_sent = int(data.get("orders_sent", 0))
            metrics.orders_acknowledged = int(data.get("orders_acknowledged", 0))
            metrics.publish_failures = int(data.get("publish_failures", 0))
            metrics.window.extend(
                (float(t), int(a), int(s)) for t, a, s in data.get("window", [])
            )
            metrics.latencies_ms.extend(float(v) for v in data.get("latencies_ms", []))
            last = data.get("last")
            metrics.last = last if isinstance(last, dict) else None
        except (TypeError, ValueError):
            return cls()
        return metrics


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    parsed = dt_util.parse_datetime(value)
    if parsed is None or parsed.tzinfo is None:
        return None
    return parsed


# --- engine runtime -----------------------------------------------------------------


class HassRuntime:
    """The engine's clock and scheduler, on Home Assistant's event loop."""

    def __init__(self, hass: HomeAssistant) -> None:
        """Bind to the loop of ``hass``."""
        self._loop = hass.loop
        self._handles: set[asyncio.TimerHandle] = set()

    def now(self) -> datetime:
        """Return the current UTC time."""
        return dt_util.utcnow()

    def monotonic(self) -> float:
        """Return the loop's monotonic time."""
        return self._loop.time()

    def create_future(self) -> asyncio.Future[None]:
        """Return a future of the loop."""
        return self._loop.create_future()

    async def sleep(self, seconds: float) -> None:
        """Wait on the loop."""
        await asyncio.sleep(seconds)

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Any:
        """Schedule ``callback``; the handle is cancelled on unload at the latest."""
        handles = self._handles

        def _run() -> None:
            handles.discard(handle)
            callback()

        handle = self._loop.call_later(seconds, _run)
        handles.add(handle)
        return handle

    def close(self) -> None:
        """Cancel every pending timer."""
        while self._handles:
            self._handles.pop().cancel()


# --- input guard ---------------------------------------------------------------------


type _Handler = Callable[[V2GFleetCoordinator, mqtt.ReceiveMessage], None]


def _guarded(kind: str) -> Callable[[_Handler], _Handler]:
    """Make an MQTT message handler never raise (unexpected errors are counted)."""

    def wrap(func: _Handler) -> _Handler:
        @functools.wraps(func)
        def handler(self: V2GFleetCoordinator, msg: mqtt.ReceiveMessage) -> None:
            try:
                func(self, msg)
            except Exception:  # noqa: BLE001 - a message must never break the loop
                self.drop(kind, "error", msg.topic, exc_info=True)

        return handler

    return wrap


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray):
        return bytes(payload)
    return str(payload).encode()


# --- the coordinator ----------------------------------------------------------------


class V2GFleetCoordinator(DataUpdateCoordinator[FleetSnapshot]):
    """Runtime of one fleet (one config entry)."""

    config_entry: V2GConfigEntry

    def __init__(self, hass: HomeAssistant, entry: V2GConfigEntry) -> None:
        """Build the runtime from the entry's data (topics) and options."""
        super().__init__(
            hass,
            LOGGER,
            config_entry=entry,
            name=f"{DOMAIN} {entry.title}",
            update_interval=None,
            always_update=True,
        )
        self.options: dict[str, Any] = {**default_options(), **entry.options}
        self.topics: dict[str, str] = {**DEFAULT_TOPICS, **dict(entry.data)}
        self.qos = int(self.options[CONF_QOS])
        self.command_topic = TopicTemplate(self.topics[CONF_COMMAND_TOPIC])
        self.ack_topic = TopicTemplate(self.topics[CONF_ACK_TOPIC])
        self.discovery_response_topic = TopicTemplate(
            self.topics[CONF_DISCOVERY_RESPONSE_TOPIC]
        )
        self.state_topic = TopicTemplate(self.topics[CONF_STATE_TOPIC])
        self.telemetry_response_topic = TopicTemplate(
            self.topics[CONF_TELEMETRY_RESPONSE_TOPIC]
        )
        self.gateway_command_topic = gateway_template(
            self.topics[CONF_GATEWAY_COMMAND_TOPIC]
        )
        self.gateway_ack_topic = gateway_template(self.topics[CONF_GATEWAY_ACK_TOPIC])

        self.stale_timeout = float(self.options[CONF_STALE_TIMEOUT])
        self.emission_factor = float(self.options[CONF_EMISSION_FACTOR])
        self.ack_rate_sla = float(self.options[CONF_ACK_RATE_SLA]) / 100.0
        self.telemetry_mode = str(self.options[CONF_TELEMETRY_MODE])
        self.settings = self._build_settings(self.options)

        self.fleet = FleetState()
        self.runtime = HassRuntime(hass)
        self.transport = MqttOrderTransport(
            hass, self.command_topic, self.gateway_command_topic, self.qos
        )
        self.transport.before_publish = self._async_save_in_flight
        self.prediction: PredictionEngine | None = self._build_prediction()
        self.engine = DispatchEngine(
            self.transport,
            self.runtime,
            self.settings,
            self.fleet,
            prediction=self.prediction,
        )
        self.fleet_store = FleetStore(hass, entry.entry_id)
        self.dispatch_log = DispatchLogStore(hass, entry.entry_id)
        self.in_flight = InFlightStore(hass, entry.entry_id)
        self.metrics = DispatchMetrics()
        self.counters: dict[str, int] = {}
        self.gate = SubscriptionGate()

        self.connected = False
        self._warned: set[str] = set()
        self._soc_known: set[str] = set()
        self._manual: dict[str, tuple[str, Mapping[str, Any]]] = {}
        self._entity_vehicles: dict[str, list[str]] = {}
        self._untrack_entities: CALLBACK_TYPE | None = None
        self._outcome_listeners: dict[str, list[OutcomeCallback]] = {}
        # Vehicle entities: listeners per vehicle, the vehicles (and outcome
        # events) still to hand to them, the task that does it in chunks; the
        # outcome events of a dispatch wait for its snapshot (staged).
        self._vehicle_listeners: dict[str, list[CALLBACK_TYPE]] = {}
        self._pending_vehicles: dict[str, None] = {}
        self._pending_outcomes: dict[str, list[_QueuedOutcome]] = {}
        self._staged_outcomes: dict[str, list[_QueuedOutcome]] = {}
        self._vehicle_task: asyncio.Task[None] | None = None
        self._published: FleetSnapshot | None = None
        # Snapshots begun, and the newest one published (stepped builds overlap).
        self._snapshots_begun = 0
        self._newest_published = 0
        # The values of each vehicle's latest snapshot: unchanged vehicles keep
        # their snapshot object (`_mark_vehicles` compares identities).
        self._vehicle_values: dict[str, tuple[tuple[Any, ...], VehicleSnapshot]] = {}
        self._discovery_sessions: list[dict[str, Vehicle]] = []
        self._dispatch_tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._unsubs: list[CALLBACK_TYPE] = []
        self._refresh_debouncer = Debouncer(
            hass,
            LOGGER,
            cooldown=TELEMETRY_COALESCE_S,
            immediate=False,
            function=self._async_refresh_snapshot,
        )
        self.data = FleetSnapshot(connected=False, vehicles={})

    # --- options --------------------------------------------------------------------

    @staticmethod
    def _build_settings(options: Mapping[str, Any]) -> DispatchSettings:
        strategies: dict[SignalType, Strategy] = {}
        for signal_type in SignalType:
            value = options.get(f"{CONF_STRATEGY_PREFIX}{signal_type.value}")
            if isinstance(value, str):
                strategies[signal_type] = Strategy.parse(value)
        return DispatchSettings(
            strategies=strategies or DispatchSettings().strategies,
            fallback=FallbackMode(str(options[CONF_FALLBACK])),
            ack_timeout_s=float(options[CONF_ACK_TIMEOUT]),
            safety=SafetySettings(
                min_soc=float(options[CONF_MIN_SOC]) / 100.0,
                safe_discharge_floor=float(options[CONF_SAFE_DISCHARGE_FLOOR]) / 100.0,
                soc_constraints=bool(options[CONF_SOC_CONSTRAINTS]),
            ),
            stale_timeout_s=float(options[CONF_STALE_TIMEOUT]),
        )

    def _build_prediction(self) -> PredictionEngine | None:
        mode = self.options.get(CONF_PREDICTION)
        if mode not in (PREDICTION_STATIC, PREDICTION_HISTORY):
            return None
        static: StaticProfile | None = None
        try:
            hourly = parse_hourly_profile(str(self.options[CONF_PREDICTION_PROFILE]))
        except InvalidValueError as err:
            LOGGER.warning("Ignoring the availability profile: %s", err)
        else:
            static = StaticProfile(
                hourly, tz=dt_util.get_default_time_zone(), fleet=self.fleet
            )
        if mode == PREDICTION_HISTORY:
            # Learnt from the recorder by history.py (refreshed in place in the
            # background); the static profile answers until then.
            return HistoryPrediction(
                static, tz=dt_util.get_default_time_zone(), fleet=lambda: self.fleet
            )
        return static

    # --- setup and teardown --------------------------------------------------------

    async def async_setup(self) -> None:
        """Load the stores, subscribe, and publish the first snapshot.

        Raises:
            HomeAssistantError: a subscription could not be made.
        """
        hass = self.hass
        entry = self.config_entry
        await self._async_load()
        self._sync_subentries()

        subscriptions: list[tuple[str, Any, int]] = [
            (self.ack_topic.wildcard, self._handle_ack, self.qos),
            (self.gateway_ack_topic.wildcard, self._handle_gateway_ack, self.qos),
            (
                self.discovery_response_topic.wildcard,
                self._handle_discovery,
                self.qos,
            ),
            (self.state_topic.wildcard, self._handle_telemetry, 0),
        ]
        if self.telemetry_mode != TELEMETRY_PUSH:
            subscriptions.append(
                (self.telemetry_response_topic.wildcard, self._handle_telemetry, 0)
            )
        # The gate is armed before subscribing so no confirmation can be missed.
        self.gate.async_watch(hass, self.ack_topic.wildcard, self.qos)
        self.gate.async_watch(hass, self.gateway_ack_topic.wildcard, self.qos)
        self._unsubs.append(self.gate.async_close)
        self._unsubs.extend(await async_subscribe_all(hass, subscriptions))

        self.connected = mqtt.is_connected(hass)
        self._unsubs.append(
            mqtt.async_subscribe_connection_status(hass, self._handle_connection)
        )
        self._unsubs.append(
            async_dispatcher_connect(
                hass, SIGNAL_CONFIG_ENTRY_CHANGED, self._handle_entry_changed
            )
        )
        self._unsubs.append(
            async_track_time_interval(
                hass,
                self._async_housekeeping,
                HOUSEKEEPING_INTERVAL,
                name=f"{DOMAIN} housekeeping",
            )
        )
        if self.telemetry_mode != TELEMETRY_PUSH:
            self._unsubs.append(
                async_track_time_interval(
                    hass,
                    self._async_poll_telemetry,
                    timedelta(seconds=float(self.options[CONF_POLL_INTERVAL])),
                    name=f"{DOMAIN} telemetry poll",
                )
            )
        self._unsubs.append(
            hass.bus.async_listen(EVENT_HOMEASSISTANT_STOP, self._handle_stop)
        )
        self.data = self._build_snapshot()
        entry.async_create_background_task(
            hass, self._async_initial_discovery(), f"{DOMAIN} initial discovery"
        )

    async def _async_load(self) -> None:
        saved = await self.fleet_store.async_load() or {}
        now_mono = self.runtime.monotonic()
        fleet_data = saved.get("fleet")
        if isinstance(fleet_data, dict):
            try:
                fleet = FleetState.from_dict(fleet_data)
            except InvalidValueError as err:
                LOGGER.warning("Ignoring the saved fleet state: %s", err)
            else:
                self._adopt_fleet(fleet)
        utcnow = dt_util.utcnow()
        last_seen = saved.get("last_seen")
        if isinstance(last_seen, dict):
            for vehicle_id, when in last_seen.items():
                seen = _parse_time(when)
                if seen is not None and vehicle_id in self.fleet.vehicles:
                    age = max((utcnow - seen).total_seconds(), 0.0)
                    self.fleet.last_seen[vehicle_id] = now_mono - age
        soc_known = saved.get("soc_known")
        if isinstance(soc_known, list):
            self._soc_known = {v for v in soc_known if v in self.fleet.vehicles}
        self.metrics = DispatchMetrics.from_dict(saved.get("metrics"))

        await self.dispatch_log.async_load()
        for record in await self.in_flight.async_take():
            response = self._interrupted(record, utcnow)
            LOGGER.warning(
                "Dispatch %s was interrupted by a stop of Home Assistant; "
                "recorded as interrupted",
                response.get("dispatch_id"),
            )
            self._record_finished(response, fire=True)

    def _adopt_fleet(self, fleet: FleetState) -> None:
        """Use a restored fleet everywhere the old (empty) one was referenced."""
        self.fleet = fleet
        self.engine.fleet = fleet
        if isinstance(self.prediction, StaticProfile):
            self.prediction.fleet = fleet

    def _interrupted(self, record: Mapping[str, Any], now: datetime) -> dict[str, Any]:
        """The `interrupted` response of a record (the fleet keeps the answers)."""
        completed = _parse_time(record.get("updated_at")) or now
        return self.engine.record_interrupted(record, completed)

    async def async_shutdown(self) -> None:
        """Release every subscription, timer and listener; flush the stores.

        Registered on the entry's unload by the base class; runs once.
        """
        if self._closing:
            return
        self._closing = True
        await super().async_shutdown()
        if self._vehicle_task is not None:
            self._vehicle_task.cancel()
            self._vehicle_task = None
        self._pending_vehicles.clear()
        self._pending_outcomes.clear()
        self._staged_outcomes.clear()
        running = self.engine.pending_dispatches()
        for task in list(self._dispatch_tasks):
            task.cancel()
        if self._dispatch_tasks:
            await asyncio.wait(list(self._dispatch_tasks), timeout=5)
        now = dt_util.utcnow()
        for record in running:
            response = self._interrupted(record, now)
            self._record_finished(response, fire=True)
            self.in_flight.clear(str(record.get("dispatch_id")))
        await self.in_flight.async_flush()
        while self._unsubs:
            self._unsubs.pop()()
        if self._untrack_entities is not None:
            self._untrack_entities()
            self._untrack_entities = None
        self._refresh_debouncer.async_shutdown()
        self.runtime.close()
        await self.fleet_store.async_flush()
        await self.dispatch_log.async_flush()

    # --- persistence ------------------------------------------------------------------

    def _fleet_data_steps(self) -> Steps[dict[str, Any]]:
        """What the fleet store saves, built in steps (10,000 vehicles: ~60 ms)."""
        fleet_data = yield from self.fleet.as_dict_steps()
        now_mono = self.runtime.monotonic()
        utcnow = dt_util.utcnow()
        last_seen: dict[str, str] = {}
        for chunk in chunks(list(self.fleet.last_seen.items())):
            last_seen.update(
                (vehicle_id, (utcnow - timedelta(seconds=now_mono - seen)).isoformat())
                for vehicle_id, seen in chunk
            )
            yield
        return {
            "fleet": fleet_data,
            "last_seen": last_seen,
            "soc_known": sorted(self._soc_known),
            "metrics": self.metrics.as_dict(),
        }

    @callback
    def _schedule_save(self) -> None:
        self.fleet_store.async_schedule_save(self._fleet_data_steps)

    # --- snapshots --------------------------------------------------------------------

    def _stale_ids(self) -> set[str]:
        return set(self.fleet.stale_ids(self.runtime.monotonic(), self.stale_timeout))

    def _build_snapshot(self) -> FleetSnapshot:
        return run_steps(self._snapshot_steps())

    async def _async_build_snapshot(self) -> FleetSnapshot | None:
        """Build a snapshot, letting the loop run between chunks of vehicles.

        Returns None when it is out of date before it is done: a snapshot begun
        later was published meanwhile (two builds can overlap), or the fleet
        is closing.
        """
        self._snapshots_begun += 1
        begun = self._snapshots_begun
        snapshot = await async_run_steps(self._snapshot_steps())
        if self._closing or begun < self._newest_published:
            return None
        self._newest_published = begun
        return snapshot

    def _snapshot_steps(self) -> Steps[FleetSnapshot]:
        """The snapshot of the fleet, `STEP_SIZE` vehicles per step.

        The vehicles are listed first; one that arrives meanwhile is in the next
        snapshot. Unchanged vehicles keep their snapshot object (the cache is
        replaced when the snapshot is complete).
        """
        fleet = self.fleet
        now = dt_util.utcnow()
        fleet.accrue(now)
        stale = self._stale_ids()
        setpoints = fleet.setpoints
        vehicles: dict[str, VehicleSnapshot] = {}
        live: list[Vehicle] = []
        cache = self._vehicle_values
        new_cache: dict[str, tuple[tuple[Any, ...], VehicleSnapshot]] = {}
        for chunk in chunks(list(fleet.vehicles.items())):
            for vehicle_id, vehicle in chunk:
                is_stale = vehicle_id in stale
                if not is_stale:
                    live.append(vehicle)
                values = self._vehicle_values_of(
                    vehicle_id, vehicle, is_stale, setpoints, now
                )
                cached = cache.get(vehicle_id)
                if cached is None or cached[0] != values:
                    cached = (values, _vehicle_snapshot(vehicle_id, values))
                new_cache[vehicle_id] = cached
                vehicles[vehicle_id] = cached[1]
            yield
        self._vehicle_values = new_cache
        flexibility_up = yield from self._flexibility_steps(live, 1.0, now)
        flexibility_down = yield from self._flexibility_steps(live, -1.0, now)
        last = self.metrics.last or {}
        return FleetSnapshot(
            connected=self.connected,
            vehicles=vehicles,
            vehicles_available=sum(1 for v in live if v.available),
            flexibility_up_kw=flexibility_up,
            flexibility_down_kw=flexibility_down,
            last_ack_rate=last.get("ack_rate"),
            ack_rate_24h=self.metrics.ack_rate_24h(now),
            ack_rate_sla=self.ack_rate_sla,
            last_dispatch_at=_parse_time(last.get("started_at")),
            last_status=last.get("status"),
            last_requested_kw=last.get("requested_kw"),
            last_acknowledged_kw=last.get("acknowledged_kw"),
            dispatches=self.metrics.dispatches,
            orders_sent=self.metrics.orders_sent,
            orders_acknowledged=self.metrics.orders_acknowledged,
            publish_failures=self.metrics.publish_failures,
            ack_latency_p95_ms=self.metrics.latency_p95(),
        )

    def _vehicle_values_of(
        self,
        vehicle_id: str,
        vehicle: Vehicle,
        is_stale: bool,
        setpoints: Mapping[str, float],
        now: datetime,
    ) -> tuple[Any, ...]:
        """What the entities of one vehicle show (compared to skip unchanged ones)."""
        fleet = self.fleet
        stats = fleet.stats.get(vehicle_id)
        discharged = fleet.energy_discharged_kwh.get(vehicle_id, 0.0)
        forecast: float | None = None
        if self.prediction is not None:
            forecast = self.prediction.availability(vehicle_id, now)
        manual = self._manual.get(vehicle_id)
        return (
            vehicle.is_v2g,
            None if manual is None else manual[0],
            is_stale,
            vehicle.soc if vehicle_id in self._soc_known else None,
            vehicle.available,
            setpoints.get(vehicle_id, 0.0),
            None if stats is None else stats.ack_rate,
            None
            if stats is None or stats.last_latency_ms is None
            else round(stats.last_latency_ms, 3),
            discharged,
            fleet.energy_charged_kwh.get(vehicle_id, 0.0),
            co2_avoided_g(discharged, self.emission_factor)
            if self.emission_factor > 0
            else 0.0,
            forecast,
        )

    def _flexibility_steps(
        self, vehicles: Sequence[Vehicle], direction: float, now: datetime
    ) -> Steps[float]:
        """Power the live fleet could sustain for 15 min in one direction (kW).

        Only the safety rules apply (aFRR has no signal-type rule of its own).
        """
        probe = FlexibilitySignal(
            signal_type=SignalType.AFRR,
            power_kw=direction,
            duration_s=FLEXIBILITY_PROBE_S,
            start=now,
        )
        total = 0.0
        for chunk in chunks(vehicles):
            eligibility = evaluate_eligibility(chunk, probe, self.settings.safety, now)
            total += eligibility.total_capacity_kw
            yield
        return total

    @callback
    def async_update_now(self) -> None:
        """Publish a fresh snapshot to the entities right away."""
        self._snapshots_begun += 1
        self._newest_published = self._snapshots_begun
        self.async_set_updated_data(self._build_snapshot())

    async def async_refresh_now(self) -> None:
        """Publish a fresh snapshot, built in steps (the loop runs in between)."""
        snapshot = await self._async_build_snapshot()
        if snapshot is not None:
            self.async_set_updated_data(snapshot)

    async def _async_refresh_snapshot(self) -> None:
        if not self._closing:
            await self.async_refresh_now()

    @callback
    def _schedule_snapshot(self) -> None:
        """Publish a snapshot soon; bursts of messages coalesce into one."""
        if not self._closing:
            self._refresh_debouncer.async_schedule_call()

    async def _async_update_data(self) -> FleetSnapshot:
        """Rebuild the snapshot (push coordinator: only on explicit refresh)."""
        return self._build_snapshot()

    # --- entity updates ---------------------------------------------------------------

    @callback
    def async_update_listeners(self) -> None:
        """Hand the new snapshot to the entities.

        The fleet entities (and every other coordinator listener) get it now; the
        entities of the vehicles whose snapshot changed get it from a task that
        walks those vehicles in chunks (`_async_update_vehicles`), so a snapshot
        of 10,000 changed vehicles never blocks the loop, and a dispatch returns
        before its vehicle entities are written.
        """
        previous, self._published = self._published, self.data
        self._mark_vehicles(previous, self.data)
        if staged := self._staged_outcomes:
            self._staged_outcomes = {}
            pending = self._pending_outcomes
            if pending:
                for vehicle_id, queued in staged.items():
                    pending.setdefault(vehicle_id, []).extend(queued)
            else:
                self._pending_outcomes = staged
            self._pending_vehicles.update(dict.fromkeys(staged))
        super().async_update_listeners()
        self._schedule_vehicle_updates()

    @callback
    def async_add_vehicle_listener(
        self, vehicle_id: str, update_callback: CALLBACK_TYPE
    ) -> CALLBACK_TYPE:
        """Call ``update_callback()`` after each snapshot that changed the vehicle.

        Also after a change of the broker connection (every vehicle).
        """
        return _add_keyed(self._vehicle_listeners, vehicle_id, update_callback)

    def _mark_vehicles(
        self, previous: FleetSnapshot | None, current: FleetSnapshot
    ) -> None:
        """Queue the listened-to vehicles whose snapshot differs."""
        listened = self._vehicle_listeners
        pending = self._pending_vehicles
        if previous is None or previous.connected != current.connected:
            pending.update(dict.fromkeys(listened))
            return
        before = previous.vehicles
        after = current.vehicles
        for vehicle_id in listened:
            # Unchanged vehicles keep their snapshot object (`_build_snapshot`).
            if before.get(vehicle_id) is not after.get(vehicle_id):
                pending[vehicle_id] = None

    @callback
    def _schedule_vehicle_updates(self) -> None:
        if self._pending_vehicles and self._vehicle_task is None and not self._closing:
            # Tracked (async_block_till_done waits for it); not eager: whoever
            # published the snapshot (a dispatch: its response) goes first.
            self._vehicle_task = self.config_entry.async_create_task(
                self.hass,
                self._async_update_vehicles(),
                f"{DOMAIN} vehicle entity updates",
                eager_start=False,
            )

    async def _async_update_vehicles(self) -> None:
        """Call the listeners of the queued vehicles, a chunk per loop iteration.

        Each vehicle's queued outcome events fire first. A vehicle queued again
        meanwhile is visited again; its listeners read the latest snapshot.
        """
        pending = self._pending_vehicles
        try:
            while pending:
                for vehicle_id in list(islice(pending, VEHICLE_UPDATE_CHUNK)):
                    del pending[vehicle_id]
                    try:
                        self._update_vehicle(vehicle_id)
                    except Exception:  # noqa: BLE001 - the other vehicles go on
                        LOGGER.exception(
                            "Error updating the entities of vehicle %s", vehicle_id
                        )
                if pending:
                    await asyncio.sleep(0)
        finally:
            self._vehicle_task = None

    def _update_vehicle(self, vehicle_id: str) -> None:
        for result, outcome, round_name in self._pending_outcomes.pop(vehicle_id, ()):
            attributes = _outcome_attributes(
                result, outcome, result.signal.signal_type.value, round_name
            )
            for outcome_listener in list(self._outcome_listeners.get(vehicle_id, ())):
                outcome_listener(outcome.status.value, attributes)
        for listener in list(self._vehicle_listeners.get(vehicle_id, ())):
            listener()

    # --- periodic work ----------------------------------------------------------------

    async def _async_housekeeping(self, now: datetime | None = None) -> None:
        """Refresh what changes with time: staleness, 24 h ack rate, energy."""
        for vehicle_id in self._entity_backed_live():
            self.fleet.touch(vehicle_id, self.runtime.monotonic())
        if self.in_flight.running:
            self._refresh_in_flight()
        self._schedule_save()
        snapshot = await self._async_build_snapshot()
        if snapshot is not None and snapshot != self.data:
            self.async_set_updated_data(snapshot)

    @callback
    def _refresh_in_flight(self) -> None:
        stamp = dt_util.utcnow().isoformat()
        self.in_flight.async_update(
            {**record, "updated_at": stamp}
            for record in self.engine.pending_dispatches()
        )

    async def _async_save_in_flight(self) -> None:
        """Save what the running dispatches know (their orders) before publishing."""
        stamp = dt_util.utcnow().isoformat()
        await self.in_flight.async_save(
            {**record, "updated_at": stamp}
            for record in self.engine.pending_dispatches()
        )

    @callback
    def _handle_stop(self, event: Event) -> None:
        """Save what the running dispatches know before Home Assistant stops."""
        self._refresh_in_flight()

    async def _async_poll_telemetry(self, now: datetime | None = None) -> None:
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
            self._log_once("poll_failed", "Telemetry poll not published: %s", err)

    async def _async_initial_discovery(self) -> None:
        """Ask the fleet to introduce itself once the subscriptions are live."""
        try:
            async with asyncio.timeout(SUBSCRIBE_CONFIRM_TIMEOUT_S):
                await self.gate.async_wait()
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

    # --- bad input accounting ----------------------------------------------------------

    def _log_once(self, key: str, message: str, *args: Any, **kwargs: Any) -> None:
        if key in self._warned:
            LOGGER.debug(message, *args, **kwargs)
        else:
            self._warned.add(key)
            LOGGER.warning(
                message + " (further ones are logged at debug level)", *args, **kwargs
            )

    def drop(
        self, kind: str, reason: str, topic: str, *, exc_info: bool = False
    ) -> None:
        """Count (and log once per kind and reason) an input message we ignore."""
        key = f"{kind}_{reason}"
        self.counters[key] = self.counters.get(key, 0) + 1
        self._log_once(
            key, "Ignored %s message on %s: %s", kind, topic, reason, exc_info=exc_info
        )

    # --- MQTT input -------------------------------------------------------------------

    @callback
    @_guarded("ack")
    def _handle_ack(self, msg: mqtt.ReceiveMessage) -> None:
        vehicle_id = self.ack_topic.extract(msg.topic)
        if vehicle_id is None:
            self.drop("ack", "bad_topic", msg.topic)
            return
        payload = _payload_bytes(msg.payload)
        if len(payload) > MAX_VEHICLE_PAYLOAD_BYTES:
            self.drop("ack", "oversize", msg.topic)
            return
        if self.engine.handle_ack(vehicle_id, payload) is None:
            self.drop("ack", "malformed", msg.topic)

    @callback
    @_guarded("gateway_ack")
    def _handle_gateway_ack(self, msg: mqtt.ReceiveMessage) -> None:
        gateway_id = self.gateway_ack_topic.extract(msg.topic)
        if gateway_id is None:
            self.drop("gateway_ack", "bad_topic", msg.topic)
            return
        payload = _payload_bytes(msg.payload)
        if len(payload) > MAX_GATEWAY_PAYLOAD_BYTES:
            self.drop("gateway_ack", "oversize", msg.topic)
            return
        if self.engine.handle_gateway_acks(payload, gateway_id) is None:
            self.drop("gateway_ack", "malformed", msg.topic)

    @callback
    @_guarded("discovery")
    def _handle_discovery(self, msg: mqtt.ReceiveMessage) -> None:
        vehicle_id = self.discovery_response_topic.extract(msg.topic)
        payload = _payload_bytes(msg.payload)
        if len(payload) > MAX_VEHICLE_PAYLOAD_BYTES:
            self.drop("discovery", "oversize", msg.topic)
            return
        try:
            vehicle = decode_vehicle(payload, vehicle_id)
        except EngineError:
            self.drop("discovery", "malformed", msg.topic)
            return
        vehicle = self._with_manual_settings(vehicle)
        is_new = self.fleet.upsert(vehicle, self.runtime.monotonic())
        self._soc_known.add(vehicle.vehicle_id)
        for session in self._discovery_sessions:
            session.setdefault(vehicle.vehicle_id, vehicle)
        if is_new:
            LOGGER.debug("Discovered vehicle %s", vehicle.vehicle_id)
        self._schedule_snapshot()
        self._schedule_save()

    @callback
    @_guarded("telemetry")
    def _handle_telemetry(self, msg: mqtt.ReceiveMessage) -> None:
        vehicle_id = self.state_topic.extract(
            msg.topic
        ) or self.telemetry_response_topic.extract(msg.topic)
        payload = _payload_bytes(msg.payload)
        if len(payload) > MAX_VEHICLE_PAYLOAD_BYTES:
            self.drop("telemetry", "oversize", msg.topic)
            return
        try:
            telemetry = decode_telemetry(payload, vehicle_id)
        except EngineError:
            self.drop("telemetry", "malformed", msg.topic)
            return
        self.fleet.apply_telemetry(telemetry, self.runtime.monotonic())
        if telemetry.soc is not None:
            self._soc_known.add(telemetry.vehicle_id)
        self._schedule_snapshot()
        self._schedule_save()

    @callback
    def _handle_connection(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        if connected:
            LOGGER.info("MQTT broker connected again; the fleet is available")
        else:
            # No order may leave after the reconnect before the broker confirmed
            # the ack subscriptions again (DESIGN §3): acks would be lost.
            self.gate.async_reset()
            LOGGER.info("MQTT broker disconnected; the fleet entities are unavailable")
        self.async_set_updated_data(replace(self.data, connected=connected))

    # --- vehicles added by hand (config subentries) ------------------------------------

    @callback
    def _handle_entry_changed(
        self, change: ConfigEntryChange, entry: ConfigEntry
    ) -> None:
        if (
            change is ConfigEntryChange.UPDATED
            and entry.entry_id == self.config_entry.entry_id
            and not self._closing
        ):
            self._sync_subentries()

    def _with_manual_settings(self, vehicle: Vehicle) -> Vehicle:
        manual = self._manual.get(vehicle.vehicle_id)
        if manual is None:
            return vehicle
        data = manual[1]
        changes: dict[str, Any] = {}
        if CONF_MAX_POWER in data:
            changes["max_power_kw"] = float(data[CONF_MAX_POWER])
        if CONF_BATTERY_KWH in data:
            changes["battery_kwh"] = float(data[CONF_BATTERY_KWH])
        if CONF_IS_V2G in data:
            changes["is_v2g"] = bool(data[CONF_IS_V2G])
        changes.update(self._entity_values(data))
        return vehicle.with_changes(**changes) if changes else vehicle

    def _entity_values(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """SoC (fraction) and availability read from the tracked HA entities."""
        values: dict[str, Any] = {}
        soc_entity = data.get(CONF_SOC_ENTITY)
        if soc_entity and (state := self.hass.states.get(soc_entity)) is not None:
            try:
                percent = float(state.state)
            except ValueError:
                pass
            else:
                if math.isfinite(percent):
                    values["soc"] = min(max(percent / 100.0, 0.0), 1.0)
        plugged_entity = data.get(CONF_PLUGGED_ENTITY)
        if (
            plugged_entity
            and (state := self.hass.states.get(plugged_entity))
            and state.state not in (STATE_UNAVAILABLE, STATE_UNKNOWN)
        ):
            values["available"] = state.state == STATE_ON
        return values

    def _entity_backed_live(self) -> list[str]:
        """Manual vehicles whose SoC or plug entity currently has a state."""
        live: list[str] = []
        for vehicle_id, (_, data) in self._manual.items():
            for key in (CONF_SOC_ENTITY, CONF_PLUGGED_ENTITY):
                entity_id = data.get(key)
                state = self.hass.states.get(entity_id) if entity_id else None
                if state is not None and state.state not in (
                    STATE_UNAVAILABLE,
                    STATE_UNKNOWN,
                ):
                    live.append(vehicle_id)
                    break
        return live

    @callback
    def _sync_subentries(self) -> None:
        """Apply the vehicle subentries: add, update, drop; track their entities."""
        manual: dict[str, tuple[str, Mapping[str, Any]]] = {}
        for subentry in self.config_entry.subentries.values():
            if subentry.subentry_type != SUBENTRY_TYPE_VEHICLE:
                continue
            vehicle_id = subentry.data.get(CONF_VEHICLE_ID) or subentry.unique_id
            if isinstance(vehicle_id, str) and vehicle_id:
                manual[vehicle_id] = (subentry.subentry_id, subentry.data)
        removed = set(self._manual) - set(manual)
        self._manual = manual
        for vehicle_id in removed:
            self.fleet.remove(vehicle_id)
            self._soc_known.discard(vehicle_id)
        for vehicle_id in manual:
            self._refresh_manual_vehicle(vehicle_id)

        self._track_entities()
        if removed or manual:
            self._schedule_save()
            if self.data.vehicles or manual:
                self._schedule_snapshot()

    @callback
    def _track_entities(self) -> None:
        """Follow the SoC / plug entities of the manual vehicles."""
        entity_vehicles: dict[str, list[str]] = {}
        for vehicle_id, (_, data) in self._manual.items():
            for key in (CONF_SOC_ENTITY, CONF_PLUGGED_ENTITY):
                if entity_id := data.get(key):
                    entity_vehicles.setdefault(entity_id, []).append(vehicle_id)
        if self._untrack_entities is not None:
            self._untrack_entities()
            self._untrack_entities = None
        self._entity_vehicles = entity_vehicles
        if entity_vehicles:
            self._untrack_entities = async_track_state_change_event(
                self.hass, list(entity_vehicles), self._handle_entity_state
            )

    @callback
    def _refresh_manual_vehicle(self, vehicle_id: str) -> None:
        manual = self._manual.get(vehicle_id)
        if manual is None:
            return
        data = manual[1]
        current = self.fleet.vehicles.get(vehicle_id)
        try:
            vehicle = self._with_manual_settings(
                current or Vehicle(vehicle_id=vehicle_id)
            )
        except InvalidValueError as err:
            LOGGER.warning("Ignoring vehicle %s: %s", vehicle_id, err)
            return
        entity_values = self._entity_values(data)
        if "soc" in entity_values:
            self._soc_known.add(vehicle_id)
        if current is None:
            self.fleet.upsert(vehicle, self.runtime.monotonic())
            if not entity_values:
                # Known by hand only: stale until it talks (or its entities do).
                self.fleet.last_seen.pop(vehicle_id, None)
        else:
            self.fleet.vehicles[vehicle_id] = vehicle
            if entity_values:
                self.fleet.touch(vehicle_id, self.runtime.monotonic())

    @callback
    def _handle_entity_state(self, event: Event[EventStateChangedData]) -> None:
        for vehicle_id in self._entity_vehicles.get(event.data["entity_id"], []):
            self._refresh_manual_vehicle(vehicle_id)
        self._schedule_snapshot()
        self._schedule_save()

    # --- removal ------------------------------------------------------------------------

    def is_stale(self, vehicle_id: str) -> bool:
        """Return True if the vehicle is unknown or silent for too long."""
        if vehicle_id not in self.fleet.vehicles:
            return True
        return vehicle_id in self._stale_ids()

    def is_manual(self, vehicle_id: str) -> bool:
        """Return True if the vehicle comes from a config subentry."""
        return vehicle_id in self._manual

    @callback
    def async_remove_vehicle(self, vehicle_id: str) -> None:
        """Forget a vehicle (its device is being removed)."""
        self.fleet.remove(vehicle_id)
        self._soc_known.discard(vehicle_id)
        self._schedule_save()
        self.async_update_now()

    # --- outcome events -----------------------------------------------------------------

    @callback
    def async_subscribe_outcomes(
        self, vehicle_id: str, listener: OutcomeCallback
    ) -> CALLBACK_TYPE:
        """Call ``listener(event_type, attributes)`` for each outcome of a vehicle.

        Called with the vehicle's entity update, after the dispatch returned.
        """
        return _add_keyed(self._outcome_listeners, vehicle_id, listener)

    def _fire_outcomes(self, result: DispatchResult) -> None:
        """Stage the outcome events.

        They fire with their vehicle's entity update, after the next snapshot
        (`async_update_listeners`, `_async_update_vehicles`).
        """
        listened = self._outcome_listeners
        staged = self._staged_outcomes
        for round_name, outcomes in (
            ("initial", result.vehicles),
            ("fallback", result.fallback),
        ):
            for vehicle_id, outcome in outcomes.items():
                if vehicle_id in listened and outcome.status in _OUTCOME_STATUSES:
                    staged.setdefault(vehicle_id, []).append(
                        (result, outcome, round_name)
                    )

    # --- dispatch -----------------------------------------------------------------------

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
        """Run one dispatch to the end and record it.

        Raises:
            ServiceValidationError: bad values or unknown vehicle ids.
            HomeAssistantError: MQTT is not connected / the ack subscription is not
                confirmed (nothing was published), or the fleet was unloaded.
        """
        request = self._build_request(
            signal_type, power_kw, duration_s, vehicle_ids, strategy, dry_run
        )
        signal = request.signal
        chosen = request.strategy
        if not dry_run:
            await self._async_ready_to_publish()
            self.in_flight.mark(
                request.dispatch_id,
                {
                    "dispatch_id": request.dispatch_id,
                    "signal": signal.as_dict(),
                    "strategy": (
                        chosen or self.settings.strategy_for(signal.signal_type)
                    ).value,
                    "phase": "starting",
                    "requested_kw": signal.power_kw,
                    "assigned_kw": 0.0,
                    "vehicles": {},
                    "fallback": {},
                    "excluded": {},
                    "started_at": signal.start.isoformat(),
                },
            )
        task = asyncio.current_task()
        if task is not None:
            self._dispatch_tasks.add(task)
        try:
            result = await self.engine.dispatch(request)
        except asyncio.CancelledError:
            if not self._closing or task is None:
                raise
            task.uncancel()
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="dispatch_interrupted",
                translation_placeholders={"dispatch_id": request.dispatch_id},
            ) from None
        except InvalidValueError as err:
            self.in_flight.clear(request.dispatch_id)
            raise _invalid_value(err) from err
        finally:
            if task is not None:
                self._dispatch_tasks.discard(task)
        if not dry_run:
            self.in_flight.clear(request.dispatch_id)
        await asyncio.sleep(0)  # the engine's last step learnt from every order
        await self._async_finish_dispatch(result)
        # The new snapshot in steps of their own: recording and publishing
        # 10,000 vehicles at once would block the loop for > 100 ms.
        await asyncio.sleep(0)
        await self.async_refresh_now()
        return result

    def _build_request(
        self,
        signal_type: SignalType | str,
        power_kw: float,
        duration_s: float,
        vehicle_ids: Sequence[str] | None,
        strategy: Strategy | str | None,
        dry_run: bool,
    ) -> DispatchRequest:
        """Validate a dispatch request (translated errors)."""
        try:
            kind = (
                signal_type
                if isinstance(signal_type, SignalType)
                else SignalType.parse(signal_type)
            )
            chosen = (
                None
                if strategy is None
                else strategy
                if isinstance(strategy, Strategy)
                else Strategy.parse(strategy)
            )
            signal = FlexibilitySignal(
                signal_type=kind,
                power_kw=float(power_kw),
                duration_s=float(duration_s),
                start=dt_util.utcnow(),
            )
        except InvalidValueError as err:
            raise _invalid_value(err) from err
        ids = None if vehicle_ids is None else tuple(dict.fromkeys(vehicle_ids))
        if ids is not None:
            unknown = [vid for vid in ids if vid not in self.fleet.vehicles]
            if unknown:
                raise ServiceValidationError(
                    translation_domain=DOMAIN,
                    translation_key="unknown_vehicles",
                    translation_placeholders={"vehicles": ", ".join(unknown[:10])},
                )
        return DispatchRequest(
            signal=signal,
            vehicle_ids=ids,
            strategy=chosen,
            dry_run=dry_run,
            dispatch_id=ulid_util.ulid_now(),
        )

    async def _async_ready_to_publish(self) -> None:
        if not self.connected:
            raise HomeAssistantError(
                translation_domain=DOMAIN, translation_key="mqtt_not_connected"
            )
        try:
            async with asyncio.timeout(SUBSCRIBE_CONFIRM_TIMEOUT_S):
                await self.gate.async_wait()
        except TimeoutError as err:
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="subscription_not_confirmed",
            ) from err

    async def _async_finish_dispatch(self, result: DispatchResult) -> None:
        """Record a finished dispatch: log, bus event, outcome events (queued).

        The entities follow with the next snapshot (`async_refresh_now`).
        """
        self._record_finished(result.as_response(), fire=True)
        await asyncio.sleep(0)  # 10,000 orders: two steps of ~15 ms
        self._fire_outcomes(result)
        self._schedule_save()

    def _record_finished(self, response: dict[str, Any], *, fire: bool) -> None:
        outcomes = [
            *response.get("vehicles", {}).values(),
            *response.get("fallback", {}).values(),
        ]
        self.metrics.record(response, outcomes)
        self.dispatch_log.append(response)
        self._schedule_save()  # the metric totals live in the fleet store
        if fire:
            self.hass.bus.async_fire(
                EVENT_DISPATCH_COMPLETED,
                {**response, ATTR_CONFIG_ENTRY_ID: self.config_entry.entry_id},
            )

    # --- discovery -----------------------------------------------------------------------

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
        await self.async_refresh_now()
        return list(session.values())

    # --- day-ahead plan ------------------------------------------------------------------

    def plan_day_ahead(
        self,
        *,
        target_kwh: float,
        slot_minutes: int,
        day: date,
        vehicle_ids: Sequence[str] | None,
        windows: Mapping[str, Sequence[tuple[datetime, datetime]]],
    ) -> dict[str, Any]:
        """Plan an energy target over a day (NEBEF-style) with the fleet.

        Raises:
            ServiceValidationError: unknown vehicles, bad windows or values, or a
                target the vehicles cannot deliver.
        """
        fleet = self.fleet.vehicles
        if vehicle_ids is None:
            vehicles = [v for v in fleet.values() if v.is_v2g]
        else:
            unknown = [vid for vid in vehicle_ids if vid not in fleet]
            if unknown:
                raise ServiceValidationError(
                    translation_domain=DOMAIN,
                    translation_key="unknown_vehicles",
                    translation_placeholders={"vehicles": ", ".join(unknown[:10])},
                )
            vehicles = [fleet[vid] for vid in dict.fromkeys(vehicle_ids)]
        if not vehicles:
            raise ServiceValidationError(
                translation_domain=DOMAIN, translation_key="plan_no_vehicles"
            )
        for vehicle_id, spans in windows.items():
            for start, end in spans:
                if end <= start:
                    raise ServiceValidationError(
                        translation_domain=DOMAIN,
                        translation_key="invalid_window",
                        translation_placeholders={
                            "vehicle_id": vehicle_id,
                            "reason": "the end must be after the start",
                        },
                    )
        try:
            plan = plan_day_ahead(
                vehicles, dict(windows), target_kwh, slot_minutes, day
            )
        except InvalidValueError as err:
            raise _invalid_value(err) from err
        except InfeasiblePlanError as err:
            raise ServiceValidationError(
                translation_domain=DOMAIN,
                translation_key="plan_infeasible",
                translation_placeholders={"reason": str(err)},
            ) from err
        return {
            "date": plan.day.isoformat(),
            "slot_minutes": plan.slot_minutes,
            "target_kwh": plan.target_kwh,
            "total_kwh": round(plan.total_kwh, 6),
            "vehicles": [v.vehicle_id for v in vehicles],
            "entries": plan.as_dicts(),
            "csv": plan.to_csv(),
        }

    # --- diagnostics ---------------------------------------------------------------------

    def diagnostics(self, log_entries: int = 20) -> dict[str, Any]:
        """Return the runtime state for diagnostics (no secrets: topics only)."""
        tracker = self.engine.tracker
        stale = self._stale_ids()
        return {
            "connected": self.connected,
            "subscriptions_confirmed": self.gate.is_set,
            "fleet": {
                "vehicles": len(self.fleet.vehicles),
                "stale": sorted(stale),
                "manual": sorted(self._manual),
                "gateways": sorted(
                    {v.gateway for v in self.fleet.vehicles.values() if v.gateway}
                ),
                "setpoints": self.fleet.setpoints,
                "state": self.fleet.as_dict(),
            },
            "dropped_input": dict(sorted(self.counters.items())),
            "ack_tracker": {
                "counters": dict(tracker.counters),
                "pending": tracker.pending_count,
                "late_by_vehicle": dict(tracker.late_by_vehicle),
                "recent_rejections": [
                    {
                        "disposition": item.disposition.value,
                        "command_id": item.command_id,
                        "vehicle_id": item.vehicle_id,
                        "expected_vehicle_id": item.expected_vehicle_id,
                    }
                    for item in tracker.recent_rejections
                ],
            },
            "transport": {
                "published": self.transport.published,
                "failed": self.transport.failed,
            },
            "metrics": self.metrics.as_dict(),
            "in_flight": self.engine.pending_dispatches(),
            "dispatch_log": {
                "entries": len(self.dispatch_log),
                "latest": self.dispatch_log.latest(log_entries),
            },
        }


def _vehicle_snapshot(vehicle_id: str, values: tuple[Any, ...]) -> VehicleSnapshot:
    (
        is_v2g,
        subentry_id,
        stale,
        soc,
        plugged_in,
        setpoint_kw,
        ack_rate,
        last_ack_latency_ms,
        energy_discharged_kwh,
        energy_charged_kwh,
        co2_g,
        forecast,
    ) = values
    return VehicleSnapshot(
        vehicle_id=vehicle_id,
        is_v2g=is_v2g,
        subentry_id=subentry_id,
        stale=stale,
        soc=soc,
        plugged_in=plugged_in,
        setpoint_kw=setpoint_kw,
        ack_rate=ack_rate,
        last_ack_latency_ms=last_ack_latency_ms,
        energy_discharged_kwh=energy_discharged_kwh,
        energy_charged_kwh=energy_charged_kwh,
        co2_avoided_g=co2_g,
        availability_forecast=forecast,
    )


def _add_keyed[T](registry: dict[str, list[T]], key: str, listener: T) -> CALLBACK_TYPE:
    """Add a listener under a key; return the callback that removes it."""
    listeners = registry.setdefault(key, [])
    listeners.append(listener)

    @callback
    def _remove() -> None:
        if listener in listeners:
            listeners.remove(listener)
        if not listeners and registry.get(key) is listeners:
            del registry[key]

    return _remove


def _invalid_value(err: InvalidValueError) -> ServiceValidationError:
    return ServiceValidationError(
        translation_domain=DOMAIN,
        translation_key="invalid_value",
        translation_placeholders={"field": err.field, "reason": err.reason},
    )


def _outcome_attributes(
    result: DispatchResult, outcome: OrderOutcome, signal_type: str, round_name: str
) -> dict[str, Any]:
    return {
        "dispatch_id": result.dispatch_id,
        "signal_type": signal_type,
        "round": round_name,
        "command_id": outcome.command_id,
        "power_kw": outcome.power_kw,
        "latency_ms": None
        if outcome.latency_ms is None
        else round(outcome.latency_ms, 3),
        "reason": outcome.reason,
    }
