"""Fleet options: their defaults and the typed settings read from them.

The options flow stores the options flat in ``entry.options``, percentages as
percent (what the user typed). This module is the one place that reads them:
it fills in the defaults, types the values and converts percentages to
fractions, so the runtime never handles a percentage. See docs/options.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from homeassistant.util import dt as dt_util

from .const import (
    CONF_ACK_RATE_SLA,
    CONF_ACK_TIMEOUT,
    CONF_DELIVERY_TOLERANCE_KW,
    CONF_DELIVERY_TOLERANCE_PCT,
    CONF_EMISSION_FACTOR,
    CONF_FALLBACK,
    CONF_MIN_SOC,
    CONF_NOT_FOLLOWING_GRACE,
    CONF_POLL_INTERVAL,
    CONF_PREDICTION,
    CONF_PREDICTION_LOOKBACK_DAYS,
    CONF_PREDICTION_PROFILE,
    CONF_QOS,
    CONF_RELEASE_AT_END,
    CONF_SAFE_DISCHARGE_FLOOR,
    CONF_SOC_CONSTRAINTS,
    CONF_STALE_TIMEOUT,
    CONF_STRATEGY_PREFIX,
    CONF_TELEMETRY_MODE,
    CONF_VERIFY_WINDOW,
    CONF_WEBHOOK_ENABLED,
    CONF_WEBHOOK_ID,
    DEFAULT_ACK_RATE_SLA,
    DEFAULT_ACK_TIMEOUT,
    DEFAULT_DELIVERY_TOLERANCE_KW,
    DEFAULT_DELIVERY_TOLERANCE_PCT,
    DEFAULT_EMISSION_FACTOR,
    DEFAULT_FALLBACK,
    DEFAULT_MIN_SOC,
    DEFAULT_NOT_FOLLOWING_GRACE,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_PREDICTION,
    DEFAULT_PREDICTION_LOOKBACK_DAYS,
    DEFAULT_PREDICTION_PROFILE,
    DEFAULT_QOS,
    DEFAULT_RELEASE_AT_END,
    DEFAULT_SAFE_DISCHARGE_FLOOR,
    DEFAULT_SOC_CONSTRAINTS,
    DEFAULT_STALE_TIMEOUT,
    DEFAULT_STRATEGIES,
    DEFAULT_TELEMETRY_MODE,
    DEFAULT_VERIFY_WINDOW,
    DEFAULT_WEBHOOK_ENABLED,
    LOGGER,
    PREDICTION_HISTORY,
    PREDICTION_STATIC,
)
from .engine import (
    DeliveryTolerance,
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

if TYPE_CHECKING:
    from homeassistant.config_entries import ConfigEntry


def default_options() -> dict[str, Any]:
    """Return the complete default options of a fleet entry (a new dict).

    Keys and value types (all stored flat in ``entry.options``):
    ``strategy_<signal>`` str, ``fallback`` str, ``ack_timeout`` float (s),
    ``qos`` int, ``min_soc`` / ``safe_discharge_floor`` float (percent),
    ``soc_constraints`` bool, ``prediction`` str, ``prediction_profile`` str (24
    comma-separated percentages), ``prediction_lookback_days`` int,
    ``telemetry_mode`` str, ``poll_interval`` / ``stale_timeout`` float (s),
    ``emission_factor`` float (gCO2/kWh), ``ack_rate_sla`` float (percent),
    ``webhook_enabled`` / ``release_at_end`` bool, ``verify_window`` float (s),
    ``delivery_tolerance_pct`` float (percent), ``delivery_tolerance_kw`` float,
    ``not_following_grace`` float (s). ``webhook_id`` (str) is added by the
    options flow the first time the webhook is enabled, so it is not part of the
    defaults.
    """
    options: dict[str, Any] = {
        f"{CONF_STRATEGY_PREFIX}{signal}": strategy
        for signal, strategy in DEFAULT_STRATEGIES.items()
    }
    options.update(
        {
            CONF_FALLBACK: DEFAULT_FALLBACK,
            CONF_ACK_TIMEOUT: DEFAULT_ACK_TIMEOUT,
            CONF_QOS: DEFAULT_QOS,
            CONF_RELEASE_AT_END: DEFAULT_RELEASE_AT_END,
            CONF_MIN_SOC: DEFAULT_MIN_SOC,
            CONF_SAFE_DISCHARGE_FLOOR: DEFAULT_SAFE_DISCHARGE_FLOOR,
            CONF_SOC_CONSTRAINTS: DEFAULT_SOC_CONSTRAINTS,
            CONF_PREDICTION: DEFAULT_PREDICTION,
            CONF_PREDICTION_PROFILE: DEFAULT_PREDICTION_PROFILE,
            CONF_PREDICTION_LOOKBACK_DAYS: DEFAULT_PREDICTION_LOOKBACK_DAYS,
            CONF_TELEMETRY_MODE: DEFAULT_TELEMETRY_MODE,
            CONF_POLL_INTERVAL: DEFAULT_POLL_INTERVAL,
            CONF_STALE_TIMEOUT: DEFAULT_STALE_TIMEOUT,
            CONF_EMISSION_FACTOR: DEFAULT_EMISSION_FACTOR,
            CONF_ACK_RATE_SLA: DEFAULT_ACK_RATE_SLA,
            CONF_WEBHOOK_ENABLED: DEFAULT_WEBHOOK_ENABLED,
            CONF_VERIFY_WINDOW: DEFAULT_VERIFY_WINDOW,
            CONF_DELIVERY_TOLERANCE_PCT: DEFAULT_DELIVERY_TOLERANCE_PCT,
            CONF_DELIVERY_TOLERANCE_KW: DEFAULT_DELIVERY_TOLERANCE_KW,
            CONF_NOT_FOLLOWING_GRACE: DEFAULT_NOT_FOLLOWING_GRACE,
        }
    )
    return options


def effective_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Return the stored options over the defaults (a new dict).

    Entries created by an older version may lack keys added since.
    """
    return default_options() | dict(options)


def _fraction(percent: Any) -> float:
    """Convert a stored percentage to a fraction of 1."""
    return float(percent) / 100.0


def dispatch_settings(options: Mapping[str, Any]) -> DispatchSettings:
    """Return the engine settings of a fleet's options (missing keys: defaults).

    Raises:
        InvalidValueError: a stored strategy or value is out of the engine's domain.
        ValueError: the stored fallback mode is unknown.
    """
    options = effective_options(options)
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
            min_soc=_fraction(options[CONF_MIN_SOC]),
            safe_discharge_floor=_fraction(options[CONF_SAFE_DISCHARGE_FLOOR]),
            soc_constraints=bool(options[CONF_SOC_CONSTRAINTS]),
        ),
        stale_timeout_s=float(options[CONF_STALE_TIMEOUT]),
    )


def prediction_profile(options: Mapping[str, Any]) -> list[float]:
    """Return the static availability profile: 24 hourly fractions, hour 0 first.

    Raises:
        InvalidValueError: the stored text is not 24 percentages from 0 to 100.
    """
    text = effective_options(options)[CONF_PREDICTION_PROFILE]
    return parse_hourly_profile(str(text))


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetOptions:
    """The typed options of a fleet; fractions where the form shows percent."""

    settings: DispatchSettings
    qos: int
    # Seconds without news before a vehicle counts as unavailable.
    stale_timeout: float
    # gCO2 per kWh of grid electricity; 0 turns the CO2 sensors off.
    emission_factor: float
    # Fraction of 1 below which the ack rate problem sensor turns on.
    ack_rate_sla: float
    telemetry_mode: str
    # Seconds between two telemetry polls (pull and hybrid modes).
    poll_interval: float
    prediction: str
    # Hourly plug-in probabilities (fractions); None when the stored text is not
    # a valid profile (the static engine is then unused).
    prediction_profile: tuple[float, ...] | None
    prediction_lookback_days: int
    webhook_enabled: bool
    webhook_id: str | None
    # Send 0 kW to vehicles still holding a setpoint when its dispatch ends.
    release_at_end: bool
    # Seconds after the last ack at which a dispatch's delivery is measured.
    verify_window: float
    # How far measured power may be from a setpoint and still follow it.
    delivery_tolerance: DeliveryTolerance
    # Seconds a vehicle may be off its setpoint before "Not following" turns on.
    not_following_grace: float

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> FleetOptions:
        """Read the options (missing keys: defaults).

        Raises:
            InvalidValueError: a stored strategy or value is out of the engine's
                domain.
            ValueError: the stored fallback mode is unknown.
        """
        values = effective_options(options)
        try:
            profile: tuple[float, ...] | None = tuple(prediction_profile(values))
        except InvalidValueError:
            profile = None
        webhook_id = values.get(CONF_WEBHOOK_ID)
        return cls(
            settings=dispatch_settings(values),
            qos=int(values[CONF_QOS]),
            stale_timeout=float(values[CONF_STALE_TIMEOUT]),
            emission_factor=float(values[CONF_EMISSION_FACTOR]),
            ack_rate_sla=_fraction(values[CONF_ACK_RATE_SLA]),
            telemetry_mode=str(values[CONF_TELEMETRY_MODE]),
            poll_interval=float(values[CONF_POLL_INTERVAL]),
            prediction=str(values[CONF_PREDICTION]),
            prediction_profile=profile,
            prediction_lookback_days=int(values[CONF_PREDICTION_LOOKBACK_DAYS]),
            webhook_enabled=bool(values[CONF_WEBHOOK_ENABLED]),
            webhook_id=None if webhook_id is None else str(webhook_id),
            release_at_end=bool(values[CONF_RELEASE_AT_END]),
            verify_window=float(values[CONF_VERIFY_WINDOW]),
            delivery_tolerance=DeliveryTolerance(
                fraction=_fraction(values[CONF_DELIVERY_TOLERANCE_PCT]),
                kw=float(values[CONF_DELIVERY_TOLERANCE_KW]),
            ),
            not_following_grace=float(values[CONF_NOT_FOLLOWING_GRACE]),
        )

    @classmethod
    def from_entry(cls, entry: ConfigEntry[Any]) -> FleetOptions:
        """Read the options of a fleet's config entry (see from_options)."""
        return cls.from_options(entry.options)


def availability_prediction(
    options: FleetOptions, fleet: FleetState
) -> PredictionEngine | None:
    """The prediction engine the options ask for (None: off).

    The history engine answers with the static profile until it has learnt
    from the recorder (history.py).
    """
    if options.prediction not in (PREDICTION_STATIC, PREDICTION_HISTORY):
        return None
    tz = dt_util.get_default_time_zone()
    static: StaticProfile | None = None
    if options.prediction_profile is None:
        LOGGER.warning("Ignoring the availability profile: it is not valid")
    else:
        static = StaticProfile(list(options.prediction_profile), tz=tz, fleet=fleet)
    if options.prediction == PREDICTION_HISTORY:
        return HistoryPrediction(static, tz=tz, fleet=fleet)
    return static
