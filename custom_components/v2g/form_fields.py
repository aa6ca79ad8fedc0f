"""Form building blocks shared by the flows: schemas, number fields and their ranges.

A number field's range is shown by its selector (the frontend marks a value outside
it) and checked by the flow step, which reports it on the field in the
integration's own words. The selector itself only converts the value to a number:
a ``NumberSelector`` would refuse an out-of-range value while the schema is
validated, before the step runs, with voluptuous's raw message at the top of the
dialog ("Value 150.0 is too large for dictionary value @ data[...]").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
import math
from typing import Any, Literal

from homeassistant.helpers.selector import (
    NumberSelector,
    NumberSelectorConfig,
    NumberSelectorMode,
)
import voluptuous as vol

# A form schema as Home Assistant's flow helpers (``section``,
# ``add_suggested_values_to_schema``) take it. Typed ``Any`` on purpose: Home
# Assistant 2026.11 validates with probatio, installed under the ``voluptuous``
# name, and types these helpers with probatio's ``Schema``, while mypy sees the real
# voluptuous package that is installed beside it; 2026.2 types them with
# voluptuous's. No class names both. At run time ``vol.Schema`` is the class Home
# Assistant validates with on every version.
type FormSchema = Any


def form_schema(fields: Mapping[Any, Any]) -> FormSchema:
    """Return the form schema of ``fields`` (markers to selectors or sections)."""
    return vol.Schema(fields)


class FormNumberSelector(NumberSelector):
    """A number selector whose min / max guide the UI; the flow step checks them."""

    def __call__(self, data: Any) -> Any:
        """Return ``data`` as a number, or unchanged when it is none (the step says)."""
        try:
            return vol.Coerce(float)(data)
        except vol.Invalid:
            return data


@dataclass(frozen=True, slots=True)
class NumberRange:
    """The values a number field accepts, and how the form offers them."""

    minimum: float | None
    maximum: float | None
    step: float | Literal["any"] = "any"
    unit: str | None = None
    # A value must be above the minimum, not equal to it.
    above_minimum: bool = False

    def selector(self) -> FormNumberSelector:
        """Return the box selector of this range (no bound where there is none)."""
        config = NumberSelectorConfig(mode=NumberSelectorMode.BOX, step=self.step)
        if self.minimum is not None:
            config["min"] = self.minimum
        if self.maximum is not None:
            config["max"] = self.maximum
        if self.unit is not None:
            config["unit_of_measurement"] = self.unit
        return FormNumberSelector(config)

    def check(self, value: Any) -> float | None:
        """Return ``value`` as a finite number in range, or None when it is not."""
        if isinstance(value, bool):
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(number):
            return None
        if self.minimum is not None and (
            number < self.minimum or (self.above_minimum and number == self.minimum)
        ):
            return None
        if self.maximum is not None and number > self.maximum:
            return None
        return number
