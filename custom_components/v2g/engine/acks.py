"""Matching acks to pending orders (docs/protocol.md#ack-matching).

Rules:

* an order's pending entry is registered *before* it is published, so an ack that
  beats the publish call is never lost (a Go race);
* an ack counts only if its `command_id` is pending **and** the vehicle it came
  from (topic, or `vehicle_id` of a gateway ack) is the order's vehicle —
  otherwise `vehicle_mismatch`, recorded for diagnostics and otherwise ignored;
* an ack for an order that already timed out (or was superseded / failed to
  publish) is `late`: counted for that vehicle, result unchanged; a second ack for
  an order that was already answered is a `duplicate`; an id never seen (or
  forgotten) is `unknown`;
* a newer order to the same vehicle supersedes its older pending one, which
  resolves as `superseded`.

Every operation is O(1) per ack; timeouts are driven by the caller (one deadline
per dispatch round calls `expire`). Resolved ids are remembered in a bounded
`OrderedDict` to classify late / duplicate / replayed acks.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from .codec import Ack, Order
from .models import OrderStatus

DEFAULT_RECENT_CAPACITY = 10_000
DEFAULT_REJECTION_LOG = 100


class AckDisposition(StrEnum):
    """What happened to one incoming ack."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    LATE = "late"
    DUPLICATE = "duplicate"
    UNKNOWN = "unknown"
    VEHICLE_MISMATCH = "vehicle_mismatch"


class ResolutionListener(Protocol):
    """Told when a pending order gets its final status."""

    def order_resolved(self, entry: PendingOrder) -> None:
        """React to `entry` leaving the pending state."""


@dataclass(slots=True, eq=False)
class PendingOrder:
    """One published (or about to be published) order and its outcome so far."""

    order: Order
    sent_at: float
    listener: ResolutionListener | None = None
    status: OrderStatus = OrderStatus.PENDING
    resolved_at: float | None = None
    reason: str | None = None
    applied_power_kw: float | None = None
    late_acks: int = 0

    @property
    def latency_ms(self) -> float | None:
        """Time from registration to resolution by an ack (None otherwise)."""
        if self.resolved_at is None or self.status not in _ANSWERED:
            return None
        return (self.resolved_at - self.sent_at) * 1000.0

    @property
    def delivered_kw(self) -> float:
        """Signed power the vehicle confirmed (see `delivered_power`)."""
        return delivered_power(self.status, self.order.power_kw, self.applied_power_kw)


def delivered_power(
    status: OrderStatus, ordered_kw: float, applied_kw: float | None
) -> float:
    """Signed power a vehicle confirmed for an order (0 unless acknowledged).

    An applied power (from the ack) lowers it: never above the order, never the
    opposite sign; None means the order was applied in full.
    """
    if status is not OrderStatus.ACKNOWLEDGED:
        return 0.0
    if applied_kw is None:
        return ordered_kw
    if ordered_kw == 0.0 or (applied_kw > 0.0) != (ordered_kw > 0.0):
        return 0.0
    return ordered_kw if abs(applied_kw) >= abs(ordered_kw) else applied_kw


_ANSWERED = frozenset({OrderStatus.ACKNOWLEDGED, OrderStatus.REJECTED})


@dataclass(frozen=True, slots=True)
class RejectedAck:
    """A suspicious ack kept for diagnostics (spoofing, replay, unknown id)."""

    at: float
    disposition: AckDisposition
    command_id: str
    vehicle_id: str
    expected_vehicle_id: str | None


@dataclass(slots=True)
class _Resolved:
    vehicle_id: str
    gateway: str | None
    status: OrderStatus


@dataclass(slots=True)
class AckTracker:
    """Pending orders by command id, and what became of recent ones."""

    recent_capacity: int = DEFAULT_RECENT_CAPACITY
    counters: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            [d.value for d in AckDisposition] + ["malformed", "invalid_items"], 0
        )
    )
    recent_rejections: deque[RejectedAck] = field(
        default_factory=lambda: deque(maxlen=DEFAULT_REJECTION_LOG)
    )
    late_by_vehicle: dict[str, int] = field(default_factory=dict)
    _pending: dict[str, PendingOrder] = field(default_factory=dict)
    _latest_by_vehicle: dict[str, str] = field(default_factory=dict)
    _recent: OrderedDict[str, _Resolved] = field(default_factory=OrderedDict)

    # --- registration and resolution -------------------------------------------

    def register(
        self,
        order: Order,
        sent_at: float,
        listener: ResolutionListener | None = None,
    ) -> str | None:
        """Add a pending entry for `order` (call before publishing it).

        Returns:
            The command id this order superseded for the same vehicle, if any.
        """
        superseded: str | None = None
        previous = self._latest_by_vehicle.get(order.vehicle_id)
        if previous is not None and previous in self._pending:
            self._resolve(previous, OrderStatus.SUPERSEDED, sent_at)
            superseded = previous
        self._pending[order.command_id] = PendingOrder(order, sent_at, listener)
        self._latest_by_vehicle[order.vehicle_id] = order.command_id
        return superseded

    def resolve(
        self,
        command_id: str,
        status: OrderStatus,
        now: float,
        reason: str | None = None,
    ) -> bool:
        """Resolve a pending order without an ack (timeout, publish failure).

        Returns:
            False if the order was no longer pending.
        """
        if command_id not in self._pending:
            return False
        self._resolve(command_id, status, now, reason)
        return True

    def expire(self, command_ids: Iterable[str], now: float) -> int:
        """Time out every still-pending order among `command_ids`; return how many."""
        expired = 0
        pending = self._pending
        for command_id in command_ids:
            if command_id in pending:
                self._resolve(command_id, OrderStatus.TIMEOUT, now)
                expired += 1
        return expired

    def forget(self, command_ids: Iterable[str]) -> None:
        """Drop pending entries without resolving them (dispatch abandoned).

        Their listeners are not called; a later ack is classified as late.
        """
        for command_id in command_ids:
            entry = self._pending.pop(command_id, None)
            if entry is None:
                continue
            vehicle_id = entry.order.vehicle_id
            if self._latest_by_vehicle.get(vehicle_id) == command_id:
                del self._latest_by_vehicle[vehicle_id]
            self._remember(command_id, entry.order, OrderStatus.TIMEOUT)

    def _resolve(
        self,
        command_id: str,
        status: OrderStatus,
        now: float,
        reason: str | None = None,
        applied_power_kw: float | None = None,
    ) -> PendingOrder:
        entry = self._pending.pop(command_id)
        entry.status = status
        entry.resolved_at = now
        entry.reason = reason
        entry.applied_power_kw = applied_power_kw
        vehicle_id = entry.order.vehicle_id
        if self._latest_by_vehicle.get(vehicle_id) == command_id:
            del self._latest_by_vehicle[vehicle_id]
        self._remember(command_id, entry.order, status)
        if entry.listener is not None:
            entry.listener.order_resolved(entry)
        return entry

    def _remember(self, command_id: str, order: Order, status: OrderStatus) -> None:
        recent = self._recent
        recent[command_id] = _Resolved(order.vehicle_id, order.gateway, status)
        if len(recent) > self.recent_capacity:
            recent.popitem(last=False)

    # --- incoming acks ----------------------------------------------------------

    def handle_ack(
        self,
        topic_vehicle_id: str,
        ack: Ack,
        now: float,
        *,
        gateway_id: str | None = None,
    ) -> AckDisposition:
        """Match one decoded ack.

        Args:
            topic_vehicle_id: the vehicle the ack came from (topic level, or the
                `vehicle_id` of a gateway ack).
            ack: the decoded ack.
            now: monotonic time of reception.
            gateway_id: for gateway acks, the gateway the message came from; the
                order must have been routed through it.
        """
        command_id = ack.command_id
        entry = self._pending.get(command_id)
        if entry is not None:
            order = entry.order
            if (
                order.vehicle_id != topic_vehicle_id
                or (ack.vehicle_id is not None and ack.vehicle_id != order.vehicle_id)
                or (gateway_id is not None and order.gateway != gateway_id)
            ):
                return self._suspicious(
                    AckDisposition.VEHICLE_MISMATCH,
                    now,
                    command_id,
                    topic_vehicle_id,
                    order.vehicle_id,
                )
            if ack.accepted:
                self._resolve(
                    command_id,
                    OrderStatus.ACKNOWLEDGED,
                    now,
                    ack.reason,
                    ack.applied_power_kw,
                )
                self.counters[AckDisposition.ACCEPTED] += 1
                return AckDisposition.ACCEPTED
            self._resolve(command_id, OrderStatus.REJECTED, now, ack.reason)
            self.counters[AckDisposition.REJECTED] += 1
            return AckDisposition.REJECTED
        resolved = self._recent.get(command_id)
        if resolved is None:
            return self._suspicious(
                AckDisposition.UNKNOWN, now, command_id, topic_vehicle_id, None
            )
        if resolved.vehicle_id != topic_vehicle_id or (
            gateway_id is not None and resolved.gateway != gateway_id
        ):
            return self._suspicious(
                AckDisposition.VEHICLE_MISMATCH,
                now,
                command_id,
                topic_vehicle_id,
                resolved.vehicle_id,
            )
        if resolved.status in _ANSWERED:
            return self._suspicious(
                AckDisposition.DUPLICATE,
                now,
                command_id,
                topic_vehicle_id,
                resolved.vehicle_id,
            )
        self.counters[AckDisposition.LATE] += 1
        self.late_by_vehicle[topic_vehicle_id] = (
            self.late_by_vehicle.get(topic_vehicle_id, 0) + 1
        )
        return AckDisposition.LATE

    def _suspicious(
        self,
        disposition: AckDisposition,
        now: float,
        command_id: str,
        vehicle_id: str,
        expected: str | None,
    ) -> AckDisposition:
        self.counters[disposition] += 1
        self.recent_rejections.append(
            RejectedAck(now, disposition, command_id, vehicle_id, expected)
        )
        return disposition

    def count_malformed(self, invalid_items: int = 0) -> None:
        """Count a payload that could not be decoded (or bad gateway items)."""
        if invalid_items:
            self.counters["invalid_items"] += invalid_items
        else:
            self.counters["malformed"] += 1

    # --- queries ----------------------------------------------------------------

    def pending(self, command_id: str) -> PendingOrder | None:
        """Return the pending entry of `command_id`, if still pending."""
        return self._pending.get(command_id)

    def pending_for_vehicle(self, vehicle_id: str) -> PendingOrder | None:
        """Return the vehicle's latest pending order, if any."""
        command_id = self._latest_by_vehicle.get(vehicle_id)
        return None if command_id is None else self._pending.get(command_id)

    @property
    def pending_count(self) -> int:
        """Number of orders waiting for an ack."""
        return len(self._pending)
