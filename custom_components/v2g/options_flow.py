"""Options flow for V2G Fleet Dispatch.

``OptionsFlowWithReload`` (no update listener): dispatch, safety, prediction,
telemetry, reporting and delivery verification settings, shown in sections but
stored flat in ``entry.options`` (see :func:`.options.default_options` and
docs/options.md). Number ranges are checked by the step, not the schema, so every
problem is reported at once, in the integration's words, on its section, which
opens (docs/options.md#form-errors).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Final

from homeassistant.components import webhook
from homeassistant.config_entries import ConfigFlowResult, OptionsFlowWithReload
from homeassistant.data_entry_flow import section
from homeassistant.helpers.selector import (
    BooleanSelector,
    Selector,
    SelectSelector,
    SelectSelectorConfig,
    SelectSelectorMode,
    TextSelector,
    TextSelectorConfig,
)
import voluptuous as vol

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
    DEFAULT_STRATEGIES,
    FALLBACK_MODES,
    PREDICTION_MODES,
    PREDICTION_PROFILE_HOURS,
    QOS_LEVELS,
    STRATEGIES,
    TELEMETRY_MODES,
    TELEMETRY_PUSH,
)
from .form_fields import FormSchema, NumberRange, form_schema
from .options import default_options, effective_options

# Option keys of the per-signal strategies, in signal order (strategy_FCR, ...).
STRATEGY_KEYS: Final = tuple(
    f"{CONF_STRATEGY_PREFIX}{sig}" for sig in DEFAULT_STRATEGIES
)

# Options form sections (options are stored flat: the section names are UI only).
SECTION_DISPATCH: Final = "dispatch"
SECTION_SAFETY: Final = "safety"
SECTION_PREDICTION: Final = "prediction"
SECTION_TELEMETRY: Final = "telemetry"
SECTION_REPORTING: Final = "reporting"
SECTION_DELIVERY: Final = "delivery"
# Read-only field of the reporting section: the path of the signal webhook.
FIELD_WEBHOOK_URL: Final = "webhook_url"
OPTION_SECTIONS: Final[dict[str, tuple[str, ...]]] = {
    SECTION_DISPATCH: (
        *STRATEGY_KEYS,
        CONF_FALLBACK,
        CONF_ACK_TIMEOUT,
        CONF_QOS,
        CONF_RELEASE_AT_END,
    ),
    SECTION_SAFETY: (CONF_MIN_SOC, CONF_SAFE_DISCHARGE_FLOOR, CONF_SOC_CONSTRAINTS),
    SECTION_PREDICTION: (
        CONF_PREDICTION,
        CONF_PREDICTION_PROFILE,
        CONF_PREDICTION_LOOKBACK_DAYS,
    ),
    SECTION_TELEMETRY: (CONF_TELEMETRY_MODE, CONF_POLL_INTERVAL, CONF_STALE_TIMEOUT),
    SECTION_REPORTING: (CONF_EMISSION_FACTOR, CONF_ACK_RATE_SLA, CONF_WEBHOOK_ENABLED),
    SECTION_DELIVERY: (
        CONF_VERIFY_WINDOW,
        CONF_DELIVERY_TOLERANCE_PCT,
        CONF_DELIVERY_TOLERANCE_KW,
        CONF_NOT_FOLLOWING_GRACE,
    ),
}


def parse_prediction_profile(text: str) -> list[float]:
    """Parse a static availability profile: 24 comma-separated percentages.

    Hour 0 first. A trailing ``%`` on a value is accepted. Raises ``ValueError``
    when the count is not 24 or a value is not a number between 0 and 100.
    """
    parts = [part.strip().removesuffix("%").strip() for part in text.split(",")]
    if len(parts) != PREDICTION_PROFILE_HOURS:
        raise ValueError(
            f"expected {PREDICTION_PROFILE_HOURS} values, got {len(parts)}"
        )
    values = [float(part) for part in parts]
    for value in values:
        if not 0.0 <= value <= 100.0:  # also rejects nan
            raise ValueError(f"{value} is not between 0 and 100")
    return values


def format_prediction_profile(values: list[float]) -> str:
    """Format profile values the way they are stored (``100,87.5,...``)."""
    return ",".join(f"{value:g}" for value in values)


def _select(options: tuple[str, ...], translation_key: str) -> SelectSelector:
    """Return a translated dropdown selector."""
    return SelectSelector(
        SelectSelectorConfig(
            options=list(options),
            translation_key=translation_key,
            mode=SelectSelectorMode.DROPDOWN,
        )
    )


# The range of every number option: the form shows it, the step checks it.
OPTION_RANGES: Final[dict[str, NumberRange]] = {
    CONF_ACK_TIMEOUT: NumberRange(0.5, 120, 0.1, "s"),
    CONF_MIN_SOC: NumberRange(0, 100, 1, "%"),
    CONF_SAFE_DISCHARGE_FLOOR: NumberRange(0, 100, 1, "%"),
    CONF_PREDICTION_LOOKBACK_DAYS: NumberRange(1, 365, 1, "d"),
    CONF_POLL_INTERVAL: NumberRange(1, 3600, 1, "s"),
    CONF_STALE_TIMEOUT: NumberRange(10, 86400, 1, "s"),
    CONF_EMISSION_FACTOR: NumberRange(0, None, 1, "g/kWh"),
    CONF_ACK_RATE_SLA: NumberRange(0, 100, 1, "%"),
    CONF_NOT_FOLLOWING_GRACE: NumberRange(0, 3600, 1, "s"),
    CONF_VERIFY_WINDOW: NumberRange(0, 600, 1, "s"),
    CONF_DELIVERY_TOLERANCE_PCT: NumberRange(0, 100, 1, "%"),
    CONF_DELIVERY_TOLERANCE_KW: NumberRange(0, 1000, 0.1, "kW"),
}
_SECTION_OF: Final = {
    key: name for name, keys in OPTION_SECTIONS.items() for key in keys
}


def _option_selectors() -> dict[str, Selector[Any]]:
    """Return the selector of every option key."""
    selectors: dict[str, Selector[Any]] = {
        key: _select(STRATEGIES, "strategy") for key in STRATEGY_KEYS
    }
    selectors.update(
        {key: number_range.selector() for key, number_range in OPTION_RANGES.items()}
    )
    selectors.update(
        {
            CONF_FALLBACK: _select(FALLBACK_MODES, "fallback"),
            CONF_QOS: _select(tuple(str(qos) for qos in QOS_LEVELS), "qos"),
            CONF_SOC_CONSTRAINTS: BooleanSelector(),
            CONF_RELEASE_AT_END: BooleanSelector(),
            CONF_PREDICTION: _select(PREDICTION_MODES, "prediction"),
            CONF_PREDICTION_PROFILE: TextSelector(
                TextSelectorConfig(autocomplete="off")
            ),
            CONF_TELEMETRY_MODE: _select(TELEMETRY_MODES, "telemetry_mode"),
            CONF_WEBHOOK_ENABLED: BooleanSelector(),
        }
    )
    return selectors


def _options_schema(
    current: Mapping[str, Any],
    webhook_path: str | None,
    open_sections: Collection[str] = (),
) -> FormSchema:
    """Return the options schema; defaults are the current (flat) options.

    ``webhook_path`` (where external systems POST signals) is shown read only in
    the reporting section when there is one. The dispatch section and the
    ``open_sections`` (those with an error) are shown open.
    """
    selectors = _option_selectors()
    sections: dict[str, dict[vol.Marker, Any]] = {
        name: {
            vol.Required(
                key,
                # Select selectors take strings (the QoS level).
                default=str(current[key]) if key == CONF_QOS else current[key],
            ): selectors[key]
            for key in keys
        }
        for name, keys in OPTION_SECTIONS.items()
    }
    if webhook_path is not None:
        # Shown, never stored: _validate_options keeps the option keys only.
        sections[SECTION_REPORTING][
            vol.Optional(
                FIELD_WEBHOOK_URL, description={"suggested_value": webhook_path}
            )
        ] = TextSelector(TextSelectorConfig(read_only=True))
    return form_schema(
        {
            vol.Required(name): section(
                form_schema(fields),
                {"collapsed": name != SECTION_DISPATCH and name not in open_sections},
            )
            for name, fields in sections.items()
        }
    )


def _validate_options(
    user_input: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, str]]:
    """Flatten, check and type the options form input; return (options, errors).

    Every problem is found at once. Errors are keyed by section (a field inside a
    section cannot show one): the problem's own code (``invalid_min_soc``, ...) when
    the section has one, ``invalid_<section>`` (its every rule) when it has several.
    """
    flat: dict[str, Any] = {}
    for name in OPTION_SECTIONS:
        flat.update(user_input[name])
    options = {key: flat[key] for key in default_options()}
    problems: dict[str, list[str]] = {name: [] for name in OPTION_SECTIONS}
    for key, number_range in OPTION_RANGES.items():
        if (value := number_range.check(options[key])) is None:
            problems[_SECTION_OF[key]].append(f"invalid_{key}")
        else:
            options[key] = value
    options[CONF_QOS] = int(options[CONF_QOS])
    if not problems[SECTION_PREDICTION]:
        options[CONF_PREDICTION_LOOKBACK_DAYS] = round(
            options[CONF_PREDICTION_LOOKBACK_DAYS]
        )
    options[CONF_SOC_CONSTRAINTS] = bool(options[CONF_SOC_CONSTRAINTS])
    options[CONF_RELEASE_AT_END] = bool(options[CONF_RELEASE_AT_END])
    options[CONF_WEBHOOK_ENABLED] = bool(options[CONF_WEBHOOK_ENABLED])
    try:
        profile = parse_prediction_profile(str(options[CONF_PREDICTION_PROFILE]))
    except ValueError:
        problems[SECTION_PREDICTION].append("invalid_profile")
    else:
        options[CONF_PREDICTION_PROFILE] = format_prediction_profile(profile)
    if (
        not problems[SECTION_TELEMETRY]
        and options[CONF_TELEMETRY_MODE] != TELEMETRY_PUSH
        and options[CONF_STALE_TIMEOUT] <= options[CONF_POLL_INTERVAL]
    ):
        problems[SECTION_TELEMETRY].append("stale_timeout_too_short")
    errors = {
        name: codes[0] if len(codes) == 1 else f"invalid_{name}"
        for name, codes in problems.items()
        if codes
    }
    return options, errors


class V2GOptionsFlow(OptionsFlowWithReload):
    """Fleet options; saving them reloads the entry (no update listener)."""

    async def async_step_init(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Show and store the options."""
        errors: dict[str, str] = {}
        if user_input is not None:
            options, errors = _validate_options(user_input)
            if not errors:
                webhook_id = self.config_entry.options.get(CONF_WEBHOOK_ID)
                if webhook_id is None and options[CONF_WEBHOOK_ENABLED]:
                    webhook_id = webhook.async_generate_id()
                if webhook_id is not None:
                    # Kept when the webhook is disabled: re-enabling it keeps the URL.
                    options[CONF_WEBHOOK_ID] = webhook_id
                return self.async_create_entry(data=options)
        current = effective_options(self.config_entry.options)
        webhook_id = current.get(CONF_WEBHOOK_ID)
        # The id exists once the webhook was saved enabled; its path is shown while
        # the saved options keep it enabled.
        webhook_path = (
            webhook.async_generate_path(webhook_id)
            if current[CONF_WEBHOOK_ENABLED] and webhook_id
            else None
        )
        return self.async_show_form(
            step_id="init",
            data_schema=self.add_suggested_values_to_schema(
                _options_schema(current, webhook_path, errors), user_input
            ),
            errors=errors,
        )
