"""Run every benchmark in one process and write ``results.json`` / ``results.md``.

    python -m benchmarks [--sizes 100,1000,10000] [--repeat 3] [--quick]
                         [--out-dir benchmarks/results] [--only per_vehicle,gateway]
                         [--profile] [--trace-loop] [--controlled-vehicles 50]

Order: the engine benchmark (before Home Assistant boots), then one mosquitto, the
floors' peer (a fleet simulator) and the bare paho client (its own process), one
in-process Home Assistant with the MQTT entry; per fleet size a fresh V2G entry and simulated fleet, with floor and
integration runs alternating; then the memory run; the vehicles controlled
through Home Assistant (`input_number` chargers, no MQTT vehicle); last the
delivery verification (fleets pushing telemetry, bench_delivery.py). The exit status
is 1 when a section could not run or a dispatch did not acknowledge every order.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
import gc
import json
import os
from pathlib import Path
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from types import FrameType
from typing import Any

from . import bench_delivery
from .bench_controlled import CONTROLLED_VEHICLES, MAX_CONTROLLED_VEHICLES
from .bench_depot import (
    DEFAULT_SIZES as DEPOT_SIZES,
    MODES as DEPOT_MODES,
    PROFILES as DEPOT_PROFILES,
)
from .harness import (
    REPO_ROOT,
    HarnessError,
    HassHarness,
    LoopStepTracer,
    StateWriteCounter,
    floor_peer_process,
    median,
    mosquitto_version,
    new_broker,
    run_in_hass_thread,
    stop_all_helpers,
)
from .report import evaluate_targets, render_markdown

SECTIONS = (
    "engine",
    "per_vehicle",
    "gateway",
    "memory",
    "controlled",
    "delivery",
    "depot",
)
# The sections that need the floors' helper processes (peer simulator, bare paho).
FLOOR_SECTIONS = ("per_vehicle", "gateway")
DEFAULT_SIZES = (100, 1_000, 10_000)
DEFAULT_ENGINE_SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (5,)
QUICK_ENGINE_SIZES = (100,)
QUICK_DEPOT_MODES = ("per_vehicle", "gateway")
# Dispatches are cheap at 50 vehicles: more runs than the fleet sections.
DEFAULT_CONTROLLED_REPEAT = 10
QUICK_CONTROLLED_VEHICLES = 5
DEFAULT_OUT_DIR = REPO_ROOT / "benchmarks" / "results"


@dataclass(frozen=True, slots=True)
class Options:
    """What to run."""

    sizes: tuple[int, ...]
    engine_sizes: tuple[int, ...]
    repeat: int
    warmup: int
    gateway_size: int
    memory_size: int
    out_dir: Path
    sections: tuple[str, ...]
    profile: bool
    quick: bool
    trace_loop: bool = False
    controlled_vehicles: int = CONTROLLED_VEHICLES
    controlled_repeat: int = DEFAULT_CONTROLLED_REPEAT
    delivery: bench_delivery.DeliveryOptions = field(
        default_factory=bench_delivery.DeliveryOptions
    )
    brokers: tuple[str, ...] = DEPOT_PROFILES
    depot_modes: tuple[str, ...] = DEPOT_MODES
    depot_sizes: tuple[int, ...] = DEPOT_SIZES


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part.replace("_", "")) for part in text.split(",") if part)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from err
    if not sizes or any(size <= 0 for size in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be positive: {text!r}")
    return sizes


def _choices(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(part.strip() for part in text.split(",") if part.strip())
        if not chosen or any(part not in allowed for part in chosen):
            raise argparse.ArgumentTypeError(
                f"{text!r}: choose from {', '.join(allowed)}"
            )
        return chosen

    return parse


def _sections(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [part for part in chosen if part not in SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}"
        )
    return chosen


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--sizes", type=_sizes, help="fleet sizes (default 100,1000,10000)"
    )
    parser.add_argument(
        "--engine-sizes", type=_sizes, help="engine sizes (default 1000,10000,100000)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help="runs per figure (median; default 3, controlled section 10)",
    )
    parser.add_argument("--warmup", type=int, help="unmeasured runs first (default 1)")
    parser.add_argument("--gateway-size", type=int, default=500)
    parser.add_argument(
        "--memory-size",
        type=int,
        help="vehicles discovered under tracemalloc (default: the largest size)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, one run, no warm-up (the CI smoke run)",
    )
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument(
        "--only", type=_sections, default=SECTIONS, help=f"any of {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the discovery and one extra dispatch at the largest size"
        " (out-dir/profiles)",
    )
    parser.add_argument(
        "--trace-loop",
        action="store_true",
        help="time every event-loop step of one extra dispatch and floor run at the"
        " largest size; list the slow ones (out-dir/profiles/loop-steps-*.txt)",
    )
    parser.add_argument(
        "--controlled-vehicles",
        type=int,
        help="vehicles of the controlled section (input_number chargers; default 50)",
    )
    bench_delivery.add_arguments(parser)
    parser.add_argument(
        "--brokers",
        type=_choices(DEPOT_PROFILES),
        help="depot section: broker limits (tests/mqtt_broker.py) to measure"
        f" (default {','.join(DEPOT_PROFILES)}; --quick: stock)",
    )
    parser.add_argument(
        "--depot-modes",
        type=_choices(DEPOT_MODES),
        help=f"depot section: any of {','.join(DEPOT_MODES)} (default all;"
        f" --quick: {','.join(QUICK_DEPOT_MODES)})",
    )
    parser.add_argument(
        "--depot-sizes",
        type=_sizes,
        help="depot section: fleet sizes (default 1000,5000,10000; --quick: 5)",
    )
    args = parser.parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    engine_sizes = args.engine_sizes or (
        QUICK_ENGINE_SIZES if args.quick else DEFAULT_ENGINE_SIZES
    )
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    controlled_vehicles = args.controlled_vehicles or (
        QUICK_CONTROLLED_VEHICLES if args.quick else CONTROLLED_VEHICLES
    )
    controlled_repeat = (
        args.repeat
        if args.repeat is not None
        else (1 if args.quick else DEFAULT_CONTROLLED_REPEAT)
    )
    if repeat < 1 or warmup < 0 or args.gateway_size < 1:
        parser.error("--repeat must be ≥ 1, --warmup ≥ 0, --gateway-size ≥ 1")
    if not 1 <= controlled_vehicles <= MAX_CONTROLLED_VEHICLES:
        parser.error(f"--controlled-vehicles must be 1 to {MAX_CONTROLLED_VEHICLES}")
    return Options(
        sizes=tuple(sorted(set(sizes))),
        engine_sizes=tuple(sorted(set(engine_sizes))),
        repeat=repeat,
        warmup=warmup,
        gateway_size=args.gateway_size,
        memory_size=args.memory_size or max(sizes),
        out_dir=args.out_dir.resolve(),
        sections=args.only,
        profile=args.profile,
        quick=args.quick,
        trace_loop=args.trace_loop,
        controlled_vehicles=controlled_vehicles,
        controlled_repeat=controlled_repeat,
        delivery=bench_delivery.options_from(args, quick=args.quick),
        brokers=args.brokers or (("stock",) if args.quick else DEPOT_PROFILES),
        depot_modes=args.depot_modes
        or (QUICK_DEPOT_MODES if args.quick else DEPOT_MODES),
        depot_sizes=args.depot_sizes or (QUICK_SIZES if args.quick else DEPOT_SIZES),
    )


def say(message: str) -> None:
    """Progress on standard output."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{' (with uncommitted changes)' if dirty else ''}"


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


# --- sections ---------------------------------------------------------------------------
def run_engine(options: Options, results: dict[str, Any]) -> None:
    """Section 3: ``benchmarks/bench_engine.py`` (another module's ``run``)."""
    say(f"engine: sizes {options.engine_sizes}, repeat {options.repeat}")
    try:
        from . import bench_engine
    except ImportError as err:
        results["engine_error"] = f"benchmarks/bench_engine.py not importable: {err}"
        results["problems"].append(results["engine_error"])
        return
    try:
        rows = bench_engine.run(list(options.engine_sizes), options.repeat)
    except Exception as err:  # noqa: BLE001 - reported in the results
        results["engine_error"] = f"{type(err).__name__}: {err}"
        results["problems"].append(f"engine: {results['engine_error']}")
        results["section_errors"].append("engine")
        traceback.print_exc()
        return
    results["engine"] = [dict(row) for row in rows]


async def _settle(hass: Any, seconds: float = 0.2) -> None:
    """Let the previous run finish, then start the next one with no GC debt.

    A full collection of a process holding 10,000 vehicles takes seconds; when it
    falls is decided by earlier allocations, not by the measured run. Collecting
    before every floor and integration run keeps that lottery out of the ratios;
    collections the run itself causes still count (and are reported).
    """
    await hass.async_block_till_done()
    await asyncio.sleep(seconds)
    gc.collect()


def _summarise(row: dict[str, Any], runs: list[Any]) -> None:
    """Medians and checks of the integration runs of one row."""
    row["integration_runs_s"] = [round(run.seconds, 4) for run in runs]
    row["integration_s"] = median([run.seconds for run in runs])
    row["max_block_ms"] = max(run.max_block_ms for run in runs)
    row["max_gc_ms"] = max(run.max_gc_ms for run in runs)
    row["gc_total_ms"] = median([run.gc_total_ms for run in runs])
    row["all_acknowledged"] = all(run.ok for run in runs)
    row["orders"] = max(run.orders for run in runs)
    row["problems"] = sorted({problem for run in runs for problem in run.problems})


async def run_fleet_section(
    mode: str,
    harness: HassHarness,
    broker_port: int,
    options: Options,
    results: dict[str, Any],
    floor_run: Callable[[int], Any],
    log_dir: Path,
) -> None:
    """Sections 1 and 2: one fresh entry and fleet per size, runs alternating."""
    from .bench_dispatch import GATEWAY, FleetScenario

    floor_key = "paho_s" if mode == GATEWAY else "ha_floor_s"
    for size in options.sizes:
        say(f"{mode}: {size} vehicles")
        row: dict[str, Any] = {"vehicles": size}
        results[mode].append(row)
        scenario = FleetScenario(
            harness, broker_port, mode, size, log_dir, gateway_size=options.gateway_size
        )
        if mode == GATEWAY:
            row["gateways"] = scenario.gateways
        runs: list[Any] = []
        floors: list[Any] = []
        try:
            await _measure_size(scenario, options, floor_run, row, runs, floors)
        except Exception as err:  # noqa: BLE001 - reported in the results
            traceback.print_exc()
            row["error"] = f"{type(err).__name__}: {err}"
            results["problems"].append(f"{mode} {size}: {row['error']}")
            results["section_errors"].append(mode)
        finally:
            try:
                await scenario.async_stop()
            except Exception as err:  # noqa: BLE001 - reported in the results
                results["problems"].append(f"{mode} {size} teardown: {err}")
        _finish_row(row, floor_key, runs, floors)
        results["problems"].extend(
            f"{mode} {size}: {problem}" for problem in row.get("problems", [])
        )


async def _measure_size(
    scenario: Any,
    options: Options,
    floor_run: Callable[[int], Any],
    row: dict[str, Any],
    runs: list[Any],
    floors: list[Any],
) -> None:
    """Discover, warm up, then alternate floor and integration runs."""
    hass = scenario.hass
    size = scenario.size
    profile_dir = options.out_dir / "profiles"
    profiled = options.profile and size == max(options.sizes)
    try:
        await scenario.async_start(
            profile_path=profile_dir / f"discovery-{scenario.mode}-{size}.prof"
            if profiled
            else None
        )
    except Exception:
        # The integration could not run: still measure the floor of this size.
        floors.extend([await floor_run(size) for _ in range(options.repeat)])
        raise
    row["discovery_s"] = scenario.discovery_s
    row["discovery_max_block_ms"] = scenario.discovery_max_block_ms
    row["discovery_max_gc_ms"] = scenario.discovery_max_gc_ms
    row["gc_objects"] = scenario.gc_objects
    row["entities"] = scenario.entities
    say(
        f"  discovered {size} in {scenario.discovery_s:.1f} s"
        f" ({scenario.entities} entities)"
    )
    await _settle(hass)
    for _ in range(options.warmup):
        await floor_run(size)
        await _settle(hass)
        await scenario.async_dispatch()
        await _settle(hass)
    for index in range(options.repeat):
        floor = await floor_run(size)
        floors.append(floor)
        await _settle(hass)
        run = await scenario.async_dispatch()
        runs.append(run)
        await _settle(hass)
        note = f"; {'; '.join(run.problems)}" if run.problems else ""
        say(
            f"  run {index + 1}: integration {run.seconds:.3f} s"
            f" (loop block {run.max_block_ms:.0f} ms{note}),"
            f" floor {floor.seconds:.3f} s"
        )
    writes = await scenario.async_dispatch(count_writes=True)
    _record_writes(row, writes)
    row["rewritten_entities_sample"] = writes.rewritten
    if options.trace_loop and size == max(options.sizes):
        await _trace_loop(scenario, floor_run, profile_dir)
    if profiled:
        path = profile_dir / f"dispatch-{scenario.mode}-{size}.prof"
        await _settle(hass)
        await scenario.async_dispatch(profile_path=path)
        say(f"  profile written to {path} (.txt: top functions)")


async def _trace_loop(
    scenario: Any, floor_run: Callable[[int], Any], profile_dir: Path
) -> None:
    """One floor run and one dispatch with every loop step timed (diagnostic)."""
    hass = scenario.hass
    size = scenario.size
    sections = []
    for name in ("floor", "integration"):
        await _settle(hass)
        with LoopStepTracer() as tracer:
            if name == "floor":
                await floor_run(size)
            else:
                run = await scenario.async_dispatch()
                say(f"  traced dispatch: loop block {run.max_block_ms:.0f} ms")
        sections.append(
            f"== {name} ({scenario.mode}, {size} vehicles)\n{tracer.report()}"
        )
    profile_dir.mkdir(parents=True, exist_ok=True)
    path = profile_dir / f"loop-steps-{scenario.mode}-{size}.txt"
    path.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    say(f"  loop steps written to {path}")


def _finish_row(
    row: dict[str, Any], floor_key: str, runs: list[Any], floors: list[Any]
) -> None:
    """Medians, ratio and checks of one fleet size."""
    if floors:
        row[f"{floor_key.removesuffix('_s')}_runs_s"] = [
            round(floor.seconds, 4) for floor in floors
        ]
        row[floor_key] = median([floor.seconds for floor in floors])
        blocks = [f.max_block_ms for f in floors if f.max_block_ms is not None]
        if blocks:
            row["floor_max_block_ms"] = max(blocks)
        pauses = [f.max_gc_ms for f in floors if f.max_gc_ms is not None]
        if pauses:
            row["floor_max_gc_ms"] = max(pauses)
        row["floor_runs_with_background_writes"] = sum(
            1 for floor in floors if getattr(floor, "background_writes", 0)
        )
        bursts = [f.burst_seconds for f in floors if f.burst_seconds is not None]
        if bursts:
            row["ha_floor_burst_runs_s"] = [round(b, 4) for b in bursts]
            row["ha_floor_burst_s"] = median(bursts)
            row["floor_burst_max_block_ms"] = max(
                f.burst_max_block_ms or 0.0 for f in floors
            )
        totals = [f.gc_total_ms for f in floors if f.gc_total_ms is not None]
        if totals:
            row["floor_gc_total_ms"] = median(totals)
    if runs:
        _summarise(row, runs)
        if row.get(floor_key):
            row["ratio"] = row["integration_s"] / row[floor_key]


async def run_memory(
    harness: HassHarness,
    broker_port: int,
    options: Options,
    results: dict[str, Any],
    log_dir: Path,
) -> None:
    """Section 4: tracemalloc around the discovery of N vehicles."""
    from .bench_dispatch import PER_VEHICLE, FleetScenario

    size = options.memory_size
    say(f"memory: discovery of {size} vehicles under tracemalloc")
    memory: dict[str, Any] = {"vehicles": size}
    results["memory"] = memory
    scenario = FleetScenario(harness, broker_port, PER_VEHICLE, size, log_dir, tag="m")
    try:
        await scenario.async_start(trace_memory=True)
        peak = scenario.memory_peak_bytes or 0
        retained = scenario.memory_retained_bytes or 0
        memory.update(
            peak_bytes=peak,
            retained_bytes=retained,
            peak_per_1000_mib=peak / (size / 1000) / 2**20,
            retained_per_1000_mib=retained / (size / 1000) / 2**20,
            entities=scenario.entities,
            top_allocations=scenario.memory_top,
        )
    except Exception as err:  # noqa: BLE001 - reported in the results
        traceback.print_exc()
        memory["error"] = f"{type(err).__name__}: {err}"
        results["problems"].append(f"memory: {memory['error']}")
        results["section_errors"].append("memory")
    finally:
        await scenario.async_stop()


async def run_controlled(
    harness: HassHarness, options: Options, results: dict[str, Any]
) -> None:
    """Section 5: N vehicles controlled through `input_number` chargers, per variant."""
    from .bench_controlled import VARIANTS, ControlledScenario, summarise

    count = options.controlled_vehicles
    for variant, delay_s in VARIANTS:
        say(f"controlled: {count} input_number chargers, {variant}")
        row: dict[str, Any] = {
            "variant": variant,
            "vehicles": count,
            "entity_delay_ms": delay_s * 1000.0,
        }
        results["controlled"].append(row)
        scenario = ControlledScenario(harness, variant, count, delay_s)
        runs: list[Any] = []
        try:
            await _measure_controlled(scenario, options, row, runs)
        except Exception as err:  # noqa: BLE001 - reported in the results
            traceback.print_exc()
            row["error"] = f"{type(err).__name__}: {err}"
            results["problems"].append(f"controlled {variant}: {row['error']}")
            results["section_errors"].append("controlled")
        finally:
            try:
                await scenario.async_stop()
            except Exception as err:  # noqa: BLE001 - reported in the results
                results["problems"].append(f"controlled {variant} teardown: {err}")
        if runs:
            summarise(row, runs, delay_s)
        results["problems"].extend(
            f"controlled {variant}: {problem}" for problem in row.get("problems", [])
        )


async def _measure_controlled(
    scenario: Any, options: Options, row: dict[str, Any], runs: list[Any]
) -> None:
    """Add the vehicles, warm up, time the dispatches, count one's state writes."""
    hass = scenario.hass
    await scenario.async_start()
    row["setup_s"] = scenario.setup_s
    row["setup_max_block_ms"] = scenario.setup_max_block_ms
    row["entities"] = scenario.entities
    say(
        f"  {scenario.count} vehicles added through the subentry flow in"
        f" {scenario.setup_s:.1f} s ({scenario.entities} entities)"
    )
    await _settle(hass)
    for _ in range(options.warmup):
        await scenario.async_dispatch()
        await _settle(hass)
    for index in range(options.controlled_repeat):
        run = await scenario.async_dispatch()
        runs.append(run)
        await _settle(hass)
        note = f"; {'; '.join(run.problems)}" if run.problems else ""
        say(
            f"  run {index + 1}: response {run.seconds:.3f} s, slowest confirmation"
            f" {max(run.latencies_ms, default=0.0):.0f} ms"
            f" (loop block {run.max_block_ms:.0f} ms{note})"
        )
    _record_writes(row, await scenario.async_dispatch(count_writes=True))


def _record_writes(row: dict[str, Any], writes: Any) -> None:
    """The state writes one counted dispatch made, into its result row."""
    row["state_writes"] = writes.state_writes
    row["state_writes_in_call"] = writes.state_writes_in_call
    row["entities_written"] = writes.entities_written
    row["max_writes_per_entity"] = writes.max_writes_per_entity
    row["writes_by_kind"] = writes.writes_by_kind


async def _run_sections_without_floor(
    harness: HassHarness,
    broker_port: int,
    options: Options,
    results: dict[str, Any],
    log_dir: Path,
) -> None:
    """The memory run, the vehicles controlled through Home Assistant, delivery, the depots."""
    if "memory" in options.sections:
        await run_memory(harness, broker_port, options, results, log_dir)
    if "controlled" in options.sections:
        await run_controlled(harness, options, results)
    if "delivery" in options.sections:
        await bench_delivery.run_section(
            harness, broker_port, options.delivery, results, log_dir, say
        )
    if "depot" in options.sections:
        await run_depot_section(harness, options, results, log_dir)


async def run_depot_section(
    harness: HassHarness, options: Options, results: dict[str, Any], log_dir: Path
) -> None:
    """Depots on tuned, stock and add-on brokers (last: it switches brokers)."""
    from .bench_depot import run_depot

    try:
        results["depot"] = await run_depot(
            harness,
            options.brokers,
            options.depot_modes,
            options.depot_sizes,
            log_dir,
            new_broker,
            say,
        )
    except Exception as err:  # noqa: BLE001 - reported in the results
        traceback.print_exc()
        results["problems"].append(f"depot: {type(err).__name__}: {err}")
        results["section_errors"].append("depot")
        return
    results["problems"].extend(
        f"depot {row['profile']} {row['mode']} {row['vehicles']}: {row['error']}"
        for row in results["depot"]
        if "error" in row
    )


def _new_harness(options: Options, broker_port: int, log_dir: Path) -> HassHarness:
    """The in-process Home Assistant; with the chargers the controlled section uses."""
    from .bench_controlled import controlled_configuration

    return HassHarness(
        broker_port,
        config_dir=log_dir / "hass-config",
        log_file=log_dir / "home-assistant.log",
        extra_configuration=controlled_configuration(options.controlled_vehicles)
        if "controlled" in options.sections
        else "",
    )


async def run_hass_sections(
    options: Options,
    broker_port: int,
    paho_floor: Any,
    results: dict[str, Any],
    log_dir: Path,
) -> None:
    """Everything that needs the in-process Home Assistant."""
    from .bench_dispatch import GATEWAY, PER_VEHICLE
    from .bench_mqtt_floor import HaFloor

    harness = _new_harness(options, broker_port, log_dir)
    say("starting Home Assistant (in process)")
    hass = await harness.start()
    results["meta"]["hass_startup_s"] = round(harness.startup_s, 2)
    loop = asyncio.get_running_loop()
    ha_floor = HaFloor(hass, max(options.sizes))
    try:
        if PER_VEHICLE in options.sections:
            await ha_floor.async_setup()

        async def _quiet_floor(size: int, measure: Callable[[], Any]) -> Any:
            """A floor run during which the integration wrote no entity state.

            The fleet's entry stays loaded during floor runs (same process, same
            heap); if its periodic housekeeping rewrites entities meanwhile, the
            floor run is discarded and repeated (twice at most).
            """
            for attempt in range(3):
                counter = StateWriteCounter(hass)
                try:
                    floor = await measure()
                finally:
                    counter.close()
                if not counter.writes:
                    return floor
                say(
                    f"  floor run with {counter.writes} background state writes"
                    f" discarded (attempt {attempt + 1})"
                )
                await asyncio.sleep(1.0)
            return replace(floor, background_writes=counter.writes)

        async def _ha_floor(size: int) -> Any:
            floor = await _quiet_floor(
                size, lambda: ha_floor.async_run(size, monitor_block=True)
            )
            # For reference: the same orders all started in one loop iteration.
            await _settle(hass)
            burst = await _quiet_floor(
                size, lambda: ha_floor.async_run(size, monitor_block=True, chunk=None)
            )
            return replace(
                floor,
                burst_seconds=burst.seconds,
                burst_max_block_ms=burst.max_block_ms,
            )

        async def _paho_floor(size: int) -> Any:
            return await _quiet_floor(
                size, lambda: loop.run_in_executor(None, paho_floor.run, size)
            )

        if PER_VEHICLE in options.sections:
            await run_fleet_section(
                PER_VEHICLE, harness, broker_port, options, results, _ha_floor, log_dir
            )
        if GATEWAY in options.sections:
            await run_fleet_section(
                GATEWAY, harness, broker_port, options, results, _paho_floor, log_dir
            )
        await _run_sections_without_floor(
            harness, broker_port, options, results, log_dir
        )
    finally:
        ha_floor.close()
        await harness.stop()


def new_results(options: Options) -> dict[str, Any]:
    """The results skeleton, with the run's metadata."""
    import homeassistant.const
    import paho.mqtt

    from .bench_dispatch import BENCH_ACK_TIMEOUT_S, SIGNAL_TYPE, STRATEGY

    return {
        "meta": {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "home_assistant": homeassistant.const.__version__,
            "paho_mqtt": paho.mqtt.__version__,
            "mosquitto": mosquitto_version(),
            "cpu_count": os.cpu_count(),
            "load_average": {"start": _load()},
            "git_commit": _git_commit(),
            "sizes": list(options.sizes),
            "engine_sizes": list(options.engine_sizes),
            "repeat": options.repeat,
            "warmup": options.warmup,
            "gateway_size": options.gateway_size,
            "quick": options.quick,
            "sections": list(options.sections),
            "signal": SIGNAL_TYPE,
            "strategy": STRATEGY,
            "ack_timeout_s": BENCH_ACK_TIMEOUT_S,
            "qos": 1,
            "controlled_vehicles": options.controlled_vehicles,
            "controlled_repeat": options.controlled_repeat,
            "brokers": list(options.brokers),
            "depot_modes": list(options.depot_modes),
            "depot_sizes": list(options.depot_sizes),
        },
        "engine": None,
        "per_vehicle": [],
        "gateway": [],
        "memory": None,
        "controlled": [],
        "delivery": [],
        "depot": [],
        "targets": [],
        "problems": [],
        "section_errors": [],
    }


def write_results(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write results.json and results.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    md_path = out_dir / "results.md"
    json_path.write_text(
        json.dumps(results, indent=2, sort_keys=False, default=str) + "\n",
        encoding="utf-8",
    )
    md_path.write_text(render_markdown(results), encoding="utf-8")
    return json_path, md_path


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops the run like Ctrl-C: helpers and the broker are cleaned up."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; return the exit status."""
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return _main(options)
    finally:
        stop_all_helpers()


def _main(options: Options) -> int:
    options.out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = options.out_dir / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir()
    started = time.perf_counter()
    results = new_results(options)
    results["meta"]["logs"] = str(log_dir)
    say(f"results and logs in {options.out_dir} (load average {_load()})")
    if "engine" in options.sections:
        run_engine(options, results)
    hass_sections = [s for s in options.sections if s != "engine"]
    if hass_sections:
        from .bench_mqtt_floor import PahoFloorProcess

        broker = new_broker()
        broker.start()
        results["meta"]["broker_config"] = broker.config_text().strip().splitlines()
        floor_peer = floor_peer_process(broker.port, max(options.sizes), log_dir)
        paho_floor = PahoFloorProcess(
            broker.port, max(options.sizes), log_dir / "paho-floor.log"
        )
        try:
            if any(section in FLOOR_SECTIONS for section in options.sections):
                floor_peer.start()
                paho_floor.start()
            run_in_hass_thread(
                lambda: run_hass_sections(
                    options, broker.port, paho_floor, results, log_dir
                )
            )
        except (HarnessError, OSError) as err:
            traceback.print_exc()
            results["problems"].append(f"harness: {type(err).__name__}: {err}")
            results["section_errors"].append("harness")
        finally:
            paho_floor.stop()
            floor_peer.stop()
            broker.close()
    results["meta"]["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["meta"]["duration_s"] = round(time.perf_counter() - started, 1)
    results["meta"]["load_average"]["end"] = _load()
    results["targets"] = evaluate_targets(results)
    json_path, md_path = write_results(results, options.out_dir)
    print(md_path.read_text(encoding="utf-8"))
    say(f"wrote {json_path} and {md_path}")
    failed = bool(results["section_errors"]) or any(
        not row.get("all_acknowledged", False)
        for mode in ("per_vehicle", "gateway", "controlled", "delivery")
        for row in results[mode]
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
