"""The main job: a local mosquitto, a simulated fleet, and Home Assistant with V2G.

`scripts/develop` runs this after set-up. It starts (only on 127.0.0.1):
- mosquitto on the broker port, unless a broker already answers there;
- the fleet simulator (20 vehicles by default, telemetry push, a few dropped acks);
- Home Assistant with the MQTT and V2G Fleet Dispatch entries created through their
  config flows, onboarding done, an "EV participation" dashboard and an example
  automation that dispatches every few minutes;
- with `--home`, also a simulated home charger made of helpers and templates, whose
  car is a vehicle controlled through Home Assistant (devtools/home_charger.py).
It prints the URL and the demo login; Ctrl-C stops every process it started.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import defaultdict
from collections.abc import Sequence
import contextlib
from pathlib import Path
import shutil
import signal
import subprocess
import sys
from typing import Any

from devtools.hass_instance import REPO_ROOT, HassInstance
from devtools.home_charger import (
    HOME_VEHICLE_ID,
    HOME_VIEW_PATH,
    describe_dispatch,
    dispatch_to_home,
    ensure_home_vehicle,
    home_charger_yaml,
    home_view,
)
from devtools.net import port_open

DASHBOARD_PATH = "ev-participation"

# unique-id suffixes (entry_fleet_<key> / entry_<vehicle>_<key>) shown on the dashboard
FLEET_KEYS = (
    "ack_rate_24h",
    "last_ack_rate",
    "vehicles_available",
    "flexibility_up",
    "flexibility_down",
    "last_dispatch_status",
    "last_dispatch_failures",
    "last_dispatch",
    "last_requested_power",
    "last_acknowledged_power",
    "dispatches",
    "orders_sent",
    "orders_acknowledged",
    "ack_rate_problem",
)
VEHICLE_KEYS = ("state_of_charge", "setpoint", "ack_rate")
VEHICLE_LABELS = {
    "state_of_charge": "SoC",
    "setpoint": "Setpoint",
    "ack_rate": "Ack rate",
}
HISTORY_KEYS = (
    "ack_rate_24h",
    "vehicles_available",
    "flexibility_up",
    "flexibility_down",
)


def start_broker(config_dir: Path, port: int) -> subprocess.Popen[bytes] | None:
    """Start mosquitto on 127.0.0.1:port unless something already listens there."""
    if port_open(port):
        print(f"Using the MQTT broker already listening on 127.0.0.1:{port}")
        return None
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    conf = config_dir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n",
        encoding="utf-8",
    )
    log = open(config_dir / "mosquitto.log", "ab")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen(
        [mosquitto, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    return process


def start_simulator(
    config_dir: Path,
    broker_port: int,
    vehicles: int,
    seed: int,
    overrides: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start the fleet simulator as its own process.

    `overrides` are the simulator's `--override ID:FIELD=VALUE` (e.g. a vehicle
    that refuses every order: `veh003:reject_rate=1`).
    """
    log = open(config_dir / "simulator.log", "ab")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulator",
            "--broker",
            f"127.0.0.1:{broker_port}",
            "--count",
            str(vehicles),
            "--connection",
            "per-vehicle" if vehicles <= 200 else "shared",
            "--telemetry-push",
            "--telemetry-interval",
            "10",
            "--ack-latency",
            "0.05",
            "--ack-jitter",
            "0.05",
            "--drop-rate",
            "0.03",
            "--soc-spread",
            "0.15",
            "--seed",
            str(seed),
            *(arg for override in overrides for arg in ("--override", override)),
        ],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return process


def pick(entities: dict[str, str], key: str) -> str | None:
    """Entity id whose unique id ends with `_<key>`."""
    return entities.get(key)


def vehicle_card(vehicle_id: str, keys: dict[str, str]) -> dict[str, Any]:
    """A glance card of one vehicle: SoC, setpoint, ack rate."""
    return {
        "type": "glance",
        "title": vehicle_id,
        "columns": 3,
        "entities": [
            {"entity": keys[k], "name": VEHICLE_LABELS[k]}
            for k in VEHICLE_KEYS
            if k in keys
        ],
    }


def dispatches_markdown(failures_entity: str) -> str:
    """The last dispatches, newest first, each with the vehicles that failed and why.

    Read from the attributes of the fleet's "Last dispatch failures" sensor (a
    logbook card of the status sensor would merge dispatches of equal status).
    """
    return f"""\
{{% set dispatches = state_attr('{failures_entity}', 'dispatches') or [] %}}
{{%- for d in dispatches %}}
**{{{{ as_timestamp(d.started_at) | timestamp_custom('%H:%M:%S') }}}}** \
{{{{ d.signal_type }}}} {{{{ d.requested_kw | round(1) }}}} kW: {{{{ d.status }}}}, \
{{{{ d.acknowledged_kw | round(1) }}}} kW acknowledged\
{{%- if d.failure_count == 0 %}}, every vehicle answered{{% endif %}}
{{% for f in d.failures %}}
- {{{{ f.vehicle_id }}}}: {{{{ f.status | replace('_', ' ') }}}}\
{{%- if f.reason %}} ({{{{ f.reason }}}}){{% endif %}}
{{%- endfor %}}
{{%- if d.failure_count > d.failures | length %}}
- … {{{{ d.failure_count - d.failures | length }}}} more
{{%- endif %}}

{{% else %}}
No dispatch yet.
{{% endfor %}}"""


def dashboard_config(
    fleet: dict[str, str], vehicles: dict[str, dict[str, str]], *, home: bool = False
) -> dict[str, Any]:
    """The "EV participation" dashboard, built from the real entity ids.

    With `home`, a "Home" view shows the home car and its simulated charger.
    """
    fleet_rows = [fleet[k] for k in FLEET_KEYS if k in fleet]
    cards: list[dict[str, Any]] = []
    if "ack_rate_24h" in fleet:
        cards.append(
            {
                "type": "gauge",
                "entity": fleet["ack_rate_24h"],
                "name": "Fleet ack rate (24 h)",
                "min": 0,
                "max": 100,
                "severity": {"green": 90, "yellow": 70, "red": 0},
            }
        )
    cards.append({"type": "entities", "title": "Fleet", "entities": fleet_rows})
    history = [fleet[k] for k in HISTORY_KEYS if k in fleet]
    if history:
        cards.append(
            {
                "type": "history-graph",
                "title": "Participation, last 24 h",
                "hours_to_show": 24,
                "entities": history,
            }
        )
    if "last_dispatch_failures" in fleet:
        cards.append(
            {
                "type": "markdown",
                "title": "Last dispatches",
                "content": dispatches_markdown(fleet["last_dispatch_failures"]),
            }
        )
    vehicle_cards = [
        vehicle_card(vehicle_id, keys) for vehicle_id, keys in sorted(vehicles.items())
    ]
    soc_history = [
        keys["state_of_charge"]
        for _, keys in sorted(vehicles.items())
        if "state_of_charge" in keys
    ]
    views: list[dict[str, Any]] = [
        {"title": "Fleet", "path": "fleet", "cards": cards},
        {"title": "Vehicles", "path": "vehicles", "cards": vehicle_cards},
    ]
    if soc_history:
        views[1]["cards"].append(
            {
                "type": "history-graph",
                "title": "State of charge",
                "hours_to_show": 24,
                "entities": soc_history[:20],
            }
        )
    if home:
        car = vehicles.get(HOME_VEHICLE_ID, {})
        views.append(home_view(vehicle_card(HOME_VEHICLE_ID, car), car.get("setpoint")))
    return {"title": "EV participation", "views": views}


async def collect_entities(
    hass: HassInstance, entry_id: str
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Fleet and per-vehicle entity ids of the entry, keyed by description key."""
    registry = await hass.ws("config/entity_registry/list")
    fleet: dict[str, str] = {}
    vehicles: dict[str, dict[str, str]] = defaultdict(dict)
    fleet_prefix = f"{entry_id}_fleet_"
    for item in registry:
        if item.get("platform") != "v2g" or item.get("config_entry_id") != entry_id:
            continue
        unique_id = str(item.get("unique_id", ""))
        if unique_id.startswith(fleet_prefix):
            fleet[unique_id.removeprefix(fleet_prefix)] = item["entity_id"]
            continue
        rest = unique_id.removeprefix(f"{entry_id}_")
        for key in VEHICLE_KEYS:
            if rest.endswith(f"_{key}"):
                vehicles[rest.removesuffix(f"_{key}")][key] = item["entity_id"]
    return fleet, dict(vehicles)


def automation_yaml(entry_id: str, minutes: int) -> str:
    """An example automation that dispatches an aFRR-style signal periodically."""
    return f"""\
- id: v2g_demo_periodic_dispatch
  alias: V2G demo - periodic aFRR dispatch
  description: Dispatch 30 kW of aFRR to the simulated fleet every {minutes} minutes.
  triggers:
    - trigger: time_pattern
      minutes: "/{minutes}"
  actions:
    - action: v2g.dispatch
      data:
        config_entry_id: {entry_id}
        signal_type: aFRR
        power_kw: 30
        duration:
          minutes: {minutes}
  mode: queued
"""


class DemoStack:
    """Broker, simulated fleet and Home Assistant with V2G, started and stopped together."""

    def __init__(
        self,
        config_dir: Path,
        *,
        port: int = 8123,
        broker_port: int = 1883,
        vehicles: int = 20,
        seed: int = 7,
        dispatch_every: int = 5,
        trusted_networks: bool = False,
        home: bool = False,
        overrides: Sequence[str] = (),
    ) -> None:
        """Describe the stack; nothing starts before `start()`.

        `home` adds the simulated home charger and its car (devtools/home_charger.py);
        `overrides` change simulated vehicles (`start_simulator`).
        """
        self.config_dir = config_dir
        self.home = home
        self.broker_port = broker_port
        self.vehicles = vehicles
        self.seed = seed
        self.dispatch_every = dispatch_every
        self.overrides = tuple(overrides)
        self.hass = HassInstance(
            config_dir, port=port, trusted_networks=trusted_networks
        )
        self.entry_id = ""
        self.first_dispatch: dict[str, Any] = {}
        self.home_dispatch: dict[str, Any] = {}
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def dashboard_url(self) -> str:
        """Where the EV participation dashboard is served."""
        return f"{self.hass.url}/{DASHBOARD_PATH}"

    async def start(self) -> None:
        """Start everything and configure Home Assistant (idempotent per folder)."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        if (broker := start_broker(self.config_dir, self.broker_port)) is not None:
            self._processes.append(broker)
        self._processes.append(
            start_simulator(
                self.config_dir,
                self.broker_port,
                self.vehicles,
                self.seed,
                self.overrides,
            )
        )
        hass = self.hass
        hass.prepare(home_charger_yaml() if self.home else "")
        await hass.start()
        await hass.ensure_mqtt_entry(self.broker_port)
        entry = await hass.ensure_v2g_entry()
        self.entry_id = entry_id = entry["entry_id"]
        if self.home:
            await ensure_home_vehicle(hass, entry_id)
        await hass.call_service(
            "v2g", "discover", {"config_entry_id": entry_id}, return_response=True
        )
        await asyncio.sleep(1)  # let the platforms add the new vehicles' entities
        fleet, vehicles = await collect_entities(hass, entry_id)
        dashboards = await hass.ws("lovelace/dashboards/list")
        if not any(d.get("url_path") == DASHBOARD_PATH for d in dashboards):
            await hass.ws(
                "lovelace/dashboards/create",
                url_path=DASHBOARD_PATH,
                title="EV participation",
                icon="mdi:car-electric",
                show_in_sidebar=True,
                require_admin=False,
                mode="storage",
            )
        await hass.ws(
            "lovelace/config/save",
            url_path=DASHBOARD_PATH,
            config=dashboard_config(fleet, vehicles, home=self.home),
        )
        (self.config_dir / "automations.yaml").write_text(
            automation_yaml(entry_id, self.dispatch_every), encoding="utf-8"
        )
        await hass.call_service("automation", "reload", {})
        self.first_dispatch = await hass.call_service(
            "v2g",
            "dispatch",
            {
                "config_entry_id": entry_id,
                "signal_type": "aFRR",
                "power_kw": 30,
                "duration": {"minutes": self.dispatch_every},
            },
            return_response=True,
        )
        if self.home:
            self.home_dispatch = await dispatch_to_home(
                hass, entry_id, self.dispatch_every
            )

    async def stop(self) -> None:
        """Stop Home Assistant, the simulator and the broker we started."""
        await self.hass.stop()
        for process in reversed(self._processes):
            if process.poll() is None:
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(10)
            if process.poll() is None:
                process.kill()
                process.wait(10)
        self._processes.clear()


async def run(args: argparse.Namespace) -> None:
    """Start everything, print how to reach it, wait for Ctrl-C, stop everything."""
    config_dir: Path = args.config_dir
    if args.fresh and config_dir.exists():
        shutil.rmtree(config_dir)
    stack = DemoStack(
        config_dir,
        port=args.port,
        broker_port=args.broker_port,
        vehicles=args.vehicles,
        seed=args.seed,
        dispatch_every=args.dispatch_every,
        trusted_networks=args.trusted_networks,
        home=args.home,
        overrides=args.override,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        print("Starting mosquitto, the simulated fleet and Home Assistant…")
        await stack.start()
        first = stack.first_dispatch
        print(
            f"First dispatch: {first['status']}, "
            f"{first['acknowledged_kw']:.1f} of {first['requested_kw']:.1f} kW "
            f"acknowledged by {len(first['vehicles'])} vehicles"
        )
        if stack.home_dispatch:
            print(describe_dispatch(stack.home_dispatch))
        print()
        print(f"EV participation dashboard: {stack.dashboard_url}")
        if stack.home:
            print(f"Home charger view: {stack.dashboard_url}/{HOME_VIEW_PATH}")
        print(f"Login: {stack.hass.username} / {stack.hass.password}")
        if args.trusted_networks:
            print("(demo only: 127.0.0.1 is logged in without a password)")
        print(f"Prometheus metrics: {stack.hass.url}/api/prometheus (bearer token)")
        print(f"Logs: {config_dir}/hass.log, simulator.log")
        print("Press Ctrl-C to stop.")
        await stop.wait()
    finally:
        print("Stopping…")
        await stack.stop()


def main() -> None:
    """Parse arguments and run the demo."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", type=int, default=20)
    parser.add_argument("--port", type=int, default=8123, help="Home Assistant port")
    parser.add_argument("--broker-port", type=int, default=1883)
    parser.add_argument("--config-dir", type=Path, default=REPO_ROOT / "dev-config")
    parser.add_argument(
        "--fresh", action="store_true", help="wipe the generated config folder first"
    )
    parser.add_argument(
        "--dispatch-every", type=int, default=5, help="minutes between dispatches"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--trusted-networks",
        action="store_true",
        help="demo only: log 127.0.0.1 in without a password",
    )
    parser.add_argument(
        "--home",
        action="store_true",
        help="add a simulated home charger (helpers and templates) and its car",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="ID:FIELD=VALUE[,...]",
        help="change a simulated vehicle, e.g. veh003:reject_rate=1 (repeatable)",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
