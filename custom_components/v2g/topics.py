"""MQTT topic templates and vehicle ids: validation shared by the config flows.

A topic template is an MQTT topic with at most one placeholder level
(``{vehicle_id}`` or ``{gateway_id}``, see docs/protocol.md).
"""

from __future__ import annotations

from typing import Final

from homeassistant.components import mqtt
import voluptuous as vol

from .const import (
    GATEWAY_ID_PLACEHOLDER,
    GATEWAY_TOPIC_KEYS,
    MAX_VEHICLE_ID_LENGTH,
    VEHICLE_ID_PLACEHOLDER,
    VEHICLE_TOPIC_KEYS,
)

MAX_TOPIC_BYTES: Final = 65535


def command_topic_base(command_topic: str) -> str:
    """Return the command topic base: the ``{vehicle_id}`` level replaced by ``+``."""
    return "/".join(
        "+" if level == VEHICLE_ID_PLACEHOLDER else level
        for level in command_topic.split("/")
    )


def topic_template_error(template: str, placeholder: str | None) -> str | None:
    """Return the error code of a topic template, or None when it is valid.

    ``placeholder`` is the one placeholder the template must contain as exactly one
    whole topic level (``{vehicle_id}`` or ``{gateway_id}``), or None for a plain
    topic, which must contain no placeholder at all.
    """
    try:
        template.encode("utf-8")
    except UnicodeEncodeError:
        return "invalid_topic"
    if not template or template.startswith("$"):
        return "invalid_topic"
    if "+" in template or "#" in template:
        return "wildcard_not_allowed"
    levels = template.split("/")
    if "" in levels:
        return "empty_topic_level"
    if (code := _placeholder_error(levels, placeholder)) is not None:
        return code
    # The longest id a vehicle or gateway may have must still fit.
    concrete = (
        template
        if placeholder is None
        else template.replace(placeholder, "x" * MAX_VEHICLE_ID_LENGTH)
    )
    if len(concrete.encode("utf-8")) > MAX_TOPIC_BYTES:
        return "topic_too_long"
    try:
        mqtt.valid_publish_topic(concrete)
    except vol.Invalid:  # control characters, non-characters
        return "invalid_topic"
    return None


def _placeholder_error(levels: list[str], placeholder: str | None) -> str | None:
    """Check the placeholder levels of a topic template (see topic_template_error)."""
    if placeholder is None:
        if any("{" in level or "}" in level for level in levels):
            return "placeholder_not_allowed"
        return None
    if levels.count(placeholder) != 1:
        if placeholder == VEHICLE_ID_PLACEHOLDER:
            return "vehicle_placeholder_required"
        return "gateway_placeholder_required"
    if any("{" in level or "}" in level for level in levels if level != placeholder):
        return "unknown_placeholder"
    return None


def topic_placeholder(key: str) -> str | None:
    """Return the placeholder the template of ``key`` must contain."""
    if key in VEHICLE_TOPIC_KEYS:
        return VEHICLE_ID_PLACEHOLDER
    if key in GATEWAY_TOPIC_KEYS:
        return GATEWAY_ID_PLACEHOLDER
    return None


def vehicle_id_error(vehicle_id: str) -> str | None:
    """Return the error code of a vehicle id (one MQTT topic level), or None."""
    if (
        not vehicle_id
        or len(vehicle_id) > MAX_VEHICLE_ID_LENGTH
        or any(char in vehicle_id for char in "/+#{}")
    ):
        return "invalid_vehicle_id"
    try:
        mqtt.valid_publish_topic(vehicle_id)
    except vol.Invalid:  # control characters, non-characters, invalid UTF-8
        return "invalid_vehicle_id"
    return None
