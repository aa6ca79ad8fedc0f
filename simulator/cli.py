"""Command line: `python -m simulator [options]` (Go flag names where they exist)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
import json
import logging
from pathlib import Path
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from .config import (
    BATTERY_PROFILES,
    BEHAVIOUR_FIELDS,
    CONNECTION_MODES,
    ConfigError,
    SimulatorConfig,
    TopicConfig,
    load_availability_file,
    load_departures,
    parse_broker,
    parse_duration,
    parse_override,
)
from .core import FleetSimulator, SimulatorError

_LOGGER = logging.getLogger("simulator")

STATS_LOG_INTERVAL = 10.0


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _flag(parser: argparse._ActionsContainer, name: str, help_text: str) -> None:
    """A Go-style boolean: `--x`, `--x=true` or `--x=false`."""
    parser.add_argument(
        name, type=_bool, nargs="?", const=True, default=False, help=help_text
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m simulator",
        description="Simulated EV fleet for V2G Fleet Dispatch (MQTT, docs/protocol.md).",
    )
    conn = parser.add_argument_group("connection")
    conn.add_argument(
        "--broker",
        default="127.0.0.1:1883",
        help="host:port, mqtt://host:port or tcp://host:port (default %(default)s)",
    )
    _flag(conn, "--allow-remote", "allow a broker that is not on loopback")
    conn.add_argument(
        "--connection",
        choices=CONNECTION_MODES,
        default="per-vehicle",
        help="one MQTT client per vehicle/gateway, or one shared client "
        "subscribing wildcards for the whole fleet (default %(default)s)",
    )
    conn.add_argument("--qos", type=int, choices=(0, 1, 2), default=1)
    conn.add_argument("--keepalive", type=int, default=30, help="seconds")
    conn.add_argument("--client-id-prefix", default="sim-")

    fleet = parser.add_argument_group("fleet")
    fleet.add_argument("--count", type=int, default=1, help="number of vehicles")
    fleet.add_argument(
        "--fleet-size", type=int, default=0, help="overrides --count when > 0"
    )
    fleet.add_argument("--id-prefix", default="veh", help="ids veh001, veh002, …")
    fleet.add_argument("--seed", type=int, default=None)
    fleet.add_argument("--initial-soc", type=float, default=0.8)
    fleet.add_argument(
        "--soc-spread", type=float, default=0.0, help="initial SoC ± uniform spread"
    )
    fleet.add_argument("--min-soc", type=float, default=0.0, help="MinSoC announced")
    fleet.add_argument("--degradation", type=float, default=0.0)
    fleet.add_argument(
        "--commuter-pct",
        type=float,
        default=0.0,
        help="fraction 0..1 of commuters (others: opportunistic_charger)",
    )
    fleet.add_argument("--capacity", type=float, default=40.0, help="kWh")
    fleet.add_argument("--charge-rate", type=float, default=7.0, help="kW")
    fleet.add_argument("--discharge-rate", type=float, default=10.0, help="kW")
    fleet.add_argument("--max-power", type=float, default=10.0, help="kW")
    fleet.add_argument(
        "--battery-profile",
        choices=tuple(BATTERY_PROFILES),
        default=None,
        help="preset capacity/charge/discharge: small 20/3.6/7, medium 40/7/10, "
        "large 80/11/20",
    )
    fleet.add_argument(
        "--gateways", type=int, default=0, help="group vehicles behind N gateways"
    )
    fleet.add_argument(
        "--gateway-size", type=int, default=0, help="or K vehicles per gateway"
    )
    fleet.add_argument(
        "--gateway-batch-window",
        type=_duration,
        default=0.005,
        help="collect gateway acks this long before publishing (default 5ms)",
    )
    fleet.add_argument(
        "--gateway-batch-max",
        type=int,
        default=500,
        help="most acks (or vehicles of a discovery answer) in one gateway message",
    )
    fleet.add_argument(
        "--per-vehicle-discovery",
        dest="gateway_discovery",
        action="store_false",
        help="gateway vehicles answer discovery one message each (the protocol"
        " before gateway discovery answers) instead of one message per gateway",
    )

    acks = parser.add_argument_group("orders and acks")
    acks.add_argument(
        "--ack-latency", type=_duration, default=0.0, help="seconds or 50ms"
    )
    acks.add_argument(
        "--ack-jitter", type=_duration, default=0.0, help="extra uniform 0..jitter"
    )
    acks.add_argument(
        "--drop-rate",
        type=float,
        default=0.0,
        help="0..1: the order is lost with its ack (see --apply-dropped)",
    )
    acks.add_argument(
        "--clock-offset",
        type=float,
        default=0.0,
        help="seconds the vehicles' clock is ahead (< 0: behind); orders look older",
    )
    acks.add_argument(
        "--reject-rate", type=float, default=0.0, help="0..1, refused (reason refused)"
    )
    _flag(acks, "--ack-all", "ack every order as Go did, even refused ones")
    _flag(acks, "--minimal-acks", 'accepted acks are just {"command_id"} (Go)')

    quirks = parser.add_argument_group(
        "Go vehicle behaviours (delivery faults: acknowledged is not delivered)"
    )
    _flag(
        quirks,
        "--apply-dropped",
        "with --drop-rate: a dropped order is applied, only its ack is lost "
        "(default: lost with its ack, never applied)",
    )
    _flag(
        quirks,
        "--refuse-over-limit-ack",
        "ack an order beyond the charge/discharge limit with the Go ack but keep "
        "the previous power (default: reject it with exceeds_*)",
    )
    _flag(
        quirks,
        "--ignore-expiry",
        "ignore expires_at and duration_s: act on late orders and hold a setpoint "
        "until the next order (default: back to 0 kW at expiry)",
    )
    _flag(
        quirks,
        "--inverted-charging-flag",
        "telemetry charging = power_kw > 0, true while discharging (Go)",
    )
    quirks.add_argument(
        "--announce-charge-rate",
        type=_bool,
        nargs="?",
        const=True,
        default=True,
        help="discovery answers carry ChargeRate (default true; Go has none)",
    )
    quirks.add_argument(
        "--no-announce-charge-rate",
        dest="announce_charge_rate",
        action="store_false",
        help="leave ChargeRate out of discovery answers (Go)",
    )
    quirks.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="ID:FIELD=VALUE[,...]",
        help="per-vehicle behaviour, repeatable, e.g. veh002:drop_rate=1,"
        f"apply_dropped=true; fields: {', '.join(BEHAVIOUR_FIELDS)}",
    )

    fail = parser.add_argument_group("availability")
    fail.add_argument(
        "--disconnect-rate",
        type=float,
        default=0.0,
        help="probability per availability tick (default 1 min) to disconnect",
    )
    fail.add_argument("--availability-interval", type=_duration, default=60.0)
    fail.add_argument("--availability-file", help='JSON {"0": 0.1, …, "23": 0.9}')
    fail.add_argument("--schedule-file", help='JSON {"veh001": "RFC3339"}')
    fail.add_argument(
        "--template-file", help='JSON {"veh001": {"departure": "RFC3339"}}'
    )

    tele = parser.add_argument_group("telemetry")
    _flag(tele, "--telemetry-push", "publish telemetry on the state topic")
    tele.add_argument("--telemetry-interval", type=_duration, default=None)
    tele.add_argument(
        "--interval", type=_duration, default=None, help="Go alias (default 10s)"
    )

    topics = parser.add_argument_group("topics ({vehicle_id}, {gateway_id})")
    defaults = TopicConfig()
    for name in (
        "command",
        "ack",
        "discovery",
        "discovery_response",
        "state",
        "telemetry_request",
        "telemetry_response",
        "gateway_commands",
        "gateway_acks",
    ):
        topics.add_argument(
            f"--{name.replace('_', '-')}-topic",
            dest=f"topic_{name}",
            default=None,
            help=f"default {getattr(defaults, name)}",
        )
    topics.add_argument("--topic-prefix", default=None, help="Go: discovery prefix")
    topics.add_argument("--state-topic-prefix", default=None, help="Go")
    topics.add_argument("--telemetry-response-prefix", default=None, help="Go")

    run = parser.add_argument_group("run")
    run.add_argument(
        "--duration", type=_duration, default=None, help="exit after N seconds"
    )
    run.add_argument("--stats-file", help="write JSON counters here on exit")
    run.add_argument(
        "--verbose",
        "-v",
        action="count",
        default=0,
        help="-v: connections and periodic stats; -vv: every message",
    )
    run.add_argument("--start-timeout", type=_duration, default=30.0)
    return parser


def _topics(args: argparse.Namespace) -> TopicConfig:
    values: dict[str, str] = {}
    if args.topic_prefix:
        prefix = args.topic_prefix.rstrip("/")
        values["discovery"] = f"{prefix}/fleet/discovery"
        values["discovery_response"] = f"{prefix}/fleet/response/{{vehicle_id}}"
    if args.state_topic_prefix:
        values["state"] = args.state_topic_prefix + "{vehicle_id}"
    if args.telemetry_response_prefix:
        values["telemetry_response"] = args.telemetry_response_prefix + "{vehicle_id}"
    for key, value in vars(args).items():
        if key.startswith("topic_") and key != "topic_prefix" and value:
            values[key.removeprefix("topic_")] = value
    return replace(TopicConfig(), **values)


def _overrides(items: list[str]) -> dict[str, dict[str, float | bool]]:
    overrides: dict[str, dict[str, float | bool]] = {}
    for item in items:
        vehicle_id, values = parse_override(item)
        overrides.setdefault(vehicle_id, {}).update(values)
    return overrides


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """Build and validate a `SimulatorConfig` from parsed options."""
    host, port = parse_broker(args.broker)
    interval = args.telemetry_interval
    if not interval:
        interval = args.interval or 10.0
    availability = (
        load_availability_file(args.availability_file)
        if args.availability_file
        else None
    )
    departures = load_departures(args.schedule_file, args.template_file)
    return SimulatorConfig(
        host=host,
        port=port,
        allow_remote=args.allow_remote,
        keepalive=args.keepalive,
        client_id_prefix=args.client_id_prefix,
        connection=args.connection,
        qos=args.qos,
        count=args.fleet_size if args.fleet_size > 0 else args.count,
        id_prefix=args.id_prefix,
        seed=args.seed,
        initial_soc=args.initial_soc,
        soc_spread=args.soc_spread,
        min_soc=args.min_soc,
        degradation_factor=args.degradation,
        commuter_pct=args.commuter_pct,
        capacity_kwh=args.capacity,
        charge_rate_kw=args.charge_rate,
        discharge_rate_kw=args.discharge_rate,
        max_power_kw=args.max_power,
        battery_profile=args.battery_profile,
        ack_latency=args.ack_latency,
        ack_jitter=args.ack_jitter,
        clock_offset=args.clock_offset,
        drop_rate=args.drop_rate,
        reject_rate=args.reject_rate,
        ack_all=args.ack_all,
        minimal_acks=args.minimal_acks,
        apply_dropped=args.apply_dropped,
        refuse_over_limit_ack=args.refuse_over_limit_ack,
        ignore_expiry=args.ignore_expiry,
        inverted_charging_flag=args.inverted_charging_flag,
        announce_charge_rate=args.announce_charge_rate,
        vehicle_overrides=_overrides(args.override),
        disconnect_rate=args.disconnect_rate,
        availability_interval=args.availability_interval,
        availability=availability,
        departures=departures,
        telemetry_push=args.telemetry_push,
        telemetry_interval=interval,
        gateways=args.gateways,
        gateway_size=args.gateway_size,
        gateway_batch_window=args.gateway_batch_window,
        gateway_batch_max=args.gateway_batch_max,
        gateway_discovery=args.gateway_discovery,
        topics=_topics(args),
    ).validated()


def _write_stats(path: str, stats: dict[str, Any]) -> None:
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n", "utf-8")
    tmp.replace(target)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until SIGINT/SIGTERM or `--duration`; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (
        logging.DEBUG
        if args.verbose >= 2
        else logging.INFO
        if args.verbose
        else logging.WARNING
    )
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    _LOGGER.setLevel(level)
    try:
        config = config_from_args(args)
    except ConfigError as err:
        parser.error(str(err))

    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        _LOGGER.info("signal %s: stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    sim = FleetSimulator(config)
    started = time.monotonic()
    try:
        sim.start(timeout=args.start_timeout)
    except SimulatorError as err:
        print(f"simulator: {err}", file=sys.stderr)
        return 1
    _LOGGER.info(
        "%d vehicles (%s, %d gateways) on %s:%d ready in %.2f s",
        config.count,
        config.connection,
        config.gateway_count,
        config.host,
        config.port,
        time.monotonic() - started,
    )
    deadline = None if args.duration is None else started + args.duration
    try:
        while not stop.is_set():
            wait = STATS_LOG_INTERVAL
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    break
            if stop.wait(wait):
                break
            _LOGGER.info("stats %s", json.dumps(sim.stats(), sort_keys=True))
    finally:
        sim.stop()
        stats = sim.stats()
        _LOGGER.info("final stats %s", json.dumps(stats, sort_keys=True))
        if args.stats_file:
            _write_stats(args.stats_file, stats)
    return 0
