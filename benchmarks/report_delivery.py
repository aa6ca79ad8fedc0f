"""Markdown of the delivery section (``benchmarks/bench_delivery.py``, issue 14)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .report import _block, _num, _table

DELIVERY_HEADING = "## 6. Delivery verification: delivered vs acknowledged (issue 14)"


def _runs(count: Any) -> str:
    return f"{_num(count)} timed run{'' if count == 1 else 's'}"


def _fleet(row: Mapping[str, Any]) -> str:
    mode = "gateway" if row.get("mode") == "gateway" else "per-vehicle"
    return f"{mode} {_num(row.get('vehicles'))}"


def _p50_max(summary: Mapping[str, Any] | None) -> str:
    if not summary:
        return "–"
    return (
        f"{_num(summary.get('response_p50_s'))} / {_num(summary.get('response_max_s'))}"
    )


def _cost(row: Mapping[str, Any]) -> str:
    cost = row.get("cost_p50_s")
    if cost is None:
        return "–"
    return f"{cost * 1000:+,.0f} ms ({row.get('cost_p50_pct', 0.0):+.0f} %)"


def _met_by_verification(summary: Mapping[str, Any] | None) -> str:
    if not summary:
        return "–"
    runs = len(summary.get("runs_s") or [])
    met = summary.get("runs_with_verification", 0)
    if not met:
        return f"0 of {runs}"
    return (
        f"{met} of {runs}: p50 {_num(summary.get('with_verification_p50_s'))} s"
        f" (others {_num(summary.get('without_verification_p50_s'))} s)"
    )


def _ratio(verify: Mapping[str, Any]) -> str:
    low, high = verify.get("delivery_ratio_min"), verify.get("delivery_ratio_max")
    if low is None or high is None:
        return "–"
    return f"{low:.3f}" if low == high else f"{low:.3f}–{high:.3f}"


def _count(verify: Mapping[str, Any], key: str) -> str:
    low, high = verify.get(key), verify.get(f"{key}_max")
    if low is None:
        return "–"
    return _num(low) if low == high else f"{_num(low)}–{_num(high)}"


def _loop_time(verify: Mapping[str, Any]) -> str:
    total = verify.get("verification_loop_ms")
    if total is None:
        return "–"
    return (
        f"{total:,.1f} ({_num(verify.get('verification_steps'))},"
        f" {_num(verify.get('verification_longest_step_ms'), 1)})"
    )


def delivery_lines(results: Mapping[str, Any]) -> list[str]:
    """The section's heading, set-up, its two tables and its notes."""
    meta = (results.get("meta") or {}).get("delivery") or {}
    rows: Sequence[Mapping[str, Any]] = results.get("delivery") or []
    windows = meta.get("phase_windows_s") or {}
    lines = ["", DELIVERY_HEADING, ""]
    lines += [
        "The fleet simulator pushes every vehicle's telemetry (`power_kw` …) every"
        f" {_num(meta.get('telemetry_interval_s'), 0)} s, as real vehicles would; the"
        " dispatch is the fleet sections' (aFRR, equal, 1 kW per vehicle). *Default"
        " path*: `v2g.dispatch` without `verify`, timed back to back (0.2 s and a"
        " garbage collection between runs) after untimed dispatches filling one"
        " window, so that the verifications of earlier dispatches fall during later"
        f" ones, with `verify_window` {_num(windows.get('verification_on'), 0)} s"
        " (the default: *on*) and"
        f" {_num(windows.get('verification_off'), 0)} s (the maximum: no"
        " verification during the runs, *off*); the phases alternate (on, off, on,"
        " off; each a reload of the entry),"
        f" {_runs(meta.get('repeat'))} per kind. *Met by a verification*:"
        " the runs during which a `v2g_dispatch_verified` event fired, their"
        " median and the others' (a longer run is likelier to meet one, so the"
        " gap is an upper bound of the verification's cost).",
        "",
    ]
    lines += _table(
        [
            "fleet",
            "on: p50 / max (s)",
            "off: p50 / max (s)",
            "cost of verification (p50)",
            "runs met by a verification",
            "loop block on (ms)",
            "loop block off (ms)",
            "all acked",
        ],
        [
            [
                _fleet(row),
                _p50_max(row.get("verification_on")),
                _p50_max(row.get("verification_off")),
                _cost(row),
                _met_by_verification(row.get("verification_on")),
                _block(row.get("verification_on") or {}, "max_block_ms", "max_gc_ms"),
                _block(row.get("verification_off") or {}, "max_block_ms", "max_gc_ms"),
                "yes" if row.get("all_acknowledged") else "**no**",
            ]
            for row in rows
        ],
    )
    lines += [
        "",
        f"`verify: true` ({_runs(meta.get('verify_repeat'))} after one"
        f" warm-up, `verify_window` {_num(meta.get('verify_run_window_s'), 0)} s): the"
        " call returns once its own verification is done. kW: median over the runs;"
        " counts: lowest–highest. The loop block spans the window (telemetry"
        " included); *telemetry only*: the longest block while nothing but"
        " telemetry arrives, for comparison. *Verification on the loop*: the time"
        " the verification's own task ran on the event loop (the same work follows"
        " every dispatch, with `verify` or not), its steps and its longest step,"
        " from one more dispatch with every loop step timed.",
        "",
    ]
    lines += _table(
        [
            "fleet",
            "response p50 / max (s)",
            "acknowledged (kW)",
            "delivered (kW)",
            "delivery ratio",
            "measured",
            "unmeasured",
            "following",
            "loop block (ms)",
            "telemetry only (ms)",
            "verification on the loop: ms (steps, longest ms)",
        ],
        [
            [
                _fleet(row),
                _p50_max(verify),
                _num(verify.get("acknowledged_kw"), 1),
                _num(verify.get("delivered_kw"), 1),
                _ratio(verify),
                _count(verify, "measured"),
                _count(verify, "unmeasured"),
                _count(verify, "following"),
                _block(verify, "max_block_ms", "max_gc_ms"),
                _block(row, "telemetry_only_max_block_ms", "telemetry_only_max_gc_ms"),
                _loop_time(verify),
            ]
            for row in rows
            if (verify := row.get("verify"))
        ],
    )
    lines.append("")
    lines += [
        f"- {_fleet(row)}: not measured ({row['error']})."
        for row in rows
        if row.get("error")
    ]
    return lines
