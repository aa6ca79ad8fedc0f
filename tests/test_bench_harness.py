"""Smoke run of the benchmark harness (the benchmarks themselves never run in CI).

The harness boots its own Home Assistant, so it runs as a subprocess
(``python -m benchmarks --quick``): the test plugin's hass, socket blocking and
thread checks stay out of its way. Only the structure and the sign of the figures
are checked, never their size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import shutil
import subprocess
import sys
from typing import Any

import pytest

from benchmarks.report import engine_row_fields, evaluate_targets, render_markdown
from benchmarks.run import parse_args

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICK_SIZE = 5


def _positive(row: dict[str, Any], *keys: str) -> None:
    for key in keys:
        value = row.get(key)
        assert isinstance(value, int | float), (key, row)
        assert value > 0, (key, row)


@pytest.mark.skipif(
    shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
    reason="mosquitto is not installed (scripts/setup installs it)",
)
def test_quick_benchmark_run_writes_results(tmp_path: Path) -> None:
    """A tiny run of every section writes results.json and results.md."""
    out_dir = tmp_path / "results"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTEST_CURRENT_TEST", None)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--trace-loop",
            "--out-dir",
            str(out_dir),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = f"{completed.stdout[-6000:]}\n{completed.stderr[-6000:]}"
    assert completed.returncode == 0, output
    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    markdown = (out_dir / "results.md").read_text(encoding="utf-8")
    loop_steps = (out_dir / "profiles" / "loop-steps-gateway-5.txt").read_text(
        encoding="utf-8"
    )
    assert "== floor (gateway, 5 vehicles)" in loop_steps
    assert "== integration (gateway, 5 vehicles)" in loop_steps

    assert results["section_errors"] == [], output
    meta = results["meta"]
    assert meta["quick"] is True
    assert meta["repeat"] == 1
    assert meta["sizes"] == [QUICK_SIZE]
    _positive(meta, "duration_s", "hass_startup_s")

    (per_vehicle,) = results["per_vehicle"]
    assert per_vehicle["vehicles"] == QUICK_SIZE
    assert per_vehicle["all_acknowledged"] is True, per_vehicle
    _positive(
        per_vehicle,
        "integration_s",
        "ha_floor_s",
        "ha_floor_burst_s",
        "ratio",
        "entities",
    )
    assert per_vehicle["orders"] == QUICK_SIZE
    assert per_vehicle["max_block_ms"] >= 0
    assert per_vehicle["state_writes"] >= 0
    assert per_vehicle["max_writes_per_entity"] >= 0

    (gateway,) = results["gateway"]
    assert gateway["vehicles"] == QUICK_SIZE
    assert gateway["gateways"] == 1
    assert gateway["all_acknowledged"] is True, gateway
    _positive(gateway, "integration_s", "paho_s", "ratio", "entities")

    engine = results["engine"]
    assert engine, results.get("engine_error")
    for row in engine:
        size, _strategy, millis = engine_row_fields(row)
        assert size is not None, row
        assert millis is not None, row
        assert millis > 0, row

    _positive(results["memory"], "vehicles", "peak_bytes", "peak_per_1000_mib")

    immediate, delayed = results["controlled"]
    for row in (immediate, delayed):
        assert row["vehicles"] == QUICK_SIZE
        assert row["all_acknowledged"] is True, row
        assert row["confirmations"] == QUICK_SIZE
        _positive(row, "response_p50_s", "confirmation_max_ms", "entities")
        # Every dispatch moves every charger (and its meter): written once each.
        assert row["writes_by_kind"]["input_number.bench_charger_#"] == QUICK_SIZE
        assert row["max_writes_per_entity"] == 1
    assert (immediate["variant"], immediate["entity_delay_ms"]) == ("immediate", 0)
    assert (delayed["variant"], delayed["entity_delay_ms"]) == ("delayed", 500)
    # Confirmed by the meters, which follow the chargers after 0.5 s.
    assert delayed["confirmation_p50_ms"] >= 500
    assert delayed["response_p50_s"] >= 0.5
    assert delayed["writes_by_kind"]["sensor.bench_charger_#_power"] == QUICK_SIZE

    (delivery,) = results["delivery"]
    assert (delivery["mode"], delivery["vehicles"]) == ("per_vehicle", QUICK_SIZE)
    assert delivery["all_acknowledged"] is True, delivery
    for phase in ("verification_on", "verification_off"):
        _positive(delivery[phase], "response_p50_s", "response_max_s")
    assert delivery["verification_off"]["verifications_during_runs"] == 0
    verify = delivery["verify"]
    # The simulator does what it acknowledges, and its telemetry says so.
    assert verify["acknowledged_kw"] == QUICK_SIZE * 1.0
    assert verify["delivered_kw"] == verify["acknowledged_kw"]
    assert verify["delivery_ratio"] == 1.0
    assert (verify["measured"], verify["unmeasured"]) == (QUICK_SIZE, 0)
    assert verify["following"] == QUICK_SIZE
    # ``verify: true`` waits for the window (2 s) before it returns.
    assert verify["response_p50_s"] >= 2.0
    # The traced dispatch found the verification's task on the loop.
    assert verify["verification_steps"] >= 1
    _positive(verify, "verification_loop_ms", "verification_longest_step_ms")
    # Depots: a stock broker lets a tiny fleet through, in both modes.
    assert [(row["profile"], row["mode"]) for row in results["depot"]] == [
        ("stock", "per_vehicle"),
        ("stock", "gateway"),
    ]
    for row in results["depot"]:
        assert "error" not in row, row
        assert row["known_after_discovery"] == QUICK_SIZE, row
        assert row["acknowledged"] == row["orders"] == QUICK_SIZE, row
        assert row["telemetry_received"] == QUICK_SIZE, row
        assert row["dropped_total"] == 0, row
        assert row["issues"] == [], row

    names = [item["target"] for item in results["targets"]]
    assert any("HA floor" in name for name in names)
    assert any("bare paho" in name for name in names)
    assert any("loop block" in name for name in names)
    assert any("engine" in name for name in names)
    assert any("coalesced" in name for name in names)
    assert any("HA-controlled" in name for name in names)

    for heading in (
        "## 1. Per-vehicle mode",
        "## 2. Gateway mode",
        "## 3. Engine only",
        "## 4. Event loop, memory, state writes",
        "## 5. Vehicles controlled through Home Assistant",
        "## 6. Delivery verification",
        "## Depots on the brokers people run (issue 16)",
        "## Targets",
    ):
        assert heading in markdown
    assert f"| {QUICK_SIZE} |" in markdown


def test_targets_and_markdown_from_synthetic_results() -> None:
    """Target evaluation and rendering work on hand-made results (no run)."""
    row = {
        "vehicles": 10_000,
        "integration_s": 1.5,
        "ratio": 1.1,
        "max_block_ms": 150.0,
        "all_acknowledged": True,
        "max_writes_per_entity": 2,
        "state_writes": 30,
    }
    results = {
        "meta": {"repeat": 3, "warmup": 1},
        "per_vehicle": [{**row, "ha_floor_s": 1.36}],
        "gateway": [{**row, "gateways": 20, "paho_s": 2.0, "ratio": 0.75}],
        "engine": [{"vehicles": 10_000, "strategy": "smart", "median_ms": 12.0}],
        "memory": None,
        "problems": [],
    }
    targets = {item["target"]: item for item in evaluate_targets(results)}
    assert targets["per-vehicle ≤ 1.2 × HA floor at 10,000 vehicles"]["met"] is True
    assert targets["per-vehicle ≤ 1.2 × HA floor at 1,000 vehicles"]["met"] is None
    assert targets["gateway ≤ 1.0 × bare paho at 10,000 vehicles"]["met"] is True
    assert targets["gateway ≤ 1.0 s at 10,000 vehicles"]["met"] is False
    assert (
        targets[
            "longest loop block ≤ 100 ms during a 10,000-vehicle per-vehicle dispatch"
        ]["met"]
        is False
    )
    assert targets["engine < 50 ms at 10,000 vehicles (smart)"]["met"] is True
    coalesced = next(item for name, item in targets.items() if "coalesced" in name)
    assert coalesced["met"] is False
    markdown = render_markdown({**results, "targets": list(targets.values())})
    assert "| 10,000 | 1.500 | 1.360 | 1.10 |" in markdown
    assert "**missed**" in markdown


def test_controlled_targets_and_a_run_of_one_section() -> None:
    """Confirmations count over the entity's delay; other sections' targets drop."""
    controlled = [
        {
            "variant": "immediate",
            "vehicles": 50,
            "entity_delay_ms": 0.0,
            "confirmation_max_ms": 30.0,
            "confirmation_over_delay_max_ms": 30.0,
            "max_block_ms": 20.0,
            "all_acknowledged": True,
        },
        {
            "variant": "delayed",
            "vehicles": 50,
            "entity_delay_ms": 500.0,
            "confirmation_max_ms": 1400.0,
            "confirmation_over_delay_max_ms": 900.0,
            "max_block_ms": 120.0,
            "all_acknowledged": True,
        },
    ]
    results: dict[str, Any] = {
        "meta": {"sections": ["controlled"], "controlled_vehicles": 50},
        "per_vehicle": [],
        "gateway": [],
        "engine": None,
        "memory": None,
        "controlled": controlled,
        "problems": [],
    }
    targets = evaluate_targets(results)
    confirm, block = targets  # only the controlled section's targets
    assert confirm["met"] is True  # 1.4 s, but 0.5 s of it is the entity's
    assert "delayed: max 1400 ms = 500 + 900" in confirm["value"]
    assert block["met"] is False
    assert block["value"] == "immediate: 20 ms; delayed: 120 ms"

    controlled[1]["confirmation_over_delay_max_ms"] = 1100.0
    controlled[0]["all_acknowledged"] = False
    confirm, _block = evaluate_targets(results)
    assert confirm["met"] is False
    assert confirm["note"] == "not every order acknowledged (immediate)"

    markdown = render_markdown({**results, "targets": targets})
    assert "## 5. Vehicles controlled through Home Assistant" in markdown
    assert "## 1. Per-vehicle mode" not in markdown
    assert "## 3. Engine only" not in markdown
    assert "| immediate | 50 | 0 |" in markdown

    results["controlled"] = []
    assert [item["value"] for item in evaluate_targets(results)] == [
        "not measured",
        "not measured",
    ]


def test_delivery_section_alone() -> None:
    """Its options, and its tables when it is the only section run."""
    options = parse_args(
        [
            "--only",
            "delivery",
            "--delivery-sizes",
            "1000,200",
            "--delivery-gateway-sizes",
            "none",
            "--repeat",
            "6",
        ]
    )
    assert options.sections == ("delivery",)
    assert options.delivery.cases == [("per_vehicle", 200), ("per_vehicle", 1000)]
    assert (options.delivery.repeat, options.delivery.verify_repeat) == (6, 6)
    default = parse_args([]).delivery
    assert default.cases == [
        ("per_vehicle", 200),
        ("per_vehicle", 1000),
        ("gateway", 1000),
    ]
    quick = parse_args(["--quick"]).delivery
    assert (quick.cases, quick.fill) == ([("per_vehicle", QUICK_SIZE)], False)

    phase = {
        "runs_s": [0.5, 0.7, 0.6, 0.4],
        "response_p50_s": 0.55,
        "response_max_s": 0.7,
        "max_block_ms": 40.0,
        "max_gc_ms": 5.0,
    }
    row = {
        "mode": "per_vehicle",
        "vehicles": 1000,
        "verification_on": {
            **phase,
            "runs_with_verification": 2,
            "with_verification_p50_s": 0.65,
            "without_verification_p50_s": 0.45,
        },
        "verification_off": {**phase, "response_p50_s": 0.5},
        "cost_p50_s": 0.05,
        "cost_p50_pct": 10.0,
        "telemetry_only_max_block_ms": 20.0,
        "verify": {
            **phase,
            "response_p50_s": 2.6,
            "response_max_s": 3.1,
            "acknowledged_kw": 1000.0,
            "delivered_kw": 990.0,
            "delivery_ratio_min": 0.98,
            "delivery_ratio_max": 1.0,
            "measured": 998,
            "measured_max": 1000,
            "unmeasured": 0,
            "unmeasured_max": 2,
            "following": 998,
            "following_max": 1000,
            "verification_loop_ms": 61.25,
            "verification_steps": 12,
            "verification_longest_step_ms": 9.5,
        },
        "all_acknowledged": True,
    }
    results: dict[str, Any] = {
        "meta": {
            "sections": ["delivery"],
            "delivery": {"repeat": 4, "verify_repeat": 1, "telemetry_interval_s": 1.0},
        },
        "delivery": [row, {"mode": "gateway", "vehicles": 1000, "error": "boom"}],
        "problems": [],
    }
    assert evaluate_targets(results) == []  # the section has no target
    markdown = render_markdown({**results, "targets": []})
    assert "## 6. Delivery verification" in markdown
    assert "## 1. Per-vehicle mode" not in markdown
    assert "## 5. Vehicles controlled" not in markdown
    assert (
        "| per-vehicle 1,000 | 0.550 / 0.700 | 0.500 / 0.700 | +50 ms (+10 %)"
        " | 2 of 4: p50 0.650 s (others 0.450 s) | 40 (GC 5) | 40 (GC 5) | yes |"
    ) in markdown
    assert (
        "| per-vehicle 1,000 | 2.600 / 3.100 | 1,000.0 | 990.0 | 0.980–1.000"
        " | 998–1,000 | 0–2 | 998–1,000 | 40 (GC 5) | 20 | 61.2 (12, 9.5) |"
    ) in markdown
    assert "(1 timed run after one warm-up" in markdown
    assert "- gateway 1,000: not measured (boom)." in markdown
