"""Probe only: the test plugin's ``snapshot`` fixture, declared at conftest level.

With some test-plugin releases syrupy's own ``snapshot`` fixture is registered after
the plugin's override and wins; a root ``conftest.py`` always wins over both.
``scripts/compat-latest`` copies this file to the root of its copy of the project.
"""

from __future__ import annotations

import pytest
from pytest_homeassistant_custom_component.syrupy import HomeAssistantSnapshotExtension
from syrupy.assertion import SnapshotAssertion


@pytest.fixture
def snapshot(snapshot: SnapshotAssertion) -> SnapshotAssertion:
    """Snapshots in Home Assistant's format."""
    return snapshot.use_extension(HomeAssistantSnapshotExtension)
