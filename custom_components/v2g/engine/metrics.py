"""Dispatch metrics: totals, the 24 h ack rate and recent ack latencies.

What the fleet sensors "Dispatches", "Orders sent", "Orders acknowledged",
"Ack rate 24 h", "Ack latency p95", "Delivered power (last dispatch)", "Delivery
ratio 24 h" and "Last dispatch failures" show (docs/entities.md). Persisted in the
fleet store; its version governs the format (no version of its own: keys added
later read as empty).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
import math
from typing import Any

from .failures import dispatch_failures, failure_from_dict
from .models import OrderStatus, parse_utc_time

ACK_RATE_WINDOW = timedelta(hours=24)
LATENCY_SAMPLES = 1000
# What the fleet keeps of the last dispatch (its response's summary).
LAST_DISPATCH_KEYS = (
    "dispatch_id",
    "status",
    "requested_kw",
    "acknowledged_kw",
    "ack_rate",
    "started_at",
    "completed_at",
)
# What the fleet keeps of the last verification (its event's summary).
LAST_DELIVERY_KEYS = (
    "dispatch_id",
    "delivered_kw",
    "acknowledged_kw",
    "delivery_ratio",
)
# The dispatches (not dry runs) summarised with their failed vehicles, newest last,
# and how many failed vehicles each summary names (the count is complete).
RECENT_DISPATCHES = 5
FAILURES_LISTED = 10
_SENT = frozenset({OrderStatus.ACKNOWLEDGED, OrderStatus.REJECTED, OrderStatus.TIMEOUT})


def _rank(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted values."""
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


def dispatch_summary(response: Mapping[str, Any]) -> dict[str, Any]:
    """A finished dispatch in a few keys, with the vehicles that failed (capped)."""
    signal = response.get("signal")
    failures = dispatch_failures(response)
    return {
        "dispatch_id": response.get("dispatch_id"),
        "started_at": response.get("started_at"),
        "signal_type": signal.get("type") if isinstance(signal, Mapping) else None,
        "status": response.get("status"),
        "requested_kw": response.get("requested_kw"),
        "acknowledged_kw": response.get("acknowledged_kw"),
        "failure_count": len(failures),
        "failures": [failure.as_dict() for failure in failures[:FAILURES_LISTED]],
    }


@dataclass(slots=True)
class DispatchMetrics:
    """Totals and recent samples of the dispatches (persisted)."""

    dispatches: int = 0
    orders_sent: int = 0
    orders_acknowledged: int = 0
    publish_failures: int = 0
    # (completed_at unix seconds, acknowledged orders, sent orders)
    window: deque[tuple[float, int, int]] = field(default_factory=deque)
    latencies_ms: deque[float] = field(
        default_factory=lambda: deque(maxlen=LATENCY_SAMPLES)
    )
    last: dict[str, Any] | None = None
    # (verified_at unix seconds, delivered kW toward the acknowledged direction,
    # |acknowledged kW|) of the verified dispatches (docs/dispatch.md#verification)
    delivery_window: deque[tuple[float, float, float]] = field(default_factory=deque)
    last_delivery: dict[str, Any] | None = None
    # `dispatch_summary` of the last dispatches (dry runs excluded), oldest first.
    recent: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=RECENT_DISPATCHES)
    )

    def record(self, response: Mapping[str, Any], now: datetime) -> None:
        """Account a finished dispatch response (dry runs only update ``last``)."""
        self.last = {key: response.get(key) for key in LAST_DISPATCH_KEYS}
        if response.get("status") == "planned":
            return
        self.recent.append(dispatch_summary(response))
        sent = acked = failed = 0
        for round_name in ("vehicles", "fallback"):
            outcomes = response.get(round_name)
            if not isinstance(outcomes, Mapping):
                continue
            for outcome in outcomes.values():
                status = outcome.get("status")
                if status == OrderStatus.PUBLISH_FAILED:
                    failed += 1
                elif status in _SENT:
                    sent += 1
                    if status == OrderStatus.ACKNOWLEDGED:
                        acked += 1
                        latency = outcome.get("latency_ms")
                        if isinstance(latency, (int, float)):
                            self.latencies_ms.append(float(latency))
        self.dispatches += 1
        self.orders_sent += sent
        self.orders_acknowledged += acked
        self.publish_failures += failed
        completed = parse_utc_time(response.get("completed_at")) or now
        self.window.append((completed.timestamp(), acked, sent))

    def ack_rate_24h(self, now: datetime) -> float | None:
        """Acknowledged / sent orders of the dispatches of the last 24 h."""
        horizon = (now - ACK_RATE_WINDOW).timestamp()
        while self.window and self.window[0][0] < horizon:
            self.window.popleft()
        sent = sum(item[2] for item in self.window)
        if not sent:
            return None
        return sum(item[1] for item in self.window) / sent

    def record_delivery(self, report: Mapping[str, Any], verified_at: datetime) -> None:
        """Account a verification (`DeliveryReport.event_data()`).

        The 24 h ratio weighs each dispatch by its acknowledged power; delivery
        against the acknowledged direction counts negative.
        """
        self.last_delivery = {key: report.get(key) for key in LAST_DELIVERY_KEYS}
        acknowledged = report.get("acknowledged_kw")
        delivered = report.get("delivered_kw")
        if not isinstance(acknowledged, (int, float)) or not acknowledged:
            return
        if not isinstance(delivered, (int, float)):
            return
        toward = delivered if acknowledged > 0 else -delivered
        self.delivery_window.append(
            (verified_at.timestamp(), float(toward), abs(float(acknowledged)))
        )

    def delivery_ratio_24h(self, now: datetime) -> float | None:
        """Delivered / acknowledged power of the dispatches verified in 24 h."""
        horizon = (now - ACK_RATE_WINDOW).timestamp()
        while self.delivery_window and self.delivery_window[0][0] < horizon:
            self.delivery_window.popleft()
        acknowledged = math.fsum(item[2] for item in self.delivery_window)
        if not acknowledged:
            return None
        return math.fsum(item[1] for item in self.delivery_window) / acknowledged

    def latency_p95(self) -> float | None:
        """95th percentile of the recent ack latencies (nearest rank)."""
        if not self.latencies_ms:
            return None
        return round(_rank(sorted(self.latencies_ms), 0.95), 3)

    def latency_summary(self) -> dict[str, Any]:
        """Count, median, p95 and maximum of the recent latencies (diagnostics)."""
        if not self.latencies_ms:
            return {"count": 0, "p50": None, "p95": None, "max": None}
        ordered = sorted(self.latencies_ms)
        return {
            "count": len(ordered),
            "p50": round(_rank(ordered, 0.5), 3),
            "p95": round(_rank(ordered, 0.95), 3),
            "max": round(ordered[-1], 3),
        }

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict."""
        return {
            "dispatches": self.dispatches,
            "orders_sent": self.orders_sent,
            "orders_acknowledged": self.orders_acknowledged,
            "publish_failures": self.publish_failures,
            "window": [list(item) for item in self.window],
            "latencies_ms": list(self.latencies_ms),
            "last": self.last,
            "delivery_window": [list(item) for item in self.delivery_window],
            "last_delivery": self.last_delivery,
            "recent": list(self.recent),
        }

    @classmethod
    def from_dict(cls, data: Any) -> DispatchMetrics:
        """Inverse of `as_dict`; a part that cannot be read starts from zero.

        The totals are read one by one, so a bad sample list never resets them.
        """
        metrics = cls()
        if not isinstance(data, Mapping):
            return metrics
        for name in (
            "dispatches",
            "orders_sent",
            "orders_acknowledged",
            "publish_failures",
        ):
            value = data.get(name, 0)
            if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
                setattr(metrics, name, int(value))
        try:
            metrics.window.extend(
                (float(t), int(a), int(s)) for t, a, s in data.get("window", [])
            )
        except (TypeError, ValueError):
            metrics.window.clear()
        try:
            metrics.latencies_ms.extend(float(v) for v in data.get("latencies_ms", []))
        except (TypeError, ValueError):
            metrics.latencies_ms.clear()
        last = data.get("last")
        metrics.last = dict(last) if isinstance(last, Mapping) else None
        try:
            metrics.delivery_window.extend(
                (float(t), float(d), float(a))
                for t, d, a in data.get("delivery_window", [])
            )
        except (TypeError, ValueError):
            metrics.delivery_window.clear()
        delivery = data.get("last_delivery")
        metrics.last_delivery = (
            dict(delivery) if isinstance(delivery, Mapping) else None
        )
        recent = data.get("recent")
        if isinstance(recent, list):
            metrics.recent.extend(
                _summary_from_dict(item) for item in recent if isinstance(item, Mapping)
            )
        return metrics


def _summary_from_dict(data: Mapping[str, Any]) -> dict[str, Any]:
    """A stored `dispatch_summary`, its failures checked (unreadable ones dropped)."""
    raw = data.get("failures")
    read = (failure_from_dict(item) for item in raw) if isinstance(raw, list) else ()
    failures = [failure.as_dict() for failure in read if failure is not None]
    count = data.get("failure_count")
    return {
        **data,
        "failure_count": max(count, len(failures))
        if isinstance(count, int) and not isinstance(count, bool)
        else len(failures),
        "failures": failures[:FAILURES_LISTED],
    }
