"""The signal webhook: RTE signal JSON in, one dispatch through MQTT, its response out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from http import HTTPStatus
import json
import logging
from typing import Any, NamedTuple
from unittest.mock import patch

from aiohttp.test_utils import TestClient
from homeassistant.components import mqtt, webhook
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.helpers.dispatcher import async_dispatcher_send
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_capture_events,
    async_fire_mqtt_message,
    async_fire_time_changed,
)
from pytest_homeassistant_custom_component.typing import (
    ClientSessionGenerator,
    MqttMockHAClient,
    WebSocketGenerator,
)

from custom_components.v2g.const import (
    CONF_ACK_TIMEOUT,
    CONF_WEBHOOK_ENABLED,
    CONF_WEBHOOK_ID,
    DOMAIN,
    EVENT_DISPATCH_COMPLETED,
)
from custom_components.v2g.engine import SignalType
from custom_components.v2g.webhook import (
    MAX_BODY_BYTES,
    SignalRejectedError,
    parse_rte_signal,
)

from .helpers import FleetResponder, async_announce, async_setup_fleet

WEBHOOK_ID = "0123456789abcdef" * 4
URL = f"/api/webhook/{WEBHOOK_ID}"
OPTIONS = {
    CONF_ACK_TIMEOUT: 0.05,
    CONF_WEBHOOK_ENABLED: True,
    CONF_WEBHOOK_ID: WEBHOOK_ID,
}
NOW = datetime(2025, 7, 7, 10, 0, tzinfo=dt_util.UTC)


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _signal(
    signal_type: str = "FCR",
    power: Any = 12,
    *,
    start: timedelta = timedelta(0),
    length: timedelta = timedelta(minutes=15),
    **extra: Any,
) -> dict[str, Any]:
    begin = dt_util.utcnow() + start
    return {
        "signal_type": signal_type,
        "start_time": _iso(begin),
        "end_time": _iso(begin + length),
        "power": power,
        "meta": {"source": "test"},
        **extra,
    }


async def _fleet(hass: HomeAssistant, **options: Any) -> MockConfigEntry:
    entry = await async_setup_fleet(hass, options={**OPTIONS, **options})
    await async_announce(hass, ("v1", {}), ("v2", {}))
    return entry


class WebhookFleet(NamedTuple):
    """A fleet of two answering vehicles with the webhook on, and an HTTP client."""

    entry: MockConfigEntry
    responder: FleetResponder
    client: TestClient


@pytest.fixture
async def webhook_fleet(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client_no_auth: ClientSessionGenerator,
) -> WebhookFleet:
    """The fleet the signals go to (entities set up before the client starts)."""
    entry = await _fleet(hass)
    responder = FleetResponder(hass, fleet_mqtt)
    return WebhookFleet(entry, responder, await hass_client_no_auth())


def _counters(entry: MockConfigEntry) -> dict[str, int]:
    return entry.runtime_data.input_log.counters


async def _listed_webhooks(
    hass: HomeAssistant, hass_ws_client: WebSocketGenerator
) -> list[dict[str, Any]]:
    """The registered webhooks, as the public `webhook/list` command shows them.

    Not `hass.data[webhook.DOMAIN]`: its shape is Home Assistant's internal (a dict
    in 2026.2, a `WebhookData` in 2026.11).
    """
    ws = await hass_ws_client(hass)
    await ws.send_json({"id": 1, "type": "webhook/list"})
    response = await ws.receive_json()
    assert response["success"]
    listed: list[dict[str, Any]] = response["result"]
    return listed


async def _listed_webhook_domains(
    hass: HomeAssistant, hass_ws_client: WebSocketGenerator
) -> dict[str, str]:
    """Webhook id -> the domain that registered it."""
    return {
        item["webhook_id"]: item["domain"]
        for item in await _listed_webhooks(hass, hass_ws_client)
    }


# --- accepted signals ----------------------------------------------------------------


async def test_more_than_the_fleet_can_take_is_dispatched_with_its_shortfall(
    webhook_fleet: WebhookFleet,
) -> None:
    """Two 10 kW vehicles asked for 100 MW: 20 kW placed, the rest reported short."""
    _, responder, client = webhook_fleet

    resp = await client.post(URL, json=_signal(power=100_000))

    assert resp.status == HTTPStatus.OK
    body = await resp.json()
    assert body["requested_kw"] == 100_000.0
    assert body["assigned_kw"] == pytest.approx(20.0)
    assert body["shortfall_kw"] == pytest.approx(99_980.0)
    assert len(responder.orders) == 2


async def test_signal_is_dispatched_and_answered_with_the_response(
    hass: HomeAssistant, webhook_fleet: WebhookFleet
) -> None:
    entry, responder, client = webhook_fleet
    events = async_capture_events(hass, EVENT_DISPATCH_COMPLETED)

    resp = await client.post(URL, json=_signal(power=12))

    assert resp.status == HTTPStatus.OK
    assert resp.content_type == "application/json"
    body = await resp.json()
    # Answered after the dispatch ran to its end: the response of docs/actions.md#dispatch-response.
    assert body["status"] == "completed"
    assert body["signal"]["type"] == "FCR"
    assert body["requested_kw"] == 12.0
    assert body["acknowledged_kw"] == pytest.approx(12.0)
    assert body["ack_rate"] == 1.0
    assert set(body["vehicles"]) == {"v1", "v2"}
    assert len(events) == 1
    assert events[0].data["dispatch_id"] == body["dispatch_id"]
    # The orders really went out over MQTT, with the RTE block's length.
    assert sorted(responder.command_publishes()) == [
        "vehicle/v1/command",
        "vehicle/v2/command",
    ]
    for order in responder.orders:
        assert order["signal_type"] == "FCR"
        assert order["dispatch_id"] == body["dispatch_id"]
        assert order["power_kw"] == pytest.approx(6.0)
        assert order["duration_s"] == pytest.approx(900.0, abs=5.0)
    assert "webhook_rejected" not in _counters(entry)


async def test_future_block_is_dispatched_now_with_its_length(
    webhook_fleet: WebhookFleet,
) -> None:
    _, responder, client = webhook_fleet

    resp = await client.post(
        URL,
        json=_signal(start=timedelta(hours=2), length=timedelta(minutes=30)),
    )

    assert resp.status == HTTPStatus.OK
    body = await resp.json()
    assert body["signal"]["duration_s"] == 1800.0
    assert {order["duration_s"] for order in responder.orders} == {1800.0}


async def test_running_block_is_dispatched_for_what_is_left(
    webhook_fleet: WebhookFleet,
) -> None:
    _, responder, client = webhook_fleet

    resp = await client.post(
        URL,
        json=_signal(start=-timedelta(minutes=10), length=timedelta(minutes=15)),
    )

    assert resp.status == HTTPStatus.OK
    body = await resp.json()
    assert body["signal"]["duration_s"] == pytest.approx(300.0, abs=5.0)
    assert responder.orders


async def test_negative_power_charges_and_ecowatt_is_accepted(
    webhook_fleet: WebhookFleet,
) -> None:
    _, responder, client = webhook_fleet

    resp = await client.post(URL, json=_signal("EcoWatt", power=-8))

    assert resp.status == HTTPStatus.OK
    body = await resp.json()
    assert body["signal"]["type"] == "EcoWatt"
    assert body["requested_kw"] == -8.0
    assert responder.orders
    assert all(order["power_kw"] < 0 for order in responder.orders)
    assert all(order["signal_type"] == "EcoWatt" for order in responder.orders)


async def test_verify_answers_with_the_measured_delivery(
    hass: HomeAssistant, webhook_fleet: WebhookFleet
) -> None:
    client = webhook_fleet.client
    completed = async_capture_events(hass, EVENT_DISPATCH_COMPLETED)

    answer = asyncio.ensure_future(
        client.post(URL, json=_signal(power=12, verify=True))
    )
    for _ in range(500):  # until the dispatch is over (real time: the acks)
        if completed:
            break
        await asyncio.sleep(0.01)
    for vehicle_id, power in (("v1", 6.0), ("v2", 3.0)):  # what they really do
        async_fire_mqtt_message(
            hass,
            f"v2g/vehicle/state/{vehicle_id}",
            json.dumps({"vehicle_id": vehicle_id, "power_kw": power}),
        )
    await hass.async_block_till_done()
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=11))
    resp = await answer

    assert resp.status == HTTPStatus.OK
    body = await resp.json()
    assert body["acknowledged_kw"] == 12.0
    assert body["delivered_kw"] == 9.0
    assert body["delivery_ratio"] == 0.75
    assert body["unmeasured"] == []
    assert body["vehicles"]["v2"]["measured_kw"] == 3.0
    assert body["vehicles"]["v2"]["following"] is False
    # Without it the answer does not wait and has no measurements.
    resp = await client.post(URL, json=_signal(power=12))
    assert "delivered_kw" not in await resp.json()


# --- refused requests ------------------------------------------------------------------


BAD_BODIES: list[tuple[str, Any, str, str]] = [
    ("not json", b"{nope", "invalid JSON", "webhook_malformed"),
    ("nan", b'{"power": NaN}', "invalid JSON", "webhook_malformed"),
    ("array", [1, 2], "the body must be a JSON object", "webhook_malformed"),
    (
        "unknown type",
        {**_signal(), "signal_type": "XYZ"},
        "unknown signal type: XYZ",
        "webhook_unknown_type",
    ),
    (
        "no type",
        {k: v for k, v in _signal().items() if k != "signal_type"},
        "signal_type must be a string",
        "webhook_invalid",
    ),
    (
        "no end",
        {k: v for k, v in _signal().items() if k != "end_time"},
        "start_time and end_time required",
        "webhook_invalid",
    ),
    (
        "empty start",
        {**_signal(), "start_time": ""},
        "start_time and end_time required",
        "webhook_invalid",
    ),
    (
        "naive time",
        {**_signal(), "start_time": "2025-07-07T10:00:00"},
        "start_time must be an RFC 3339 time with a time zone",
        "webhook_invalid",
    ),
    (
        "not a time",
        {**_signal(), "end_time": 1751882400},
        "end_time must be an RFC 3339 time with a time zone",
        "webhook_invalid",
    ),
    (
        "end before start",
        _signal(length=-timedelta(minutes=5)),
        "end_time must be after start_time",
        "webhook_invalid",
    ),
    ("zero power", _signal(power=0), "power must be non-zero", "webhook_invalid"),
    (
        "no power",
        {k: v for k, v in _signal().items() if k != "power"},
        "power must be non-zero",
        "webhook_invalid",
    ),
    ("string power", _signal(power="50"), "power must be a number", "webhook_invalid"),
    ("bool power", _signal(power=True), "power must be a number", "webhook_invalid"),
    (
        "bad meta",
        {**_signal(), "meta": "x"},
        "meta must be an object",
        "webhook_invalid",
    ),
    (
        "bad verify",
        _signal(verify="yes"),
        "verify must be true or false",
        "webhook_invalid",
    ),
    (
        "ended",
        _signal(start=-timedelta(hours=1)),
        "signal already ended",
        "webhook_ended",
    ),
    (
        "too long",
        _signal(length=timedelta(days=2)),
        "Duration must be more than 0 and at most 24 hours",
        "webhook_invalid_value",
    ),
    (
        "absurd power",
        _signal(power=200_000),
        "power must be at most 100000 kW either way",
        "webhook_power_out_of_range",
    ),
    (
        "absurd negative power",
        _signal(power=-100_000.5),
        "power must be at most 100000 kW either way",
        "webhook_power_out_of_range",
    ),
]


@pytest.mark.parametrize(
    ("body", "error", "counter"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_BODIES],
)
async def test_bad_input_is_refused_and_counted(
    webhook_fleet: WebhookFleet,
    body: Any,
    error: str,
    counter: str,
) -> None:
    entry, responder, client = webhook_fleet

    if isinstance(body, bytes):
        resp = await client.post(URL, data=body)
    else:
        resp = await client.post(URL, json=body)

    assert resp.status == HTTPStatus.BAD_REQUEST
    assert (await resp.json())["error"].startswith(error)
    assert responder.command_publishes() == []
    assert _counters(entry)["webhook_rejected"] == 1
    assert _counters(entry)[counter] == 1


async def test_oversize_body_is_refused(
    webhook_fleet: WebhookFleet,
) -> None:
    entry, responder, client = webhook_fleet
    padding = "x" * MAX_BODY_BYTES

    # Declared by Content-Length: refused before reading.
    resp = await client.post(URL, json=_signal(pad=padding))
    assert resp.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert "larger than 65536 bytes" in (await resp.json())["error"]

    # Chunked (no Content-Length): refused after reading 64 KiB + 1.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b" " * (MAX_BODY_BYTES // 4)
        yield json.dumps(_signal()).encode()

    resp = await client.post(URL, data=chunks())
    assert resp.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE

    # Exactly 64 KiB is fine.
    body = json.dumps(_signal()).encode()
    body += b" " * (MAX_BODY_BYTES - len(body))
    resp = await client.post(URL, data=body)
    assert resp.status == HTTPStatus.OK

    assert len(responder.orders) == 2
    assert _counters(entry)["webhook_rejected"] == 2
    assert _counters(entry)["webhook_oversize"] == 2


async def test_mqtt_down_is_503(
    hass: HomeAssistant,
    webhook_fleet: WebhookFleet,
) -> None:
    entry, responder, client = webhook_fleet
    async_dispatcher_send(hass, mqtt.MQTT_CONNECTION_STATE, False)
    await hass.async_block_till_done()

    resp = await client.post(URL, json=_signal())

    assert resp.status == HTTPStatus.SERVICE_UNAVAILABLE
    assert "not connected" in (await resp.json())["error"]
    assert responder.command_publishes() == []
    assert _counters(entry)["webhook_unavailable"] == 1
    assert _counters(entry)["webhook_rejected"] == 1


async def test_unexpected_error_is_500_and_counted(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client_no_auth: ClientSessionGenerator,
) -> None:
    entry = await _fleet(hass)
    client = await hass_client_no_auth()

    with patch.object(
        entry.runtime_data.dispatcher, "async_dispatch", side_effect=RuntimeError("bug")
    ):
        resp = await client.post(URL, json=_signal())

    assert resp.status == HTTPStatus.INTERNAL_SERVER_ERROR
    assert await resp.json() == {"error": "internal error"}
    assert _counters(entry)["webhook_error"] == 1


async def test_refusals_are_logged_once_at_warning(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_client_no_auth: ClientSessionGenerator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    entry = await _fleet(hass)
    client = await hass_client_no_auth()
    caplog.set_level(logging.DEBUG, logger="custom_components.v2g")

    for _ in range(3):
        resp = await client.post(URL, json=_signal("XYZ"))
        assert resp.status == HTTPStatus.BAD_REQUEST

    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "webhook" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert "unknown_type" in warnings[0].getMessage()
    ours = [r for r in caplog.records if r.name.startswith("custom_components.v2g")]
    assert ours
    assert all(WEBHOOK_ID not in r.getMessage() for r in ours)
    assert _counters(entry)["webhook_unknown_type"] == 3


# --- registration ----------------------------------------------------------------------


async def test_unknown_webhook_id_dispatches_nothing(
    webhook_fleet: WebhookFleet,
) -> None:
    entry, responder, client = webhook_fleet

    resp = await client.post("/api/webhook/not-our-id", json=_signal())

    # Home Assistant answers unknown ids itself: 200 with an empty body, so the
    # existence of a webhook is not given away (there is no 404).
    assert resp.status == HTTPStatus.OK
    assert await resp.read() == b""
    assert responder.publishes == []
    assert _counters(entry) == {}


async def test_only_post_is_allowed(
    webhook_fleet: WebhookFleet,
) -> None:
    _, responder, client = webhook_fleet

    resp = await client.put(URL, json=_signal())

    assert resp.status == HTTPStatus.METHOD_NOT_ALLOWED
    assert responder.publishes == []


async def test_registered_local_only_and_removed_on_unload(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_ws_client: WebSocketGenerator,
) -> None:
    entry = await _fleet(hass)
    ws = await hass_ws_client(hass)
    await ws.send_json({"id": 1, "type": "webhook/list"})
    listed = (await ws.receive_json())["result"]
    assert listed == [
        {
            "webhook_id": WEBHOOK_ID,
            "domain": DOMAIN,
            "name": "Depot flexibility signals",
            "local_only": True,
            "allowed_methods": ["POST"],
        }
    ]

    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.NOT_LOADED
    await ws.send_json({"id": 2, "type": "webhook/list"})
    assert (await ws.receive_json())["result"] == []


async def test_signal_through_the_websocket_relay(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_ws_client: WebSocketGenerator,
) -> None:
    """Webhooks relayed by Home Assistant Cloud arrive as a mock request."""
    await _fleet(hass)
    responder = FleetResponder(hass, fleet_mqtt)
    ws = await hass_ws_client(hass)

    await ws.send_json(
        {
            "id": 1,
            "type": "webhook/handle",
            "webhook_id": WEBHOOK_ID,
            "method": "POST",
            "body": json.dumps(_signal()),
        }
    )
    result = (await ws.receive_json())["result"]

    assert result["status"] == HTTPStatus.OK
    assert json.loads(result["body"])["status"] == "completed"
    assert len(responder.orders) == 2


@pytest.mark.parametrize(
    "options",
    [
        {CONF_WEBHOOK_ENABLED: False},
        {CONF_WEBHOOK_ENABLED: True, CONF_WEBHOOK_ID: None},
    ],
    ids=["disabled", "no id"],
)
async def test_not_registered_when_disabled_or_without_id(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_ws_client: WebSocketGenerator,
    options: dict[str, Any],
) -> None:
    opts = {**OPTIONS, **options}
    if opts[CONF_WEBHOOK_ID] is None:
        del opts[CONF_WEBHOOK_ID]
    await async_setup_fleet(hass, options=opts)

    assert await _listed_webhooks(hass, hass_ws_client) == []


async def test_id_already_in_use_does_not_block_setup(
    hass: HomeAssistant,
    fleet_mqtt: MqttMockHAClient,
    hass_ws_client: WebSocketGenerator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def other(*_: Any) -> None:
        return None

    webhook.async_register(hass, "other", "Other", WEBHOOK_ID, other)

    entry = await async_setup_fleet(hass, options=OPTIONS)

    assert entry.state is ConfigEntryState.LOADED
    assert await _listed_webhook_domains(hass, hass_ws_client) == {WEBHOOK_ID: "other"}
    assert "already used by another webhook" in caplog.text
    # Unloading the fleet leaves the other integration's webhook alone.
    assert await hass.config_entries.async_unload(entry.entry_id)
    assert await _listed_webhook_domains(hass, hass_ws_client) == {WEBHOOK_ID: "other"}


# --- validation (pure) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("FCR", SignalType.FCR),
        ("aFRR", SignalType.AFRR),
        ("aFRR_UP", SignalType.AFRR),
        ("aFRR_DOWN", SignalType.AFRR),
        ("MA", SignalType.MA),
        ("NEBEF", SignalType.NEBEF),
        ("DELESTAGE", SignalType.NEBEF),
        ("EcoWatt", SignalType.ECOWATT),
        ("fcr", SignalType.FCR),
    ],
)
def test_rte_signal_types(name: str, expected: SignalType) -> None:
    data = {
        "signal_type": name,
        "start_time": "2025-07-07T10:00:00Z",
        "end_time": "2025-07-07T10:15:00Z",
        "power": 50,
    }
    signal = parse_rte_signal(data, NOW - timedelta(hours=1))
    assert signal.signal_type is expected
    assert signal.power_kw == 50.0
    assert signal.duration_s == 900.0


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2025-07-07T12:00:00+02:00", "2025-07-07t10:15:00.123456789z"),
        ("2025-07-07 10:00:00Z", "2025-07-07T05:15:00.5-05:00"),
    ],
)
def test_rfc3339_variants(start: str, end: str) -> None:
    data = {"signal_type": "MA", "start_time": start, "end_time": end, "power": 1.5}
    signal = parse_rte_signal(data, NOW - timedelta(hours=1))
    assert signal.start == NOW
    assert 900.0 <= signal.duration_s <= 900.6


@pytest.mark.parametrize(
    ("power", "message"),
    [
        (float("inf"), "power must be finite"),
        (float("nan"), "power must be finite"),
        (10**400, "power must be finite"),
        (None, "power must be a number"),
    ],
)
def test_non_finite_power(power: Any, message: str) -> None:
    data = {
        "signal_type": "FCR",
        "start_time": "2025-07-07T10:00:00Z",
        "end_time": "2025-07-07T10:15:00Z",
        "power": power,
    }
    with pytest.raises(SignalRejectedError, match=message) as err:
        parse_rte_signal(data, NOW)
    assert err.value.status == HTTPStatus.BAD_REQUEST


@pytest.mark.parametrize("start", ["2025-02-30T10:00:00Z", "0001-01-01T00:00:00+01:00"])
def test_impossible_date_is_refused(start: str) -> None:
    data = {
        "signal_type": "FCR",
        "start_time": start,
        "end_time": "2025-07-07T10:15:00Z",
        "power": 5,
    }
    with pytest.raises(SignalRejectedError, match="start_time must be an RFC 3339"):
        parse_rte_signal(data, NOW)
