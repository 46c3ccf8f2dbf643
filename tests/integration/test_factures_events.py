"""Factures and the real broker: Peppol documents, scans and accounting receipts drive invoices.

Each test serves a factures app with its outbox relay and its consumer (a
fresh consumer group) on the session's broker, and publishes what the gateway
and courrier would.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from contracts.envelope import CloudEvent, from_record, headers_as_text, new_event
from contracts.events.courrier import IncomingMailRegistered
from contracts.events.factures import (
    InvoiceApproved,
    InvoiceBooked,
    InvoiceResponseRequested,
)
from contracts.events.gateway import DeliveryReceipt
from contracts.events.peppol import PeppolDocumentReceived, PeppolEndpoint
from kernel.settings import HubSettings
from services.factures.tables import Invoice
from tests.integration.test_courrier_events import (
    eventually,
    handled,
    publish,
    records_with_key,
)
from tests.integration.test_factures_api import (
    SAMBREVILLE,
    SAMBREVILLE_PARTICIPANT,
    SUPPLIER_ID,
    XML,
    XXE,
    Factures,
    invoice_xml,
    running,
    settings_for,
)
from tests.support.groups import group_at_end

pytestmark = pytest.mark.integration

INVOICE_TYPE = (
    "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2::Invoice"
    "##urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0::2.1"
)


@pytest.fixture
async def factures(
    hub_settings: HubSettings,
    tmp_path: Path,
    database: tuple[str, str | None],
    kafka_bootstrap: str,
) -> AsyncIterator[Factures]:
    settings = settings_for(hub_settings, tmp_path)
    async with running(
        settings,
        database,
        background=True,
        kafka_bootstrap_servers=kafka_bootstrap,
        group_id=await group_at_end(kafka_bootstrap, "factures-test"),
    ) as served:
        # Wait until the consumer has joined its group (see test_courrier_events).
        probe = accounting_receipt(str(uuid.uuid4()), "probe")
        await publish(kafka_bootstrap, probe)
        await eventually(lambda: handled(served, probe), "the factures consumer is up")  # type: ignore[arg-type]
        yield served


def peppol_document(content: bytes, message_id: str, **changes: Any) -> CloudEvent:
    fields: dict[str, Any] = {
        "access_point_message_id": message_id,
        "sender": PeppolEndpoint(scheme="0208", identifier=SUPPLIER_ID),
        "receiver": PeppolEndpoint(scheme="0208", identifier=SAMBREVILLE_PARTICIPANT),
        "document_type": INVOICE_TYPE,
        "document_base64": base64.b64encode(content).decode(),
        "sha256": hashlib.sha256(content).hexdigest(),
    }
    data = PeppolDocumentReceived(**{**fields, **changes})
    return new_event(data, tenant=SAMBREVILLE, subject=message_id, source="urn:hub:gateway")


def accounting_receipt(invoice_id: str, approval_event_id: str, **fields: Any) -> CloudEvent:
    data = DeliveryReceipt.model_validate(
        {
            "source_event_id": approval_event_id,
            "source_event_type": InvoiceApproved.TYPE,
            "route": "invoices-accounting",
            "connector": "stesud",
            "idempotency_key": f"{approval_event_id}:invoices-accounting",
            "outcome": "delivered",
            "attempts": 1,
            **fields,
        }
    )
    return new_event(data, tenant=SAMBREVILLE, subject=invoice_id, source="urn:hub:gateway")


def scan(mail_id: str, scan_type: str = "FACT") -> CloudEvent:
    data = IncomingMailRegistered(
        mail_id=mail_id,
        registration_number="E2026/000042",
        received_on="2026-03-03",  # type: ignore[arg-type]  # pydantic parses it
        sender="Entreprise Dupont SA",
        subject="Scan facture.pdf",
        assigned_service="travaux",
        scan_type=scan_type,
    )
    return new_event(data, tenant=SAMBREVILLE, subject=mail_id, source="urn:hub:courrier")


async def invoices_of(factures: Factures, **where: Any) -> list[Invoice]:
    async with factures.app.state.sessions() as session:
        query = select(Invoice).filter_by(**where).order_by(Invoice.created_at)
        return list((await session.scalars(query)).all())


async def published_types(bootstrap: str, invoice_id: str) -> list[str]:
    records = await records_with_key(
        bootstrap, "factures.events", f"{SAMBREVILLE}:{invoice_id}".encode()
    )
    return [headers_as_text(record.headers)["ce_type"] for record in records]


async def test_a_peppol_document_becomes_one_invoice_and_its_answers_reach_the_gateway(
    factures: Factures, kafka_bootstrap: str
) -> None:
    # Unique ids and numbers: a fresh consumer group also reads earlier tests' events.
    message_id, number = f"ap-{uuid.uuid4()}", f"F-{uuid.uuid4().hex[:8]}"
    document = peppol_document(invoice_xml(number), message_id)
    fetched_again = peppol_document(invoice_xml(number), message_id)  # same message, new event
    for event in (document, document, fetched_again):
        await publish(kafka_bootstrap, event)
    await eventually(lambda: handled(factures, document, fetched_again), "all are handled")  # type: ignore[arg-type]

    [invoice] = await invoices_of(factures, peppol_message_id=message_id)
    assert (invoice.channel, invoice.state, invoice.number) == ("peppol", "to_approve", number)
    # An operator finds it by the access point's message id, and only it.
    for searched, expected in ((message_id, [invoice.id]), ("ap-unknown", [])):
        found = await factures.http.get(
            "/v1/invoices", params={"peppol_message_id": searched}, headers=factures.auth()
        )
        assert [item["id"] for item in found.json()["items"]] == expected

    async def answered() -> bool:
        types = await published_types(kafka_bootstrap, invoice.id)
        return types.count(InvoiceResponseRequested.TYPE) == 2

    await eventually(answered, "AB and IP are published on factures.events")
    records = await records_with_key(
        kafka_bootstrap, "factures.events", f"{SAMBREVILLE}:{invoice.id}".encode()
    )
    answers = [
        from_record(headers_as_text(r.headers), r.value).data_as(InvoiceResponseRequested)
        for r in records
        if headers_as_text(r.headers)["ce_type"] == InvoiceResponseRequested.TYPE
    ]
    assert [(a.status, a.in_reply_to, a.receiver.identifier) for a in answers] == [
        ("AB", message_id, SUPPLIER_ID),
        ("IP", message_id, SUPPLIER_ID),
    ]


async def test_an_unreadable_or_damaged_peppol_document_is_kept_rejected_and_answered_re(
    factures: Factures, kafka_bootstrap: str
) -> None:
    attack_id, damaged_id = f"ap-{uuid.uuid4()}", f"ap-{uuid.uuid4()}"
    attack = peppol_document(XXE, attack_id)
    damaged = peppol_document(invoice_xml(f"F-{uuid.uuid4().hex[:8]}"), damaged_id, sha256="0" * 64)
    for event in (attack, damaged):
        await publish(kafka_bootstrap, event)
    await eventually(lambda: handled(factures, attack, damaged), "both are handled")  # type: ignore[arg-type]

    for message_id, code, words in (
        (attack_id, "entity-forbidden", "entities are refused"),
        (damaged_id, "CORRUPTED", "damaged in transit"),
    ):
        [invoice] = await invoices_of(factures, peppol_message_id=message_id)
        assert invoice.state == "rejected"
        [reason] = invoice.rejection_reasons
        assert reason["rule"] == code and words in str(reason["text"])
        assert statuses(await factures.responses(invoice.id)) == ["AB", "RE"]
    stored = await factures.http.get(
        f"/v1/invoices/{(await invoices_of(factures, peppol_message_id=attack_id))[0].id}/ubl",
        headers=factures.auth(),
    )
    assert stored.content == XXE


def statuses(answers: list[InvoiceResponseRequested]) -> list[str]:
    return [answer.status for answer in answers]


async def test_the_accounting_receipt_books_an_approved_invoice_which_is_then_paid(
    factures: Factures, kafka_bootstrap: str
) -> None:
    invoice = await factures.accepted(invoice_xml())
    url = f"/v1/invoices/{invoice['id']}"
    assert (await factures.http.post(f"{url}/approve", headers=factures.auth())).status_code == 200
    [approval] = [e for e in await factures.events(invoice["id"]) if e.type == InvoiceApproved.TYPE]

    stale = accounting_receipt(invoice["id"], "another-approval", external_reference="X")
    booked = accounting_receipt(invoice["id"], approval.id, external_reference="STESUD-2026-77")
    for event in (stale, booked, booked):
        await publish(kafka_bootstrap, event)

    async def is_booked() -> bool:
        body = (await factures.http.get(url, headers=factures.auth())).json()
        return bool(body["state"] == "booked")

    await eventually(is_booked, "the receipt books the invoice")
    body = (await factures.http.get(url, headers=factures.auth())).json()
    assert body["accounting_reference"] == "STESUD-2026-77"

    paid = await factures.http.post(
        f"{url}/payment", json={"paid_on": "2026-03-05"}, headers=factures.auth()
    )
    assert paid.status_code == 200, paid.text
    assert paid.json()["state"] == "paid"
    assert [step["state"] for step in paid.json()["history"]][-3:] == [
        "approved",
        "booked",
        "paid",
    ]
    assert statuses(await factures.responses(invoice["id"]))[-2:] == ["AP", "PD"]

    async def announced() -> bool:
        types = await published_types(kafka_bootstrap, invoice["id"])
        return InvoiceBooked.TYPE in types and types[-1] == InvoiceResponseRequested.TYPE

    await eventually(announced, "booked and paid are published")
    assert (await published_types(kafka_bootstrap, invoice["id"])).count(InvoiceBooked.TYPE) == 1


async def test_a_scanned_invoice_waits_for_its_encoding_and_never_answers_the_supplier(
    factures: Factures, kafka_bootstrap: str
) -> None:
    mail_id, letter_id = str(uuid.uuid4()), str(uuid.uuid4())
    events = (scan(mail_id), scan(mail_id), scan(letter_id, scan_type="COUR_E"))
    for event in events:
        await publish(kafka_bootstrap, event)
    await eventually(lambda: handled(factures, *events), "the scans are handled")  # type: ignore[arg-type]
    [invoice] = await invoices_of(factures, scan_mail_id=mail_id)
    assert (invoice.state, invoice.channel) == ("to_encode", "scan")
    assert await invoices_of(factures, scan_mail_id=letter_id) == []  # not an invoice
    listed = await factures.http.get("/v1/invoices?state=to_encode", headers=factures.auth())
    assert invoice.id in [item["id"] for item in listed.json()["items"]]

    url = f"/v1/invoices/{invoice.id}/ubl"
    headers = {**factures.auth(), **XML}
    typo = await factures.http.post(url, content=invoice_xml(payable_delta="9"), headers=headers)
    assert typo.status_code == 422 and typo.json()["type"].endswith("/invalid-encoding")
    assert (await invoices_of(factures, id=invoice.id))[0].state == "to_encode"

    encoded = await factures.http.post(url, content=invoice_xml(), headers=headers)
    assert encoded.status_code == 200, encoded.text
    assert (encoded.json()["state"], encoded.json()["number"]) == ("to_approve", "F2026-0001")
    again = await factures.http.post(url, content=invoice_xml(), headers=headers)
    assert again.status_code == 409 and again.json()["state"] == "to_approve"
    assert await factures.responses(invoice.id) == []
