"""What a fleet or a vehicle added in a flow would collide with.

* Topics (docs/options.md#fleets-cannot-collide): two fleets whose MQTT topics
  overlap would read the same vehicles' messages (ack, discovery answer, state,
  telemetry answer, gateway ack: every car twice, acks of one fleet's orders at the
  other), send orders to each other's vehicles (command, gateway command) or read
  each other's orders and requests as answers. A topic template is compared as the
  filter it is subscribed or published with, its placeholder level being ``+``:
  ``vehicle/{vehicle_id}/ack`` overlaps ``vehicle/car7/{vehicle_id}`` (both match
  ``vehicle/car7/ack``), not ``vehicle/{vehicle_id}`` (one level less).
* Vehicle ids (docs/options.md#vehicle-subentries): an id another subentry has, or
  one the fleet already discovered over MQTT (its reported power and battery would
  silently be replaced by what was typed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
import re
from typing import Any, Final

from homeassistant.config_entries import SOURCE_IGNORE, ConfigEntry
from homeassistant.const import CONF_NAME
from homeassistant.core import HomeAssistant
from homeassistant.util import slugify

from .const import (
    CONF_DISCOVERY_TOPIC,
    CONF_TELEMETRY_REQUEST_TOPIC,
    CONF_VEHICLE_ID,
    DEFAULT_NAME,
    DEFAULT_TOPICS,
    DOMAIN,
)
from .engine import FleetState

# The topics of its discovery and poll requests. Two fleets may share these: a
# request of one only makes the other's vehicles answer on their own answer
# topics, which the other fleet alone reads. They must not overlap the other
# topics of another fleet (a "hello" read as a vehicle's state).
REQUEST_TOPIC_KEYS: Final = (CONF_DISCOVERY_TOPIC, CONF_TELEMETRY_REQUEST_TOPIC)

_PLACEHOLDER_LEVEL: Final = re.compile(r"^\{[a-z_]+\}$")
# How many numbered defaults ("V2G fleet 2", ...) are tried for a new fleet.
_MAX_DEFAULT_NUMBER: Final = 100


def topic_filter(template: str) -> str:
    """Return the MQTT filter of a topic template: its placeholder level as ``+``."""
    return "/".join(
        "+" if _PLACEHOLDER_LEVEL.match(level) else level
        for level in template.split("/")
    )


def filters_overlap(first: str, second: str) -> bool:
    """Return True when some topic matches both MQTT filters (``+`` and ``#`` aware)."""
    first_levels, second_levels = first.split("/"), second.split("/")
    for mine, theirs in zip(first_levels, second_levels, strict=False):
        if "#" in (mine, theirs):
            return True  # every level before it matched
        if mine != theirs and "+" not in (mine, theirs):
            return False
    if len(first_levels) == len(second_levels):
        return True
    # "a/#" also matches "a": the longer one may end in "#" one level further.
    longer = max(first_levels, second_levels, key=len)
    return len(longer) == min(len(first_levels), len(second_levels)) + 1 and (
        longer[-1] == "#"
    )


@dataclass(frozen=True, slots=True)
class TopicCollision:
    """A topic of the fleet being set up that overlaps a topic of another fleet."""

    key: str
    topic: str
    other_fleet: str
    other_topic: str


def fleet_topics(entry: ConfigEntry[Any]) -> dict[str, str]:
    """Return the topic templates of a fleet entry (defaults where it has none)."""
    return {
        **DEFAULT_TOPICS,
        **{k: v for k, v in entry.data.items() if k in DEFAULT_TOPICS},
    }


def _other_fleets(
    hass: HomeAssistant, exclude_entry_id: str | None
) -> list[ConfigEntry[Any]]:
    return [
        entry
        for entry in hass.config_entries.async_entries(DOMAIN)
        if entry.entry_id != exclude_entry_id and entry.source != SOURCE_IGNORE
    ]


def topic_collisions(
    hass: HomeAssistant,
    topics: Mapping[str, str],
    *,
    exclude_entry_id: str | None = None,
) -> list[TopicCollision]:
    """Return the first collision of each topic of ``topics``, in their order.

    ``topics`` are a fleet's templates (key -> template, in form order); the fleet
    ``exclude_entry_id`` (the one being reconfigured) is not compared with itself.
    Every pair of topics is compared but two request topics.
    """
    others = [
        (entry.title, fleet_topics(entry))
        for entry in _other_fleets(hass, exclude_entry_id)
    ]
    collisions: list[TopicCollision] = []
    for key, topic in topics.items():
        mine = topic_filter(topic)
        collision = next(
            (
                TopicCollision(key, topic, title, their_topic)
                for title, their_topics in others
                for other_key, their_topic in their_topics.items()
                if not (key in REQUEST_TOPIC_KEYS and other_key in REQUEST_TOPIC_KEYS)
                and filters_overlap(mine, topic_filter(their_topic))
            ),
            None,
        )
        if collision is not None:
            collisions.append(collision)
    return collisions


def new_fleet_defaults(hass: HomeAssistant) -> dict[str, str]:
    """Return the name and topics a new fleet's form proposes.

    The first fleet gets the protocol's defaults. Once they are taken, a numbered
    name ("V2G fleet 2") and the default topics under a first level made of it
    (``v2g_fleet_2/vehicle/{vehicle_id}/command``), the first number whose name and
    topics no fleet uses yet.
    """
    titles = {entry.title for entry in _other_fleets(hass, None)}
    defaults = {CONF_NAME: DEFAULT_NAME, **DEFAULT_TOPICS}
    if DEFAULT_NAME not in titles and not topic_collisions(hass, DEFAULT_TOPICS):
        return defaults
    for number in range(2, _MAX_DEFAULT_NUMBER + 1):
        name = f"{DEFAULT_NAME} {number}"
        prefix = slugify(name)
        topics = {key: f"{prefix}/{topic}" for key, topic in DEFAULT_TOPICS.items()}
        defaults = {CONF_NAME: name, **topics}
        if name not in titles and not topic_collisions(hass, topics):
            break
    return defaults


def vehicle_id_conflict(
    entry: ConfigEntry[Any], vehicle_id: str, *, editing_subentry_id: str | None
) -> str | None:
    """Return why a hand-added vehicle cannot have ``vehicle_id``, or None.

    ``vehicle_exists``: another subentry of the fleet (hand-added or controlled)
    has it. ``vehicle_discovered``: the running fleet knows a vehicle with this id
    from MQTT (a discovery answer or telemetry, now or before a restart).
    ``editing_subentry_id`` is the subentry being reconfigured, which keeps its id.
    """
    for subentry_id, subentry in entry.subentries.items():
        known = subentry.data.get(CONF_VEHICLE_ID) or subentry.unique_id
        if subentry_id == editing_subentry_id or not isinstance(known, str):
            continue
        if known == vehicle_id:
            return "vehicle_exists"
    if editing_subentry_id is not None and (
        (editing := entry.subentries.get(editing_subentry_id)) is not None
        and editing.data.get(CONF_VEHICLE_ID) == vehicle_id
    ):
        return None  # its own id: the fleet knows it because of this subentry
    fleet = getattr(getattr(entry, "runtime_data", None), "fleet", None)
    if isinstance(fleet, FleetState) and vehicle_id in fleet.vehicles:
        return "vehicle_discovered"
    return None
