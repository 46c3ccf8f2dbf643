"""Factures' event consumer receiving several Peppol documents in one batch (one transaction).

The batch's invoices are written at its commit, not before each document's
lookups, so these tests prove that a lookup still sees the invoices received
earlier in the same batch. SQLite, no broker: the batch is handed to
``EventConsumer.handle_batch`` as the Kafka consumer would.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from contracts.envelope import headers_as_text, new_event, to_record
from contracts.events.peppol import PeppolDocumentReceived, PeppolEndpoint
from kernel.consumer import EventConsumer, Incoming
from kernel.tenants import load_tenants
from services.factures import registry
from services.factures.consumers import handlers
from services.factures.tables import MIGRATIONS, Invoice
from tests.integration.test_factures_api import (
    SAMBREVILLE,
    SAMBREVILLE_PARTICIPANT,
    SUPPLIER_ID,
    invoice_xml,
    write_tenants,
)
from tests.support.databases import sqlite_sessions

INVOICE_TYPE = (
    "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2::Invoice"
    "##urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0::2.1"
)
CREDIT_NOTE_TYPE = (
    "urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2::CreditNote"
    "##urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0::2.1"
)


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with sqlite_sessions(tmp_path / "factures.db", "factures", MIGRATIONS) as sessions:
        yield sessions


@pytest.fixture
def consumer(sessions: async_sessionmaker[AsyncSession], tmp_path: Path) -> EventConsumer:
    tenants = load_tenants(write_tenants(tmp_path / "tenants"))
    return EventConsumer(component="factures", sessions=sessions, handlers=handlers(tenants))


def document(content: bytes, message_id: str, document_type: str = INVOICE_TYPE) -> Incoming:
    data = PeppolDocumentReceived(
        access_point_message_id=message_id,
        sender=PeppolEndpoint(scheme="0208", identifier=SUPPLIER_ID),
        receiver=PeppolEndpoint(scheme="0208", identifier=SAMBREVILLE_PARTICIPANT),
        document_type=document_type,
        document_base64=base64.b64encode(content).decode(),
        sha256=hashlib.sha256(content).hexdigest(),
    )
    event = new_event(data, tenant=SAMBREVILLE, subject=message_id, source="urn:hub:gateway")
    record = to_record(event)
    return Incoming(headers_as_text(record.headers), record.value, record.topic)


async def invoices(sessions: async_sessionmaker[AsyncSession]) -> list[Invoice]:
    async with sessions() as session:
        query = select(Invoice).order_by(Invoice.created_at, Invoice.peppol_message_id)
        return list((await session.scalars(query)).all())


async def test_the_same_invoice_twice_in_one_batch_is_one_invoice_and_a_rejected_duplicate(
    consumer: EventConsumer, sessions: async_sessionmaker[AsyncSession]
) -> None:
    content = invoice_xml("F2026-0101")
    # Sent twice by the supplier's access point: two messages, one invoice.
    batch = [document(content, "ap-1"), document(content, "ap-2")]

    assert await consumer.handle_batch(batch) == ["handled", "handled"]

    first, second = await invoices(sessions)
    assert (first.peppol_message_id, first.state) == ("ap-1", "to_approve")
    assert (second.peppol_message_id, second.state) == ("ap-2", "rejected")
    [reason] = second.rejection_reasons
    assert reason["rule"] == "DUPLICATE"
    assert "F2026-0101" in reason["text"]


async def test_a_credit_note_in_the_batch_of_its_invoice_is_linked_to_it(
    consumer: EventConsumer, sessions: async_sessionmaker[AsyncSession]
) -> None:
    batch = [
        document(invoice_xml("F2026-0102"), "ap-1"),
        document(
            invoice_xml("NC-0102", kind="CreditNote", preceding="F2026-0102"),
            "ap-2",
            CREDIT_NOTE_TYPE,
        ),
    ]

    assert await consumer.handle_batch(batch) == ["handled", "handled"]

    invoice, credit_note = await invoices(sessions)
    assert credit_note.kind == "CreditNote"
    assert credit_note.state == "to_approve"
    assert credit_note.credited_invoice_id == invoice.id


async def test_one_peppol_message_published_twice_in_one_batch_is_one_invoice(
    consumer: EventConsumer, sessions: async_sessionmaker[AsyncSession]
) -> None:
    # Two events (two ids) for one access point message: e.g. two gateways' records of it.
    content = invoice_xml("F2026-0103")
    batch = [document(content, "ap-1"), document(content, "ap-1")]

    assert await consumer.handle_batch(batch) == ["handled", "handled"]

    [invoice] = await invoices(sessions)
    assert invoice.state == "to_approve"


async def test_a_batch_is_written_in_one_flush_at_its_commit(
    consumer: EventConsumer, sessions: async_sessionmaker[AsyncSession]
) -> None:
    batch = [document(invoice_xml(f"F2026-02{n:02}"), f"ap-{n}") for n in range(10)]
    flushes = 0

    def count(*args: object) -> None:
        nonlocal flushes
        flushes += 1

    event.listen(Session, "after_flush", count)
    try:
        assert await consumer.handle_batch(batch) == ["handled"] * 10
    finally:
        event.remove(Session, "after_flush", count)

    assert flushes == 1
    assert len(await invoices(sessions)) == 10


async def test_a_lookup_for_a_missing_value_finds_the_invoice_without_it(
    consumer: EventConsumer, sessions: async_sessionmaker[AsyncSession]
) -> None:
    # The lookups' statements are built once per set of columns: a None looked for must
    # still be IS NULL (a bound NULL matches nothing), and a later value must be bound anew.
    await consumer.handle_batch([document(b"not XML at all", "m1")])
    await consumer.handle_batch([document(invoice_xml(number="F-1"), "m2")])

    async with sessions() as session:
        unreadable = await registry._first_invoice(session, tenant=SAMBREVILLE, number=None)
        readable = await registry._first_invoice(session, tenant=SAMBREVILLE, number="F-1")
        unknown = await registry._first_invoice(session, tenant=SAMBREVILLE, number="F-2")

    assert unreadable is not None and unreadable.peppol_message_id == "m1"
    assert readable is not None and readable.peppol_message_id == "m2"
    assert unknown is None
