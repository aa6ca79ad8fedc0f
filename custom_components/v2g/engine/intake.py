"""Ack intake: decode arriving acks, resolve their orders, teach the fleet.

Acks arrive on their own, between and during dispatches; this is the engine's
side that receives them (`DispatchEngine.handle_ack` / `handle_gateway_acks`).
"""

from __future__ import annotations

from .acks import AckDisposition, AckTracker
from .codec import DecodeError, decode_ack, decode_gateway_acks
from .fleet import FleetState
from .ports import Runtime

# Answers to one of its own orders show a vehicle is alive; a duplicate, unknown
# or mismatched ack may be a replay or come from elsewhere.
_HEARD_FROM = frozenset(
    {AckDisposition.ACCEPTED, AckDisposition.REJECTED, AckDisposition.LATE}
)


class AckIntake:
    """Feeds acks to the tracker and what they tell about a vehicle to the fleet."""

    def __init__(
        self, tracker: AckTracker, fleet: FleetState, runtime: Runtime
    ) -> None:
        """Wire the intake to the engine's tracker, fleet and runtime."""
        self.tracker = tracker
        self.fleet = fleet
        self.runtime = runtime

    def handle_ack(
        self, topic_vehicle_id: str, payload: bytes | str
    ) -> AckDisposition | None:
        """Handle a per-vehicle ack message; None if it was malformed (counted)."""
        try:
            ack = decode_ack(payload)
        except DecodeError:
            self.tracker.count_malformed()
            return None
        now = self.runtime.monotonic()
        disposition = self.tracker.handle_ack(topic_vehicle_id, ack, now)
        self._learn_from_ack(topic_vehicle_id, disposition, now)
        return disposition

    def handle_gateway_acks(
        self, payload: bytes | str, gateway_id: str | None = None
    ) -> dict[AckDisposition, int] | None:
        """Handle a gateway ack message; return the count per disposition.

        None if the envelope was malformed (counted). With `gateway_id` (from the
        topic) an ack only counts for orders routed through that gateway.
        """
        try:
            acks = decode_gateway_acks(payload)
        except DecodeError:
            self.tracker.count_malformed()
            return None
        if acks.invalid:
            self.tracker.count_malformed(acks.invalid)
        now = self.runtime.monotonic()
        summary: dict[AckDisposition, int] = {}
        for ack in acks:
            vehicle_id = ack.vehicle_id
            assert vehicle_id is not None  # guaranteed for gateway acks
            disposition = self.tracker.handle_ack(
                vehicle_id, ack, now, gateway_id=gateway_id
            )
            self._learn_from_ack(vehicle_id, disposition, now)
            summary[disposition] = summary.get(disposition, 0) + 1
        return summary

    def _learn_from_ack(
        self, vehicle_id: str, disposition: AckDisposition, now: float
    ) -> None:
        if disposition in _HEARD_FROM:
            self.fleet.touch(vehicle_id, now)
        if disposition is AckDisposition.LATE:
            self.fleet.record_late(vehicle_id)
