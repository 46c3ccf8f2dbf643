"""The Peppol access point sandbox over HTTP, the gateway's inbound adapter polling it
(real broker, SQLite and PostgreSQL), and the peppol_ap connector answering through it."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.events.peppol import PeppolDocumentReceived
from gateway.connectors.base import ConnectorContext, Delivery
from gateway.connectors.peppol_ap import PeppolApConnector, create_connector
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from gateway.inbound.records import WaitingItem
from kernel.database import create_engine, session_factory, utcnow
from kernel.settings import HubSettings
from sandbox.app import build_app
from sandbox.openapi_contract import OpenApiContract, contract_errors
from sandbox.peppol_ap import CONTRACT
from sandbox.recorder import Recorder
from tests.support.gateway_hub import (
    GatewayHub,
    events_on,
    eventually,
    sandbox_inbox,
)
from tests.support.invoices import application_response, invoice_response_requested
from tests.support.servers import serving

pytestmark = pytest.mark.integration

COMMUNE, SUPPLIER = "0208:0207123407", "0208:0406798006"
KEY = {"X-Api-Key": "sandbox-ap-key-hub"}
INVOICE_EXAMPLE = Path("einvoice/peppol-examples/base-example.xml")


@pytest.fixture
async def sandbox(corpus: Path, hub_settings: HubSettings) -> AsyncIterator[str]:
    async with serving(build_app(hub_settings, Recorder())) as url:
        yield url


def validator(schema: str) -> Any:
    return OpenApiContract(CONTRACT).validator(schema)


async def drop(
    http: httpx.AsyncClient, sandbox: str, receiver: str, content: bytes, account: str = "hub"
) -> dict[str, Any]:
    answer = await http.post(
        f"{sandbox}/_sandbox/peppol/inbox",
        json={
            "account": account,
            "sender": SUPPLIER,
            "receiver": receiver,
            "document_base64": base64.b64encode(content).decode(),
        },
    )
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def message_state(sandbox: str, message_id: str) -> dict[str, Any]:
    inbox = await sandbox_inbox(sandbox)
    [message] = [m for m in inbox["messages"] if m["messageId"] == message_id]
    return message


# -- the inbound adapter, end to end ----------------------------------------------------------


async def test_a_received_invoice_becomes_one_event_and_is_acknowledged(
    running_gateway: GatewayHub, http: httpx.AsyncClient, corpus: Path, kafka_bootstrap: str
) -> None:
    tenant = running_gateway.inforius_tenant
    invoice = (corpus / INVOICE_EXAMPLE).read_bytes()
    dropped = await drop(
        http,
        running_gateway.sandbox,
        running_gateway.participants[tenant],
        invoice,
        running_gateway.account,
    )

    async def acknowledged() -> bool:
        state = await message_state(running_gateway.sandbox, dropped["messageId"])
        return bool(state["status"] == "acknowledged")

    assert await eventually(acknowledged)
    [event] = await events_on(
        kafka_bootstrap, "gateway.inbound", lambda e: e.tenant == tenant, at_least=1
    )
    data = event.data_as(PeppolDocumentReceived)
    assert data.access_point_message_id == dropped["messageId"] == event.subject
    assert base64.b64decode(data.document_base64) == invoice
    assert data.sha256 == hashlib.sha256(invoice).hexdigest()
    assert (
        f"{data.receiver.scheme}:{data.receiver.identifier}" == running_gateway.participants[tenant]
    )
    assert (await message_state(running_gateway.sandbox, dropped["messageId"]))["fetches"] == 1

    listed = await http.get(
        f"{running_gateway.gateway}/v1/inbound",
        headers=running_gateway.token(tenant, "gateway:read"),
    )
    [item] = listed.json()["items"]
    assert (item["status"], item["source_status"], item["event_id"]) == (
        "published",
        "acknowledged",
        event.id,
    )
    assert item["source"].endswith("/peppol-ap/v1")  # which access point it came from
    other = await http.get(
        f"{running_gateway.gateway}/v1/inbound",
        headers=running_gateway.token(running_gateway.stesud_tenant, "gateway:read"),
    )
    assert other.json()["items"] == []  # tenants are walls


async def test_an_unroutable_document_is_rejected_at_the_access_point_and_listed(
    running_gateway: GatewayHub, http: httpx.AsyncClient
) -> None:
    stranger = "0208:0999999962"
    dropped = await drop(
        http, running_gateway.sandbox, stranger, b"<Invoice/>", running_gateway.account
    )

    async def rejected() -> dict[str, Any] | None:
        state = await message_state(running_gateway.sandbox, dropped["messageId"])
        return state if state["status"] == "rejected" else None

    state = await eventually(rejected)
    assert state is not None
    assert state["reasonCode"] == "FD"
    assert f"The receiver {stranger} is not a participant served by this hub" in state["reason"]

    tenant = running_gateway.inforius_tenant
    operator = running_gateway.token(tenant, "gateway:read", "gateway:unroutable")
    listed = await http.get(
        f"{running_gateway.gateway}/v1/inbound?status=unroutable", headers=operator
    )
    [item] = listed.json()["items"]
    assert (item["tenant"], item["receiver"], item["source_status"]) == (
        None,
        stranger,
        "rejected",
    )
    assert item["reason"] == state["reason"]
    reader = running_gateway.token(tenant, "gateway:read")
    assert (await http.get(f"{running_gateway.gateway}/v1/inbound", headers=reader)).json()[
        "items"
    ] == []
    refused = await http.get(
        f"{running_gateway.gateway}/v1/inbound?status=unroutable", headers=reader
    )
    assert refused.status_code == 403
    assert "gateway:unroutable" in refused.json()["detail"]


async def test_items_waiting_at_their_source_are_shown_to_their_tenant(
    running_gateway: GatewayHub, http: httpx.AsyncClient, database: tuple[str, str | None]
) -> None:
    # What the adapters record when a source keeps failing on an item (unit-tested there).
    url, schema = database
    engine = create_engine(url, schema=schema)
    now = utcnow()
    try:
        async with session_factory(engine)() as session, session.begin():
            for message_id, tenant in (
                ("m-mine", running_gateway.inforius_tenant),
                ("m-unknown", None),
            ):
                session.add(
                    WaitingItem(
                        channel="peppol",
                        source=f"{running_gateway.sandbox}/peppol-ap/v1",
                        source_message_id=message_id,
                        tenant=tenant,
                        reason="The access point gave no document for it yet: HTTP 502",
                        tries=3,
                        first_failed_at=now - timedelta(minutes=2),
                        last_failed_at=now,
                        next_try_at=now + timedelta(seconds=40),
                    )
                )
    finally:
        await engine.dispose()

    def waiting(tenant: str, *scopes: str) -> Any:
        return http.get(
            f"{running_gateway.gateway}/v1/inbound/waiting",
            headers=running_gateway.token(tenant, *scopes),
        )

    mine = (await waiting(running_gateway.inforius_tenant, "gateway:read")).json()
    assert [(i["source_message_id"], i["tries"]) for i in mine["items"]] == [("m-mine", 3)]
    assert mine["items"][0]["reason"].endswith("HTTP 502")
    operator = await waiting(running_gateway.inforius_tenant, "gateway:read", "gateway:unroutable")
    assert [i["source_message_id"] for i in operator.json()["items"]] == ["m-mine", "m-unknown"]
    assert (await waiting(running_gateway.stesud_tenant, "gateway:read")).json()["items"] == []
    assert (await waiting(running_gateway.stesud_tenant)).status_code == 403


# -- the outbox: Invoice Responses ------------------------------------------------------------


def connector_for(sandbox: str, http: httpx.AsyncClient, **overrides: Any) -> PeppolApConnector:
    config = {
        "type": "peppol_ap",
        "base_url": f"{sandbox}/peppol-ap/v1",
        "api_key": "sandbox-ap-key-hub",
    } | overrides
    connector = create_connector(ConnectorContext("62063", HubSettings(), http), config)
    assert isinstance(connector, PeppolApConnector)
    return connector


def delivery(key: str = "e1:invoice-response-peppol", **changes: Any) -> Delivery:
    event = invoice_response_requested(**changes)
    return Delivery(key, event.tenant, "invoice-response-peppol", event, 1)


async def test_an_invoice_response_reaches_the_outbox_once_when_delivered_twice(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    connector = connector_for(sandbox, http)

    first = await connector.deliver(delivery(code="RE"))
    again = await connector.deliver(delivery(code="RE"))  # e.g. after a crash before recording

    assert again.external_reference == first.external_reference
    answers = (await sandbox_inbox(sandbox))["answers"]
    assert answers == {
        "F-2026/0042": [
            {
                "status": "RE",
                "sender": COMMUNE,
                "receiver": SUPPLIER,
                "message_id": first.external_reference,
                "idempotency_key": "e1:invoice-response-peppol",
                "arrivals": 2,
            }
        ]
    }


async def test_a_reused_idempotency_key_for_another_response_is_refused(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    connector = connector_for(sandbox, http)
    await connector.deliver(delivery(code="AB"))

    with pytest.raises(PermanentDeliveryError) as raised:
        await connector.deliver(delivery(code="AP"))

    assert "already used for a different document" in str(raised.value)


OUTBOX_VIOLATIONS: dict[str, tuple[bytes, str]] = {
    "an-invoice": (
        application_response(root="Invoice"),
        "the root element is {urn:oasis:names:specification:ubl:schema:xsd:Invoice-2}Invoice,"
        " not a UBL ApplicationResponse",
    ),
    "customization": (
        application_response(customization="urn:fdc:peppol.eu:poacc:trns:mlr:3"),
        "cbc:CustomizationID: 'urn:fdc:peppol.eu:poacc:trns:mlr:3' is not",
    ),
    "response-code": (
        application_response(code="OK"),
        "cbc:ResponseCode: 'OK' is not one of AB, IP, UQ, RE, AP, PD",
    ),
    "not-xml": (b"RE: your invoice", "document: not well-formed XML"),
    "sender-party": (
        application_response(sender="0208:0216987614"),
        "cac:SenderParty/cbc:EndpointID: '0208:0216987614' is not the request's '0208:0207123407'",
    ),
    "entities": (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>',
        "a DOCTYPE is not allowed",
    ),
}


@pytest.mark.parametrize("name", list(OUTBOX_VIOLATIONS))
async def test_the_outbox_refuses_anything_but_a_bis_invoice_response(
    sandbox: str, http: httpx.AsyncClient, name: str
) -> None:
    document, expected = OUTBOX_VIOLATIONS[name]
    connector = connector_for(sandbox, http)

    with pytest.raises(PermanentDeliveryError) as raised:
        await connector.deliver(Delivery(name, "62063", "r", _with_document(document), 1))

    assert expected in str(raised.value)
    assert (await sandbox_inbox(sandbox))["answers"] == {}


def _with_document(document: bytes) -> Any:
    return invoice_response_requested(document=document)


async def test_the_outbox_answers_problem_json_that_breaks_no_contract(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    body = {"sender": COMMUNE, "receiver": SUPPLIER, "document": "eA=="}

    answer = await http.post(f"{sandbox}/peppol-ap/v1/outbox", json=body, headers=KEY)

    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    assert contract_errors(validator("Problem"), answer.json()) == []
    assert "body: 'documentTypeId' is a required property" in answer.json()["errors"]


@pytest.mark.parametrize("key", [None, "sandbox-ap-key-", "wrong", "sandbox-ap-key-Hub"])
async def test_a_missing_or_unknown_api_key_is_refused(
    sandbox: str, http: httpx.AsyncClient, key: str | None
) -> None:
    headers = {"X-Api-Key": key} if key else {}

    for method, path in (("GET", "/inbox"), ("POST", "/outbox"), ("GET", "/inbox/x")):
        answer = await http.request(method, f"{sandbox}/peppol-ap/v1{path}", headers=headers)
        assert answer.status_code == 401, (method, path)
        assert answer.json()["title"] == "Missing or unknown API key"

    with pytest.raises(RetryableDeliveryError) as raised:
        await connector_for(sandbox, http, api_key=key or "x").deliver(delivery())
    assert "refused the hub's API key" in str(raised.value)


async def test_injected_faults_are_retryable_and_send_nothing(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    await http.put(f"{sandbox}/_sandbox/faults/peppol_ap", json={"error_rate": 1.0})

    with pytest.raises(RetryableDeliveryError) as raised:
        await connector_for(sandbox, http).deliver(delivery())

    assert "HTTP 503" in str(raised.value)
    assert (await sandbox_inbox(sandbox))["answers"] == {}
    assert (await http.get(f"{sandbox}/peppol-ap/v1/inbox", headers=KEY)).status_code == 503


# -- the inbox contract -----------------------------------------------------------------------


async def test_the_inbox_lists_fetches_acknowledges_and_rejects_as_its_contract_says(
    sandbox: str, http: httpx.AsyncClient, corpus: Path
) -> None:
    invoice = (corpus / INVOICE_EXAMPLE).read_bytes()
    kept = await drop(http, sandbox, COMMUNE, invoice)
    refused = await drop(http, sandbox, "0208:0999999962", b"<x/>")
    await drop(http, sandbox, COMMUNE, b"<y/>", account="another")  # not this account's
    inbox = f"{sandbox}/peppol-ap/v1/inbox"

    page = (await http.get(inbox, headers=KEY)).json()
    assert contract_errors(validator("InboxPage"), page) == []
    assert [m["messageId"] for m in page["items"]] == [kept["messageId"], refused["messageId"]]
    assert page["items"][0]["size"] == len(invoice)

    message = (await http.get(f"{inbox}/{kept['messageId']}", headers=KEY)).json()
    assert contract_errors(validator("InboxMessage"), message) == []
    assert base64.b64decode(message["document"]) == invoice

    for _ in range(2):  # idempotent
        acked = await http.post(f"{inbox}/{kept['messageId']}/acknowledge", headers=KEY)
        assert acked.json() == {"messageId": kept["messageId"], "status": "acknowledged"}
    reason = {"reasonCode": "FD", "reason": "unknown receiver"}
    rejected = await http.post(f"{inbox}/{refused['messageId']}/reject", json=reason, headers=KEY)
    assert rejected.json()["status"] == "rejected"
    assert (await http.get(inbox, headers=KEY)).json() == {"items": []}

    conflict = await http.post(f"{inbox}/{kept['messageId']}/reject", json=reason, headers=KEY)
    assert conflict.status_code == 409
    bad = await http.post(
        f"{inbox}/{refused['messageId']}/reject", json={"reasonCode": "NO"}, headers=KEY
    )
    assert bad.status_code == 422
    assert "reasonCode: 'NO' is not one of ['SV', 'BV', 'BW', 'FD']" in bad.json()["detail"]
    missing = await http.get(f"{inbox}/nope", headers=KEY)
    assert missing.status_code == 404
