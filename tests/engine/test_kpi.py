"""Energy and CO2 key figures (seed §5.5)."""

from __future__ import annotations

import pytest

from custom_components.v2g.engine import InvalidValueError, co2_avoided_g, energy_kwh


def test_energy_split_by_sign() -> None:
    """Go eco test: 5 kW for 1 h is 5 kWh injected."""
    assert energy_kwh(5.0, 3600) == (5.0, 0.0)
    assert energy_kwh(-7.0, 1800) == (0.0, 3.5)
    assert energy_kwh(0.0, 60) == (0.0, 0.0)


def test_co2_avoided() -> None:
    """Go: CO2Avoided(10) of 4 kWh = 40."""
    assert co2_avoided_g(4.0, 10.0) == 40.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: energy_kwh(float("nan"), 1),
        lambda: energy_kwh(1, -1),
        lambda: co2_avoided_g(-1, 1),
        lambda: co2_avoided_g(1, float("inf")),
    ],
)
def test_invalid_inputs(call: object) -> None:
    with pytest.raises(InvalidValueError):
        call()  # type: ignore[operator]
