"""The fleet simulator: vehicles, gateways and their MQTT behaviour (docs/protocol.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
import concurrent.futures
from dataclasses import dataclass, field
import logging
import math
import os
import random
import threading
import time
from typing import Any, Final, Self

from . import codec
from .battery import (
    EXCEEDS_CHARGE_RATE,
    EXCEEDS_DISCHARGE_RATE,
    EXCEEDS_MAX_POWER,
    refusal_reason,
)
from .codec import DecodeError, Order, TopicTemplate
from .config import (
    BEHAVIOUR_FIELDS,
    GATEWAY_ID,
    VEHICLE_ID,
    SimulatorConfig,
    VehicleBehaviour,
    make_behaviour,
)
from .fleet import (
    OFFLINE_DEPARTED,
    OFFLINE_MANUAL,
    OFFLINE_RANDOM,
    SimVehicle,
    gateway_ids,
    generate_fleet,
)
from .transport import Endpoint

_LOGGER = logging.getLogger(__name__)

DISCOVERY_MAGIC: Final = b"hello"
_CALL_TIMEOUT: Final = 30.0

# Extra rejection reasons (the battery ones live in battery.py).
EXPIRED: Final = "expired"
REFUSED: Final = "refused"
INVALID_ORDER: Final = "invalid_order"
VEHICLE_MISMATCH: Final = "vehicle_mismatch"
UNKNOWN_VEHICLE: Final = "unknown_vehicle"

# Refusals that `refuse_over_limit_ack` acknowledges anyway.
OVER_LIMIT: Final = frozenset(
    {EXCEEDS_MAX_POWER, EXCEEDS_DISCHARGE_RATE, EXCEEDS_CHARGE_RATE}
)

COUNTERS: Final = (
    "orders_received",  # orders addressed to one of our online vehicles
    "orders_accepted",  # applied to the vehicle
    "orders_refused",  # not applied (battery rules, expiry, random refusal)
    "orders_expired",  # received after their expires_at
    "orders_acked",  # acks sent that say accepted (includes --ack-all refusals)
    "orders_rejected",  # acks sent with status rejected
    "orders_dropped",  # lost by --drop-rate (--apply-dropped: applied, reply lost)
    "orders_ignored",  # addressed to a silent (offline) vehicle or gateway
    "orders_invalid",  # undecodable order items (see also malformed)
    "acks_lost_offline",  # reply due while the vehicle or link was down
    "unknown_vehicle",  # orders or polls for ids that are not ours
    "gateway_batches",  # order batches received on gateway topics
    "gateway_ack_messages",  # ack batches published on gateway topics
    "discovery_requests",
    "discovery_answers",  # vehicles announced (alone or in a gateway's answer)
    "gateway_discovery_messages",  # discovery answers published by gateways
    "telemetry_polls",
    "telemetry_sent",
    "malformed",  # payloads that could not be decoded
    "errors",  # unexpected exceptions while handling a message
    "publish_failures",
    "connects",
    "disconnects",
)


class SimulatorError(RuntimeError):
    """The simulator could not start or an API call failed."""


@dataclass(eq=False)
class _Gateway:
    gateway_id: str
    endpoint: Endpoint | None = None
    vehicles: dict[str, SimVehicle] = field(default_factory=dict)
    online: bool = True
    pending: list[dict[str, Any]] = field(default_factory=list)
    flush: asyncio.TimerHandle | None = None


class FleetSimulator:
    """A simulated EV fleet on an MQTT broker.

    Thread-based: `start()` runs an asyncio loop in a background thread that drives
    every MQTT connection; the public methods are thread-safe and block until the
    loop has done the work.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        """Validate the config and generate the fleet (nothing is connected yet)."""
        self.config = config.validated()
        seed = self.config.seed
        self._rng = random.Random(None if seed is None else seed + 1)
        fleet = generate_fleet(self.config, random.Random(seed))
        self._vehicles: dict[str, SimVehicle] = {v.vehicle_id: v for v in fleet}
        self._gateways: dict[str, _Gateway] = {
            gw: _Gateway(gw) for gw in gateway_ids(self.config.gateway_count)
        }
        for vehicle in fleet:
            if vehicle.gateway is not None:
                self._gateways[vehicle.gateway].vehicles[vehicle.vehicle_id] = vehicle

        topics = self.config.topics
        self._t_command = TopicTemplate(topics.command, VEHICLE_ID)
        self._t_ack = TopicTemplate(topics.ack, VEHICLE_ID)
        self._t_response = TopicTemplate(topics.discovery_response, VEHICLE_ID)
        self._t_state = TopicTemplate(topics.state, VEHICLE_ID)
        self._t_telemetry = TopicTemplate(topics.telemetry_response, VEHICLE_ID)
        self._t_gw_commands = TopicTemplate(topics.gateway_commands, GATEWAY_ID)
        self._t_gw_acks = TopicTemplate(topics.gateway_acks, GATEWAY_ID)
        self._discovery = topics.discovery
        self._request = topics.telemetry_request
        self._request_prefix = topics.telemetry_request + "/"

        self._counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._endpoints: list[Endpoint] = []
        self._endpoint_of: dict[str, Endpoint] = {}  # vehicle/gateway id -> endpoint
        self._served: dict[Endpoint, dict[str, SimVehicle]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._timers: list[asyncio.TimerHandle] = []
        self._stopping = False
        self._last_telemetry = 0.0
        self._last_availability = 0.0

    # -- public API (thread-safe) -------------------------------------------------

    @property
    def vehicle_ids(self) -> list[str]:
        """The vehicle ids, in fleet order."""
        return list(self._vehicles)

    @property
    def gateway_ids(self) -> list[str]:
        """The gateway ids (empty when no gateway is configured)."""
        return list(self._gateways)

    @property
    def running(self) -> bool:
        """True between `start()` and `stop()`."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 15.0) -> None:
        """Connect every endpoint and wait until all subscriptions are confirmed.

        Raises `SimulatorError` (after stopping again) if that takes longer than
        `timeout` seconds.
        """
        if self._thread is not None:
            raise SimulatorError("simulator already started")
        self._stopping = False
        loop = asyncio.SelectorEventLoop()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run_loop, args=(loop,), name="v2g-simulator", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._start_in_loop)
        except BaseException:
            self.stop()
            raise
        if not self.wait_ready(timeout):
            self.stop()
            raise SimulatorError(
                f"not connected/subscribed to {self.config.host}:{self.config.port}"
                f" within {timeout} s"
            )

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect everything and stop the background thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._stop_in_loop)
            deadline = time.monotonic() + min(timeout, 2.0)
            while time.monotonic() < deadline:
                if self._call(self._all_closed):
                    break
                time.sleep(0.01)
            self._call(self._abort_in_loop)
        except SimulatorError:
            _LOGGER.warning("simulator loop did not answer while stopping")
        finally:
            if thread.is_alive():
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            self._thread = None
            self._loop = None
            with self._cond:
                self._cond.notify_all()

    def __enter__(self) -> Self:
        """Start on entering a `with` block."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop on leaving a `with` block."""
        self.stop()

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Wait until every wanted connection is up with its subscriptions confirmed.

        Useful after a broker restart. Returns False on timeout.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._is_ready():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.running:
                    return False
                self._cond.wait(min(remaining, 0.1))
        return True

    def wait_until(
        self, predicate: Callable[[dict[str, int]], bool], timeout: float = 5.0
    ) -> bool:
        """Poll `stats()` until `predicate(stats)` is true; False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self.stats()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def stats(self) -> dict[str, int]:
        """Counters (see `COUNTERS`) plus `vehicles`, `vehicles_online`, `connected`."""
        if self.running:
            return self._call(self._stats_in_loop)
        return self._stats_in_loop()

    def vehicle(self, vehicle_id: str) -> dict[str, Any]:
        """A snapshot of one vehicle's state (battery advanced to now)."""
        return self._call_or_direct(self._vehicle_in_loop, vehicle_id)

    def vehicles(self) -> list[dict[str, Any]]:
        """Snapshots of every vehicle."""
        return [self.vehicle(vehicle_id) for vehicle_id in self._vehicles]

    def set_offline(self, target_id: str) -> None:
        """Make a vehicle (or a whole gateway) silent.

        In per-vehicle mode the vehicle's (or gateway's) client really disconnects;
        in shared mode the vehicle is only marked offline.
        """
        self._call_or_direct(self._set_online_in_loop, target_id, False)

    def set_online(self, target_id: str) -> None:
        """Bring a vehicle (or a gateway) back; see `wait_ready()` to await it."""
        self._call_or_direct(self._set_online_in_loop, target_id, True)

    def set_available(self, vehicle_id: str, available: bool) -> None:
        """Plug a vehicle in or out: unplugged, it stays connected but refuses orders.

        Unplugging also returns it to idle (0 kW).
        """
        self._call_or_direct(self._set_available_in_loop, vehicle_id, available)

    def set_soc(self, vehicle_id: str, soc: float) -> None:
        """Force a vehicle's state of charge (fraction 0..1)."""
        if not 0.0 <= soc <= 1.0:
            raise ValueError("soc must be within [0, 1]")
        self._call_or_direct(self._set_soc_in_loop, vehicle_id, soc)

    def power_kw(self, vehicle_id: str) -> float:
        """The power a vehicle really applies now (kW, > 0 discharging)."""
        return float(self.vehicle(vehicle_id)["power_kw"])

    def total_power_kw(self, vehicle_ids: Iterable[str] | None = None) -> float:
        """The summed real power of some vehicles (default: the whole fleet)."""
        ids = list(self._vehicles if vehicle_ids is None else vehicle_ids)
        return sum(self._call_or_direct(self._powers_in_loop, ids).values())

    def powers(self) -> dict[str, float]:
        """The real power of every vehicle, by id (battery advanced to now)."""
        return self._call_or_direct(self._powers_in_loop, list(self._vehicles))

    def set_power(self, vehicle_id: str, power_kw: float) -> float:
        """Make a vehicle charge (< 0) or discharge on its own, without an order.

        As a driver's charging session: clamped to the vehicle's limits, held until
        an order or unplugging changes it; 0 when unplugged. Returns the power.
        """
        if not math.isfinite(power_kw):
            raise ValueError("power_kw must be finite")
        return self._call_or_direct(self._set_power_in_loop, vehicle_id, power_kw)

    def behaviour(self, vehicle_id: str) -> VehicleBehaviour:
        """How a vehicle currently answers orders (see `VehicleBehaviour`)."""
        return self._get(vehicle_id).behaviour

    def set_behaviour(self, vehicle_id: str, **changes: float | bool) -> None:
        """Change some of a vehicle's behaviour fields, e.g. `drop_rate=1.0`.

        Raises `ConfigError` for an unknown field or an invalid value.
        """
        current = self._get(vehicle_id).behaviour
        values = {name: getattr(current, name) for name in BEHAVIOUR_FIELDS}
        behaviour = make_behaviour({**values, **changes})
        self._call_or_direct(self._set_behaviour_in_loop, vehicle_id, behaviour)

    def publish_telemetry(self, vehicle_id: str | None = None) -> int:
        """Push telemetry now (one vehicle or all); return how many were sent."""
        return self._call(self._push_telemetry_in_loop, vehicle_id)

    # -- loop plumbing -------------------------------------------------------------

    def _run_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def _call[**P, T](
        self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        loop = self._loop
        if loop is None or self._thread is None:
            raise SimulatorError("simulator is not running")
        if threading.current_thread() is self._thread:
            return func(*args, **kwargs)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(func(*args, **kwargs))
            except BaseException as err:  # noqa: BLE001 - handed to the caller
                future.set_exception(err)

        loop.call_soon_threadsafe(run)
        try:
            return future.result(_CALL_TIMEOUT)
        except concurrent.futures.TimeoutError:
            raise SimulatorError("simulator loop did not answer") from None

    def _call_or_direct[**P, T](
        self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        if self.running:
            return self._call(func, *args, **kwargs)
        return func(*args, **kwargs)

    def _notify(self, _endpoint: Endpoint | None = None) -> None:
        with self._cond:
            self._cond.notify_all()

    def _is_ready(self) -> bool:
        return all(ep.ready for ep in self._endpoints if ep.wanted)

    def _all_closed(self) -> bool:
        return all(ep.is_closed for ep in self._endpoints)

    def _later(self, delay: float, callback: Callable[[], None]) -> None:
        assert self._loop is not None
        self._timers.append(self._loop.call_later(delay, callback))

    # -- start / stop (loop thread) ---------------------------------------------

    def _start_in_loop(self) -> None:
        loop = self._loop
        assert loop is not None
        cfg = self.config
        now = loop.time()
        for vehicle in self._vehicles.values():
            vehicle.last_update = now
        self._last_telemetry = self._last_availability = now
        self._endpoints = []
        self._served = {}
        self._endpoint_of = {}
        if cfg.connection == "shared":
            self._build_shared()
        else:
            self._build_per_vehicle()
        for endpoint in self._endpoints:
            if self._endpoint_wanted(endpoint):
                endpoint.open()
        tick = min(1.0, cfg.telemetry_interval, cfg.availability_interval)
        self._later(tick, self._tick)
        if cfg.telemetry_push:
            self._later(cfg.telemetry_interval, self._telemetry_tick)
        self._notify()

    def _build_shared(self) -> None:
        cfg = self.config
        subs = [
            self._discovery,
            self._request,
            self._request_prefix + "+",
            self._t_command.wildcard,
        ]
        if self._gateways:
            subs.append(self._t_gw_commands.wildcard)
        client_id = (
            f"{cfg.client_id_prefix}{cfg.id_prefix}-shared-{os.getpid()}"
            f"-{random.getrandbits(24):06x}"
        )
        endpoint = self._new_endpoint(client_id, subs)
        self._served[endpoint] = dict(self._vehicles)
        for key in (*self._vehicles, *self._gateways):
            self._endpoint_of[key] = endpoint
        for gateway in self._gateways.values():
            gateway.endpoint = endpoint

    def _build_per_vehicle(self) -> None:
        cfg = self.config
        base = [self._discovery, self._request]
        for gateway in self._gateways.values():
            subs = [*base, self._t_gw_commands.format(gateway.gateway_id)]
            for vehicle_id in gateway.vehicles:
                subs.append(self._t_command.format(vehicle_id))
                subs.append(self._request_prefix + vehicle_id)
            endpoint = self._new_endpoint(
                f"{cfg.client_id_prefix}{cfg.id_prefix}-{gateway.gateway_id}", subs
            )
            gateway.endpoint = endpoint
            self._served[endpoint] = dict(gateway.vehicles)
            self._endpoint_of[gateway.gateway_id] = endpoint
            for vehicle_id in gateway.vehicles:
                self._endpoint_of[vehicle_id] = endpoint
        for vehicle in self._vehicles.values():
            if vehicle.gateway is not None:
                continue
            vid = vehicle.vehicle_id
            endpoint = self._new_endpoint(
                f"{cfg.client_id_prefix}{vid}",
                [*base, self._request_prefix + vid, self._t_command.format(vid)],
            )
            self._served[endpoint] = {vid: vehicle}
            self._endpoint_of[vid] = endpoint

    def _new_endpoint(self, client_id: str, subscriptions: list[str]) -> Endpoint:
        assert self._loop is not None
        endpoint = Endpoint(
            self._loop,
            client_id=client_id,
            host=self.config.host,
            port=self.config.port,
            keepalive=self.config.keepalive,
            qos=self.config.qos,
            subscriptions=subscriptions,
            on_message=self._on_message,
            on_state=self._on_endpoint_state,
        )
        self._endpoints.append(endpoint)
        return endpoint

    def _endpoint_wanted(self, endpoint: Endpoint) -> bool:
        """Per-vehicle: a lone vehicle's client runs while it is online."""
        if self.config.connection == "shared":
            return True
        served = self._served[endpoint]
        if len(served) == 1:
            (vehicle,) = served.values()
            if vehicle.gateway is None:
                return vehicle.online
        gateway = next(
            (gw for gw in self._gateways.values() if gw.endpoint is endpoint), None
        )
        return gateway.online if gateway is not None else True

    def _on_endpoint_state(self, endpoint: Endpoint) -> None:
        if not endpoint.connected and endpoint.wanted:
            _LOGGER.debug("%s: link down", endpoint.client_id)
        self._notify()

    def _stop_in_loop(self) -> None:
        self._stopping = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for gateway in self._gateways.values():
            if gateway.flush is not None:
                gateway.flush.cancel()
                gateway.flush = None
        for endpoint in self._endpoints:
            endpoint.close()

    def _abort_in_loop(self) -> None:
        for endpoint in self._endpoints:
            endpoint.abort()

    # -- message routing (loop thread) -------------------------------------------

    def _on_message(self, endpoint: Endpoint, topic: str, payload: bytes) -> None:
        try:
            vehicle_id = self._t_command.match(topic)
            if vehicle_id is not None:
                self._on_order(endpoint, vehicle_id, payload)
            elif topic == self._discovery:
                self._on_discovery(endpoint, payload)
            elif topic == self._request:
                self._on_poll(endpoint, None)
            elif (gateway_id := self._t_gw_commands.match(topic)) is not None:
                self._on_gateway_batch(endpoint, gateway_id, payload)
            elif topic.startswith(self._request_prefix):
                self._on_poll(endpoint, topic[len(self._request_prefix) :])
        except Exception:
            self._counters["errors"] += 1
            _LOGGER.exception("error handling a message on %s", topic)

    def _silent(self, vehicle: SimVehicle) -> bool:
        if not vehicle.online:
            return True
        return (
            vehicle.gateway is not None and not self._gateways[vehicle.gateway].online
        )

    def _on_discovery(self, endpoint: Endpoint, payload: bytes) -> None:
        if payload != DISCOVERY_MAGIC:
            self._counters["malformed"] += 1
            return
        self._counters["discovery_requests"] += 1
        hour = time.localtime().tm_hour
        profile = self.config.availability
        prob = 1.0 if profile is None else profile[hour]
        now = self._now()
        answered = 0
        by_gateway: dict[str, list[dict[str, Any]]] = {}
        for vehicle in self._served.get(endpoint, {}).values():
            if self._silent(vehicle):
                continue
            vehicle.advance(now)
            obj = codec.vehicle_obj(
                vehicle_id=vehicle.vehicle_id,
                soc=vehicle.battery.soc,
                # What the vehicle really accepts, so a dispatcher that honours
                # the announced limits is not refused for the battery's rates.
                max_power_kw=vehicle.discharge_limit_kw,
                charge_rate_kw=vehicle.charge_limit_kw
                if vehicle.behaviour.announce_charge_rate
                else None,
                battery_kwh=vehicle.battery.capacity_kwh,
                available=vehicle.available,
                charging=vehicle.charging,
                departure=vehicle.departure,
                min_soc=vehicle.min_soc,
                segment=vehicle.segment,
                availability_prob=prob,
                degradation_factor=vehicle.degradation_factor,
                gateway=vehicle.gateway,
            )
            if vehicle.gateway is not None and self.config.gateway_discovery:
                by_gateway.setdefault(vehicle.gateway, []).append(obj)
            elif self._publish(
                endpoint, self._t_response.format(vehicle.vehicle_id), codec.encode(obj)
            ):
                answered += 1
        for gateway_id, objs in by_gateway.items():
            answered += self._answer_for_gateway(endpoint, gateway_id, objs)
        self._counters["discovery_answers"] += answered

    def _answer_for_gateway(
        self, endpoint: Endpoint, gateway_id: str, objs: list[dict[str, Any]]
    ) -> int:
        """Announce a gateway's vehicles: `{"gateway", "vehicles": [...]}` messages.

        Published on the discovery answer topic with the gateway's id; returns
        how many vehicles were announced.
        """
        size = self.config.gateway_batch_max
        topic = self._t_response.format(gateway_id)
        announced = 0
        for start in range(0, len(objs), size):
            chunk = objs[start : start + size]
            if self._publish(
                endpoint,
                topic,
                codec.encode({"gateway": gateway_id, "vehicles": chunk}),
            ):
                self._counters["gateway_discovery_messages"] += 1
                announced += len(chunk)
        return announced

    def _on_poll(self, endpoint: Endpoint, vehicle_id: str | None) -> None:
        served = self._served.get(endpoint, {})
        if vehicle_id is None:
            targets: Iterable[SimVehicle] = served.values()
        elif (vehicle := served.get(vehicle_id)) is not None:
            targets = (vehicle,)
        else:
            self._counters["unknown_vehicle"] += 1
            return
        self._counters["telemetry_polls"] += 1
        for vehicle in targets:
            if not self._silent(vehicle):
                self._send_telemetry(endpoint, vehicle, self._t_telemetry)

    def _on_order(self, endpoint: Endpoint, vehicle_id: str, payload: bytes) -> None:
        vehicle = self._served.get(endpoint, {}).get(vehicle_id)
        if vehicle is None:
            self._counters["unknown_vehicle"] += 1
            return
        if self._silent(vehicle):
            self._counters["orders_ignored"] += 1
            return
        try:
            order = codec.decode_order(payload)
        except DecodeError as err:
            self._counters["malformed"] += 1
            self._counters["orders_invalid"] += 1
            if err.command_id is not None:
                self._reply(endpoint, vehicle, None, err.command_id, INVALID_ORDER)
            return
        self._counters["orders_received"] += 1
        if order.vehicle_id is not None and order.vehicle_id != vehicle_id:
            self._reply(endpoint, vehicle, None, order.command_id, VEHICLE_MISMATCH)
            return
        self._execute(endpoint, vehicle, None, order)

    def _on_gateway_batch(
        self, endpoint: Endpoint, gateway_id: str, payload: bytes
    ) -> None:
        gateway = self._gateways.get(gateway_id)
        if gateway is None or gateway.endpoint is not endpoint:
            self._counters["unknown_vehicle"] += 1
            return
        if not gateway.online:
            self._counters["orders_ignored"] += 1
            return
        try:
            _dispatch_id, items = codec.decode_gateway_batch(payload)
        except DecodeError:
            self._counters["malformed"] += 1
            return
        self._counters["gateway_batches"] += 1
        for item in items:
            try:
                order = codec.order_from_obj(item)
            except DecodeError as err:
                self._counters["malformed"] += 1
                self._counters["orders_invalid"] += 1
                if err.command_id is not None:
                    raw_id = item.get("vehicle_id") if isinstance(item, dict) else None
                    self._reply_gateway(
                        gateway,
                        codec.ack_obj(
                            err.command_id,
                            accepted=False,
                            reason=INVALID_ORDER,
                            vehicle_id=raw_id if isinstance(raw_id, str) else None,
                        ),
                    )
                continue
            vehicle = gateway.vehicles.get(order.vehicle_id or "")
            if vehicle is None:
                self._counters["unknown_vehicle"] += 1
                self._reply_gateway(
                    gateway,
                    codec.ack_obj(
                        order.command_id,
                        accepted=False,
                        reason=UNKNOWN_VEHICLE,
                        vehicle_id=order.vehicle_id,
                    ),
                )
                continue
            if not vehicle.online:
                self._counters["orders_ignored"] += 1
                continue
            self._counters["orders_received"] += 1
            self._execute(endpoint, vehicle, gateway, order)

    # -- order execution -----------------------------------------------------------

    def _execute(
        self,
        endpoint: Endpoint,
        vehicle: SimVehicle,
        gateway: _Gateway | None,
        order: Order,
    ) -> None:
        behaviour = vehicle.behaviour
        counters = self._counters
        dropped = bool(behaviour.drop_rate) and self._rng.random() < behaviour.drop_rate
        if dropped:
            counters["orders_dropped"] += 1
            if not behaviour.apply_dropped:
                _LOGGER.debug("%s: order %s lost", vehicle.vehicle_id, order)
                return
        reason = self._apply_order(vehicle, order)
        if reason is not None:
            counters["orders_refused"] += 1
            _LOGGER.debug("%s: order %s refused: %s", vehicle.vehicle_id, order, reason)
        if dropped:
            return  # applied (or refused), but the answer is lost
        applied = order.power_kw if reason is None else None
        self._reply(endpoint, vehicle, gateway, order.command_id, reason, applied)

    def _apply_order(self, vehicle: SimVehicle, order: Order) -> str | None:
        """Apply the order if the vehicle accepts it; return why it does not."""
        behaviour = vehicle.behaviour
        if (
            not behaviour.ignore_expiry
            and order.expires_at_ms is not None
            and self._wall() * 1000 > order.expires_at_ms
        ):
            self._counters["orders_expired"] += 1
            return EXPIRED
        if behaviour.reject_rate and self._rng.random() < behaviour.reject_rate:
            return REFUSED
        now = self._now()
        vehicle.advance(now)
        power = order.power_kw
        reason = refusal_reason(
            vehicle.battery, vehicle.max_power_kw, power, available=vehicle.available
        )
        if reason is None:
            vehicle.power_kw = power
            vehicle.setpoint_until = (
                None
                if behaviour.ignore_expiry or not power
                else self._setpoint_end(now, order)
            )
            self._counters["orders_accepted"] += 1
            if _LOGGER.isEnabledFor(logging.DEBUG):
                _LOGGER.debug(
                    "%s: %s kW applied (%s)",
                    vehicle.vehicle_id,
                    power,
                    order.command_id,
                )
        return reason

    def _setpoint_end(self, now: float, order: Order) -> float | None:
        """Loop time at which an applied order ends; None: held until replaced.

        After `duration_s` or at `expires_at` (the vehicle's clock), whichever
        comes first.
        """
        ends: list[float] = []
        if order.duration_s:
            ends.append(now + order.duration_s)
        if order.expires_at_ms is not None:
            ends.append(now + order.expires_at_ms / 1000 - self._wall())
        return min(ends) if ends else None

    def _reply(
        self,
        endpoint: Endpoint,
        vehicle: SimVehicle,
        gateway: _Gateway | None,
        command_id: str,
        reason: str | None,
        applied_power_kw: float | None = None,
    ) -> None:
        cfg = self.config
        behaviour = vehicle.behaviour
        accepted = (
            reason is None
            or behaviour.ack_all
            or (behaviour.refuse_over_limit_ack and reason in OVER_LIMIT)
        )
        ack = codec.ack_obj(
            command_id,
            accepted=accepted,
            reason=None if accepted else reason,
            applied_power_kw=applied_power_kw,
            vehicle_id=vehicle.vehicle_id if gateway is not None else None,
            # A refused order acknowledged anyway gets the Go ack {"command_id"}.
            minimal=behaviour.minimal_acks or (reason is not None and accepted),
        )
        delay = cfg.ack_latency
        if cfg.ack_jitter:
            delay += self._rng.uniform(0.0, cfg.ack_jitter)
        if delay <= 0:
            self._send_reply(endpoint, vehicle, gateway, ack, accepted)
        else:
            assert self._loop is not None
            self._loop.call_later(
                delay, self._send_reply, endpoint, vehicle, gateway, ack, accepted
            )

    def _send_reply(
        self,
        endpoint: Endpoint,
        vehicle: SimVehicle,
        gateway: _Gateway | None,
        ack: dict[str, Any],
        accepted: bool,
    ) -> None:
        if self._stopping:
            return
        if self._silent(vehicle) or not endpoint.connected:
            self._counters["acks_lost_offline"] += 1
            return
        self._counters["orders_acked" if accepted else "orders_rejected"] += 1
        if gateway is not None:
            self._reply_gateway(gateway, ack, counted=True)
        else:
            self._publish(
                endpoint, self._t_ack.format(vehicle.vehicle_id), codec.encode(ack)
            )

    def _reply_gateway(
        self, gateway: _Gateway, ack: dict[str, Any], *, counted: bool = False
    ) -> None:
        if not counted:
            self._counters["orders_rejected"] += 1
        gateway.pending.append(ack)
        if len(gateway.pending) >= self.config.gateway_batch_max:
            self._flush_gateway(gateway)
        elif gateway.flush is None:
            assert self._loop is not None
            gateway.flush = self._loop.call_later(
                self.config.gateway_batch_window, self._flush_gateway, gateway
            )

    def _flush_gateway(self, gateway: _Gateway) -> None:
        if gateway.flush is not None:
            gateway.flush.cancel()
            gateway.flush = None
        acks, gateway.pending = gateway.pending, []
        endpoint = gateway.endpoint
        if not acks or self._stopping or endpoint is None:
            return
        if not gateway.online or not endpoint.connected:
            self._counters["acks_lost_offline"] += len(acks)
            return
        if self._publish(
            endpoint,
            self._t_gw_acks.format(gateway.gateway_id),
            codec.encode_gateway_acks(acks),
        ):
            self._counters["gateway_ack_messages"] += 1

    # -- telemetry, availability, departures -----------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _wall(self) -> float:
        """The vehicles' wall clock (unix seconds), `clock_offset` included."""
        return time.time() + self.config.clock_offset

    def _publish(self, endpoint: Endpoint, topic: str, payload: bytes) -> bool:
        if endpoint.publish(topic, payload):
            return True
        self._counters["publish_failures"] += 1
        return False

    def _send_telemetry(
        self, endpoint: Endpoint, vehicle: SimVehicle, template: TopicTemplate
    ) -> bool:
        vehicle.advance(self._now())
        obj = codec.telemetry_obj(
            vehicle_id=vehicle.vehicle_id,
            soc=vehicle.battery.soc,
            available=vehicle.available,
            power_kw=vehicle.power_kw,
            charging=vehicle.reported_charging,
            ts=self._wall(),
        )
        if self._publish(
            endpoint, template.format(vehicle.vehicle_id), codec.encode(obj)
        ):
            self._counters["telemetry_sent"] += 1
            return True
        return False

    def _push_telemetry_in_loop(self, vehicle_id: str | None) -> int:
        sent = 0
        targets = (
            self._vehicles.values() if vehicle_id is None else (self._get(vehicle_id),)
        )
        for vehicle in targets:
            endpoint = self._endpoint_of.get(vehicle.vehicle_id)
            if endpoint is None or self._silent(vehicle) or not endpoint.connected:
                continue
            sent += self._send_telemetry(endpoint, vehicle, self._t_state)
        return sent

    def _telemetry_tick(self) -> None:
        if self._stopping:
            return
        self._push_telemetry_in_loop(None)
        self._later(self.config.telemetry_interval, self._telemetry_tick)

    def _tick(self) -> None:
        """Housekeeping: battery model, departures, random disconnects."""
        if self._stopping:
            return
        cfg = self.config
        now = self._now()
        self._timers = [t for t in self._timers if not t.cancelled() and t.when() > now]
        if now - self._last_telemetry >= cfg.telemetry_interval:
            self._last_telemetry = now
            for vehicle in self._vehicles.values():
                vehicle.advance(now)
        wall = self._wall()
        for vehicle in self._vehicles.values():
            departure = vehicle.departure
            if (
                departure is not None
                and vehicle.online
                and vehicle.offline_reason is None
                and departure.timestamp() <= wall
            ):
                _LOGGER.info("%s departs", vehicle.vehicle_id)
                vehicle.advance(now)
                vehicle.power_kw = 0.0
                vehicle.setpoint_until = None
                vehicle.departure = None
                self._go_offline(vehicle, OFFLINE_DEPARTED)
        if now - self._last_availability >= cfg.availability_interval:
            self._last_availability = now
            self._availability_step()
        self._later(
            min(1.0, cfg.telemetry_interval, cfg.availability_interval), self._tick
        )

    def _availability_step(self) -> None:
        cfg = self.config
        profile = cfg.availability
        prob = 1.0 if profile is None else profile[time.localtime().tm_hour]
        rng = self._rng
        for vehicle in self._vehicles.values():
            if vehicle.online:
                if cfg.disconnect_rate and rng.random() < cfg.disconnect_rate:
                    self._go_offline(vehicle, OFFLINE_RANDOM)
            elif (
                vehicle.offline_reason in (OFFLINE_RANDOM, OFFLINE_DEPARTED)
                and rng.random() < prob
            ):
                self._go_online(vehicle)

    def _lone_endpoint(self, vehicle: SimVehicle) -> bool:
        """True if the vehicle has a connection of its own (per-vehicle mode)."""
        return (
            self.config.connection == "per-vehicle"
            and vehicle.gateway is None
            and self._loop is not None
        )

    def _go_offline(self, vehicle: SimVehicle, reason: str) -> None:
        vehicle.online = False
        vehicle.offline_reason = reason
        _LOGGER.debug("%s offline (%s)", vehicle.vehicle_id, reason)
        if self._lone_endpoint(vehicle):
            endpoint = self._endpoint_of.get(vehicle.vehicle_id)
            if endpoint is not None:
                endpoint.close()
        self._notify()

    def _go_online(self, vehicle: SimVehicle) -> None:
        if self._loop is not None:
            vehicle.advance(self._now())
        vehicle.online = True
        vehicle.offline_reason = None
        _LOGGER.debug("%s online", vehicle.vehicle_id)
        if self._lone_endpoint(vehicle):
            endpoint = self._endpoint_of.get(vehicle.vehicle_id)
            if endpoint is not None:
                endpoint.open()
        self._notify()

    # -- API helpers (loop thread, or direct before start) ----------------------

    def _get(self, vehicle_id: str) -> SimVehicle:
        try:
            return self._vehicles[vehicle_id]
        except KeyError:
            raise KeyError(f"unknown vehicle {vehicle_id!r}") from None

    def _stats_in_loop(self) -> dict[str, int]:
        stats = dict(self._counters)
        stats["connects"] += sum(ep.connects for ep in self._endpoints)
        stats["disconnects"] += sum(ep.disconnects for ep in self._endpoints)
        stats["vehicles"] = len(self._vehicles)
        stats["vehicles_online"] = sum(
            not self._silent(v) for v in self._vehicles.values()
        )
        stats["connected"] = sum(ep.connected for ep in self._endpoints)
        return stats

    def _vehicle_in_loop(self, vehicle_id: str) -> dict[str, Any]:
        vehicle = self._get(vehicle_id)
        if self._loop is not None and self.running:
            vehicle.advance(self._now())
        snapshot = vehicle.snapshot()
        snapshot["silent"] = self._silent(vehicle)
        return snapshot

    def _set_online_in_loop(self, target_id: str, online: bool) -> None:
        gateway = self._gateways.get(target_id)
        if gateway is not None:
            gateway.online = online
            endpoint = gateway.endpoint
            if self.config.connection == "per-vehicle" and endpoint is not None:
                if online:
                    endpoint.open()
                else:
                    endpoint.close()
            self._notify()
            return
        vehicle = self._get(target_id)
        if online:
            if not vehicle.online:
                self._go_online(vehicle)
        elif vehicle.online or vehicle.offline_reason != OFFLINE_MANUAL:
            self._go_offline(vehicle, OFFLINE_MANUAL)

    def _set_available_in_loop(self, vehicle_id: str, available: bool) -> None:
        vehicle = self._get(vehicle_id)
        if self._loop is not None and self.running:
            vehicle.advance(self._now())
        vehicle.available = available
        if not available:
            vehicle.power_kw = 0.0
            vehicle.setpoint_until = None

    def _powers_in_loop(self, vehicle_ids: list[str]) -> dict[str, float]:
        running = self._loop is not None and self.running
        powers: dict[str, float] = {}
        for vehicle_id in vehicle_ids:
            vehicle = self._get(vehicle_id)
            if running:
                vehicle.advance(self._now())
            powers[vehicle_id] = vehicle.power_kw
        return powers

    def _set_power_in_loop(self, vehicle_id: str, power_kw: float) -> float:
        vehicle = self._get(vehicle_id)
        if self._loop is not None and self.running:
            vehicle.advance(self._now())
        return vehicle.run_on_its_own(power_kw)

    def _set_behaviour_in_loop(
        self, vehicle_id: str, behaviour: VehicleBehaviour
    ) -> None:
        self._get(vehicle_id).behaviour = behaviour

    def _set_soc_in_loop(self, vehicle_id: str, soc: float) -> None:
        vehicle = self._get(vehicle_id)
        if self._loop is not None and self.running:
            vehicle.advance(self._now())
        vehicle.battery.soc = soc
