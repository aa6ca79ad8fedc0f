"""Benchmark of the pure engine: eligibility + allocation per strategy.

Usage:
    python -m benchmarks.bench_engine [--sizes 1000 10000 100000] [--repeat 5]
                                      [--json out.json]

For each fleet size and strategy it measures, with `time.perf_counter`, the
median over `repeat` runs of `evaluate_eligibility` and of `allocate`, and in a
separate run (tracemalloc slows code down) the peak memory the two allocate.
The fleet is synthetic and seeded: mixed SoC, power, batteries, segments,
departures and availability, so every rule and score term is exercised. The
signal is an aFRR discharge of 3 kW per vehicle. Prints a markdown table.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
import json
from pathlib import Path
import random
import statistics
import time
import tracemalloc
from typing import Any

from custom_components.v2g.engine import (
    FlexibilitySignal,
    SafetySettings,
    SignalType,
    Strategy,
    Vehicle,
    allocate,
    evaluate_eligibility,
)

NOW = datetime(2025, 7, 7, 10, 0, tzinfo=UTC)
DEFAULT_SIZES = (1_000, 10_000, 100_000)
SEGMENTS = ("commuter", "captive_fleet", "opportunistic_charger", "")
TARGET_MS_AT_10K = 50.0


def make_fleet(size: int, seed: int = 42) -> list[Vehicle]:
    """A reproducible, varied fleet of `size` vehicles."""
    rng = random.Random(seed)
    fleet: list[Vehicle] = []
    for index in range(size):
        departure = (
            NOW + timedelta(minutes=rng.randint(10, 900))
            if rng.random() < 0.5
            else None
        )
        fleet.append(
            Vehicle(
                vehicle_id=f"veh{index:06}",
                soc=rng.uniform(0.05, 1.0),
                is_v2g=rng.random() < 0.9,
                max_power_kw=rng.choice((3.7, 7.4, 11.0, 22.0)),
                battery_kwh=rng.choice((40.0, 60.0, 77.0, 100.0)),
                available=rng.random() < 0.95,
                priority=rng.random() < 0.05,
                departure=departure,
                min_soc=rng.choice((0.0, 0.2, 0.3)),
                segment=rng.choice(SEGMENTS),
                availability_prob=rng.uniform(0.0, 1.0),
                degradation_factor=rng.uniform(0.0, 0.2),
            )
        )
    return fleet


def _participation(fleet: Sequence[Vehicle], seed: int = 7) -> dict[str, float]:
    rng = random.Random(seed)
    return {v.vehicle_id: rng.random() for v in fleet}


def _reliability(fleet: Sequence[Vehicle], seed: int = 8) -> dict[str, float]:
    rng = random.Random(seed)
    return {v.vehicle_id: rng.uniform(0.1, 1.0) for v in fleet}


def _measure(
    fleet: Sequence[Vehicle], strategy: Strategy, repeat: int
) -> dict[str, Any]:
    size = len(fleet)
    signal = FlexibilitySignal(
        signal_type=SignalType.AFRR, power_kw=3.0 * size, duration_s=900, start=NOW
    )
    safety = SafetySettings()
    participation = _participation(fleet)
    reliability = _reliability(fleet)
    eligibility_s: list[float] = []
    allocation_s: list[float] = []
    assigned = 0
    candidates = 0
    for _ in range(repeat):
        started = time.perf_counter()
        eligibility = evaluate_eligibility(fleet, signal, safety, NOW)
        middle = time.perf_counter()
        allocation = allocate(
            strategy,
            eligibility.candidates,
            signal,
            now=NOW,
            participation=participation,
            reliability=reliability,
        )
        ended = time.perf_counter()
        eligibility_s.append(middle - started)
        allocation_s.append(ended - middle)
        assigned = len(allocation.assignments)
        candidates = len(eligibility.candidates)

    tracemalloc.start()
    eligibility = evaluate_eligibility(fleet, signal, safety, NOW)
    allocate(
        strategy,
        eligibility.candidates,
        signal,
        now=NOW,
        participation=participation,
        reliability=reliability,
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    eligibility_ms = statistics.median(eligibility_s) * 1000
    allocation_ms = statistics.median(allocation_s) * 1000
    total_ms = statistics.median(
        e + a for e, a in zip(eligibility_s, allocation_s, strict=True)
    )
    return {
        "size": size,
        "strategy": strategy.value,
        "candidates": candidates,
        "assigned": assigned,
        "eligibility_ms": round(eligibility_ms, 3),
        "allocation_ms": round(allocation_ms, 3),
        "total_ms": round(total_ms * 1000, 3),
        "peak_kib": round(peak / 1024, 1),
        "repeat": repeat,
    }


def run(sizes: Sequence[int] = DEFAULT_SIZES, repeat: int = 5) -> list[dict[str, Any]]:
    """Measure every strategy at every size; one dict per (size, strategy)."""
    if repeat < 1:
        raise ValueError("repeat must be >= 1")
    rows: list[dict[str, Any]] = []
    for size in sizes:
        fleet = make_fleet(size)
        rows.extend(_measure(fleet, strategy, repeat) for strategy in Strategy)
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Render the results as a markdown table."""
    lines = [
        "| vehicles | strategy | candidates | eligibility ms | allocation ms"
        " | total ms (median) | peak memory KiB |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    lines.extend(
        f"| {r['size']:,} | {r['strategy']} | {r['candidates']:,} "
        f"| {r['eligibility_ms']:.2f} | {r['allocation_ms']:.2f} "
        f"| {r['total_ms']:.2f} | {r['peak_kib']:,.0f} |"
        for r in rows
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    rows = run(args.sizes, args.repeat)
    print(markdown(rows))
    at_10k = [r for r in rows if r["size"] == 10_000]
    if at_10k:
        worst = max(r["total_ms"] for r in at_10k)
        verdict = "meets" if worst < TARGET_MS_AT_10K else "MISSES"
        print(
            f"\n10,000 vehicles: slowest strategy {worst:.1f} ms"
            f" ({verdict} the {TARGET_MS_AT_10K:.0f} ms target)"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
