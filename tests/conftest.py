"""Shared fixtures for the integration tests."""

from __future__ import annotations

from collections.abc import Generator

import pytest

# Import our package first: otherwise Home Assistant mounts the test plugin's own
# `custom_components` namespace and cannot find `v2g`.
import custom_components.v2g  # noqa: F401


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations(
    enable_custom_integrations: None,
) -> Generator[None]:
    """Let Home Assistant load integrations from custom_components."""
    return
