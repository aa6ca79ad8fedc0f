"""The command line: option mapping and a real run of `python -m simulator`."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import pytest

from simulator.cli import build_parser, config_from_args
from simulator.config import ConfigError, SimulatorConfig
from tests.mqtt_broker import MosquittoBroker
from tests.simulator.conftest import Dispatcher, order

ROOT = Path(__file__).parents[2]


def _config(*argv: str) -> SimulatorConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_defaults_match_the_design() -> None:
    config = _config()
    assert (config.host, config.port, config.qos) == ("127.0.0.1", 1883, 1)
    assert (config.count, config.id_prefix, config.initial_soc) == (1, "veh", 0.8)
    assert config.connection == "per-vehicle"
    assert config.telemetry_interval == 10.0
    topics = config.topics
    assert topics.command == "vehicle/{vehicle_id}/command"
    assert topics.ack == "vehicle/{vehicle_id}/ack"
    assert topics.discovery == "v2g/fleet/discovery"
    assert topics.discovery_response == "v2g/fleet/response/{vehicle_id}"
    assert topics.state == "v2g/vehicle/state/{vehicle_id}"
    assert topics.telemetry_request == "v2g/telemetry/request"
    assert topics.telemetry_response == "v2g/telemetry/response/{vehicle_id}"
    assert topics.gateway_commands == "v2g/gateway/{gateway_id}/commands"
    assert topics.gateway_acks == "v2g/gateway/{gateway_id}/acks"


def test_go_flags_and_aliases() -> None:
    config = _config(
        "--broker=tcp://localhost:1884",
        "--count=3",
        "--fleet-size=7",
        "--ack-latency=50ms",
        "--ack-jitter",
        "0.01",
        "--telemetry-push=true",
        "--interval=1s",
        "--battery-profile=small",
        "--topic-prefix=fleet",
        "--state-topic-prefix=fleet/state/",
        "--telemetry-response-prefix=fleet/pull/",
        "--ack-all",
        "--gateway-size=3",
        "--gateway-batch-window=2ms",
    )
    assert (config.host, config.port, config.count) == ("127.0.0.1", 1884, 7)
    assert config.ack_latency == pytest.approx(0.05)
    assert config.ack_jitter == pytest.approx(0.01)
    assert config.telemetry_push is True
    assert config.telemetry_interval == 1.0
    assert (config.capacity_kwh, config.charge_rate_kw) == (20.0, 3.6)
    assert config.topics.discovery == "fleet/fleet/discovery"
    assert config.topics.discovery_response == "fleet/fleet/response/{vehicle_id}"
    assert config.topics.state == "fleet/state/{vehicle_id}"
    assert config.topics.telemetry_response == "fleet/pull/{vehicle_id}"
    assert config.ack_all is True
    assert config.gateway_count == 3
    assert config.gateway_batch_window == pytest.approx(0.002)
    explicit = _config("--command-topic=a/{vehicle_id}/cmd", "--telemetry-push=false")
    assert explicit.topics.command == "a/{vehicle_id}/cmd"
    assert explicit.telemetry_push is False


def test_demo_command_line_parses() -> None:
    config = _config(
        "--broker",
        "127.0.0.1:1999",
        "--count",
        "20",
        "--connection",
        "per-vehicle",
        "--telemetry-push",
        "--telemetry-interval",
        "10",
        "--ack-latency",
        "0.05",
        "--drop-rate",
        "0.03",
        "--soc-spread",
        "0.15",
    )
    assert config.telemetry_push is True
    assert config.telemetry_interval == 10
    assert config.drop_rate == 0.03


def test_remote_broker_is_refused() -> None:
    with pytest.raises(ConfigError):
        _config("--broker=mqtt://198.51.100.7:1883")
    assert _config("--broker=198.51.100.7:1883", "--allow-remote").host == (
        "198.51.100.7"
    )


def test_cli_runs_for_a_duration_and_writes_stats(
    broker: MosquittoBroker, dispatcher: Dispatcher, tmp_path: Path
) -> None:
    stats_file = tmp_path / "stats.json"
    dispatcher.subscribe("vehicle/+/ack")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulator",
            f"--broker={broker.address}",
            "--count=2",
            "--connection=shared",
            "--duration=30",
            f"--stats-file={stats_file}",
            "-v",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        line = b""
        while b"ready in" not in line:
            line = proc.stderr.readline()
            assert line, "simulator exited before it was ready"
        dispatcher.publish("vehicle/veh002/command", order("veh002", 1.0))
        dispatcher.wait_for("vehicle/veh002/ack")
        proc.terminate()  # SIGTERM: clean stop, stats written
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    stats = json.loads(stats_file.read_text())
    assert stats["orders_acked"] == 1
    assert stats["vehicles"] == 2
