"""Property-based fuzzing of every topic the integration subscribes to (issue 6).

For each topic kind — per-vehicle acks, gateway acks, discovery answers, the state
(telemetry push) topic and telemetry poll answers — hypothesis generates messages:
random bytes, random JSON of the wrong shape, the right shape with wrong types,
NaN / Infinity / 1e400 numbers, huge and deeply nested payloads, unknown command
ids, genuine pending command ids on the wrong vehicle's (or gateway's) topic, and
wrong topic levels. They are fired at Home Assistant's MQTT client (PHCC) while a
dispatch is waiting for its acks.

Properties, checked after every message:

* nothing raises out of a callback (PHCC's ``fail_on_log_exception`` stays on)
  and nothing reaches the coordinator's last-resort guard (no ``*_error`` count):
  every message is *classified*;
* every delivered message is accounted exactly once: either dropped and counted
  (``dropped_input`` in diagnostics) or handled (an ack disposition, a fleet
  update); input that cannot be valid (not JSON, NaN, oversize, …) is dropped;
* no fuzzed ack acknowledges or rejects the pending orders.

Afterwards the genuine acks complete the waiting dispatch exactly, the diagnostics
counters add up to what was sent, and a new dispatch completes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
import json
import math
from typing import Any
from unittest.mock import patch

from homeassistant.core import HomeAssistant
from homeassistant.helpers.json import json_dumps
from homeassistant.util import dt as dt_util
from hypothesis import HealthCheck, example, given, settings, strategies as st
from paho.mqtt.client import topic_matches_sub
import pytest
from pytest_homeassistant_custom_component.common import async_fire_mqtt_message
from pytest_homeassistant_custom_component.components.diagnostics import (
    get_diagnostics_for_config_entry,
)
from pytest_homeassistant_custom_component.typing import (
    ClientSessionGenerator,
    MqttMockHAClient,
)

from custom_components.v2g.const import (
    CONF_ACK_TIMEOUT,
    CONF_FALLBACK,
    CONF_TELEMETRY_MODE,
    DOMAIN,
    MAX_VEHICLE_PAYLOAD_BYTES,
)
from custom_components.v2g.coordinator import V2GFleetCoordinator
from custom_components.v2g.diagnostics import vehicle_state
from custom_components.v2g.engine import (
    MAX_GATEWAY_PAYLOAD_BYTES,
    AckDisposition,
    SafetySettings,
    run_steps,
)
from custom_components.v2g.engine.snapshot import SnapshotBuilder, SnapshotInputs

from .helpers import ENTRY_ID, FleetResponder, async_announce, async_setup_fleet

MAX_EXAMPLES = 150
FLEET = (("v1", {}), ("v2", {}), ("g1", {"gateway": "gw1"}))
GATEWAY_OF = {"g1": "gw1"}

SUBSCRIPTIONS = {
    "ack": "vehicle/+/ack",
    "gateway_ack": "v2g/gateway/+/acks",
    "discovery": "v2g/fleet/response/+",
    "telemetry": "v2g/vehicle/state/+",
    "telemetry_response": "v2g/telemetry/response/+",
}
# The coordinator counts telemetry answers and pushes under the same kind.
COUNTER_KIND = {**{k: k for k in SUBSCRIPTIONS}, "telemetry_response": "telemetry"}
TOPIC_FORMATS = {
    "ack": "vehicle/{}/ack",
    "gateway_ack": "v2g/gateway/{}/acks",
    "discovery": "v2g/fleet/response/{}",
    "telemetry": "v2g/vehicle/state/{}",
    "telemetry_response": "v2g/telemetry/response/{}",
}
DISPOSITIONS = [d.value for d in AckDisposition]


@dataclass(frozen=True)
class Message:
    """One fuzzed message and what must happen to it."""

    topic: str
    payload: bytes
    must_drop: bool = False  # can never be valid: has to be dropped and counted


# --- building blocks ----------------------------------------------------------------

# A topic level: MQTT forbids wildcards, "/" (another level) and NUL in it; UTF-8
# needs no surrogates. Empty and overlong levels are allowed: they are wrong input.
level_text = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs",), blacklist_characters="/+#\x00"
    ),
    max_size=12,
)
vehicle_level = st.one_of(
    st.sampled_from(["v1", "v2", "g1", "ghost", "", "x" * 200, "a b", "ü", "$SYS"]),
    level_text,
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=10), inner, max_size=4),
    ),
    max_leaves=12,
)

ACK_KEYS = ["command_id", "status", "reason", "applied_power_kw", "vehicle_id"]
VEHICLE_KEYS = [
    "ID",
    "id",
    "vehicle_id",
    "SoC",
    "soc",
    "IsV2G",
    "MaxPower",
    "max_power_kw",
    "BatteryKWh",
    "Available",
    "Charging",
    "Priority",
    "Departure",
    "MinSoC",
    "segment",
    "AvailabilityProb",
    "DegradationFactor",
    "ChargeRate",
    "gateway",
]
VALID_ACK_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from(["accepted", "rejected", "Accepted", "REJECTED"]),
        "reason": st.text(max_size=300),
        "applied_power_kw": st.floats(allow_nan=False, allow_infinity=False),
    },
)
TELEMETRY_KEYS = ["vehicle_id", "soc", "available", "charging", "power_kw", "ts"]
NUMERIC_KEYS = {
    "ack": ["applied_power_kw"],
    "gateway_ack": ["applied_power_kw"],
    "discovery": ["SoC", "MaxPower", "BatteryKWh", "MinSoC", "AvailabilityProb"],
    "telemetry": ["soc", "power_kw", "ts"],
}
NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]
# Literal NaN / Infinity are not JSON: refused whatever key holds them.
NOT_JSON = {"NaN", "Infinity", "-Infinity"}


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _plausible(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the kind's own keys, each holding any JSON value."""
    return st.fixed_dictionaries({}, optional=dict.fromkeys(keys, json_values))


def _oversize(limit: int) -> bytes:
    return b'{"command_id": "' + b"x" * limit + b'"}'


def _invalid_json(payload: bytes) -> bool:
    """Independent oracle: would a strict JSON parser refuse these bytes?"""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return True

    def refuse(name: str) -> Any:
        raise ValueError(name)

    try:
        json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError):
        return True
    return False


@st.composite
def generic_payloads(draw: st.DrawFn, kind: str) -> tuple[bytes, bool]:
    """Payloads every kind must survive: (payload, must be dropped)."""
    limit = (
        MAX_GATEWAY_PAYLOAD_BYTES
        if kind == "gateway_ack"
        else MAX_VEHICLE_PAYLOAD_BYTES
    )
    choice = draw(st.integers(min_value=0, max_value=5))
    if choice == 0:
        payload = draw(st.binary(max_size=200))
        return payload, _invalid_json(payload)
    if choice == 1:
        payload = _json(draw(json_values))
        return payload, False
    if choice == 2:
        # Huge, deeply nested, or an integer with too many digits.
        payload = draw(
            st.sampled_from(
                [
                    _oversize(limit),
                    b"[" * 5000 + b"]" * 5000,
                    b'{"a": ' * 3000 + b"1" + b"}" * 3000,
                    b"1" * 5000,
                ]
            )
        )
        return payload, True
    keys = {
        "ack": ACK_KEYS,
        "gateway_ack": ACK_KEYS,
        "discovery": VEHICLE_KEYS,
        "telemetry": TELEMETRY_KEYS,
    }[kind]
    obj = draw(_plausible(keys))
    if choice == 3:
        return _json(obj), False
    # A non-finite number in a numeric field (or an unknown one).
    key = draw(st.sampled_from([*NUMERIC_KEYS[kind], "unknown_key"]))
    token = draw(st.sampled_from(NON_FINITE))
    obj.pop(key, None)
    body = json.dumps(obj)
    inner = body[1:-1]
    text = "{" + (inner + ", " if inner else "") + f'"{key}": {token}' + "}"
    if kind == "gateway_ack":
        text = '{"acks": [' + text + "]}"
    must_drop = token in NOT_JSON or (key != "unknown_key" and kind != "gateway_ack")
    return text.encode(), must_drop


# --- per-kind strategies ------------------------------------------------------------


def _topic(kind: str, level: str) -> str:
    return TOPIC_FORMATS[kind].format(level)


def _wrong_topics(kind: str) -> st.SearchStrategy[str]:
    """Topics with missing, extra or empty levels (most are not even delivered)."""
    base = TOPIC_FORMATS[kind]
    return st.sampled_from(
        [
            base.format(""),
            base.format("v1/extra"),
            base.replace("/{}", ""),
            base.format("v1") + "/",
            "/" + base.format("v1"),
            base.upper().format("v1"),
        ]
    )


def ack_messages(pending: dict[str, str]) -> st.SearchStrategy[Message]:
    """Per-vehicle acks: generic junk, unknown ids, genuine ids on wrong topics."""

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        choice = draw(st.integers(min_value=0, max_value=3))
        if choice == 0:
            payload, must_drop = draw(generic_payloads("ack"))
            return Message(_topic("ack", draw(vehicle_level)), payload, must_drop)
        if choice == 1:
            return Message(draw(_wrong_topics("ack")), draw(st.binary(max_size=50)))
        command_id = (
            draw(st.text(min_size=1, max_size=40))
            if choice == 2
            else draw(st.sampled_from(sorted(pending)))
        )
        owner = pending.get(command_id)
        level = draw(vehicle_level.filter(lambda v: v != owner))
        extra = draw(st.one_of(_plausible(ACK_KEYS[1:4]), VALID_ACK_FIELDS))
        payload = _json({"command_id": command_id, **extra})
        return Message(_topic("ack", level), payload)

    return build()


def gateway_messages(pending: dict[str, str]) -> st.SearchStrategy[Message]:
    """Gateway acks: junk envelopes, junk items, pending ids via the wrong route."""

    @st.composite
    def item(draw: st.DrawFn, gateway: str) -> Any:
        if draw(st.booleans()):
            return draw(json_values)
        command_id = draw(
            st.one_of(st.sampled_from(sorted(pending)), st.text(max_size=40))
        )
        owner = pending.get(command_id)
        vehicle = draw(vehicle_level)
        # Never the genuine combination: the order's vehicle through its gateway.
        if owner is not None and vehicle == owner and GATEWAY_OF.get(owner) == gateway:
            vehicle = "v2" if owner != "v2" else "v1"
        return {"command_id": command_id, "vehicle_id": vehicle}

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        choice = draw(st.integers(min_value=0, max_value=2))
        gateway = draw(st.one_of(st.sampled_from(["gw1", "gw2"]), vehicle_level))
        if choice == 0:
            payload, must_drop = draw(generic_payloads("gateway_ack"))
            return Message(_topic("gateway_ack", gateway), payload, must_drop)
        if choice == 1:
            return Message(
                draw(_wrong_topics("gateway_ack")), draw(st.binary(max_size=50))
            )
        items = draw(st.lists(item(gateway), max_size=6))
        return Message(_topic("gateway_ack", gateway), _json({"acks": items}))

    return build()


def _finite(low: float, high: float) -> st.SearchStrategy[float]:
    """Floats in range, biased towards the extremes (0, tiny, huge)."""
    return st.one_of(
        st.floats(min_value=low, max_value=high),
        st.sampled_from(
            [v for v in (0.0, 1e-300, 1.0, 1e300, 1.7e308) if low <= v <= high]
        ),
    )


# In-range vehicle fields with extreme values: accepted, then dispatched to.
VEHICLE_FIELDS = {
    "SoC": _finite(0.0, 1.0),
    "IsV2G": st.booleans(),
    "MaxPower": _finite(0.0, 1.7e308),
    "BatteryKWh": _finite(1e-300, 1.7e308),
    "Available": st.booleans(),
    "Charging": st.booleans(),
    "Priority": st.booleans(),
    "MinSoC": _finite(0.0, 1.0),
    "Departure": st.one_of(
        st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
        st.sampled_from(
            [
                "0001-01-01T00:00:00Z",
                "0001-01-01T00:00:00+14:00",
                "9999-12-31T23:59:59-14:00",
                "9999-12-31T23:59:59+00:00",
                "",
            ]
        ),
    ),
    "segment": st.sampled_from(["commuter", "opportunistic_charger", "", "other"]),
    "AvailabilityProb": _finite(0.0, 1.0),
    "DegradationFactor": _finite(0.0, 1.0),
    "ChargeRate": _finite(0.0, 1.7e308),
    "gateway": st.sampled_from(["gw1", "gw2", ""]),
}
TELEMETRY_FIELDS = {
    "soc": _finite(0.0, 1.0),
    "available": st.booleans(),
    "charging": st.booleans(),
    "power_kw": _finite(-1.7e308, 1.7e308),
    "ts": _finite(0.0, 9.9e10),
}


def fleet_messages(kind: str) -> st.SearchStrategy[Message]:
    """Discovery answers or telemetry (push or poll answer)."""
    payload_kind = "discovery" if kind == "discovery" else "telemetry"
    fields = VEHICLE_FIELDS if kind == "discovery" else TELEMETRY_FIELDS
    id_key = "ID" if kind == "discovery" else "vehicle_id"

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        choice = draw(st.integers(min_value=0, max_value=3))
        if choice == 0:
            payload, must_drop = draw(generic_payloads(payload_kind))
            return Message(_topic(kind, draw(vehicle_level)), payload, must_drop)
        if choice == 1:
            return Message(draw(_wrong_topics(kind)), draw(st.binary(max_size=50)))
        # In range (most are accepted) with extreme values, so the fleet changes.
        level = draw(st.sampled_from(["v1", "v2", "g1", "new1", "new2"]))
        obj: dict[str, Any] = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    **fields,
                    id_key: st.sampled_from([level, level, "v1", "new1"]),
                },
            )
        )
        return Message(_topic(kind, level), _json(obj))

    return build()


# Always tried (besides the random examples): inputs that once broke something.
EXPLICIT_EXAMPLES: dict[str, list[Message]] = {
    # A departure with no UTC equivalent (year 10000 in UTC).
    "discovery": [
        Message(
            "v2g/fleet/response/v1",
            _json(
                {"ID": "v1", "Departure": "9999-12-31T23:59:59-14:00", "MinSoC": 0.5}
            ),
        )
    ],
    "telemetry": [Message("v2g/vehicle/state/v1", _json({"ts": 9.9e10, "soc": 1.0}))],
}


# --- the harness ----------------------------------------------------------------------


class Accounting:
    """Snapshots of every counter a message can move."""

    def __init__(self, coordinator: V2GFleetCoordinator) -> None:
        self.coordinator = coordinator
        self.fleet_updates = 0
        fleet = coordinator.fleet
        upsert, apply_telemetry = fleet.upsert, fleet.apply_telemetry

        def counting_upsert(*args: Any, **kwargs: Any) -> Any:
            self.fleet_updates += 1
            return upsert(*args, **kwargs)

        def counting_telemetry(*args: Any, **kwargs: Any) -> Any:
            self.fleet_updates += 1
            return apply_telemetry(*args, **kwargs)

        self._patches = [
            patch.object(fleet, "upsert", counting_upsert),
            patch.object(fleet, "apply_telemetry", counting_telemetry),
        ]
        for item in self._patches:
            item.start()

    def stop(self) -> None:
        for item in self._patches:
            item.stop()

    def snapshot(self) -> tuple[Counter[str], Counter[str], int]:
        return (
            Counter(self.coordinator.input_log.counters),
            Counter(self.coordinator.engine.tracker.counters),
            self.fleet_updates,
        )


def _delivered(kind: str, topic: str) -> bool:
    return topic_matches_sub(SUBSCRIPTIONS[kind], topic)


def _check(
    kind: str,
    message: Message,
    before: tuple[Counter[str], Counter[str], int],
    after: tuple[Counter[str], Counter[str], int],
) -> str:
    """Assert the message was accounted once; return how ("dropped", …)."""
    dropped_before, tracker_before, fleet_before = before
    dropped_after, tracker_after, fleet_after = after
    assert not [key for key in dropped_after if key.endswith("_error")], (
        "a message reached the last-resort guard",
        message,
        dropped_after,
    )
    dropped = (dropped_after - dropped_before).total()
    tracker = tracker_after - tracker_before
    fleet = fleet_after - fleet_before
    # Fuzz never acknowledges or rejects the pending orders.
    assert tracker["accepted"] == 0, message
    assert tracker["rejected"] == 0, message
    counter_kind = COUNTER_KIND[kind]
    assert all(
        key.startswith(f"{counter_kind}_") for key in (dropped_after - dropped_before)
    ), (message, dropped_after - dropped_before)
    if not _delivered(kind, message.topic):
        assert (dropped, tracker.total(), fleet) == (0, 0, 0), message
        return "not_delivered"
    if message.must_drop:
        assert dropped == 1, message
    if kind == "ack":
        handled = sum(tracker[d] for d in DISPOSITIONS)
        assert dropped + handled == 1, (message, dropped, tracker)
        assert fleet == 0
        return "dropped" if dropped else "handled"
    if kind == "gateway_ack":
        assert dropped in (0, 1), message
        if dropped:
            return "dropped"
        envelope = json.loads(message.payload)
        items = sum(tracker[d] for d in DISPOSITIONS) + tracker["invalid_items"]
        assert items == len(envelope["acks"]), (message, tracker)
        return "handled"
    assert dropped + fleet == 1, (message, dropped, fleet)
    assert tracker.total() == 0
    return "dropped" if dropped else "handled"


def _run_hypothesis(
    kind: str,
    strategy: st.SearchStrategy[Message],
    fire_one: Callable[[Message], None],
) -> None:
    """Run ``fire_one`` on the explicit examples of ``kind`` and random ones."""
    fire = given(message=strategy)(fire_one)
    for explicit in EXPLICIT_EXAMPLES.get(kind, ()):
        fire = example(message=explicit)(fire)
    settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )(fire)()


def _snapshot_inputs() -> SnapshotInputs:
    return SnapshotInputs(
        now=dt_util.utcnow(),
        stale=set(),
        connected=True,
        safety=SafetySettings(),
        ack_rate_sla=0.9,
        emission_factor=50.0,
        soc_known=set(),
        subentry_ids={},
        prediction=None,
    )


async def _dispatch_waiting(
    hass: HomeAssistant, fleet_mqtt: MqttMockHAClient
) -> tuple[asyncio.Task[Any], FleetResponder]:
    """Start a dispatch whose vehicles do not answer (yet)."""
    responder = FleetResponder(hass, fleet_mqtt, default="ignore")
    coordinator: V2GFleetCoordinator = hass.config_entries.async_get_entry(
        ENTRY_ID
    ).runtime_data
    # Not a tracked hass task: async_block_till_done must not wait for it.
    task = asyncio.create_task(
        coordinator.dispatcher.async_dispatch("aFRR", 9.0, 900.0, strategy="equal")
    )
    # Pending entries exist before the publish; wait until the orders are out.
    for _ in range(200):
        if len(responder.orders) == len(FLEET):
            break
        await asyncio.sleep(0.01)
    assert len(responder.orders) == len(FLEET)
    assert coordinator.engine.tracker.pending_count == len(FLEET)
    return task, responder


@pytest.mark.parametrize("kind", list(SUBSCRIPTIONS))
async def test_fuzz_subscribed_topic(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client: ClientSessionGenerator,
    kind: str,
) -> None:
    # Hybrid telemetry also subscribes to the poll answers; a long ack timeout
    # keeps the dispatch waiting for the whole run; no fallback round.
    entry = await async_setup_fleet(
        hass,
        options={
            CONF_ACK_TIMEOUT: 600,
            CONF_FALLBACK: "none",
            CONF_TELEMETRY_MODE: "hybrid",
        },
    )
    await async_announce(hass, *FLEET)
    coordinator: V2GFleetCoordinator = entry.runtime_data
    task, responder = await _dispatch_waiting(hass, fleet_mqtt)
    pending = {o["command_id"]: o["vehicle_id"] for o in responder.orders}

    strategies: dict[str, Callable[[], st.SearchStrategy[Message]]] = {
        "ack": lambda: ack_messages(pending),
        "gateway_ack": lambda: gateway_messages(pending),
        "discovery": lambda: fleet_messages("discovery"),
        "telemetry": lambda: fleet_messages("telemetry"),
        "telemetry_response": lambda: fleet_messages("telemetry_response"),
    }
    accounting = Accounting(coordinator)
    outcomes: Counter[str] = Counter()
    sent_delivered = 0

    def fire_one(message: Message) -> None:
        nonlocal sent_delivered
        before = accounting.snapshot()
        async_fire_mqtt_message(hass, message.topic, message.payload)
        outcome = _check(kind, message, before, accounting.snapshot())
        outcomes[outcome] += 1
        if outcome != "not_delivered":
            sent_delivered += 1
        if outcome == "handled" and accounting.fleet_updates > before[2]:
            # What was accepted must stay usable: entity snapshot, the fleet's
            # saved form and diagnostics are built and serialised.
            snapshot = run_steps(
                SnapshotBuilder().steps(
                    coordinator.fleet, coordinator.metrics, _snapshot_inputs()
                )
            )
            assert set(snapshot.vehicles) == set(coordinator.fleet.vehicles)
            json.loads(json_dumps(run_steps(coordinator.fleet.as_dict_steps())))
            json.loads(
                json_dumps(
                    [
                        vehicle_state(coordinator, vid)
                        for vid in coordinator.fleet.vehicles
                    ]
                )
            )

    try:
        _run_hypothesis(kind, strategies[kind](), fire_one)
    except BaseException:
        task.cancel()  # do not leave the waiting dispatch behind
        raise
    finally:
        accounting.stop()
    await hass.async_block_till_done()
    print(f"fuzz {kind}: {outcomes.total()} examples, {dict(outcomes)}")
    assert outcomes.total() >= MAX_EXAMPLES // 2
    assert outcomes["dropped"] > 0

    # The waiting dispatch is intact: the genuine acks complete it exactly.
    assert coordinator.engine.tracker.pending_count == len(FLEET)
    assert not task.done()
    for order in responder.orders:
        if order["vehicle_id"] in GATEWAY_OF:
            async_fire_mqtt_message(
                hass,
                f"v2g/gateway/{GATEWAY_OF[order['vehicle_id']]}/acks",
                json.dumps(
                    {
                        "acks": [
                            {
                                "command_id": order["command_id"],
                                "vehicle_id": order["vehicle_id"],
                            }
                        ]
                    }
                ),
            )
        else:
            async_fire_mqtt_message(
                hass,
                f"vehicle/{order['vehicle_id']}/ack",
                json.dumps({"command_id": order["command_id"]}),
            )
    async with asyncio.timeout(5):
        result = await task
    response = result.as_response()
    assert response["status"] == "completed"
    assert response["acknowledged_kw"] == pytest.approx(9.0)
    assert {
        vid: (o["status"], o["command_id"]) for vid, o in response["vehicles"].items()
    } == {o["vehicle_id"]: ("acknowledged", o["command_id"]) for o in responder.orders}

    # Diagnostics account for everything that was sent.
    diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, entry)
    dropped = diagnostics["dropped_input"]
    counter_kind = COUNTER_KIND[kind]
    assert not [key for key in dropped if key.endswith("_error")]
    assert (
        sum(v for k, v in dropped.items() if k.startswith(f"{counter_kind}_"))
        == outcomes["dropped"]
    )
    ack_counters = diagnostics["ack_tracker"]["counters"]
    assert ack_counters["accepted"] == len(FLEET)
    assert ack_counters["rejected"] == 0
    if kind == "ack":
        handled = sum(ack_counters[d] for d in DISPOSITIONS) - len(FLEET)
        assert outcomes["dropped"] + handled == sent_delivered

    # And the integration keeps dispatching — to the whole fleet, fuzzed vehicles
    # (extreme but valid values) included; the known ones are re-announced first.
    await async_announce(hass, *FLEET)
    responder.default = "ack"
    # 1e5 kW: the largest request the action accepts (100 MW).
    for power in (-6.0, 25.0, 1e5):
        response = await hass.services.async_call(
            DOMAIN,
            "dispatch",
            {"config_entry_id": ENTRY_ID, "signal_type": "aFRR", "power_kw": power},
            blocking=True,
            return_response=True,
        )
        assert response is not None
        print(
            f"after fuzz {kind}: {power} kW to {len(response['vehicles'])} vehicles,"
            f" excluded {response['excluded']}: {response['status']}"
        )
        orders = [*response["vehicles"].values(), *response["fallback"].values()]
        assert orders, response
        for order in orders:
            assert math.isfinite(order["power_kw"]), response
            assert order["status"] == "acknowledged", response
        assert response["status"] in ("completed", "partial"), response
        assert math.isfinite(response["acknowledged_kw"])
        assert abs(response["acknowledged_kw"]) <= abs(power) * (1 + 1e-9)
