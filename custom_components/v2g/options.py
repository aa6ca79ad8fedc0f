"""An entry's options as the runtime uses them (docs/options.md).

Options store percentages as percent (what the form shows); they are turned
into the engine's fractions here, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeassistant.util import dt as dt_util

from .config_flow import default_options
from .const import (
    CONF_ACK_TIMEOUT,
    CONF_FALLBACK,
    CONF_MIN_SOC,
    CONF_PREDICTION,
    CONF_PREDICTION_PROFILE,
    CONF_SAFE_DISCHARGE_FLOOR,
    CONF_SOC_CONSTRAINTS,
    CONF_STALE_TIMEOUT,
    CONF_STRATEGY_PREFIX,
    LOGGER,
    PREDICTION_HISTORY,
    PREDICTION_STATIC,
)
from .engine import (
    DispatchSettings,
    FallbackMode,
    FleetState,
    InvalidValueError,
    PredictionEngine,
    SafetySettings,
    SignalType,
    StaticProfile,
    Strategy,
    parse_hourly_profile,
)
from .engine.availability import HistoryPrediction

__all__ = ["availability_prediction", "default_options", "dispatch_settings"]


def dispatch_settings(options: Mapping[str, Any]) -> DispatchSettings:
    """The engine's settings from an entry's options."""
    strategies: dict[SignalType, Strategy] = {}
    for signal_type in SignalType:
        value = options.get(f"{CONF_STRATEGY_PREFIX}{signal_type.value}")
        if isinstance(value, str):
            strategies[signal_type] = Strategy.parse(value)
    return DispatchSettings(
        strategies=strategies or DispatchSettings().strategies,
        fallback=FallbackMode(str(options[CONF_FALLBACK])),
        ack_timeout_s=float(options[CONF_ACK_TIMEOUT]),
        safety=SafetySettings(
            min_soc=float(options[CONF_MIN_SOC]) / 100.0,
            safe_discharge_floor=float(options[CONF_SAFE_DISCHARGE_FLOOR]) / 100.0,
            soc_constraints=bool(options[CONF_SOC_CONSTRAINTS]),
        ),
        stale_timeout_s=float(options[CONF_STALE_TIMEOUT]),
    )


def availability_prediction(
    options: Mapping[str, Any], fleet: FleetState
) -> PredictionEngine | None:
    """The prediction engine the options ask for (None: off).

    The history engine answers with the static profile until it has learnt
    from the recorder (history.py).
    """
    mode = options.get(CONF_PREDICTION)
    if mode not in (PREDICTION_STATIC, PREDICTION_HISTORY):
        return None
    tz = dt_util.get_default_time_zone()
    static: StaticProfile | None = None
    try:
        hourly = parse_hourly_profile(str(options[CONF_PREDICTION_PROFILE]))
    except InvalidValueError as err:
        LOGGER.warning("Ignoring the availability profile: %s", err)
    else:
        static = StaticProfile(hourly, tz=tz, fleet=fleet)
    if mode == PREDICTION_HISTORY:
        return HistoryPrediction(static, tz=tz, fleet=fleet)
    return static
