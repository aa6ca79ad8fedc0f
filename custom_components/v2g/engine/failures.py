"""Which vehicles failed in a dispatch, and why (docs/entities.md#dispatch-failures).

Read from a dispatch response (`DispatchResult.as_response()`, the data of the
`v2g_dispatch_completed` event, a dispatch log entry), so the logbook and the
fleet sensors name the same vehicles. A vehicle failed when its latest order of
the dispatch (the fallback round's over the first round's) was rejected, timed
out or could not be published. Superseded orders were replaced by a newer
dispatch and excluded vehicles got no order: neither failed. Damaged data gives
fewer failures, never an error (the logbook reads stored events).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .models import OrderStatus

FAILED_STATUSES = frozenset(
    {
        OrderStatus.REJECTED.value,
        OrderStatus.TIMEOUT.value,
        OrderStatus.PUBLISH_FAILED.value,
    }
)
# The rounds of a response, oldest first: a later round's order replaces the
# vehicle's earlier one.
_ROUNDS = (("vehicles", "initial"), ("fallback", "fallback"))


@dataclass(frozen=True, slots=True)
class VehicleFailure:
    """The failed order of one vehicle in one dispatch."""

    vehicle_id: str
    status: str
    reason: str | None
    round: str

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict (sensor attributes, the metrics store)."""
        return {
            "vehicle_id": self.vehicle_id,
            "status": self.status,
            "reason": self.reason,
            "round": self.round,
        }


def dispatch_failures(response: Mapping[str, Any]) -> list[VehicleFailure]:
    """The vehicles whose latest order of the dispatch failed, sorted by id."""
    latest: dict[str, tuple[Mapping[str, Any], str]] = {}
    for key, round_name in _ROUNDS:
        orders = response.get(key)
        if not isinstance(orders, Mapping):
            continue
        for vehicle_id, order in orders.items():
            if isinstance(order, Mapping):
                latest[str(vehicle_id)] = (order, round_name)
    failures: list[VehicleFailure] = []
    for vehicle_id in sorted(latest):
        order, round_name = latest[vehicle_id]
        status = order.get("status")
        if status not in FAILED_STATUSES:
            continue
        reason = order.get("reason")
        failures.append(
            VehicleFailure(
                vehicle_id=vehicle_id,
                status=str(status),
                reason=reason if isinstance(reason, str) and reason else None,
                round=round_name,
            )
        )
    return failures


def failure_from_dict(data: Any) -> VehicleFailure | None:
    """Inverse of `VehicleFailure.as_dict` (None when it cannot be read)."""
    if not isinstance(data, Mapping):
        return None
    vehicle_id, status = data.get("vehicle_id"), data.get("status")
    if not isinstance(vehicle_id, str) or status not in FAILED_STATUSES:
        return None
    reason = data.get("reason")
    round_name = data.get("round")
    return VehicleFailure(
        vehicle_id=vehicle_id,
        status=str(status),
        reason=reason if isinstance(reason, str) and reason else None,
        round=round_name if isinstance(round_name, str) else "initial",
    )
