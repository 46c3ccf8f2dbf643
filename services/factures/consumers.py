"""Handlers of the events the invoice service reacts to.

- ``gateway.inbound``: a Peppol document fetched by the gateway becomes an
  invoice, whatever its content: an unreadable or invalid one is stored as
  rejected with its reasons (and the supplier told so), never dropped.
- ``courrier.events``: a scanned paper invoice (IMIO type ``FACT``) becomes an
  invoice to encode.
- ``gateway.receipts``: the accounting connector's receipt of an approved
  invoice books it under the accounting software's reference.

The consumer's inbox skips a redelivered event; a second event for the same
Peppol message or the same scan (a gateway that fetched twice) is skipped by
its message or mail id. An event naming nothing of ours is logged and skipped:
it must never stop the consumer, which would retry it forever.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping

import pybase64
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import raiseload

from contracts.envelope import CloudEvent
from contracts.events.courrier import TOPIC as COURRIER_TOPIC
from contracts.events.courrier import IncomingMailRegistered
from contracts.events.factures import InvoiceApproved
from contracts.events.gateway import TOPIC as RECEIPTS_TOPIC
from contracts.events.gateway import DeliveryReceipt
from contracts.events.peppol import INBOUND_TOPIC, PeppolDocumentReceived
from kernel.consumer import EventHandler
from kernel.database import utcnow
from kernel.tenants import Tenant
from services.factures import reasons, registry
from services.factures.domain import booking_outcome
from services.factures.reasons import Reason
from services.factures.registry import Arrival, Buyer
from services.factures.tables import Invoice

log = logging.getLogger(__name__)

TOPICS = (INBOUND_TOPIC, COURRIER_TOPIC, RECEIPTS_TOPIC)
#: IMIO intake type of scanned invoices.
SCANNED_INVOICE_TYPE = "FACT"
#: Peppol document types this service owns (UBL Invoice and CreditNote, any customization).
_INVOICE_DOCUMENT_TYPES = (
    "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2::Invoice##",
    "urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2::CreditNote##",
)


def is_invoice_document_type(document_type: str) -> bool:
    # Some access points prefix the identifier with its scheme (busdox-docid-qns::).
    return any(invoice_type in document_type for invoice_type in _INVOICE_DOCUMENT_TYPES)


def handlers(tenants: Mapping[str, Tenant]) -> dict[str, EventHandler]:
    """The handlers, knowing the tenants' Peppol participants and approval routes."""

    async def handle_peppol_document(session: AsyncSession, event: CloudEvent) -> None:
        data = event.data_as(PeppolDocumentReceived)
        if not is_invoice_document_type(data.document_type):
            log.info(
                "Peppol message %s is a %s, not an invoice; not ours",
                data.access_point_message_id,
                data.document_type,
            )
            return
        known = await registry.find_by_peppol_message(
            session, event.tenant, data.access_point_message_id
        )
        if known is not None:
            log.info(
                "Peppol message %s is already invoice %s; skipped",
                data.access_point_message_id,
                known.id,
            )
            return
        content, refusals = _content_of(data)
        tenant = tenants.get(event.tenant)
        if tenant is None:
            refusals.append(reasons.unknown_tenant(event.tenant))
            buyer = Buyer.unconfigured(event.tenant, data.receiver)
        else:
            buyer = Buyer.of(tenant)
        examination = await asyncio.to_thread(registry.examine, content)
        await registry.receive(
            session,
            buyer,
            Arrival(
                "peppol",
                sender=data.sender,
                receiver=data.receiver,
                peppol_message_id=data.access_point_message_id,
                refusals=tuple(refusals),
            ),
            examination,
            utcnow(),
        )

    return {
        PeppolDocumentReceived.TYPE: handle_peppol_document,
        IncomingMailRegistered.TYPE: handle_scanned_invoice,
        DeliveryReceipt.TYPE: handle_delivery_receipt,
    }


def _content_of(data: PeppolDocumentReceived) -> tuple[bytes, list[Reason]]:
    """The document's bytes and, if the transfer damaged them, why they cannot be trusted."""
    try:
        content = pybase64.b64decode(data.document_base64, validate=True)
    except ValueError:  # binascii.Error, or text that is not ASCII
        content = data.document_base64.encode("utf-8", "replace")
        return content, [reasons.corrupted(data.sha256, "not computable (invalid base64)")]
    actual = hashlib.sha256(content).hexdigest()
    if actual != data.sha256:
        return content, [reasons.corrupted(data.sha256, actual)]
    return content, []


async def handle_scanned_invoice(session: AsyncSession, event: CloudEvent) -> None:
    data = event.data_as(IncomingMailRegistered)
    if data.scan_type != SCANNED_INVOICE_TYPE:
        return  # other mail is courrier's alone
    if await registry.find_by_scan(session, event.tenant, data.mail_id) is not None:
        log.info("scanned mail %s is already an invoice; skipped", data.registration_number)
        return
    await registry.register_scan(
        session,
        tenant=event.tenant,
        mail_id=data.mail_id,
        registration_number=data.registration_number,
        sender=data.sender,
        assigned_service=data.assigned_service,
        now=utcnow(),
    )


#: The invoice a booking receipt names, locked for its update. Built once, with the invoice
#: and the tenant as bound parameters: a statement built for each receipt cost 0.1 ms more
#: to run, as SQLAlchemy keys and looks it up again (measured on a 2-vCPU AMD EPYC host).
_INVOICE_OF_RECEIPT = (
    select(Invoice)
    .where(Invoice.id == bindparam("invoice_id"), Invoice.tenant == bindparam("tenant"))
    .options(raiseload(Invoice.history))
    .with_for_update()
)


async def handle_delivery_receipt(session: AsyncSession, event: CloudEvent) -> None:
    receipt = event.data_as(DeliveryReceipt)
    if receipt.source_event_type != InvoiceApproved.TYPE:
        return  # e.g. the receipt of an Invoice Response sent to the supplier
    # The batch's earlier bookings are flushed together at its commit, not one by one here.
    # The invoice's history is not loaded: the booking's step is only added to it.
    with session.no_autoflush:
        invoice = await session.scalar(
            _INVOICE_OF_RECEIPT, {"invoice_id": event.subject, "tenant": event.tenant}
        )
    if invoice is None:
        log.warning(
            "receipt %s names invoice %r of tenant %s, which does not exist here; ignored",
            event.id,
            event.subject,
            event.tenant,
        )
        return
    if invoice.approval_event_id != receipt.source_event_id:
        log.warning(
            "receipt %s answers approval %s, not invoice %s's (%s); ignored",
            event.id,
            receipt.source_event_id,
            invoice.id,
            invoice.approval_event_id,
        )
        return
    if not registry.record_booking(session, invoice, booking_outcome(receipt), utcnow()):
        log.info(
            "receipt %s (%s) leaves invoice %s %s",
            event.id,
            receipt.outcome,
            invoice.id,
            invoice.state,
        )


__all__ = [
    "TOPICS",
    "handle_delivery_receipt",
    "handle_scanned_invoice",
    "handlers",
    "is_invoice_document_type",
]
