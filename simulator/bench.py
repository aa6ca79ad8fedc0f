"""Measure how fast a shared-connection simulator acks a burst of orders.

    python -m simulator.bench --broker 127.0.0.1:1883 --count 10000 [--gateway-size 500]

Starts `python -m simulator --connection shared` as a subprocess, discovers it, then
publishes one order per vehicle per round from a plain paho client and waits for
every ack. Reports wall time per round and the simulator process's CPU time (from
/proc) spent on the round.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
import threading
import time
from typing import Any
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .config import parse_broker
from .fleet import gateway_ids, make_ids


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1]
    parts = fields.split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


class _Collector:
    def __init__(self) -> None:
        self.count = 0
        self.cond = threading.Condition()

    def on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/acks"):
            added = len(json.loads(msg.payload)["acks"])
        else:
            added = 1
        with self.cond:
            self.count += added
            self.cond.notify_all()

    def wait(self, target: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.count >= target, timeout)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print one JSON line per round."""
    parser = argparse.ArgumentParser(prog="python -m simulator.bench")
    parser.add_argument("--broker", default="127.0.0.1:1883")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--gateway-size", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--qos", type=int, default=1)
    args = parser.parse_args(argv)
    host, port = parse_broker(args.broker)

    cmd = [
        sys.executable,
        "-m",
        "simulator",
        f"--broker={host}:{port}",
        "--connection=shared",
        f"--count={args.count}",
        f"--qos={args.qos}",
        "--id-prefix=bench",
    ]
    if args.gateway_size:
        cmd.append(f"--gateway-size={args.gateway_size}")
    proc = subprocess.Popen(cmd)  # noqa: S603 - our own module
    collector = _Collector()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-dispatcher")
    client.max_inflight_messages_set(0)
    client.on_message = collector.on_message
    client.connect(host, port)
    client.loop_start()
    try:
        client.subscribe(
            [
                ("vehicle/+/ack", args.qos),
                ("v2g/gateway/+/acks", args.qos),
                ("v2g/fleet/response/+", args.qos),
            ]
        )
        # Discovery until the whole fleet answers (the simulator may still start).
        deadline = time.monotonic() + 60
        while not collector.wait(args.count, 1.0):
            if time.monotonic() > deadline:
                print("fleet did not answer discovery", file=sys.stderr)
                return 1
            with collector.cond:
                collector.count = 0
            client.publish("v2g/fleet/discovery", b"hello", qos=args.qos)
        ids = make_ids("bench", args.count)
        for round_no in range(1, args.rounds + 1):
            with collector.cond:
                collector.count = 0
            cpu0 = _cpu_seconds(proc.pid)
            t0 = time.perf_counter()
            now_ms = int(time.time() * 1000)
            orders = [
                {
                    "command_id": str(uuid.uuid4()),
                    "vehicle_id": vid,
                    "power_kw": 1.0 if round_no % 2 else -1.0,
                    "timestamp": now_ms,
                    "expires_at": now_ms + 60_000,
                }
                for vid in ids
            ]
            if args.gateway_size:
                for index, gw in enumerate(gateway_ids(len(ids) // args.gateway_size)):
                    chunk = orders[
                        index * args.gateway_size : (index + 1) * args.gateway_size
                    ]
                    client.publish(
                        f"v2g/gateway/{gw}/commands",
                        json.dumps({"dispatch_id": "bench", "orders": chunk}),
                        qos=args.qos,
                    )
            else:
                for item in orders:
                    client.publish(
                        f"vehicle/{item['vehicle_id']}/command",
                        json.dumps(item),
                        qos=args.qos,
                    )
            t_published = time.perf_counter() - t0
            ok = collector.wait(args.count, 60)
            wall = time.perf_counter() - t0
            time.sleep(0.2)  # let the simulator finish its PUBACK bookkeeping
            cpu = _cpu_seconds(proc.pid) - cpu0
            print(
                json.dumps(
                    {
                        "round": round_no,
                        "orders": args.count,
                        "acks": collector.count,
                        "complete": ok,
                        "publish_s": round(t_published, 3),
                        "wall_s": round(wall, 3),
                        "acks_per_s": round(collector.count / wall),
                        "simulator_cpu_s": round(cpu, 3),
                    }
                ),
                flush=True,
            )
    finally:
        client.disconnect()
        client.loop_stop()
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
