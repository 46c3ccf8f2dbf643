"""The invoice API over real HTTP on 127.0.0.1, on SQLite and PostgreSQL (no broker needed).

Events stay in the outbox here (``background=False``): these tests check what
is stored and staged; ``test_factures_events`` checks what crosses Kafka.
Invoices are written here from scratch (a Belgian supplier billing the
tenants' Peppol participants) so each test can break exactly one thing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from lxml import etree
from sqlalchemy import func, select, text

from contracts.envelope import CloudEvent, from_record, new_event
from contracts.events.factures import (
    InvoiceApprovalRequested,
    InvoiceApproved,
    InvoicePaid,
    InvoiceReceived,
    InvoiceRejected,
    InvoiceResponseRequested,
    InvoiceValidated,
)
from contracts.events.peppol import PeppolDocumentReceived, PeppolEndpoint
from kernel.auth import issue_token
from kernel.database import utcnow
from kernel.kafka import MAX_REQUEST_BYTES
from kernel.outbox import RECORD_OVERHEAD_BYTES, OutboxMessage, transaction
from kernel.settings import HubSettings
from services.factures import registry
from services.factures.consumers import handlers
from services.factures.domain import Booked, NotBooked
from services.factures.main import FacturesOptions, build_app
from services.factures.tables import Invoice
from services.factures.ubl import MAX_DOCUMENT_BYTES
from tests.support.servers import serving

pytestmark = pytest.mark.integration

SAMBREVILLE, LIEGE, UNCONFIGURED = "92137", "62063", "57081"
SAMBREVILLE_PARTICIPANT, LIEGE_PARTICIPANT = "0216987614", "0207123407"
SUPPLIER_ID = "0403170701"
ALL_SCOPES = ("factures:read", "factures:write")
XML = {"Content-Type": "application/xml"}
NS = {
    "cac": "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2",
    "cbc": "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2",
}

TENANT_FILE = """tenant: "{code}"
name: {name}
peppol:
  participant: "0208:{participant}"
services:
  factures:
    default_service: {default}
    approval_routes:
      - buyer_reference: "TRAV-*"
        service: travaux
"""


def write_tenants(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for code, name, participant, default in (
        (SAMBREVILLE, "Ville de Sambreville", SAMBREVILLE_PARTICIPANT, "finances"),
        (LIEGE, "Ville de Liège", LIEGE_PARTICIPANT, "comptabilite"),
    ):
        text = TENANT_FILE.format(code=code, name=name, participant=participant, default=default)
        (directory / f"{code}.yaml").write_text(text, "utf-8")
    return directory


def settings_for(hub_settings: HubSettings, tmp_path: Path, **changes: Any) -> HubSettings:
    return hub_settings.model_copy(
        update={"tenants_dir": write_tenants(tmp_path / "tenants"), **changes}
    )


def invoice_xml(
    number: str = "F2026-0001",
    *,
    issue_date: str = "2026-03-02",
    buyer: str = SAMBREVILLE_PARTICIPANT,
    buyer_reference: str | None = "TRAV-2026-17",
    seller_vat: str = "BE" + SUPPLIER_ID,
    seller_endpoint: str | None = SUPPLIER_ID,
    lines: tuple[tuple[str, str], ...] = (("2", "100.00"),),
    vat_category: str = "S",
    payable_delta: str = "0",
    kind: str = "Invoice",
    preceding: str | None = None,
) -> bytes:
    """A Peppol BIS Billing 3.0 invoice (or credit note) that passes every rule by default."""
    rate = Decimal(21)
    amounts = [(Decimal(q), Decimal(p)) for q, p in lines]
    net = sum((q * p for q, p in amounts), Decimal(0)).quantize(Decimal("0.01"))
    vat = (net * rate / 100).quantize(Decimal("0.01"))
    total = net + vat
    invoice = kind == "Invoice"
    line_tag = "InvoiceLine" if invoice else "CreditNoteLine"
    quantity_tag = "InvoicedQuantity" if invoice else "CreditedQuantity"
    tax = "<cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme>"
    body_lines = "".join(
        f"<cac:{line_tag}><cbc:ID>{n}</cbc:ID>"
        f'<cbc:{quantity_tag} unitCode="C62">{q}</cbc:{quantity_tag}>'
        f'<cbc:LineExtensionAmount currencyID="EUR">{(q * p).quantize(Decimal("0.01"))}'
        f"</cbc:LineExtensionAmount><cac:Item><cbc:Name>Article {n}</cbc:Name>"
        f"<cac:ClassifiedTaxCategory><cbc:ID>{vat_category}</cbc:ID>"
        f"<cbc:Percent>{rate}</cbc:Percent>{tax}</cac:ClassifiedTaxCategory></cac:Item>"
        f'<cac:Price><cbc:PriceAmount currencyID="EUR">{p}</cbc:PriceAmount></cac:Price>'
        f"</cac:{line_tag}>"
        for n, (q, p) in enumerate(amounts, start=1)
    )
    optional = "".join(
        (
            "<cbc:DueDate>2026-04-01</cbc:DueDate>" if invoice else "",
            f"<cbc:{kind}TypeCode>{'380' if invoice else '381'}</cbc:{kind}TypeCode>",
            "<cbc:DocumentCurrencyCode>EUR</cbc:DocumentCurrencyCode>",
            f"<cbc:BuyerReference>{buyer_reference}</cbc:BuyerReference>"
            if buyer_reference
            else "",
            "<cac:BillingReference><cac:InvoiceDocumentReference>"
            f"<cbc:ID>{preceding}</cbc:ID></cac:InvoiceDocumentReference></cac:BillingReference>"
            if preceding
            else "",
        )
    )
    seller_address = (
        f'<cbc:EndpointID schemeID="0208">{seller_endpoint}</cbc:EndpointID>'
        if seller_endpoint
        else ""
    )
    address = (
        "<cac:PostalAddress><cbc:StreetName>{street}</cbc:StreetName><cbc:CityName>{city}"
        "</cbc:CityName><cbc:PostalZone>5000</cbc:PostalZone><cac:Country>"
        "<cbc:IdentificationCode>BE</cbc:IdentificationCode></cac:Country></cac:PostalAddress>"
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<{kind} xmlns="urn:oasis:names:specification:ubl:schema:xsd:{kind}-2"
  xmlns:cac="{NS["cac"]}" xmlns:cbc="{NS["cbc"]}">
<cbc:CustomizationID>urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0</cbc:CustomizationID>
<cbc:ProfileID>urn:fdc:peppol.eu:2017:poacc:billing:01:1.0</cbc:ProfileID>
<cbc:ID>{number}</cbc:ID><cbc:IssueDate>{issue_date}</cbc:IssueDate>{optional}
<cac:AccountingSupplierParty><cac:Party>{seller_address}
{address.format(street="Rue de la Station 1", city="Namur")}
<cac:PartyTaxScheme><cbc:CompanyID>{seller_vat}</cbc:CompanyID>{tax}</cac:PartyTaxScheme>
<cac:PartyLegalEntity><cbc:RegistrationName>Entreprise Dupont SA</cbc:RegistrationName>
<cbc:CompanyID schemeID="0208">{SUPPLIER_ID}</cbc:CompanyID></cac:PartyLegalEntity>
</cac:Party></cac:AccountingSupplierParty>
<cac:AccountingCustomerParty><cac:Party>
<cbc:EndpointID schemeID="0208">{buyer}</cbc:EndpointID>
{address.format(street="Grand-Place 1", city="Sambreville")}
<cac:PartyLegalEntity><cbc:RegistrationName>Ville</cbc:RegistrationName></cac:PartyLegalEntity>
</cac:Party></cac:AccountingCustomerParty>
<cac:PaymentMeans><cbc:PaymentMeansCode>30</cbc:PaymentMeansCode>
<cac:PayeeFinancialAccount><cbc:ID>BE68539007547034</cbc:ID></cac:PayeeFinancialAccount>
</cac:PaymentMeans>
<cac:TaxTotal><cbc:TaxAmount currencyID="EUR">{vat}</cbc:TaxAmount><cac:TaxSubtotal>
<cbc:TaxableAmount currencyID="EUR">{net}</cbc:TaxableAmount>
<cbc:TaxAmount currencyID="EUR">{vat}</cbc:TaxAmount>
<cac:TaxCategory><cbc:ID>{vat_category}</cbc:ID><cbc:Percent>{rate}</cbc:Percent>{tax}
</cac:TaxCategory></cac:TaxSubtotal></cac:TaxTotal>
<cac:LegalMonetaryTotal>
<cbc:LineExtensionAmount currencyID="EUR">{net}</cbc:LineExtensionAmount>
<cbc:TaxExclusiveAmount currencyID="EUR">{net}</cbc:TaxExclusiveAmount>
<cbc:TaxInclusiveAmount currencyID="EUR">{total}</cbc:TaxInclusiveAmount>
<cbc:PayableAmount currencyID="EUR">{total + Decimal(payable_delta)}</cbc:PayableAmount>
</cac:LegalMonetaryTotal>{body_lines}
</{kind}>""".encode()


INVOICE_DOCUMENT_TYPE = (
    "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2::Invoice"
    "##urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0::2.1"
)
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE Invoice [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2">&secret;</Invoice>"""


def auth(
    settings: HubSettings, tenant: str = SAMBREVILLE, scopes: tuple[str, ...] = ALL_SCOPES
) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(settings, tenant, list(scopes), 'clerk-1')}"}


@dataclass
class Factures:
    """A factures app served on 127.0.0.1, with a client and a view of its database."""

    app: FastAPI
    http: httpx.AsyncClient
    settings: HubSettings

    def auth(self, tenant: str = SAMBREVILLE, **changes: Any) -> dict[str, str]:
        return auth(self.settings, tenant, **changes)

    async def upload(self, content: bytes, tenant: str = SAMBREVILLE) -> httpx.Response:
        headers = {**self.auth(tenant), **XML}
        return await self.http.post("/v1/invoices", content=content, headers=headers)

    async def accepted(self, content: bytes) -> dict[str, Any]:
        response = await self.upload(content)
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        assert body["state"] == "to_approve", body["rejection_reasons"]
        return body

    async def outbox(self) -> list[OutboxMessage]:
        async with self.app.state.sessions() as session:
            rows = await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
            return list(rows.all())

    async def events(self, invoice_id: str | None = None) -> list[CloudEvent]:
        events = [from_record(row.headers, row.value) for row in await self.outbox()]
        return [e for e in events if invoice_id is None or e.subject == invoice_id]

    async def responses(self, invoice_id: str) -> list[InvoiceResponseRequested]:
        return [
            event.data_as(InvoiceResponseRequested)
            for event in await self.events(invoice_id)
            if event.type == InvoiceResponseRequested.TYPE
        ]

    async def stored(self) -> int:
        async with self.app.state.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(Invoice)) or 0)


@contextlib.asynccontextmanager
async def running(
    settings: HubSettings, database: tuple[str, str | None], **options: Any
) -> AsyncIterator[Factures]:
    url, schema = database
    app = build_app(
        settings,
        FacturesOptions(
            database_url=url, database_schema=schema, **{"background": False, **options}
        ),
    )
    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
        yield Factures(app, http, settings)


@pytest.fixture
async def factures(
    hub_settings: HubSettings, tmp_path: Path, database: tuple[str, str | None]
) -> AsyncIterator[Factures]:
    async with running(settings_for(hub_settings, tmp_path), database) as served:
        yield served


def problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"].endswith("/" + slug), body
    return body


def statuses_of(responses: list[InvoiceResponseRequested]) -> list[str]:
    return [response.status for response in responses]


def reason_codes(response: InvoiceResponseRequested) -> list[tuple[str, str]]:
    root = etree.fromstring(base64.b64decode(response.application_response_base64))
    return [
        (
            status.findtext("cbc:StatusReasonCode", namespaces=NS) or "",
            status.findtext("cbc:StatusReason", namespaces=NS) or "",
        )
        for status in root.iterfind(".//cac:Status", NS)
    ]


# -- reception -------------------------------------------------------------------------


async def test_an_uploaded_invoice_is_checked_and_sent_to_its_service_for_approval(
    factures: Factures,
) -> None:
    response = await factures.upload(invoice_xml())
    assert response.status_code == 201, response.text
    invoice = response.json()
    assert response.headers["location"] == f"/v1/invoices/{invoice['id']}"
    assert (invoice["state"], invoice["assigned_service"]) == ("to_approve", "travaux")
    assert (invoice["kind"], invoice["number"], invoice["payable_amount"]) == (
        "Invoice",
        "F2026-0001",
        "242.00",
    )
    assert [step["state"] for step in invoice["history"]] == [
        "received",
        "validated",
        "to_approve",
    ]
    events = await factures.events(invoice["id"])
    assert [event.type for event in events] == [
        InvoiceReceived.TYPE,
        InvoiceResponseRequested.TYPE,
        InvoiceValidated.TYPE,
        InvoiceApprovalRequested.TYPE,
        InvoiceResponseRequested.TYPE,
    ]
    assert {(e.tenant, e.subject, e.topic) for e in events} == {
        (SAMBREVILLE, invoice["id"], "factures.events")
    }
    answers = await factures.responses(invoice["id"])
    assert statuses_of(answers) == ["AB", "IP"]
    assert (answers[0].sender.identifier, answers[0].receiver.identifier) == (
        SAMBREVILLE_PARTICIPANT,
        SUPPLIER_ID,
    )

    original = await factures.http.get(f"/v1/invoices/{invoice['id']}/ubl", headers=factures.auth())
    assert original.content == invoice_xml()
    assert original.headers["content-type"] == "application/xml"


async def test_the_same_upload_twice_is_one_invoice_and_a_second_copy_a_rejected_duplicate(
    factures: Factures,
) -> None:
    first = await factures.accepted(invoice_xml())
    again = await factures.upload(invoice_xml())
    assert (again.status_code, again.json()["id"]) == (200, first["id"])

    copy = await factures.upload(invoice_xml(lines=(("1", "200.00"),)))  # other bytes
    assert copy.status_code == 201, copy.text
    duplicate = copy.json()
    assert duplicate["state"] == "rejected"
    [reason] = duplicate["rejection_reasons"]
    assert reason["rule"] == "DUPLICATE"
    assert "F2026-0001" in reason["text"] and "already received" in reason["text"]
    assert statuses_of(await factures.responses(duplicate["id"])) == ["AB", "RE"]
    # Another number, or another supplier, is another invoice.
    await factures.accepted(invoice_xml("F2026-0002"))
    await factures.accepted(invoice_xml(seller_vat="BE0202239951"))


async def test_a_number_received_again_with_another_issue_date_is_a_rejected_duplicate(
    factures: Factures,
) -> None:
    # A re-issued copy: accepted twice, both were approved (AP sent twice) and the
    # accounting software refused the second for good (DUPLICATE_INVOICE).
    first = await factures.accepted(invoice_xml("F-77", issue_date="2026-03-02"))
    reissued = await factures.upload(invoice_xml("f-77 ", issue_date="2026-03-03"))
    assert reissued.status_code == 201, reissued.text
    assert reissued.json()["state"] == "rejected"
    [reason] = reissued.json()["rejection_reasons"]
    assert reason["rule"] == "DUPLICATE" and "f-77" in reason["text"]
    assert "whatever its issue date" in reason["text"]
    assert statuses_of(await factures.responses(reissued.json()["id"])) == ["AB", "RE"]
    kept = await factures.http.get(f"/v1/invoices/{first['id']}", headers=factures.auth())
    assert kept.json()["state"] == "to_approve"


@pytest.mark.parametrize(
    ("content", "rule", "status_reason", "words"),
    [
        (invoice_xml(payable_delta="5"), "BR-CO-16", "PRI", "amount due is not the total"),
        (invoice_xml(vat_category="X"), "BR-CL-17", "LEG", "VAT category is unknown"),
        (invoice_xml(buyer_reference=None), "PEPPOL-EN16931-R003", "REF", "which service"),
        # Longer than its column: a 500 on PostgreSQL, and the invoice was not received.
        (invoice_xml("F" * 201), "HUB-FIELD-LENGTH", "OTH", "invoice number is 201 characters"),
        (invoice_xml(buyer_reference="R" * 300), "HUB-FIELD-LENGTH", "OTH", "keeps at most 200"),
        # Amounts are kept as text too (64 characters): they were not checked, and 500.
        (
            invoice_xml().replace(b">242.00</cbc:P", b">1%b.00</cbc:P" % (b"0" * 70)),
            "HUB-FIELD-LENGTH",
            "OTH",
            "BT-115 amount due is 74 characters long",
        ),
    ],
    ids=[
        "wrong-totals",
        "unknown-vat-category",
        "no-buyer-reference",
        "number-too-long",
        "buyer-reference-too-long",
        "amount-too-long",
    ],
)
async def test_a_faulty_invoice_is_stored_rejected_with_a_readable_reason_and_answered_re(
    factures: Factures, content: bytes, rule: str, status_reason: str, words: str
) -> None:
    response = await factures.upload(content)
    assert response.status_code == 201, response.text
    invoice = response.json()
    assert invoice["state"] == "rejected"
    assert rule in {finding["rule"] for finding in invoice["findings"]}
    reason = next(r for r in invoice["rejection_reasons"] if r["rule"] == rule)
    assert words in reason["text"] and reason["code"] == status_reason
    assert invoice["history"][-1]["response_status"] == "RE"

    [rejected] = [e for e in await factures.events(invoice["id"]) if e.type == InvoiceRejected.TYPE]
    assert words in rejected.data_as(InvoiceRejected).reason
    answers = await factures.responses(invoice["id"])
    assert statuses_of(answers) == ["AB", "RE"]
    assert (status_reason, reason["text"]) in reason_codes(answers[1])

    listed = await factures.http.get("/v1/invoices?state=rejected", headers=factures.auth())
    assert [item["id"] for item in listed.json()["items"]] == [invoice["id"]]
    kept = await factures.http.get(f"/v1/invoices/{invoice['id']}/ubl", headers=factures.auth())
    assert kept.content == content


def with_empty_notes(content: bytes, count: int) -> bytes:
    """``content`` with ``count`` empty notes (BT-22): one PEPPOL-EN16931-R008 finding each."""
    type_code = b"<cbc:InvoiceTypeCode>380</cbc:InvoiceTypeCode>"
    return content.replace(type_code, type_code + b"<cbc:Note></cbc:Note>" * count)


async def test_a_rejection_event_carries_some_findings_of_each_rule_and_how_many_more(
    factures: Factures,
) -> None:
    # 70,000 findings made an 11 MB InvoiceRejected: never published, its RE stuck behind it.
    response = await factures.upload(with_empty_notes(invoice_xml(payable_delta="5"), 25))
    assert response.status_code == 201, response.text
    invoice = response.json()
    assert invoice["state"] == "rejected"
    rules = [finding["rule"] for finding in invoice["findings"]]
    assert rules.count("PEPPOL-EN16931-R008") == 25  # the invoice keeps up to 100 of each

    [rejected] = [e for e in await factures.events(invoice["id"]) if e.type == InvoiceRejected.TYPE]
    carried = rejected.data_as(InvoiceRejected).findings
    carried_rules = Counter(finding.rule for finding in carried)
    assert carried_rules["PEPPOL-EN16931-R008"] == registry.FINDINGS_PER_RULE_IN_EVENTS
    assert carried_rules["BR-CO-16"] == 1  # the other rules' findings all go
    more = carried[-1]
    assert (more.rule, carried_rules[registry.MORE_FINDINGS]) == (registry.MORE_FINDINGS, 1)
    assert more.flag == "fatal"
    assert more.message.startswith("…and 15 more findings (PEPPOL-EN16931-R008 15)")
    assert f"/v1/invoices/{invoice['id']}" in more.message
    assert statuses_of(await factures.responses(invoice["id"])) == ["AB", "RE"]


async def test_the_invoice_keeps_a_hundred_findings_of_each_rule_and_how_many_more(
    factures: Factures,
) -> None:
    # All of them were tens of megabytes of JSON, read at each load, for 4 MB of notes.
    response = await factures.upload(with_empty_notes(invoice_xml(), 130))
    assert response.status_code == 201, response.text
    invoice = response.json()
    rules = Counter(finding["rule"] for finding in invoice["findings"])
    assert rules["PEPPOL-EN16931-R008"] == registry.FINDINGS_PER_RULE_KEPT
    more = invoice["findings"][-1]
    assert (more["rule"], rules[registry.MORE_FINDINGS]) == (registry.MORE_FINDINGS, 1)
    assert more["message"].startswith("…and 30 more findings (PEPPOL-EN16931-R008 30)")
    assert f"/v1/invoices/{invoice['id']}/ubl" in more["message"]
    stored = await factures.http.get(f"/v1/invoices/{invoice['id']}", headers=factures.auth())
    assert stored.json()["findings"] == invoice["findings"]


async def test_an_invoice_too_large_to_hand_to_accounting_is_rejected_at_reception(
    factures: Factures,
) -> None:
    # Valid, within MAX_DOCUMENT_BYTES, but its approval (the UBL in base64 and the lines)
    # would be a 9.8 MB event: approved, it was never booked and its AP never sent.
    name = b"A" * (MAX_DOCUMENT_BYTES - len(invoice_xml()) - 1_000)
    content = invoice_xml().replace(
        b"<cbc:Name>Article 1</cbc:Name>", b"<cbc:Name>%b</cbc:Name>" % name
    )
    assert len(content) <= MAX_DOCUMENT_BYTES

    response = await factures.upload(content)
    assert response.status_code == 201, response.text
    invoice = response.json()
    assert invoice["state"] == "rejected"
    [reason] = invoice["rejection_reasons"]
    assert reason["rule"] == registry.TOO_LARGE_TO_HAND_OVER
    assert "too large to hand to the commune's accounting software" in reason["text"]
    [_, refusal] = await factures.responses(invoice["id"])
    assert refusal.status == "RE" and (reason["code"], reason["text"]) in reason_codes(refusal)
    for row in await factures.outbox():  # every event of it can be sent
        assert len(row.value) + RECORD_OVERHEAD_BYTES <= MAX_REQUEST_BYTES


async def test_approving_an_invoice_whose_event_cannot_be_sent_is_refused_and_changes_nothing(
    factures: Factures, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An invoice received before reception checked the approval's size.
    monkeypatch.setattr(registry, "_too_large_to_hand_over", lambda invoice, content: [])
    name = b"A" * (MAX_DOCUMENT_BYTES - len(invoice_xml()) - 1_000)
    content = invoice_xml().replace(
        b"<cbc:Name>Article 1</cbc:Name>", b"<cbc:Name>%b</cbc:Name>" % name
    )
    invoice = await factures.accepted(content)
    before = [row.id for row in await factures.outbox()]

    url = f"/v1/invoices/{invoice['id']}"
    refused = problem(
        await factures.http.post(f"{url}/approve", headers=factures.auth()), 413, "event-too-large"
    )
    assert refused["max_bytes"] == MAX_REQUEST_BYTES
    assert "dispute it" in refused["detail"]
    assert [row.id for row in await factures.outbox()] == before  # no event waits for good
    assert (await factures.http.get(url, headers=factures.auth())).json()["state"] == "to_approve"


@pytest.mark.parametrize(
    "scheme",
    [
        None,  # no endpoint at all
        "\u0660\u0662\u0660\u0668",  # 0208 in Arabic-Indic digits: read as digits, a 500
    ],
)
async def test_an_upload_without_a_supplier_endpoint_gets_no_answer(
    factures: Factures, scheme: str | None
) -> None:
    content = invoice_xml(seller_endpoint=None if scheme is None else SUPPLIER_ID)
    if scheme is not None:
        content = content.replace(
            f'<cbc:EndpointID schemeID="0208">{SUPPLIER_ID}'.encode(),
            f'<cbc:EndpointID schemeID="{scheme}">{SUPPLIER_ID}'.encode(),
        )
    invoice = await factures.upload(content)
    assert invoice.status_code == 201, invoice.text
    assert invoice.json()["supplier_endpoint"] is None
    assert await factures.responses(invoice.json()["id"]) == []


async def test_a_credit_note_is_linked_to_its_invoice_and_refused_for_an_unknown_one(
    factures: Factures,
) -> None:
    invoice = await factures.accepted(invoice_xml("F2026-0009"))
    credit = await factures.accepted(invoice_xml("NC-1", kind="CreditNote", preceding="F2026-0009"))
    assert (credit["kind"], credit["credited_invoice_id"]) == ("CreditNote", invoice["id"])

    orphan = await factures.upload(invoice_xml("NC-2", kind="CreditNote", preceding="F1999-1"))
    assert orphan.json()["state"] == "rejected"
    [reason] = orphan.json()["rejection_reasons"]
    assert reason["code"] == "REF" and "F1999-1" in reason["text"]
    assert "never received" in reason["text"]

    # The reference compared as duplicates are: case and spaces aside.
    typed = await factures.accepted(invoice_xml("NC-3", kind="CreditNote", preceding="f2026-0009 "))
    assert typed["credited_invoice_id"] == invoice["id"]
    # A supplier's number is booked once, invoice or credit note (the accounting software
    # refuses the second with DUPLICATE_INVOICE): credit note 2026-17 is a duplicate.
    await factures.accepted(invoice_xml("2026-17"))
    same_number = await factures.upload(
        invoice_xml("2026-17", kind="CreditNote", preceding="F2026-0009")
    )
    assert same_number.json()["state"] == "rejected"
    [reason] = same_number.json()["rejection_reasons"]
    assert reason["rule"] == "DUPLICATE" and "as an invoice" in reason["text"]
    # A credit note is settled in the accounting software, never paid (no PD).
    paid = await factures.http.post(
        f"/v1/invoices/{credit['id']}/payment",
        json={"paid_on": "2026-03-05"},
        headers=factures.auth(),
    )
    problem(paid, 409, "credit-note-not-payable")


@pytest.mark.parametrize(
    ("buyer", "slug"),
    [(LIEGE_PARTICIPANT, "invoice-for-another-buyer"), ("0999999999", "invoice-for-unknown-buyer")],
)
async def test_an_invoice_for_another_buyer_is_refused_and_not_stored(
    factures: Factures, buyer: str, slug: str
) -> None:
    body = problem(await factures.upload(invoice_xml(buyer=buyer)), 422, slug)
    assert f"0208:{buyer}" in body["detail"]
    assert await factures.stored() == 0


async def test_unreadable_or_dangerous_uploads_are_refused_with_the_reason(
    factures: Factures,
) -> None:
    attack = problem(await factures.upload(XXE), 422, "unreadable-invoice")
    assert attack["code"] == "entity-forbidden" and "entities are refused" in attack["detail"]
    garbage = problem(await factures.upload(b"%PDF-1.4 not xml"), 422, "unreadable-invoice")
    assert garbage["code"] == "not-xml"
    wrong_type = await factures.http.post(
        "/v1/invoices",
        content=invoice_xml(),
        headers={**factures.auth(), "Content-Type": "application/json"},
    )
    problem(wrong_type, 415, "not-xml-media-type")
    assert await factures.stored() == 0


@pytest.mark.parametrize("character", [b"\x01", b"\x00"], ids=["control", "nul"])
async def test_a_peppol_doctype_with_a_control_character_is_kept_rejected_and_answered_re(
    factures: Factures, character: bytes
) -> None:
    # The refusal quotes the DOCTYPE's URL. lxml refused the character in the RE answer,
    # PostgreSQL a NUL in the history: the handler failed at every attempt, nothing kept.
    prolog = b'<?xml version="1.0"?>\n<!DOCTYPE Invoice SYSTEM "http://x/%b.dtd">\n' % character
    content = prolog + invoice_xml().split(b"?>", 1)[1]
    data = PeppolDocumentReceived(
        access_point_message_id="ap-1",
        sender=PeppolEndpoint(scheme="0208", identifier=SUPPLIER_ID),
        receiver=PeppolEndpoint(scheme="0208", identifier=SAMBREVILLE_PARTICIPANT),
        document_type=INVOICE_DOCUMENT_TYPE,
        document_base64=base64.b64encode(content).decode(),
        sha256=hashlib.sha256(content).hexdigest(),
    )
    event = new_event(data, tenant=SAMBREVILLE, subject="ap-1", source="urn:hub:gateway")
    handle = handlers(factures.app.state.tenants)[PeppolDocumentReceived.TYPE]
    async with transaction(factures.app.state.sessions, None) as session:
        await handle(session, event)  # as the consumer calls it, in its transaction

    listed = await factures.http.get("/v1/invoices?channel=peppol", headers=factures.auth())
    [invoice] = listed.json()["items"]
    assert invoice["state"] == "rejected"
    answers = await factures.responses(invoice["id"])
    assert statuses_of(answers) == ["AB", "RE"]
    [(code, text)] = reason_codes(answers[1])
    assert code == "UNR" and "http://x/\ufffd.dtd" in text


async def received_over_peppol(
    factures: Factures, message_id: str, content: bytes, tenant: str = SAMBREVILLE
) -> None:
    """``content`` as the gateway hands a Peppol message to the consumer's handler."""
    data = PeppolDocumentReceived(
        access_point_message_id=message_id,
        sender=PeppolEndpoint(scheme="0208", identifier=SUPPLIER_ID),
        receiver=PeppolEndpoint(scheme="0208", identifier=SAMBREVILLE_PARTICIPANT),
        document_type=INVOICE_DOCUMENT_TYPE,
        document_base64=base64.b64encode(content).decode(),
        sha256=hashlib.sha256(content).hexdigest(),
    )
    event = new_event(data, tenant=tenant, subject=message_id, source="urn:hub:gateway")
    handle = handlers(factures.app.state.tenants)[PeppolDocumentReceived.TYPE]
    async with transaction(factures.app.state.sessions, None) as session:
        await handle(session, event)


def answered_as(response: InvoiceResponseRequested) -> tuple[str | None, str | None]:
    """The supplier's legal name and the document's type code an answer gives."""
    root = etree.fromstring(base64.b64decode(response.application_response_base64))
    name = "cac:ReceiverParty/cac:PartyLegalEntity/cbc:RegistrationName"
    type_code = "cac:DocumentResponse/cac:DocumentReference/cbc:DocumentTypeCode"
    return root.findtext(name, None, NS), root.findtext(type_code, None, NS)


async def test_answers_name_the_supplier_and_the_document_type_even_when_unknown(
    factures: Factures,
) -> None:
    nameless = invoice_xml("F-NONAME").replace(
        b"<cbc:RegistrationName>Entreprise Dupont SA</cbc:RegistrationName>", b""
    )
    factored = invoice_xml("F-393").replace(
        b"<cbc:InvoiceTypeCode>380<", b"<cbc:InvoiceTypeCode>393<"
    )
    for message_id, content in (
        ("ap-pdf", b"%PDF-1.4 not an invoice"),
        ("ap-noname", nameless),
        ("ap-393", factored),
    ):
        await received_over_peppol(factures, message_id, content)

    supplier = f"0208:{SUPPLIER_ID}"
    # T111 requires both (B02002, B03902): without them the supplier's access point refused
    # the answers, and the rejections of unreadable documents never reached the supplier.
    expected = {
        "ap-pdf": (["AB", "RE"], (supplier, "380")),
        "ap-noname": (["AB", "RE"], (supplier, "380")),
        "ap-393": (["AB", "IP"], ("Entreprise Dupont SA", "393")),  # echoed, not 380
    }
    for message_id, (statuses, answered) in expected.items():
        listed = await factures.http.get(
            "/v1/invoices", params={"peppol_message_id": message_id}, headers=factures.auth()
        )
        [invoice] = listed.json()["items"]
        answers = await factures.responses(invoice["id"])
        assert statuses_of(answers) == statuses, message_id
        assert {answered_as(answer) for answer in answers} == {answered}, message_id


async def test_an_invoice_with_more_lines_than_allowed_is_refused(factures: Factures) -> None:
    from services.factures.ubl import MAX_LINES

    lines = (("1", "1.00"),) * (MAX_LINES + 1)
    body = problem(await factures.upload(invoice_xml(lines=lines)), 422, "unreadable-invoice")
    assert body["code"] == "too-many-lines" and "split it" in body["detail"]


# -- the clerks' decisions -------------------------------------------------------------


async def test_approval_hands_the_invoice_to_accounting_once_and_answers_ap(
    factures: Factures,
) -> None:
    invoice = await factures.accepted(invoice_xml())
    url = f"/v1/invoices/{invoice['id']}"
    approved = await factures.http.post(f"{url}/approve", headers=factures.auth())
    assert approved.status_code == 200, approved.text
    assert (approved.json()["state"], approved.json()["approved_by"]) == ("approved", "clerk-1")

    [event] = [e for e in await factures.events(invoice["id"]) if e.type == InvoiceApproved.TYPE]
    document = event.data_as(InvoiceApproved).document
    assert (document.number, document.payable_amount, document.supplier.vat_id) == (
        "F2026-0001",
        Decimal("242.00"),
        "BE" + SUPPLIER_ID,
    )
    assert document.supplier.iban == "BE68539007547034"
    assert [line.net_amount for line in document.lines] == [Decimal("200.00")]
    assert base64.b64decode(document.ubl_base64) == invoice_xml()
    assert statuses_of(await factures.responses(invoice["id"]))[-1] == "AP"

    again = problem(
        await factures.http.post(f"{url}/approve", headers=factures.auth()),
        409,
        "invalid-invoice-state",
    )
    assert "is approved" in again["detail"] and again["state"] == "approved"
    dispute = await factures.http.post(
        f"{url}/dispute", json={"reason": "Wrong quantity"}, headers=factures.auth()
    )
    problem(dispute, 409, "invalid-invoice-state")
    early = await factures.http.post(
        f"{url}/payment", json={"paid_on": "2026-03-05"}, headers=factures.auth()
    )
    assert "is approved" in problem(early, 409, "invalid-invoice-state")["detail"]
    # A paid amount is money: an exponent of a billion, or a tenth of a cent, is refused.
    for amount in ("1E+999999999", "12.345"):
        absurd = await factures.http.post(
            f"{url}/payment",
            json={"paid_on": "2026-03-05", "amount": amount},
            headers=factures.auth(),
        )
        problem(absurd, 422, "invalid-request")


async def test_an_invoice_the_accounting_software_refused_is_approved_again_not_stuck(
    factures: Factures,
) -> None:
    invoice = await factures.accepted(invoice_xml())
    url = f"/v1/invoices/{invoice['id']}"
    first = await factures.http.post(f"{url}/approve", headers=factures.auth())
    assert first.status_code == 200, first.text
    # While the booking is under way, a second approval would hand it over twice.
    pending = await factures.http.post(f"{url}/approve", headers=factures.auth())
    problem(pending, 409, "invalid-invoice-state")
    refusal = "the accounting software refused it: UNKNOWN_SUPPLIER"
    async with transaction(factures.app.state.sessions, None) as session:
        stored = await registry.find_invoice(session, SAMBREVILLE, invoice["id"])
        assert registry.record_booking(session, stored, NotBooked(refusal), utcnow())

    # The supplier is created in the accounting software; the clerk approves again.
    again = await factures.http.post(f"{url}/approve", headers=factures.auth())
    assert again.status_code == 200, again.text
    assert again.json()["state"] == "approved" and again.json()["booking_failure"] is None
    approvals = [e for e in await factures.events(invoice["id"]) if e.type == InvoiceApproved.TYPE]
    # A new event, so a new idempotency key: a new file for Stésud, a new key for Inforius
    # (a replay of the first found the same refusal again).
    assert len({approval.id for approval in approvals}) == 2
    assert statuses_of(await factures.responses(invoice["id"])).count("AP") == 1
    notes = [step["note"] or "" for step in again.json()["history"]]
    assert any("approved again after a failed booking" in note for note in notes)
    # Approved again, it waits for its new booking: no third hand-over meanwhile.
    twice = await factures.http.post(f"{url}/approve", headers=factures.auth())
    problem(twice, 409, "invalid-invoice-state")


async def test_a_dispute_asks_the_supplier_with_the_clerks_reason(factures: Factures) -> None:
    invoice = await factures.accepted(invoice_xml())
    disputed = await factures.http.post(
        f"/v1/invoices/{invoice['id']}/dispute",
        json={"reason": "Only one article was delivered.", "reason_code": "QTY"},
        headers=factures.auth(),
    )
    assert disputed.status_code == 200, disputed.text
    assert disputed.json()["state"] == "disputed"
    answer = (await factures.responses(invoice["id"]))[-1]
    assert answer.status == "UQ"
    assert reason_codes(answer) == [("QTY", "Only one article was delivered.")]
    bad_code = await factures.http.post(
        f"/v1/invoices/{invoice['id']}/dispute",
        json={"reason": "x" * 5, "reason_code": "NOPE"},
        headers=factures.auth(),
    )
    problem(bad_code, 422, "invalid-request")


async def test_a_dispute_cannot_give_the_reason_code_peppol_keeps_for_payments(
    factures: Factures,
) -> None:
    invoice = await factures.accepted(invoice_xml())
    answers_before = len(await factures.responses(invoice["id"]))
    prepaid = await factures.http.post(
        f"/v1/invoices/{invoice['id']}/dispute",
        json={"reason": "Part of it was paid in advance.", "reason_code": "PPD"},
        headers=factures.auth(),
    )
    # A UQ with PPD breaks PEPPOL-T111-R005: the supplier's access point refused it.
    refused = problem(prepaid, 422, "invalid-request")
    assert "PPD" in refused["detail"] and "only with a payment" in refused["detail"]
    assert len(await factures.responses(invoice["id"])) == answers_before
    unchanged = await factures.http.get(f"/v1/invoices/{invoice['id']}", headers=factures.auth())
    assert unchanged.json()["state"] == "to_approve"


async def test_an_invoice_with_nothing_due_is_never_paid(factures: Factures) -> None:
    # A correction invoice (380) with a negative total, as Peppol's own example has one.
    invoice = await factures.accepted(invoice_xml("F-NEG-1", lines=(("-1", "100.00"),)))
    url = f"/v1/invoices/{invoice['id']}"
    approved = await factures.http.post(f"{url}/approve", headers=factures.auth())
    assert approved.status_code == 200, approved.text
    async with transaction(factures.app.state.sessions, None) as session:
        stored = await registry.find_invoice(session, SAMBREVILLE, invoice["id"])
        assert registry.record_booking(session, stored, Booked("ACC-1", "stesud"), utcnow())
    for body in ({"paid_on": "2026-03-05"}, {"paid_on": "2026-03-05", "amount": "10.00"}):
        paid = await factures.http.post(f"{url}/payment", json=body, headers=factures.auth())
        refused = problem(paid, 409, "nothing-to-pay")
        assert refused["amount_due"] == "-121.00" and "-121.00" in refused["detail"]
    # The supplier is never told PD for money they owe; nothing says it was paid.
    assert "PD" not in statuses_of(await factures.responses(invoice["id"]))
    assert InvoicePaid.TYPE not in {e.type for e in await factures.events(invoice["id"])}
    still = await factures.http.get(url, headers=factures.auth())
    assert still.json()["state"] == "booked"


async def scanned(factures: Factures, registration_number: str) -> str:
    """A scanned paper invoice to encode, as courrier's event registers it."""
    async with transaction(factures.app.state.sessions, None) as session:
        invoice = await registry.register_scan(
            session,
            tenant=SAMBREVILLE,
            mail_id=str(uuid.uuid4()),
            registration_number=registration_number,
            sender="Entreprise Dupont SA",
            assigned_service=None,
            now=utcnow(),
        )
    return invoice.id


async def test_two_scans_of_one_invoice_encoded_at_once_are_one_invoice_and_a_duplicate(
    factures: Factures,
) -> None:
    # The same paper invoice mailed twice, encoded by two clerks at the same moment.
    first_scan = await scanned(factures, "E2026/000041")
    second_scan = await scanned(factures, "E2026/000042")
    content = invoice_xml()
    buyer = registry.Buyer.of(factures.app.state.tenants[SAMBREVILLE])
    headers = {**factures.auth(), **XML}
    async with transaction(factures.app.state.sessions, None) as session:
        first = await registry.find_invoice(session, SAMBREVILLE, first_scan)
        await registry.encode(session, first, buyer, registry.examine(content), "clerk-1", utcnow())
        await session.flush()
        # The second encoding checks for duplicates before the first commits: on PostgreSQL
        # it cannot see it and then waits on its key, on SQLite it waits for its turn.
        second = asyncio.create_task(
            factures.http.post(f"/v1/invoices/{second_scan}/ubl", content=content, headers=headers)
        )
        if session.bind.dialect.name == "postgresql":
            waiting = text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            for _ in range(500):
                # Each look in a transaction of its own: a transaction sees one snapshot
                # of pg_stat_activity.
                async with factures.app.state.sessions() as observer:
                    if second.done() or await observer.scalar(waiting):
                        break
                await asyncio.sleep(0.02)
            assert not second.done(), second.result().text
        else:
            await asyncio.sleep(0.2)
    response = await second

    assert response.status_code == 200, response.text
    assert response.json()["state"] == "rejected"
    [reason] = response.json()["rejection_reasons"]
    assert reason["rule"] == "DUPLICATE" and "F2026-0001" in reason["text"]
    encoded = await factures.http.get(f"/v1/invoices/{first_scan}", headers=factures.auth())
    assert encoded.json()["state"] == "to_approve"


# -- tenants, listing, OpenAPI ---------------------------------------------------------


async def test_a_tenant_never_sees_or_acts_on_anothers_invoices(factures: Factures) -> None:
    invoice = await factures.accepted(invoice_xml())
    liege = factures.auth(LIEGE)
    for response in (
        await factures.http.get(f"/v1/invoices/{invoice['id']}", headers=liege),
        await factures.http.get(f"/v1/invoices/{invoice['id']}/ubl", headers=liege),
        await factures.http.post(f"/v1/invoices/{invoice['id']}/approve", headers=liege),
    ):
        problem(response, 404, "not-found")
    listed = (await factures.http.get("/v1/invoices", headers=liege)).json()
    assert (listed["items"], listed["total"]) == ([], 0)
    problem(await factures.upload(invoice_xml(), tenant=UNCONFIGURED), 403, "unknown-tenant")
    read_only = {**factures.auth(scopes=("factures:read",)), **XML}
    problem(
        await factures.http.post("/v1/invoices", content=invoice_xml(), headers=read_only),
        403,
        "forbidden",
    )


async def test_the_list_filters_by_state_and_service_and_pages(factures: Factures) -> None:
    for number in ("A-1", "A-2", "A-3"):
        await factures.accepted(invoice_xml(number))
    await factures.accepted(invoice_xml("B-1", buyer_reference="PO-77"))
    await factures.upload(invoice_xml("C-1", payable_delta="1"))

    async def listing(query: str) -> dict[str, Any]:
        response = await factures.http.get(f"/v1/invoices?{query}", headers=factures.auth())
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    page = await listing("state=to_approve&limit=2&offset=0")
    assert (page["total"], len(page["items"])) == (4, 2)
    assert [i["number"] for i in page["items"]] == ["B-1", "A-3"]
    assert [i["number"] for i in (await listing("assigned_service=finances"))["items"]] == ["B-1"]
    assert (await listing("state=rejected"))["total"] == 1
    problem(
        await factures.http.get("/v1/invoices?state=lost", headers=factures.auth()),
        422,
        "invalid-request",
    )


async def test_the_openapi_document_describes_the_invoice_routes(factures: Factures) -> None:
    document = (await factures.http.get("/openapi.json")).json()
    paths = document["paths"]
    for path in (
        "/v1/invoices",
        "/v1/invoices/{invoice_id}",
        "/v1/invoices/{invoice_id}/ubl",
        "/v1/invoices/{invoice_id}/approve",
        "/v1/invoices/{invoice_id}/dispute",
        "/v1/invoices/{invoice_id}/payment",
    ):
        assert path in paths, path
    upload = paths["/v1/invoices"]["post"]
    assert "application/xml" in upload["requestBody"]["content"]
    assert "application/problem+json" in upload["responses"]["422"]["content"]
