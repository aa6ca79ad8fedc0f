"""Delivered vs acknowledged power, and what the verification costs (issue 14).

Every dispatch that ran to its end is verified ``verify_window`` seconds after its
last ack (docs/dispatch.md#verification): the vehicles' telemetry ``power_kw`` is
compared with their acknowledged setpoints. A :class:`DeliveryScenario` is a
:class:`~benchmarks.bench_dispatch.FleetScenario` whose simulator pushes every
vehicle's telemetry each :data:`TELEMETRY_INTERVAL_S` (so measurements flow, and
Home Assistant handles them meanwhile, as it would with real vehicles). Per fleet:

1. **default path, verification on** (``verify_window`` 10 s, the option's
   default): ``v2g.dispatch`` without ``verify`` is timed back to back, after
   untimed dispatches filling one window, so the verifications of earlier runs
   fall during later ones (the real situation). Each run counts the
   ``v2g_dispatch_verified`` events fired while it was in progress;
2. **default path, verification off** (``verify_window`` 600 s, the option's
   maximum: nothing is verified during the runs; the reload of the entry cancels
   what was pending): the same runs. The difference is the verification's cost
   on the default path;
3. **``verify: true``** (``verify_window`` :data:`VERIFY_RUN_WINDOW_S`): the call
   waits for its own verification; its response gives delivered vs acknowledged
   power, the delivery ratio and the measured / unmeasured / following counts.

Phases 1 and 2 run twice, alternating (1, 2, 1, 2), so neither is favoured by
when it ran. :func:`run_section` runs the section for ``benchmarks.run``.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
import gc
from pathlib import Path
import time
import traceback
from typing import Any

from homeassistant.core import Event, callback

from custom_components.v2g.const import CONF_VERIFY_WINDOW, EVENT_DISPATCH_VERIFIED

from .bench_dispatch import (
    DOMAIN,
    GATEWAY,
    PER_VEHICLE,
    FleetScenario,
    check_response,
    known_vehicles,
)
from .harness import (
    HarnessError,
    HassHarness,
    LoopBlockMonitor,
    LoopStepTracer,
    median,
    simulator_process,
)

TELEMETRY_INTERVAL_S = 1.0
# The option's default: a verification 10 s after the last ack.
DEFAULT_WINDOW_S = 10.0
# The option's maximum: no verification falls during the runs of a phase.
OFF_WINDOW_S = 600.0
# ``verify: true`` runs wait for this window (≥ 2 telemetry intervals: a fresh
# reading of every vehicle after its ack).
VERIFY_RUN_WINDOW_S = 2.0
ON = "verification_on"
OFF = "verification_off"
PHASE_WINDOWS = {ON: DEFAULT_WINDOW_S, OFF: OFF_WINDOW_S}
PHASE_ORDER = (ON, OFF, ON, OFF)
DEFAULT_SIZES = (200, 1_000)
DEFAULT_GATEWAY_SIZES = (1_000,)
QUICK_SIZES = (5,)
DEFAULT_REPEAT = 10  # default-path runs per phase kind (split over its two phases)
DEFAULT_VERIFY_REPEAT = 5
GATEWAY_SIZE = 500
# The verification's task (verification.py), as the loop tracer labels its steps.
VERIFY_TASK = "DeliveryVerifier._async_verify"


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    """What the delivery section runs."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    gateway_sizes: tuple[int, ...] = DEFAULT_GATEWAY_SIZES
    repeat: int = DEFAULT_REPEAT
    verify_repeat: int = DEFAULT_VERIFY_REPEAT
    fill: bool = True  # untimed dispatches filling one window before timed runs

    @property
    def cases(self) -> list[tuple[str, int]]:
        """(mode, vehicles) of every fleet measured."""
        return [(PER_VEHICLE, size) for size in self.sizes] + [
            (GATEWAY, size) for size in self.gateway_sizes
        ]


def _size_list(text: str) -> tuple[int, ...]:
    """Comma-separated sizes; ``none`` or empty for none."""
    if text.strip().lower() in {"", "none", "0"}:
        return ()
    try:
        sizes = tuple(int(part.replace("_", "")) for part in text.split(",") if part)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from err
    if any(size <= 0 for size in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be positive: {text!r}")
    return tuple(sorted(set(sizes)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The section's command-line options."""
    parser.add_argument(
        "--delivery-sizes",
        type=_size_list,
        help="per-vehicle fleets of the delivery section (default 200,1000)",
    )
    parser.add_argument(
        "--delivery-gateway-sizes",
        type=_size_list,
        help="gateway fleets of the delivery section (default 1000; none)",
    )


def options_from(args: argparse.Namespace, *, quick: bool) -> DeliveryOptions:
    """The section's options from the parsed command line (``--repeat`` too)."""
    repeat = args.repeat
    return DeliveryOptions(
        sizes=args.delivery_sizes
        if args.delivery_sizes is not None
        else (QUICK_SIZES if quick else DEFAULT_SIZES),
        gateway_sizes=args.delivery_gateway_sizes
        if args.delivery_gateway_sizes is not None
        else (() if quick else DEFAULT_GATEWAY_SIZES),
        repeat=repeat if repeat is not None else (2 if quick else DEFAULT_REPEAT),
        verify_repeat=repeat
        if repeat is not None
        else (1 if quick else DEFAULT_VERIFY_REPEAT),
        fill=not quick,
    )


@dataclass(slots=True)
class DeliveryRun:
    """One timed ``v2g.dispatch`` (with ``verify`` or not)."""

    seconds: float
    max_block_ms: float
    max_gc_ms: float
    verifications_during: int
    problems: list[str]
    response: dict[str, Any] | None = None

    def delivery(self) -> dict[str, Any]:
        """Delivered vs acknowledged and the counts of a verified response."""
        response = self.response or {}
        vehicles = [
            order
            for order in (response.get("vehicles") or {}).values()
            if isinstance(order, dict)
        ]
        measured = [o for o in vehicles if o.get("measured_kw") is not None]
        return {
            "acknowledged_kw": response.get("acknowledged_kw"),
            "delivered_kw": response.get("delivered_kw"),
            "delivery_ratio": response.get("delivery_ratio"),
            "measured": len(measured),
            "unmeasured": len(response.get("unmeasured") or []),
            "following": sum(1 for o in measured if o.get("following") is True),
            "not_following": sum(1 for o in measured if o.get("following") is False),
        }


@dataclass
class VerifiedEvents:
    """The ``v2g_dispatch_verified`` events of one entry, as they fire."""

    entry_id: str
    count: int = 0
    unsub: Callable[[], None] | None = field(default=None, repr=False)


class DeliveryScenario(FleetScenario):
    """A fleet whose simulator pushes telemetry; dispatches with their verification."""

    def __init__(
        self,
        harness: HassHarness,
        broker_port: int,
        mode: str,
        size: int,
        log_dir: Path,
    ) -> None:
        """Prepare (start with :meth:`async_start`)."""
        super().__init__(
            harness,
            broker_port,
            mode,
            size,
            log_dir,
            gateway_size=GATEWAY_SIZE,
            tag="d",
        )
        self.simulator = simulator_process(
            broker_port,
            size,
            self.prefix,
            log_dir / f"simulator-delivery-{mode}-{size}.log",
            self.gateway_size,
            telemetry_interval_s=TELEMETRY_INTERVAL_S,
        )
        self.verify_window_s = DEFAULT_WINDOW_S
        self.events: VerifiedEvents | None = None

    def listen(self) -> None:
        """Count this entry's ``v2g_dispatch_verified`` events from now on."""
        events = VerifiedEvents(self._require_entry().entry_id)

        @callback
        def _count(event: Event[Any]) -> None:
            if event.data.get("config_entry_id") == events.entry_id:
                events.count += 1

        events.unsub = self.hass.bus.async_listen(EVENT_DISPATCH_VERIFIED, _count)
        self.events = events

    async def async_set_verify_window(self, seconds: float) -> float:
        """Reload the entry with another ``verify_window``; return the reload's s.

        The reload cancels the verifications still pending.
        """
        entry = self._require_entry()
        hass = self.hass
        started = time.perf_counter()
        hass.config_entries.async_update_entry(
            entry, options={**entry.options, CONF_VERIFY_WINDOW: seconds}
        )
        if not await hass.config_entries.async_reload(entry.entry_id):
            raise HarnessError(f"reload with verify_window {seconds} failed")
        async with asyncio.timeout(60.0 + self.size / 100.0):
            while True:
                if (known_vehicles(entry) or 0) >= self.size:
                    break
                await asyncio.sleep(0.05)
        await hass.async_block_till_done()
        self.verify_window_s = seconds
        return time.perf_counter() - started

    async def async_timed_dispatch(self, *, verify: bool = False) -> DeliveryRun:
        """Call ``v2g.dispatch`` once (``verify`` as given); time it, check it."""
        data = self.service_data()
        if verify:
            data["verify"] = True
        limit_s = self.dispatch_limit_s + (self.verify_window_s if verify else 0.0)
        events = self.events
        before = events.count if events is not None else 0
        response: Any = None
        problems: list[str] = []
        async with LoopBlockMonitor() as monitor:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(limit_s):
                    response = await self.hass.services.async_call(
                        DOMAIN, "dispatch", data, blocking=True, return_response=True
                    )
            except TimeoutError as err:
                raise HarnessError(
                    f"delivery {self.mode} {self.size}: no response after"
                    f" {limit_s:.0f} s"
                ) from err
            except Exception as err:  # noqa: BLE001 - reported, not raised
                problems.append(f"{type(err).__name__}: {err}")
            elapsed = time.perf_counter() - started
        during = (events.count if events is not None else 0) - before
        _orders, _acked, _status, checked = check_response(response, self.size)
        if verify and isinstance(response, dict) and "delivered_kw" not in response:
            problems.append("verify: true response without delivered_kw")
        return DeliveryRun(
            seconds=elapsed,
            max_block_ms=monitor.max_block_ms,
            max_gc_ms=monitor.max_gc_ms,
            verifications_during=during,
            problems=problems + checked,
            response=response if isinstance(response, dict) else None,
        )

    async def async_stop(self) -> None:
        """Stop counting events, remove the entry, stop the simulator."""
        if self.events is not None and self.events.unsub is not None:
            self.events.unsub()
            self.events = None
        await super().async_stop()


async def _settle(scenario: DeliveryScenario, seconds: float = 0.2) -> None:
    """As the fleet sections: let the previous run finish, then collect garbage."""
    await scenario.hass.async_block_till_done()
    await asyncio.sleep(seconds)
    gc.collect()


Say = Callable[[str], None]


async def _phase(
    scenario: DeliveryScenario,
    phase: str,
    runs: int,
    options: DeliveryOptions,
    say: Say,
) -> dict[str, Any]:
    """Reload with the phase's window, fill one window, time ``runs`` dispatches."""
    window = PHASE_WINDOWS[phase]
    reload_s = await scenario.async_set_verify_window(window)
    await _settle(scenario)
    fill_started = time.perf_counter()
    fills = 0
    # Untimed dispatches until the first one's verification is due: the timed
    # runs then meet the verifications of the runs before them (one warm-up
    # dispatch at least, in both phases alike).
    while fills == 0 or (
        options.fill and time.perf_counter() - fill_started < DEFAULT_WINDOW_S
    ):
        await scenario.async_timed_dispatch()
        await _settle(scenario)
        fills += 1
    timed: list[DeliveryRun] = []
    for _ in range(runs):
        run = await scenario.async_timed_dispatch()
        timed.append(run)
        await _settle(scenario)
    say(
        f"  {phase} (verify_window {window:.0f} s): "
        + ", ".join(
            f"{run.seconds:.3f} s"
            + (
                f" [{run.verifications_during} verified]"
                if run.verifications_during
                else ""
            )
            for run in timed
        )
    )
    return {
        "phase": phase,
        "verify_window_s": window,
        "reload_s": round(reload_s, 3),
        "fill_dispatches": fills,
        "runs": timed,
    }


def _summarise_default(runs: list[DeliveryRun]) -> dict[str, Any]:
    seconds = [run.seconds for run in runs]
    overlapped = [run.seconds for run in runs if run.verifications_during]
    clear = [run.seconds for run in runs if not run.verifications_during]
    return {
        "runs_s": [round(value, 4) for value in seconds],
        "response_p50_s": median(seconds),
        "response_max_s": max(seconds),
        "max_block_ms": max(run.max_block_ms for run in runs),
        "max_gc_ms": max(run.max_gc_ms for run in runs),
        "runs_max_block_ms": [round(run.max_block_ms, 1) for run in runs],
        "verifications_during_runs": sum(run.verifications_during for run in runs),
        "runs_with_verification": len(overlapped),
        "with_verification_p50_s": median(overlapped) if overlapped else None,
        "without_verification_p50_s": median(clear) if clear else None,
    }


def _summarise_verify(runs: list[DeliveryRun]) -> dict[str, Any]:
    seconds = [run.seconds for run in runs]
    deliveries = [run.delivery() for run in runs]
    ratios = [
        float(d["delivery_ratio"])
        for d in deliveries
        if isinstance(d["delivery_ratio"], int | float)
    ]
    summary: dict[str, Any] = {
        "verify_window_s": VERIFY_RUN_WINDOW_S,
        "runs_s": [round(value, 4) for value in seconds],
        "response_p50_s": median(seconds),
        "response_max_s": max(seconds),
        "max_block_ms": max(run.max_block_ms for run in runs),
        "max_gc_ms": max(run.max_gc_ms for run in runs),
        "runs": deliveries,
        "delivery_ratio_min": min(ratios) if ratios else None,
        "delivery_ratio_max": max(ratios) if ratios else None,
    }
    for key in ("acknowledged_kw", "delivered_kw", "delivery_ratio"):
        values = [float(d[key]) for d in deliveries if isinstance(d[key], int | float)]
        summary[key] = median(values) if values else None
    for key in ("measured", "unmeasured", "following", "not_following"):
        summary[key] = min(d[key] for d in deliveries)
        summary[f"{key}_max"] = max(d[key] for d in deliveries)
    return summary


async def _measure(
    scenario: DeliveryScenario, options: DeliveryOptions, row: dict[str, Any], say: Say
) -> list[DeliveryRun]:
    """Discover, the alternating default-path phases, then the ``verify`` runs."""
    await scenario.async_start()
    scenario.listen()
    row["discovery_s"] = scenario.discovery_s
    row["entities"] = scenario.entities
    say(f"  discovered {scenario.size} in {scenario.discovery_s:.1f} s")
    by_phase: dict[str, list[DeliveryRun]] = {ON: [], OFF: []}
    row["phases"] = []
    every: list[DeliveryRun] = []
    for index, phase in enumerate(PHASE_ORDER):
        # ``repeat`` runs per phase kind, split over its two phases.
        share = options.repeat // 2 + (options.repeat % 2 if index < 2 else 0)
        if share < 1:
            continue
        result = await _phase(scenario, phase, share, options, say)
        by_phase[phase].extend(result["runs"])
        every.extend(result["runs"])
        row["phases"].append({k: v for k, v in result.items() if k != "runs"})
    for phase, runs in by_phase.items():
        if runs:
            row[phase] = _summarise_default(runs)
    on, off = row.get(ON), row.get(OFF)
    if on and off:
        row["cost_p50_s"] = on["response_p50_s"] - off["response_p50_s"]
        row["cost_p50_pct"] = 100.0 * row["cost_p50_s"] / off["response_p50_s"]
    await scenario.async_set_verify_window(VERIFY_RUN_WINDOW_S)
    await _settle(scenario)
    # What the telemetry alone costs the loop (no dispatch, no verification): the
    # baseline of the ``verify`` runs' loop block, which spans their window.
    async with LoopBlockMonitor() as idle:
        await asyncio.sleep(VERIFY_RUN_WINDOW_S + TELEMETRY_INTERVAL_S)
    row["telemetry_only_max_block_ms"] = idle.max_block_ms
    row["telemetry_only_max_gc_ms"] = idle.max_gc_ms
    await _settle(scenario)
    await scenario.async_timed_dispatch(verify=True)  # warm-up
    await _settle(scenario)
    verified: list[DeliveryRun] = []
    for _ in range(options.verify_repeat):
        run = await scenario.async_timed_dispatch(verify=True)
        verified.append(run)
        await _settle(scenario)
        delivery = run.delivery()
        say(
            f"  verify: true: {run.seconds:.3f} s, delivered"
            f" {delivery['delivered_kw']} of {delivery['acknowledged_kw']} kW"
            f" (ratio {delivery['delivery_ratio']}, {delivery['unmeasured']} unmeasured,"
            f" loop block {run.max_block_ms:.0f} ms)"
        )
    row["verify"] = _summarise_verify(verified)
    traced, loop_time = await _trace_verification(scenario)
    row["verify"].update(loop_time)
    return [*every, *verified, traced]


async def _trace_verification(
    scenario: DeliveryScenario,
) -> tuple[DeliveryRun, dict[str, Any]]:
    """One more ``verify: true`` dispatch with every event-loop step timed.

    The steps of the verification's task are its own time on the loop (the same
    work as after a dispatch without ``verify``); the timing adds a little to
    every step, so this run is not one of the timed ones (only checked).
    """
    await _settle(scenario)
    with LoopStepTracer(threshold_s=0.0) as tracer:
        run = await scenario.async_timed_dispatch(verify=True)
    steps = [step.seconds for step in tracer.steps if VERIFY_TASK in step.label]
    if not steps:
        return run, {"verification_loop_ms": None}
    return run, {
        "verification_loop_ms": sum(steps) * 1000.0,
        "verification_steps": len(steps),
        "verification_longest_step_ms": max(steps) * 1000.0,
    }


async def run_section(
    harness: HassHarness,
    broker_port: int,
    options: DeliveryOptions,
    results: dict[str, Any],
    log_dir: Path,
    say: Say,
) -> None:
    """The delivery section: one fresh entry and fleet per case (``results["delivery"]``)."""
    results["meta"]["delivery"] = {
        "cases": [f"{mode} {size}" for mode, size in options.cases],
        "repeat": options.repeat,
        "verify_repeat": options.verify_repeat,
        "phase_order": list(PHASE_ORDER),
        "phase_windows_s": PHASE_WINDOWS,
        "verify_run_window_s": VERIFY_RUN_WINDOW_S,
        "telemetry_interval_s": TELEMETRY_INTERVAL_S,
        "fill_window": options.fill,
    }
    for mode, size in options.cases:
        say(
            f"delivery: {mode} {size} vehicles, telemetry every {TELEMETRY_INTERVAL_S:.0f} s"
        )
        row: dict[str, Any] = {
            "mode": mode,
            "vehicles": size,
            "telemetry_interval_s": TELEMETRY_INTERVAL_S,
        }
        results["delivery"].append(row)
        scenario = DeliveryScenario(harness, broker_port, mode, size, log_dir)
        if mode == GATEWAY:
            row["gateways"] = scenario.gateways
        runs: list[DeliveryRun] = []
        try:
            runs = await _measure(scenario, options, row, say)
        except Exception as err:  # noqa: BLE001 - reported in the results
            traceback.print_exc()
            row["error"] = f"{type(err).__name__}: {err}"
            results["problems"].append(f"delivery {mode} {size}: {row['error']}")
            results["section_errors"].append("delivery")
        finally:
            try:
                await scenario.async_stop()
            except Exception as err:  # noqa: BLE001 - reported in the results
                results["problems"].append(f"delivery {mode} {size} teardown: {err}")
        row["all_acknowledged"] = bool(runs) and all(not run.problems for run in runs)
        row["problems"] = sorted({problem for run in runs for problem in run.problems})
        results["problems"].extend(
            f"delivery {mode} {size}: {problem}" for problem in row["problems"]
        )
