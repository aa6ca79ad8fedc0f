"""Soak test (issue 6): a 200-vehicle depot dispatched every 4 s for 30 minutes.

Not run in CI (`scripts/soak`). Everything runs on 127.0.0.1:

* a mosquitto of its own (``tests/mqtt_broker.py``) on a free port;
* the fleet simulator as its own process (shared connection, telemetry push
  every 10 s, small ack latency);
* a real ``hass`` process (``devtools/hass_instance.py``) with the MQTT and V2G
  entries made through their config flows.

After discovery it calls ``v2g.dispatch`` (aFRR, alternating sign, a random
magnitude) every 4 s on a fixed schedule, each call in its own task over one
websocket (a slow dispatch never delays the next one), samples the RSS of the
hass process every 30 s, and at the end reads the integration's diagnostics,
stops hass and greps its log for ``ERROR`` and ``Traceback``. The summary goes to
``<output>/soak.json`` and ``<output>/soak.md``.

Delivered vs acknowledged: when a dispatch has answered, the soak polls the
vehicles that got an order in it (either round) and have had no newer order
since (a tap on the command topic tells) for telemetry on their own request
topic, and compares the ``power_kw`` they really apply with the power their
acknowledged orders of that dispatch set (0 for an order not acknowledged). ``--simulator-args=...`` passes extra
options to the simulator (e.g. ``--apply-dropped --ignore-expiry``) to watch the
gap the Go vehicles' behaviours open.

    scripts/soak                 # 30 minutes
    scripts/soak --minutes 1     # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
import json
import math
import os
from pathlib import Path
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import aiohttp
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from devtools.hass_instance import REPO_ROOT, HassError, HassInstance
from tests.mqtt_broker import MosquittoBroker

DEFAULT_OUTPUT = REPO_ROOT / "test-output" / "soak"
CALL_TIMEOUT_S = 120.0
SAMPLE_TIMEOUT_S = 2.0
# A dispatch "delivers" when |delivered - acknowledged| <= max(10 %, 1 kW), the
# integration's default delivery tolerance.
DELIVERY_TOLERANCE_PCT = 0.10
DELIVERY_TOLERANCE_KW = 1.0


# --- a websocket client that runs many calls at once -----------------------------


class ConcurrentWs:
    """One authenticated websocket; results are routed to their caller by id."""

    def __init__(self, url: str, token: str) -> None:
        """Prepare (not connect) a client for ``url`` with ``token``."""
        self._url = url
        self._token = token
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._next_id = 1
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def connect(self) -> None:
        """Connect and authenticate; start the reader."""
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(
            f"{self._url}/api/websocket", max_msg_size=0
        )
        await self._ws.receive_json()  # auth_required
        await self._ws.send_json({"type": "auth", "access_token": self._token})
        auth = await self._ws.receive_json()
        if auth.get("type") != "auth_ok":
            raise HassError(f"websocket auth failed: {auth}")
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            for item in data if isinstance(data, list) else [data]:
                future = self._waiting.pop(item.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(item)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("websocket closed"))
        self._waiting.clear()

    async def call(self, message_type: str, **payload: Any) -> dict[str, Any]:
        """Send one command; return its ``result`` message (success or not)."""
        assert self._ws is not None
        msg_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting[msg_id] = future
        await self._ws.send_json({"id": msg_id, "type": message_type, **payload})
        return await future

    async def close(self) -> None:
        """Close the socket and the session."""
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._session is not None:
            await self._session.close()


# --- the fleet's real power, read through telemetry polls --------------------------


class PowerSampler:
    """Polls vehicles for telemetry on their own request topic; reads ``power_kw``.

    Home Assistant does not subscribe to the poll answers in push mode, so the
    samples do not disturb it. The paho client runs its own thread; the answers
    are kept with their arrival time, and a sample waits for answers newer than
    its own polls. It also taps the command topic: the dispatch of each
    vehicle's latest order.
    """

    def __init__(self, broker: MosquittoBroker) -> None:
        """Prepare (not connect) a client for ``broker``."""
        self._broker = broker
        self._latest: dict[str, tuple[float, float]] = {}
        self._ordered_by: dict[str, str | None] = {}
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"soak-sampler-{os.getpid()}"
        )
        client.on_message = self._on_message
        self._client = client

    def start(self) -> None:
        """Connect and subscribe to the telemetry answers."""
        self._client.connect(self._broker.host, self._broker.port, keepalive=30)
        self._client.subscribe(
            [("v2g/telemetry/response/+", 0), ("vehicle/+/command", 0)]
        )
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        topic = str(msg.topic)
        try:
            body = json.loads(msg.payload)
            if topic.startswith("vehicle/"):
                self._ordered_by[topic.split("/")[1]] = body.get("dispatch_id")
                return
            power = float(body["power_kw"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        self._latest[topic.rsplit("/", 1)[-1]] = (time.monotonic(), power)

    def still_held(self, dispatch_id: str, vehicle_ids: list[str]) -> list[str]:
        """The vehicles whose latest order on the wire is from this dispatch."""
        return [vid for vid in vehicle_ids if self._ordered_by.get(vid) == dispatch_id]

    async def sample(self, vehicle_ids: list[str]) -> dict[str, float]:
        """Real power of the vehicles that answered a poll sent now."""
        asked = time.monotonic()
        for vehicle_id in vehicle_ids:
            self._client.publish(f"v2g/telemetry/request/{vehicle_id}", b"poll", qos=0)
        deadline = asked + SAMPLE_TIMEOUT_S
        while True:
            fresh = {
                vid: sample[1]
                for vid in vehicle_ids
                if (sample := self._latest.get(vid)) is not None and sample[0] >= asked
            }
            if len(fresh) == len(vehicle_ids) or time.monotonic() > deadline:
                return fresh
            await asyncio.sleep(0.02)


# --- optional memory probe (--trace-memory) --------------------------------------

PROBE_MANIFEST = {
    "domain": "soak_probe",
    "name": "Soak memory probe",
    "version": "0.0.1",
    "documentation": "https://example.invalid",
    "codeowners": [],
    "requirements": [],
    "iot_class": "local_push",
}
PROBE_CODE = '''"""Soak memory probe: tracemalloc growth by source file (devtools/soak.py)."""

from datetime import timedelta
import json
from pathlib import Path
import tracemalloc

from homeassistant.helpers.event import async_track_time_interval

DOMAIN = "soak_probe"


async def async_setup(hass, config):
    """Trace allocations; every interval write the growth since the baseline."""
    conf = config.get(DOMAIN) or {}
    out = Path(conf["output"])
    warmup = float(conf.get("warmup", 300))
    interval = timedelta(seconds=float(conf.get("interval", 60)))
    tracemalloc.start(1)
    state = {"baseline": None, "started": hass.loop.time()}

    def _top(snapshot, baseline):
        stats = snapshot.compare_to(baseline, "filename")
        return [
            {"file": str(s.traceback[0].filename), "size_diff_kib": round(s.size_diff / 1024, 1),
             "size_kib": round(s.size / 1024, 1), "count_diff": s.count_diff}
            for s in stats[:25]
        ]

    def _tick(now):
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        elapsed = hass.loop.time() - state["started"]
        if state["baseline"] is None:
            if elapsed >= warmup:
                state["baseline"] = snapshot
                state["baseline_at"] = elapsed
            return
        current, peak = tracemalloc.get_traced_memory()
        out.write_text(json.dumps({
            "baseline_at_s": state["baseline_at"], "at_s": elapsed,
            "traced_mib": round(current / 2**20, 1), "peak_mib": round(peak / 2**20, 1),
            "growth_by_file": _top(snapshot, state["baseline"]),
        }, indent=1))

    async_track_time_interval(hass, _tick, interval)
    return True
'''


def install_probe(config_dir: Path, output: Path, warmup: float) -> str:
    """Write the probe integration into the config folder; return its YAML."""
    folder = config_dir / "custom_components" / "soak_probe"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(PROBE_MANIFEST), encoding="utf-8")
    (folder / "__init__.py").write_text(PROBE_CODE, encoding="utf-8")
    return f"soak_probe:\n  output: {output}\n  warmup: {warmup}\n  interval: 60\n"


# --- measurements ------------------------------------------------------------------


def rss_mib(pid: int | None) -> float | None:
    """Resident set size of a process in MiB (Linux), None if it is gone."""
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return None


def slope_per_hour(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) samples, per hour."""
    if len(samples) < 3:
        return None
    xs = [x for x, _ in samples]
    ys = [y for _, y in samples]
    mean_x = statistics.fmean(xs)
    mean_y = statistics.fmean(ys)
    den = sum((x - mean_x) ** 2 for x in xs)
    if den == 0:
        return None
    num = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    return num / den * 3600.0


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(fraction * len(ordered)) - 1, 0)
    return ordered[rank]


def scan_log(path: Path) -> dict[str, Any]:
    """Count ERROR / Traceback / WARNING lines of a hass log; keep the first few."""
    errors: list[str] = []
    tracebacks = 0
    warnings: Counter[str] = Counter()
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        if "Traceback" in line:
            tracebacks += 1
        if " ERROR " in line or line.startswith("ERROR"):
            errors.append(line)
        elif " WARNING " in line:
            # "2026-... WARNING (MainThread) [logger] message"
            logger = line.split("[", 1)[-1].split("]", 1)[0]
            warnings[logger] += 1
    return {
        "errors": len(errors),
        "tracebacks": tracebacks,
        "first_errors": errors[:10],
        "warnings_by_logger": dict(warnings.most_common()),
    }


# --- the run -------------------------------------------------------------------------


@dataclass
class SoakResult:
    """What the soak measured."""

    config: dict[str, Any]
    started_at: str = ""
    setup_s: float = 0.0
    duration_s: float = 0.0
    dispatches_sent: int = 0
    dispatches_answered: int = 0
    dispatch_errors: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    order_statuses: Counter[str] = field(default_factory=Counter)
    late_starts: int = 0
    max_start_lag_s: float = 0.0
    call_latencies_s: list[float] = field(default_factory=list)
    ack_rates: list[float] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)
    vehicles_discovered: int = 0
    diagnostics: dict[str, Any] = field(default_factory=dict)
    log: dict[str, Any] = field(default_factory=dict)
    simulator_stats: dict[str, Any] = field(default_factory=dict)
    # Per sampled dispatch, over the vehicles still holding its orders and
    # measured: (requested, acknowledged, delivered kW, vehicles held, measured).
    deliveries: list[tuple[float, float, float, int, int]] = field(default_factory=list)
    reordered_before_sample: int = 0

    def delivery_summary(self) -> dict[str, Any]:
        """Delivered (sampled real power) vs acknowledged, over the dispatches."""
        samples = self.deliveries
        acknowledged = sum(abs(ack) for _, ack, _, _, _ in samples)
        # Signed like each dispatch's request, so a wrong-way vehicle counts less.
        delivered = sum(
            math.copysign(1.0, req) * got for req, _, got, _, _ in samples if req
        )
        off = [
            got - ack
            for _, ack, got, _, _ in samples
            if abs(got - ack)
            > max(DELIVERY_TOLERANCE_PCT * abs(ack), DELIVERY_TOLERANCE_KW)
        ]
        ratios = [got / ack for _, ack, got, _, _ in samples if ack]
        return {
            "sampled_dispatches": len(samples),
            "acknowledged_kw_sum": round(acknowledged, 1),
            "delivered_kw_sum": round(delivered, 1),
            "delivery_ratio": _round(
                delivered / acknowledged if acknowledged else None
            ),
            "ratio_p5": _round(percentile(ratios, 0.05)),
            "ratio_p50": _round(percentile(ratios, 0.5)),
            "ratio_p95": _round(percentile(ratios, 0.95)),
            "dispatches_off_tolerance": len(off),
            "max_gap_kw": _round(max(off, key=abs) if off else 0.0, 1),
            "vehicles_unmeasured": sum(n - m for _, _, _, n, m in samples),
            "vehicles_reordered_before_sample": self.reordered_before_sample,
            "samples": [
                [round(req, 1), round(ack, 1), round(got, 1), held, measured]
                for req, ack, got, held, measured in samples
            ],
        }

    def summary(self) -> dict[str, Any]:
        """JSON-safe summary."""
        rss_values = [value for _, value in self.rss]
        warm = [(t, v) for t, v in self.rss if t >= min(300.0, self.duration_s / 3)]
        latencies = self.call_latencies_s
        return {
            "config": self.config,
            "started_at": self.started_at,
            "setup_s": round(self.setup_s, 1),
            "duration_s": round(self.duration_s, 1),
            "vehicles_discovered": self.vehicles_discovered,
            "dispatches": {
                "sent": self.dispatches_sent,
                "answered": self.dispatches_answered,
                "errors": len(self.dispatch_errors),
                "first_errors": self.dispatch_errors[:10],
                "statuses": dict(self.statuses),
                "order_statuses": dict(self.order_statuses),
                "late_starts": self.late_starts,
                "max_start_lag_s": round(self.max_start_lag_s, 3),
                "call_latency_s": {
                    "p50": _round(percentile(latencies, 0.5)),
                    "p95": _round(percentile(latencies, 0.95)),
                    "max": _round(max(latencies) if latencies else None),
                },
                "mean_ack_rate": _round(
                    statistics.fmean(self.ack_rates) if self.ack_rates else None
                ),
            },
            "delivery": self.delivery_summary(),
            "rss_mib": {
                "start": _round(rss_values[0] if rss_values else None),
                "peak": _round(max(rss_values) if rss_values else None),
                "end": _round(rss_values[-1] if rss_values else None),
                "slope_after_warmup_mib_per_h": _round(slope_per_hour(warm)),
                "samples": [[round(t, 1), round(v, 1)] for t, v in self.rss],
            },
            "integration": self.diagnostics,
            "simulator": self.simulator_stats,
            "hass_log": self.log,
        }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def start_simulator(
    broker: MosquittoBroker, args: argparse.Namespace, workdir: Path
) -> subprocess.Popen[bytes]:
    """Start the fleet simulator process (shared connection, telemetry push)."""
    log = open(workdir / "simulator.log", "ab")  # noqa: SIM115 - owned by the process
    command = [
        sys.executable,
        "-m",
        "simulator",
        "--broker",
        broker.address,
        "--count",
        str(args.vehicles),
        "--connection",
        "shared",
        "--telemetry-push",
        "--telemetry-interval",
        str(args.telemetry_interval),
        "--ack-latency",
        str(args.ack_latency),
        "--ack-jitter",
        str(args.ack_jitter),
        "--drop-rate",
        str(args.drop_rate),
        "--soc-spread",
        "0.1",
        "--initial-soc",
        "0.6",
        "--seed",
        str(args.seed),
        "--stats-file",
        str(workdir / "simulator-stats.json"),
        "-v",
        *shlex.split(args.simulator_args),
    ]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    return process


async def wait_for_entry(hass: HassInstance, domain: str, timeout: float) -> str:
    """Wait until the entry of ``domain`` is loaded; return its id."""
    deadline = time.monotonic() + timeout
    while True:
        entries = await hass.entries(domain)
        if entries and entries[0]["state"] == "loaded":
            return str(entries[0]["entry_id"])
        if time.monotonic() > deadline:
            raise HassError(f"{domain} entry not loaded: {entries}")
        await asyncio.sleep(0.5)


def record_answer(
    result: SoakResult, index: int, msg: dict[str, Any]
) -> dict[str, Any] | None:
    """Account one answered (or refused) dispatch call; return its response."""
    if not msg.get("success"):
        result.dispatch_errors.append(f"#{index}: {msg.get('error')}")
        return None
    response: dict[str, Any] = msg["result"]["response"]
    result.dispatches_answered += 1
    result.statuses[response["status"]] += 1
    if response.get("ack_rate") is not None:
        result.ack_rates.append(float(response["ack_rate"]))
    for section in ("vehicles", "fallback"):
        for order in response.get(section, {}).values():
            result.order_statuses[f"{section}:{order['status']}"] += 1
    return response


def confirmed_kw(response: dict[str, Any]) -> dict[str, float]:
    """Per ordered vehicle, the power its acknowledged orders of a dispatch set.

    A fallback order that is acknowledged replaces the first-round one; a first
    order not acknowledged counts 0.
    """
    confirmed: dict[str, float] = {}
    for vehicle_id, order in response.get("vehicles", {}).items():
        acknowledged = order["status"] == "acknowledged"
        confirmed[vehicle_id] = float(order["power_kw"]) if acknowledged else 0.0
    for vehicle_id, order in response.get("fallback", {}).items():
        if order["status"] == "acknowledged":
            confirmed[vehicle_id] = float(order["power_kw"])
        else:
            confirmed.setdefault(vehicle_id, 0.0)
    return confirmed


async def record_delivery(
    result: SoakResult, sampler: PowerSampler, response: dict[str, Any]
) -> None:
    """Sample the real power of the vehicles still holding a dispatch's orders."""
    confirmed = confirmed_kw(response)
    held = sampler.still_held(response["dispatch_id"], sorted(confirmed))
    result.reordered_before_sample += len(confirmed) - len(held)
    if not held:
        return
    powers = await sampler.sample(held)
    # An order of a later dispatch may have crossed the poll: leave its vehicle out.
    kept = sampler.still_held(response["dispatch_id"], list(powers))
    result.reordered_before_sample += len(powers) - len(kept)
    held = [vid for vid in held if vid in kept or vid not in powers]
    powers = {vid: powers[vid] for vid in kept}
    if not held:
        return
    result.deliveries.append(
        (
            float(response["requested_kw"]),
            math.fsum(confirmed[vid] for vid in powers),
            math.fsum(powers.values()),
            len(held),
            len(powers),
        )
    )


async def dispatch_once(
    ws: ConcurrentWs,
    entry_id: str,
    args: argparse.Namespace,
    result: SoakResult,
    index: int,
    power: float,
    sampler: PowerSampler,
) -> None:
    """Call v2g.dispatch once and account its answer."""
    loop = asyncio.get_running_loop()
    sent = loop.time()
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            msg = await ws.call(
                "call_service",
                domain="v2g",
                service="dispatch",
                service_data={
                    "config_entry_id": entry_id,
                    "signal_type": "aFRR",
                    "power_kw": power,
                    "duration": {"seconds": args.order_duration},
                },
                return_response=True,
            )
    except (TimeoutError, ConnectionError) as err:
        result.dispatch_errors.append(f"#{index}: {type(err).__name__} {err}")
        return
    result.call_latencies_s.append(loop.time() - sent)
    response = record_answer(result, index, msg)
    if response is not None:
        await record_delivery(result, sampler, response)


async def dispatch_loop(
    ws: ConcurrentWs,
    entry_id: str,
    args: argparse.Namespace,
    result: SoakResult,
    hass_pid: int | None,
    sampler: PowerSampler,
) -> None:
    """Dispatch every ``args.interval`` s and sample RSS every ``args.rss_every`` s."""
    rng = random.Random(args.seed)
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + args.minutes * 60.0
    tasks: set[asyncio.Task[None]] = set()
    next_rss = start
    index = 0
    while True:
        now = loop.time()
        if now >= next_rss:
            if (value := rss_mib(hass_pid)) is not None:
                result.rss.append((now - start, value))
            next_rss += args.rss_every
        due = start + index * args.interval
        if due >= end:
            break
        if now < due:
            await asyncio.sleep(min(due, next_rss) - now)
            continue
        lag = now - due
        result.max_start_lag_s = max(result.max_start_lag_s, lag)
        if lag > 0.5:
            result.late_starts += 1
        sign = 1.0 if index % 2 == 0 else -1.0
        power = sign * round(rng.uniform(args.min_kw, args.max_kw), 1)
        task = asyncio.create_task(
            dispatch_once(ws, entry_id, args, result, index, power, sampler)
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        result.dispatches_sent += 1
        index += 1
        if index % 75 == 0:
            print(
                f"  {now - start:6.0f} s: {result.dispatches_sent} sent, "
                f"{result.dispatches_answered} answered, "
                f"{dict(result.statuses)}, RSS {result.rss[-1][1]:.0f} MiB",
                flush=True,
            )
    if tasks:
        await asyncio.wait(tasks, timeout=CALL_TIMEOUT_S)
    if (value := rss_mib(hass_pid)) is not None:
        result.rss.append((loop.time() - start, value))
    result.duration_s = loop.time() - start


async def fetch_diagnostics(
    hass: HassInstance, ws: ConcurrentWs, entry_id: str
) -> dict[str, Any]:
    """The integration's counters (dropped input, ack dispositions, transport)."""
    data = await hass.rest("GET", f"/api/diagnostics/config_entry/{entry_id}")
    diag = data.get("data", data)
    log = await ws.call(
        "call_service",
        domain="v2g",
        service="get_dispatch_log",
        service_data={"config_entry_id": entry_id},
        return_response=True,
    )
    entries = log["result"]["response"]["count"] if log.get("success") else None
    return {
        "dropped_input": diag.get("dropped_input"),
        "ack_tracker_counters": diag.get("ack_tracker", {}).get("counters"),
        "pending_orders": diag.get("ack_tracker", {}).get("pending"),
        "transport": diag.get("transport"),
        "metrics_dispatches": diag.get("metrics", {}).get("dispatches"),
        "dispatch_log_entries": entries,
        "in_flight": len(diag.get("in_flight", [])),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak; return the summary (also written to the output folder)."""
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="v2g-soak-"))
    config = {
        key: (str(value) if isinstance(value, Path) else value)
        for key, value in vars(args).items()
    }
    result = SoakResult(config=config, started_at=datetime.now(UTC).isoformat())
    broker = MosquittoBroker()
    hass = HassInstance(workdir / "config", log_path=workdir / "hass.log")
    simulator: subprocess.Popen[bytes] | None = None
    ws: ConcurrentWs | None = None
    setup_start = time.monotonic()
    try:
        broker.start()
        print(f"mosquitto on {broker.address}; work dir {workdir}", flush=True)
        simulator = start_simulator(broker, args, workdir)
        extra_yaml = ""
        if args.trace_memory:
            extra_yaml = install_probe(
                hass.config_dir, output / "memory-growth.json", args.trace_warmup
            )
        hass.prepare(extra_yaml)
        await hass.start()
        await hass.ensure_mqtt_entry(broker.port)
        entry = await hass.ensure_v2g_entry(name="Depot")
        entry_id = str(entry["entry_id"])
        found: dict[str, Any] = {"vehicles": []}
        for _ in range(10):
            found = await hass.call_service(
                "v2g", "discover", {"config_entry_id": entry_id}, return_response=True
            )
            if len(found["vehicles"]) >= args.vehicles:
                break
            await asyncio.sleep(1)
        result.vehicles_discovered = len(found["vehicles"])
        await asyncio.sleep(5)  # let the platforms add the vehicles' entities
        result.setup_s = time.monotonic() - setup_start
        print(
            f"hass pid {hass.pid}, {result.vehicles_discovered} vehicles; "
            f"dispatching every {args.interval} s for {args.minutes} min",
            flush=True,
        )
        assert hass.token is not None
        ws = ConcurrentWs(hass.url, hass.token)
        await ws.connect()
        sampler = PowerSampler(broker)
        sampler.start()
        try:
            await dispatch_loop(ws, entry_id, args, result, hass.pid, sampler)
        finally:
            sampler.stop()
        try:
            result.diagnostics = await fetch_diagnostics(hass, ws, entry_id)
        except (HassError, aiohttp.ClientError, KeyError) as err:
            result.diagnostics = {"error": f"{type(err).__name__}: {err}"}
    finally:
        if ws is not None:
            await ws.close()
        await hass.stop()
        if simulator is not None:
            simulator.terminate()
            try:
                simulator.wait(15)
            except subprocess.TimeoutExpired:
                simulator.kill()
                simulator.wait(5)
        broker.close()
        result.log = scan_log(workdir / "hass.log")
        with contextlib.suppress(OSError, ValueError):
            result.simulator_stats = json.loads(
                (workdir / "simulator-stats.json").read_text(encoding="utf-8")
            )
        for name in ("hass.log", "simulator.log"):
            with contextlib.suppress(OSError):
                shutil.copy(workdir / name, output / name)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = result.summary()
    (output / "soak.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (output / "soak.md").write_text(markdown(summary), encoding="utf-8")
    return summary


def markdown(summary: dict[str, Any]) -> str:
    """A short human summary of the soak."""
    d = summary["dispatches"]
    delivery = summary["delivery"]
    rss = summary["rss_mib"]
    cfg = summary["config"]
    log = summary["hass_log"]
    lat = d["call_latency_s"]
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(d["statuses"].items()))
    orders = ", ".join(f"{k} {v}" for k, v in sorted(d["order_statuses"].items()))
    lines = [
        "# V2G soak run",
        "",
        f"- started {summary['started_at']}, {summary['duration_s']:.0f} s of "
        f"dispatching after {summary['setup_s']:.0f} s of set-up",
        f"- fleet: {summary['vehicles_discovered']} vehicles (simulator, shared "
        f"connection, telemetry every {cfg['telemetry_interval']} s, ack latency "
        f"{cfg['ack_latency']} s + up to {cfg['ack_jitter']} s, drop rate "
        f"{cfg['drop_rate']}; extra simulator options: "
        f"{cfg['simulator_args'] or 'none'})",
        f"- dispatches: aFRR every {cfg['interval']} s, ±{cfg['min_kw']}–"
        f"{cfg['max_kw']} kW alternating; {d['sent']} sent, {d['answered']} "
        f"answered, {d['errors']} errors; statuses: {statuses}",
        f"- orders: {orders}",
        f"- call latency p50 {lat['p50']} s, p95 {lat['p95']} s, max {lat['max']} s; "
        f"late starts {d['late_starts']} (max lag {d['max_start_lag_s']} s); "
        f"mean ack rate {d['mean_ack_rate']}",
        f"- delivered vs acknowledged ({delivery['sampled_dispatches']} dispatches "
        f"sampled by telemetry poll): {delivery['delivered_kw_sum']} of "
        f"{delivery['acknowledged_kw_sum']} kW (ratio {delivery['delivery_ratio']}; "
        f"per dispatch p5 {delivery['ratio_p5']}, p50 {delivery['ratio_p50']}, "
        f"p95 {delivery['ratio_p95']}); {delivery['dispatches_off_tolerance']} "
        f"dispatches off by more than max(10 %, 1 kW), largest gap "
        f"{delivery['max_gap_kw']} kW; {delivery['vehicles_unmeasured']} ordered "
        "vehicles did not answer the poll, "
        f"{delivery['vehicles_reordered_before_sample']} were re-ordered before it",
        f"- hass RSS: start {rss['start']} MiB, peak {rss['peak']} MiB, end "
        f"{rss['end']} MiB; slope after warm-up "
        f"{rss['slope_after_warmup_mib_per_h']} MiB/h",
        f"- hass.log: {log['errors']} ERROR lines, {log['tracebacks']} tracebacks; "
        f"warnings by logger: {log['warnings_by_logger']}",
        f"- integration diagnostics at the end: {summary['integration']}",
        "",
    ]
    if log["first_errors"]:
        lines += ["## First errors", "", "```", *log["first_errors"], "```", ""]
    if d["first_errors"]:
        lines += ["## Dispatch errors", "", *[f"- {e}" for e in d["first_errors"]], ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--vehicles", type=int, default=200)
    parser.add_argument("--interval", type=float, default=4.0, help="s between calls")
    parser.add_argument("--telemetry-interval", type=float, default=10.0)
    parser.add_argument("--min-kw", type=float, default=200.0)
    parser.add_argument("--max-kw", type=float, default=800.0)
    parser.add_argument("--order-duration", type=float, default=8.0, help="s")
    parser.add_argument("--ack-latency", type=float, default=0.05)
    parser.add_argument("--ack-jitter", type=float, default=0.1)
    parser.add_argument("--drop-rate", type=float, default=0.0)
    parser.add_argument(
        "--simulator-args",
        default="",
        help='extra simulator options, with "=": --simulator-args="--apply-dropped"',
    )
    parser.add_argument("--rss-every", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary work dir"
    )
    parser.add_argument(
        "--trace-memory",
        action="store_true",
        help="trace hass allocations (slow); growth by file to memory-growth.json",
    )
    parser.add_argument(
        "--trace-warmup", type=float, default=300.0, help="s before the baseline"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the soak; exit 1 if a dispatch went unanswered or hass logged errors."""
    args = parse_args(argv)
    summary = asyncio.run(run(args))
    print(markdown(summary))
    d = summary["dispatches"]
    log = summary["hass_log"]
    ok = d["sent"] == d["answered"] and not log["errors"] and not log["tracebacks"]
    print(f"results in {args.output}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
