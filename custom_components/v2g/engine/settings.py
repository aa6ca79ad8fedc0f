"""The inputs of a dispatch: the engine options and one request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
import math
from types import MappingProxyType
import uuid

from .eligibility import SafetySettings
from .models import (
    FallbackMode,
    FlexibilitySignal,
    InvalidValueError,
    SignalType,
    Strategy,
)
from .strategies import DEFAULT_SEGMENTS, ScoreWeights, SegmentConfig


def _default_strategies() -> Mapping[SignalType, Strategy]:
    strategies = dict.fromkeys(SignalType, Strategy.SMART)
    strategies[SignalType.FCR] = Strategy.OPTIMAL
    return MappingProxyType(strategies)


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """Engine options (docs/options.md); defaults are the documented ones."""

    strategies: Mapping[SignalType, Strategy] = field(
        default_factory=_default_strategies
    )
    fallback: FallbackMode = FallbackMode.BALANCED
    ack_timeout_s: float = 5.0
    safety: SafetySettings = field(default_factory=SafetySettings)
    weights: ScoreWeights = field(default_factory=ScoreWeights)
    segments: Mapping[str, SegmentConfig] = DEFAULT_SEGMENTS
    publish_retries: int = 3
    retry_backoff_s: float = 0.1
    order_ttl_s: float | None = None
    # A vehicle silent for longer than this is treated as unavailable (None: never).
    stale_timeout_s: float | None = None

    def __post_init__(self) -> None:
        """Validate timings and counts.

        Raises:
            InvalidValueError: a value is out of range.
        """
        if not math.isfinite(self.ack_timeout_s) or self.ack_timeout_s <= 0.0:
            raise InvalidValueError("ack_timeout_s", "must be > 0")
        if self.publish_retries < 0:
            raise InvalidValueError("publish_retries", "must be >= 0")
        if not math.isfinite(self.retry_backoff_s) or self.retry_backoff_s < 0.0:
            raise InvalidValueError("retry_backoff_s", "must be >= 0")
        if self.order_ttl_s is not None and (
            not math.isfinite(self.order_ttl_s) or self.order_ttl_s <= 0.0
        ):
            raise InvalidValueError("order_ttl_s", "must be > 0")
        if self.stale_timeout_s is not None and (
            not math.isfinite(self.stale_timeout_s) or self.stale_timeout_s <= 0.0
        ):
            raise InvalidValueError("stale_timeout_s", "must be > 0")

    def strategy_for(self, signal_type: SignalType) -> Strategy:
        """Strategy configured for a signal type (smart when not configured)."""
        return self.strategies.get(signal_type, Strategy.SMART)


def new_id() -> str:
    """A random id (uuid4 string) for a dispatch or an order."""
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class DispatchRequest:
    """One dispatch to run.

    `vehicle_ids` None means the whole fleet; unknown ids are an error.
    `strategy` None means the one configured for the signal type.
    """

    signal: FlexibilitySignal
    vehicle_ids: tuple[str, ...] | None = None
    strategy: Strategy | None = None
    dry_run: bool = False
    dispatch_id: str = field(default_factory=new_id)
