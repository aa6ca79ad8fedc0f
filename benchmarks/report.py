"""Targets (issues 7 and 13) and the markdown rendering of ``results.json``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Targets (issue 7).
PER_VEHICLE_MAX_RATIO = 1.2
PER_VEHICLE_TARGET_SIZES = (1_000, 10_000)
GATEWAY_TARGET_SIZE = 10_000
GATEWAY_MAX_RATIO = 1.0
GATEWAY_MAX_SECONDS = 1.0
LOOP_BLOCK_TARGET_SIZE = 10_000
LOOP_BLOCK_MAX_MS = 100.0
ENGINE_TARGET_SIZE = 10_000
ENGINE_MAX_MS = 50.0
# Issue 13: vehicles controlled through Home Assistant entities.
CONTROLLED_TARGET_SIZE = 50
CONTROLLED_MAX_CONFIRMATION_MS = 1000.0  # on top of the entity's own delay
CONTROLLED_LOOP_BLOCK_MAX_MS = 100.0

_SIZE_KEYS = ("vehicles", "size", "n", "count", "fleet_size")
_TIME_KEYS = ("median_ms", "total_ms", "ms", "time_ms", "elapsed_ms")
_STRATEGY_KEYS = ("strategy", "name", "case")


def engine_row_fields(row: Mapping[str, Any]) -> tuple[int | None, str, float | None]:
    """(vehicles, strategy, median ms) of one ``bench_engine.run`` row."""
    size = next((row[k] for k in _SIZE_KEYS if isinstance(row.get(k), int)), None)
    strategy = next((str(row[k]) for k in _STRATEGY_KEYS if k in row), "?")
    millis: float | None = next(
        (float(row[k]) for k in _TIME_KEYS if isinstance(row.get(k), int | float)),
        None,
    )
    if millis is None:
        seconds = next(
            (
                float(row[k])
                for k in ("median_s", "seconds", "total_s")
                if isinstance(row.get(k), int | float)
            ),
            None,
        )
        millis = None if seconds is None else seconds * 1000.0
    return size, strategy, millis


def _row_for(rows: Sequence[Mapping[str, Any]], size: int) -> Mapping[str, Any] | None:
    return next((row for row in rows if row.get("vehicles") == size), None)


PER_VEHICLE = ("per_vehicle",)
GATEWAY = ("gateway",)
CONTROLLED = ("controlled",)


def _target(
    name: str,
    value: str,
    met: bool | None,
    note: str = "",
    *,
    sections: Sequence[str],
) -> dict[str, Any]:
    """One target; ``sections``: the benchmark sections that measure it."""
    return {
        "target": name,
        "value": value,
        "met": met,
        "note": note,
        "sections": list(sections),
    }


def evaluate_targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every target with the measured value; ``met`` None = not measured.

    Each target names the ``sections`` that measure it; a run of some sections
    (``--only``) lists only theirs.
    """
    run = (results.get("meta") or {}).get("sections")
    return [
        target
        for target in [*_fleet_targets(results), *_controlled_targets(results)]
        if run is None or any(section in run for section in target["sections"])
    ]


def _controlled_targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Issue 13: confirmations and loop block of a 50-vehicle controlled dispatch."""
    rows = [
        row
        for row in results.get("controlled") or []
        if row.get("vehicles") == CONTROLLED_TARGET_SIZE
        and row.get("confirmation_over_delay_max_ms") is not None
    ]
    confirm = (
        f"every confirmation ≤ {CONTROLLED_MAX_CONFIRMATION_MS / 1000:.0f} s (plus the"
        f" entity's own delay), {CONTROLLED_TARGET_SIZE} HA-controlled vehicles"
    )
    block = (
        f"longest loop block ≤ {CONTROLLED_LOOP_BLOCK_MAX_MS:.0f} ms during a"
        f" {CONTROLLED_TARGET_SIZE}-vehicle HA-controlled dispatch"
    )
    if not rows:
        return [
            _target(name, "not measured", None, sections=CONTROLLED)
            for name in (confirm, block)
        ]
    unacked = [row["variant"] for row in rows if not row.get("all_acknowledged")]
    note = f"not every order acknowledged ({', '.join(unacked)})" if unacked else ""
    over = {
        row["variant"]: float(row["confirmation_over_delay_max_ms"]) for row in rows
    }
    confirm_value = "; ".join(
        f"{row['variant']}: max {float(row['confirmation_max_ms']):.0f} ms"
        + (
            f" = {float(row['entity_delay_ms']):.0f} + {over[row['variant']]:.0f}"
            if row.get("entity_delay_ms")
            else ""
        )
        for row in rows
    )
    blocks = {row["variant"]: float(row["max_block_ms"]) for row in rows}
    block_value = "; ".join(f"{variant}: {ms:.0f} ms" for variant, ms in blocks.items())
    return [
        _target(
            confirm,
            confirm_value,
            max(over.values()) <= CONTROLLED_MAX_CONFIRMATION_MS and not unacked,
            note,
            sections=CONTROLLED,
        ),
        _target(
            block,
            block_value,
            max(blocks.values()) <= CONTROLLED_LOOP_BLOCK_MAX_MS,
            sections=CONTROLLED,
        ),
    ]


def _fleet_targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Issue 7: the MQTT fleet sections and the engine."""
    targets: list[dict[str, Any]] = []
    per_vehicle = results.get("per_vehicle") or []
    for size in PER_VEHICLE_TARGET_SIZES:
        row = _row_for(per_vehicle, size)
        name = f"per-vehicle ≤ {PER_VEHICLE_MAX_RATIO} × HA floor at {size:,} vehicles"
        if row is None or row.get("ratio") is None:
            targets.append(_target(name, "not measured", None, sections=PER_VEHICLE))
            continue
        ratio = float(row["ratio"])
        note = "" if row.get("all_acknowledged") else "not every order acknowledged"
        targets.append(
            _target(
                name,
                f"{ratio:.2f} ×",
                ratio <= PER_VEHICLE_MAX_RATIO and not note,
                note,
                sections=PER_VEHICLE,
            )
        )
    gateway = results.get("gateway") or []
    row = _row_for(gateway, GATEWAY_TARGET_SIZE)
    name_ratio = (
        f"gateway ≤ {GATEWAY_MAX_RATIO} × bare paho at {GATEWAY_TARGET_SIZE:,} vehicles"
    )
    name_time = f"gateway ≤ {GATEWAY_MAX_SECONDS} s at {GATEWAY_TARGET_SIZE:,} vehicles"
    if row is None or row.get("ratio") is None:
        targets.append(_target(name_ratio, "not measured", None, sections=GATEWAY))
        targets.append(_target(name_time, "not measured", None, sections=GATEWAY))
    else:
        note = "" if row.get("all_acknowledged") else "not every order acknowledged"
        targets.append(
            _target(
                name_ratio,
                f"{float(row['ratio']):.2f} ×",
                float(row["ratio"]) <= GATEWAY_MAX_RATIO and not note,
                note,
                sections=GATEWAY,
            )
        )
        seconds = float(row["integration_s"])
        targets.append(
            _target(
                name_time,
                f"{seconds:.2f} s",
                seconds <= GATEWAY_MAX_SECONDS and not note,
                sections=GATEWAY,
            )
        )
    for mode, rows, sections in (
        ("per-vehicle", per_vehicle, PER_VEHICLE),
        ("gateway", gateway, GATEWAY),
    ):
        row = _row_for(rows, LOOP_BLOCK_TARGET_SIZE)
        name = (
            f"longest loop block ≤ {LOOP_BLOCK_MAX_MS:.0f} ms during a"
            f" {LOOP_BLOCK_TARGET_SIZE:,}-vehicle {mode} dispatch"
        )
        if row is None or row.get("max_block_ms") is None:
            targets.append(_target(name, "not measured", None, sections=sections))
        else:
            block = float(row["max_block_ms"])
            targets.append(
                _target(
                    name,
                    f"{block:.0f} ms",
                    block <= LOOP_BLOCK_MAX_MS,
                    sections=sections,
                )
            )
    engine = results.get("engine")
    engine_rows = engine if isinstance(engine, list) else []
    measured = [
        fields
        for fields in (engine_row_fields(r) for r in engine_rows)
        if fields[0] == ENGINE_TARGET_SIZE and fields[2] is not None
    ]
    name = f"engine < {ENGINE_MAX_MS:.0f} ms at {ENGINE_TARGET_SIZE:,} vehicles"
    if not measured:
        targets.append(_target(name, "not measured", None, sections=("engine",)))
    for _size, strategy, millis in measured:
        assert millis is not None
        targets.append(
            _target(
                f"{name} ({strategy})",
                f"{millis:.1f} ms",
                millis < ENGINE_MAX_MS,
                sections=("engine",),
            )
        )
    writes = [
        (mode, row)
        for mode, rows in (("per-vehicle", per_vehicle), ("gateway", gateway))
        for row in rows
        if row.get("max_writes_per_entity") is not None
    ]
    name = "entity updates coalesced (each entity written at most once per dispatch)"
    if not writes:
        targets.append(
            _target(name, "not measured", None, sections=PER_VEHICLE + GATEWAY)
        )
    else:
        worst_mode, worst = max(
            writes, key=lambda item: item[1]["max_writes_per_entity"]
        )
        value = (
            f"max {worst['max_writes_per_entity']} writes/entity"
            f" ({worst_mode} {worst['vehicles']:,})"
        )
        targets.append(
            _target(
                name,
                value,
                worst["max_writes_per_entity"] <= 1,
                sections=PER_VEHICLE + GATEWAY,
            )
        )
    return targets


# --- markdown --------------------------------------------------------------------------
def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _block(row: Mapping[str, Any], block_key: str, gc_key: str) -> str:
    """``longest block (longest garbage collection)`` in ms."""
    block = row.get(block_key)
    if block is None:
        return "–"
    pause = row.get(gc_key)
    return f"{block:,.0f}" + ("" if pause is None else f" (GC {pause:,.0f})")


def _met(value: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "–"}[value]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append(
        "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|"
    )
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def _engine_lines(results: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    lines += ["", "## 3. Engine only (eligibility + allocation per strategy)", ""]
    engine = results.get("engine")
    if isinstance(engine, list) and engine:
        rows = []
        for row in engine:
            size, strategy, millis = engine_row_fields(row)
            target = f"< {ENGINE_MAX_MS:.0f}" if size == ENGINE_TARGET_SIZE else ""
            rows.append(
                [
                    _num(size),
                    strategy,
                    _num(row.get("candidates")),
                    _num(row.get("eligibility_ms"), 2),
                    _num(row.get("allocation_ms"), 2),
                    _num(millis, 2),
                    target,
                ]
            )
        lines += _table(
            [
                "vehicles",
                "strategy",
                "candidates",
                "eligibility (ms)",
                "allocation (ms)",
                "total (ms)",
                "target (ms)",
            ],
            rows,
        )
    else:
        lines.append(f"Not measured: {results.get('engine_error', 'skipped')}")
    return lines


def _gc_lines(
    per_vehicle: Sequence[Mapping[str, Any]], gateway: Sequence[Mapping[str, Any]]
) -> list[str]:
    lines: list[str] = []
    for mode, rows in (("per-vehicle", per_vehicle), ("gateway", gateway)):
        for row in rows:
            if row.get("gc_total_ms") is None:
                continue
            floor_gc = row.get("floor_gc_total_ms")
            lines.append(
                f"- Garbage collection during a {mode} dispatch of"
                f" {_num(row['vehicles'])}: {_num(row['gc_total_ms'], 0)} ms"
                + (
                    f" (its floor run: {_num(floor_gc, 0)} ms)"
                    if floor_gc is not None
                    else ""
                )
                + f"; {_num(row.get('gc_objects'))} objects tracked."
            )
    return lines


def _loop_memory_lines(
    results: Mapping[str, Any],
    per_vehicle: Sequence[Mapping[str, Any]],
    gateway: Sequence[Mapping[str, Any]],
) -> list[str]:
    lines: list[str] = []
    lines += ["", "## 4. Event loop, memory, state writes", ""]
    memory = results.get("memory") or {}
    for mode, rows in (("per-vehicle", per_vehicle), ("gateway", gateway)):
        if rows:
            largest = max(rows, key=lambda row: row.get("vehicles", 0))
            lines.append(
                f"- Longest event-loop block during a {_num(largest.get('vehicles'))}"
                f"-vehicle {mode} dispatch: {_block(largest, 'max_block_ms', 'max_gc_ms')} ms"
                f" (target ≤ {LOOP_BLOCK_MAX_MS:.0f} ms); during its discovery:"
                f" {_block(largest, 'discovery_max_block_ms', 'discovery_max_gc_ms')}"
                f" ms; {_num(largest.get('gc_objects'))} objects tracked by the garbage"
                " collector after discovery."
            )
    if per_vehicle:
        largest = max(per_vehicle, key=lambda row: row.get("vehicles", 0))
        lines.append(
            f"- HA floor alone ({_num(largest.get('vehicles'))} orders):"
            f" {_block(largest, 'floor_max_block_ms', 'floor_max_gc_ms')} ms."
        )
    lines += _gc_lines(per_vehicle, gateway)
    if memory.get("vehicles"):
        lines.append(
            f"- Memory per 1,000 known vehicles (tracemalloc during discovery of"
            f" {_num(memory.get('vehicles'))} vehicles):"
            f" peak {_num(memory.get('peak_per_1000_mib'), 2)} MiB, retained"
            f" {_num(memory.get('retained_per_1000_mib'), 2)} MiB."
        )
        top = memory.get("top_allocations") or []
        if top:
            lines.append(
                "  Retained by source file: "
                + ", ".join(
                    f"{item['file']} {item['mib']:,.1f} MiB" for item in top[:8]
                )
                + "."
            )
    elif memory.get("error"):
        lines.append(f"- Memory: not measured ({memory['error']}).")
    for mode, rows in (("per-vehicle", per_vehicle), ("gateway", gateway)):
        for row in rows:
            if row.get("state_writes") is not None:
                lines.append(
                    f"- Entity state writes per {mode} dispatch of"
                    f" {_num(row['vehicles'])}: {_num(row['state_writes'])} writes"
                    f" ({_num(row.get('state_writes_in_call'))} of them before the"
                    " response) of"
                    f" {_num(row.get('entities_written'))} entities (max"
                    f" {_num(row.get('max_writes_per_entity'))} per entity;"
                    f" {_num(row.get('entities'))} entities in the entry)."
                )
                lines.extend(_writes_by_kind(row))
    return lines


def _writes_by_kind(row: Mapping[str, Any]) -> list[str]:
    kinds = row.get("writes_by_kind")
    if not kinds:
        return []
    shown = ", ".join(f"`{kind}` {_num(n)}" for kind, n in kinds.items())
    return [f"  By kind: {shown}."]


def _controlled_lines(results: Mapping[str, Any]) -> list[str]:
    meta = results.get("meta", {})
    rows = results.get("controlled") or []
    lines = ["", "## 5. Vehicles controlled through Home Assistant", ""]
    lines += [
        f"{_num(meta.get('controlled_vehicles'))} `input_number` chargers like a"
        " Wallbox Quasar's current (-32..32 A, 1 A steps, positive = charging,"
        " 230 V × 1), each added as a `controlled_vehicle` subentry through the"
        " subentry flow; no MQTT vehicle. `v2g.dispatch` aFRR, strategy equal, 10 A"
        " (2.3 kW) per vehicle, discharging and charging in turn;"
        f" {meta.get('controlled_repeat')} timed dispatches per variant after"
        f" {meta.get('warmup')} warm-up. *immediate*: confirmed by the"
        " `input_number` itself; *delayed*: confirmed by a power sensor that shows"
        " the charger's current after the entity delay. Confirmation: each order's"
        " `latency_ms` in the response (registration to ack), over every vehicle"
        " and run.",
        "",
    ]
    lines += _table(
        [
            "variant",
            "vehicles",
            "entity delay (ms)",
            "response p50 (s)",
            "response max (s)",
            "confirmation p50 (ms)",
            "confirmation p95 (ms)",
            "confirmation max (ms)",
            "max − delay (ms)",
            "loop block (ms)",
            "state writes",
            "entities",
            "setup (s)",
            "all acked",
        ],
        [
            [
                str(row.get("variant")),
                _num(row.get("vehicles")),
                _num(row.get("entity_delay_ms"), 0),
                _num(row.get("response_p50_s")),
                _num(row.get("response_max_s")),
                _num(row.get("confirmation_p50_ms"), 1),
                _num(row.get("confirmation_p95_ms"), 1),
                _num(row.get("confirmation_max_ms"), 1),
                _num(row.get("confirmation_over_delay_max_ms"), 1),
                _block(row, "max_block_ms", "max_gc_ms"),
                _num(row.get("state_writes")),
                _num(row.get("entities")),
                _num(row.get("setup_s"), 1),
                "yes" if row.get("all_acknowledged") else "**no**",
            ]
            for row in rows
        ],
    )
    lines.append("")
    for row in rows:
        if row.get("error"):
            lines.append(f"- {row.get('variant')}: not measured ({row['error']}).")
        if row.get("state_writes") is not None:
            lines.append(
                f"- State writes of one {row.get('variant')} dispatch:"
                f" {_num(row['state_writes'])}"
                f" ({_num(row.get('state_writes_in_call'))} before the response) of"
                f" {_num(row.get('entities_written'))} entities (max"
                f" {_num(row.get('max_writes_per_entity'))} per entity); adding the"
                f" vehicles took {_num(row.get('setup_s'), 1)} s (loop block"
                f" {_num(row.get('setup_max_block_ms'), 0)} ms)."
            )
            lines.extend(_writes_by_kind(row))
    return lines


ALL_SECTIONS = (
    "engine",
    "per_vehicle",
    "gateway",
    "memory",
    "controlled",
    "delivery",
    "depot",
)


def render_markdown(results: Mapping[str, Any]) -> str:
    """The results as a markdown document (tables, ratios, targets).

    Only the sections the run measured (``meta.sections``; all when absent).
    """
    meta = results.get("meta", {})
    run = meta.get("sections") or ALL_SECTIONS
    fleet = "per_vehicle" in run or "gateway" in run
    lines = ["# V2G Fleet Dispatch — benchmark results", ""]
    load = meta.get("load_average", {})
    lines += [
        f"Measured {meta.get('finished_at', '?')} in one run of"
        f" {_num(meta.get('duration_s'), 0)} s on {meta.get('cpu_count', '?')} CPUs"
        f" (load average {load.get('start', '?')} at start, {load.get('end', '?')} at"
        f" end; other work on the machine makes figures noisy)."
        + (
            f" Every figure is the median of {meta.get('repeat')} runs after"
            f" {meta.get('warmup')} warm-up run(s); floor and integration runs"
            " alternate."
            if fleet
            else ""
        ),
        "",
        f"Python {meta.get('python')}, Home Assistant {meta.get('home_assistant')},"
        f" paho-mqtt {meta.get('paho_mqtt')}, {meta.get('mosquitto')} on loopback"
        f" (tests/mqtt_broker.py config), QoS 1, commit {meta.get('git_commit')}.",
    ]
    if fleet:
        lines.append(
            f"Dispatch: `v2g.dispatch` {meta.get('signal')} with strategy"
            f" {meta.get('strategy')}, 1 kW per vehicle, every vehicle ordered; ack"
            f" timeout option {meta.get('ack_timeout_s')} s; the fleet simulator"
            " (shared connection, immediate acks) answers."
        )
    lines += [
        "Loop block: the longest late wake-up of a 5 ms ticker on Home Assistant's"
        " event loop; in parentheses the longest garbage collection in the same"
        " window (a full collection stops the whole process).",
    ]
    per_vehicle = results.get("per_vehicle") or []
    gateway = results.get("gateway") or []
    if "per_vehicle" in run:
        lines += _per_vehicle_lines(per_vehicle)
    if "gateway" in run:
        lines += _gateway_lines(gateway)
    if "engine" in run:
        lines += _engine_lines(results)
    if fleet or "memory" in run:
        lines += _loop_memory_lines(results, per_vehicle, gateway)
    if "controlled" in run:
        lines += _controlled_lines(results)
    if "delivery" in run:
        # Imported here: report_delivery imports this module's helpers.
        from .report_delivery import delivery_lines

        lines += delivery_lines(results)
    if "depot" in run:
        lines += render_depot(results.get("depot") or [])
    lines += ["", "## Targets", ""]
    lines += _table(
        ["target", "measured", "result", "note"],
        [
            [item["target"], item["value"], _met(item["met"]), item.get("note", "")]
            for item in results.get("targets", [])
        ],
    )
    problems = results.get("problems") or []
    if problems:
        lines += ["", "## Problems", ""]
        lines += [f"- {problem}" for problem in problems]
    lines.append("")
    return "\n".join(lines)


def _per_vehicle_lines(per_vehicle: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["", "## 1. Per-vehicle mode vs the HA floor", ""]
    lines += [
        "HA floor: the same number of orders and acks through `mqtt.async_publish` /"
        " `mqtt.async_subscribe` with a counting handler (the same simulator program answers, on floor topics),"
        " the publish calls started 250 per loop iteration like the integration's"
        " transport. *All at once*: the same floor with every publish call started"
        " in one loop iteration (for reference; no target).",
        "",
    ]
    lines += _table(
        [
            "vehicles",
            "integration (s)",
            "HA floor (s)",
            "ratio",
            "target",
            "floor, all at once (s)",
            "loop block (ms)",
            "floor loop block (ms)",
            "all at once loop block (ms)",
            "state writes",
            "entities",
            "discovery (s)",
            "all acked",
        ],
        [
            [
                _num(row.get("vehicles")),
                _num(row.get("integration_s")),
                _num(row.get("ha_floor_s")),
                _num(row.get("ratio"), 2),
                f"≤ {PER_VEHICLE_MAX_RATIO}",
                _num(row.get("ha_floor_burst_s")),
                _block(row, "max_block_ms", "max_gc_ms"),
                _block(row, "floor_max_block_ms", "floor_max_gc_ms"),
                _num(row.get("floor_burst_max_block_ms"), 0),
                _num(row.get("state_writes")),
                _num(row.get("entities")),
                _num(row.get("discovery_s"), 1),
                "yes" if row.get("all_acknowledged") else "**no**",
            ]
            for row in per_vehicle
        ],
    )
    return lines


def _gateway_lines(gateway: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "",
        "## 2. Gateway mode vs a bare paho client (one message per vehicle)",
        "",
    ]
    lines += _table(
        [
            "vehicles",
            "gateways",
            "integration (s)",
            "bare paho (s)",
            "ratio",
            "target",
            "loop block (ms)",
            "state writes",
            "entities",
            "discovery (s)",
            "all acked",
        ],
        [
            [
                _num(row.get("vehicles")),
                _num(row.get("gateways")),
                _num(row.get("integration_s")),
                _num(row.get("paho_s")),
                _num(row.get("ratio"), 2),
                f"≤ {GATEWAY_MAX_RATIO}"
                + (
                    f" and ≤ {GATEWAY_MAX_SECONDS} s"
                    if row.get("vehicles") == GATEWAY_TARGET_SIZE
                    else ""
                ),
                _block(row, "max_block_ms", "max_gc_ms"),
                _num(row.get("state_writes")),
                _num(row.get("entities")),
                _num(row.get("discovery_s"), 1),
                "yes" if row.get("all_acknowledged") else "**no**",
            ]
            for row in gateway
        ],
    )
    return lines


# --- depots (benchmarks/bench_depot.py) -----------------------------------------
PROFILE_TEXT = {
    "tuned": "tuned (`max_queued_messages 100000`, `max_inflight_messages 0`,"
    " `set_tcp_nodelay true`: what the repair issues advise)",
    "stock": "stock (mosquitto's defaults: 20 messages in flight and 1,000 queued"
    " per client)",
    "addon": "Mosquitto add-on (its generated config sets `max_queued_messages"
    " 8192`; 20 in flight)",
}
MODE_TEXT = {
    "per_vehicle": "per-vehicle",
    "gateway": "gateway",
    "gateway_per_vehicle_discovery": "gateway, per-vehicle discovery answers",
}


def _count(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _depot_cells(row: Mapping[str, Any]) -> list[str]:
    """One scenario's cells (see `render_depot`)."""
    sim = row.get("simulator") or {}
    messages = sim.get("gateway_discovery_messages") or sim.get("discovery_answers")
    second = (
        f"{_count(row.get('after_poll_acknowledged'))} /"
        f" {_count(row.get('after_poll_orders'))}"
        if "after_poll_orders" in row
        else "–"
    )
    dropped = [row.get("dropped_discovery"), row.get("dropped_dispatch_and_telemetry")]
    if "dropped_after_poll" in row:
        dropped.append(row["dropped_after_poll"])
    return [
        _count(row.get("known_after_discovery")),
        f"{_count(sim.get('discovery_answers'))} ({_count(messages)})",
        _count(row.get("discovery_s")),
        f"{_count(row.get('acknowledged'))} / {_count(row.get('orders'))}",
        _count(row.get("dispatch_s")),
        f"{_count(row.get('telemetry_received'))} / {_count(row.get('vehicles'))}",
        _count(row.get("unmeasured")),
        second,
        " + ".join(_count(value) for value in dropped),
        ", ".join(row.get("issues") or []) or "none",
    ]


def render_depot(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The depot table: sent, received and dropped at each step."""
    lines = [
        "",
        "## Depots on the brokers people run (issue 16)",
        "",
        "Per broker (each a fresh mosquitto 2.0 on loopback publishing `$SYS` every"
        " second, the MQTT entry pointed at it), mode and size: the entry's own"
        " discovery request at setup, then `v2g.discover` a second later; a dispatch"
        " to every known vehicle (aFRR, equal, 1 kW each, ack timeout 30 s); the"
        " delivery verification's telemetry poll (pull mode); when the poll's answers"
        " added vehicles discovery had missed, a second dispatch to all of them."
        " *known*: vehicles Home Assistant knows after discovery; *announced*:"
        " vehicles the fleet announced in its discovery answers (all requests it"
        " answered) and in how many messages; *discovery (s)*: until the last vehicle"
        " was added; *acked*: first-round orders acknowledged / ordered; *dispatch"
        " (s)*: the call's response time, one run; *telemetry*: answers to the"
        " first poll Home Assistant received / vehicles (each answers); *unmeasured*:"
        " vehicles the"
        " verification had no fresh reading of when it measured; *after the poll*:"
        " the second dispatch's acked / ordered; *dropped*: the growth of the"
        " broker's `$SYS/broker/publish/messages/dropped` count during discovery +"
        " the first dispatch and poll (+ the second dispatch).",
        "",
    ]
    headers = [
        "broker",
        "mode",
        "vehicles",
        "known",
        "announced (messages)",
        "discovery (s)",
        "acked",
        "dispatch (s)",
        "telemetry",
        "unmeasured",
        "after the poll",
        "dropped",
        "repair issues",
    ]
    table = [
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * 2 + "---:|" * (len(headers) - 3) + "---|",
    ]
    for row in rows:
        cells = [
            PROFILE_TEXT.get(row["profile"], row["profile"]).split(" (")[0],
            MODE_TEXT.get(row["mode"], row["mode"]),
            _count(row["vehicles"]),
        ]
        if "error" in row:
            cells += [f"error: {row['error']}"] + [""] * (len(headers) - 4)
        else:
            cells += _depot_cells(row)
        table.append("| " + " | ".join(cells) + " |")
    lines += table
    lines += ["", "Brokers:", ""]
    lines += [
        f"- {PROFILE_TEXT[profile]}"
        for profile in PROFILE_TEXT
        if any(row["profile"] == profile for row in rows)
    ]
    return lines
