"""Entity snapshots that hold on every supported Home Assistant (2026.2 to 2026.11).

Home Assistant 2026.11 writes some entity registry fields differently, with no change
of ours: ``aliases`` became a list (``None`` standing for the entity's name), a new
``compat_name`` field appeared, and capability and state attribute keys are enum
members instead of strings. Those two fields are left out and enum keys are written
as their value, so one snapshot file holds on both versions.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

from syrupy.assertion import SnapshotAssertion
from syrupy.filters import props
from syrupy.types import PropertyPath, SerializableData

VERSION_SPECIFIC_FIELDS: Final = ("aliases", "compat_name")


def _enum_keys_as_values(
    *, data: SerializableData, path: PropertyPath
) -> SerializableData:
    """A mapping keyed by enum members, keyed by their values instead.

    Of the same class (state attributes are a ``ReadOnlyDict``).
    """
    del path
    if isinstance(data, dict) and any(isinstance(key, Enum) for key in data):
        return type(data)(
            (key.value if isinstance(key, Enum) else key, value)
            for key, value in data.items()
        )
    return data


def version_neutral(snapshot: SnapshotAssertion) -> SnapshotAssertion:
    """``snapshot`` without the fields and formats that differ between versions."""
    return snapshot.with_defaults(
        exclude=props(*VERSION_SPECIFIC_FIELDS), matcher=_enum_keys_as_values
    )
