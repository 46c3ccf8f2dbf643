"""The invoice service's REST API (``/v1``): upload, list, read, approve, dispute, pay, encode.

Every route needs a bearer token of a configured tenant with ``factures:read``
or ``factures:write``, and sees only that tenant's invoices: another tenant's
invoice is "not found". Documents are parsed and checked in a worker thread
before the one transaction that stores the invoice and stages its events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response, Security
from fastapi.security import HTTPBearer
from sqlalchemy.exc import IntegrityError

from contracts.events.factures import Channel
from kernel.api import Offset, Storage, StorageDep, authorised, download
from kernel.auth import Caller
from kernel.database import utcnow
from kernel.errors import ProblemError
from services.factures import registry
from services.factures.domain import InvoiceState, check_buyer, check_paid_on
from services.factures.reasons import Reason
from services.factures.registry import Arrival, Buyer, Examination
from services.factures.rules.engine import Finding
from services.factures.tables import Invoice
from services.factures.ubl import MAX_DOCUMENT_BYTES
from services.factures.views import (
    DisputeRequest,
    InvoiceSummary,
    InvoiceView,
    Page,
    PaymentRequest,
    invoice_problems,
)

READ_SCOPE = "factures:read"
WRITE_SCOPE = "factures:write"
XML_MEDIA_TYPES = frozenset({"application/xml", "text/xml"})

#: Documents the bearer scheme in OpenAPI; ``CallerDep`` does the checking.
bearer = HTTPBearer(
    auto_error=False,
    description="A JWT naming the tenant (claim `tenant`) and the scopes "
    f"`{READ_SCOPE}` / `{WRITE_SCOPE}` (claim `scope`).",
)

_XML_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A UBL 2.1 Invoice or CreditNote (Peppol BIS Billing 3.0), at most "
        f"{MAX_DOCUMENT_BYTES} bytes",
        "content": {"application/xml": {"schema": {"type": "string", "format": "binary"}}},
    }
}


Reader = Annotated[Caller, Depends(authorised(READ_SCOPE))]
Writer = Annotated[Caller, Depends(authorised(WRITE_SCOPE))]


def buyer_of(store: Storage, caller: Caller) -> Buyer:
    """The caller's tenant as the buyer of the invoices it handles."""
    return Buyer.of(store.tenants[caller.tenant])


# -- problems of the upload -----------------------------------------------------------------


class NotXml(ProblemError):
    def __init__(self, content_type: str) -> None:
        super().__init__(
            415,
            "not-xml-media-type",
            "Send the invoice as XML",
            f"The body is sent as {content_type or 'no content type'}; send the UBL document "
            "itself with Content-Type: application/xml.",
        )


class InvoiceTooLarge(ProblemError):
    def __init__(self, size: int) -> None:
        super().__init__(
            413,
            "invoice-too-large",
            "The invoice is too large",
            f"The document has {size} bytes; invoices of at most {MAX_DOCUMENT_BYTES} bytes "
            "are accepted. Ask the supplier to send large attachments separately.",
            max_bytes=MAX_DOCUMENT_BYTES,
        )


class UnreadableInvoice(ProblemError):
    def __init__(self, refusal: Finding) -> None:
        super().__init__(
            422,
            "unreadable-invoice",
            "This document cannot be read as an invoice",
            f"{refusal.message} Nothing was stored.",
            code=refusal.rule,
        )


async def _read_document(request: Request) -> Examination:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in XML_MEDIA_TYPES:
        raise NotXml(content_type)
    content = await request.body()
    if len(content) > MAX_DOCUMENT_BYTES:
        raise InvoiceTooLarge(len(content))
    # Parsing and the rules are CPU work: keep the event loop serving other requests.
    examination = await asyncio.to_thread(registry.examine, content)
    if not examination.readable:
        raise UnreadableInvoice(examination.findings[0])
    return examination


def _located(response: Response, invoice: Invoice) -> None:
    response.headers["Location"] = f"/v1/invoices/{invoice.id}"


def router() -> APIRouter:
    api = APIRouter(prefix="/v1", dependencies=[Security(bearer)], tags=["invoices"])
    _reception_routes(api)
    _reading_routes(api)
    _decision_routes(api)
    return api


def _reception_routes(api: APIRouter) -> None:
    @api.post(
        "/invoices",
        status_code=201,
        openapi_extra=_XML_BODY,
        responses={
            200: {"description": "The same bytes were uploaded before: that invoice"},
            **invoice_problems(413, 415, 422),
        },
    )
    async def upload_invoice(
        request: Request, caller: Writer, store: StorageDep, response: Response
    ) -> InvoiceView:
        """Receive a UBL invoice or credit note addressed to the caller's commune.

        It is checked at once: the answer is the stored invoice, ``to_approve`` or
        ``rejected`` with its reasons (a rejected invoice is kept and listed). A
        supplier with a Peppol endpoint (BT-34) is answered (AB, then IP or RE).
        """
        examination = await _read_document(request)
        check_buyer(examination.buyer_endpoint, caller.tenant, store.tenants)
        sha256 = examination.document.sha256 if examination.document else ""

        async def receive() -> tuple[Invoice, bool]:
            """The invoice, and whether it is this very upload's replay."""
            async with store.sessions() as session:
                replay = await registry.find_upload(session, caller.tenant, sha256)
            if replay is not None:
                return replay, True
            async with store.unit_of_work() as session:
                invoice = await registry.receive(
                    session, buyer_of(store, caller), Arrival("upload"), examination, utcnow()
                )
            return invoice, False

        invoice, replayed = await once_more_if_raced(receive)
        if replayed:
            response.status_code = 200
        else:
            _located(response, invoice)
        return InvoiceView.of(invoice)

    @api.post(
        "/invoices/{invoice_id}/ubl",
        openapi_extra=_XML_BODY,
        responses=invoice_problems(404, 409, 413, 415, 422),
    )
    async def encode_scanned_invoice(
        invoice_id: str, request: Request, caller: Writer, store: StorageDep
    ) -> InvoiceView:
        """Give a scanned paper invoice (``to_encode``) its UBL encoding; it is then checked
        and sent for approval like a received one. An encoding that breaks the rules is
        refused (422) and the invoice stays to encode."""
        examination = await _read_document(request)
        check_buyer(examination.buyer_endpoint, caller.tenant, store.tenants)

        async def encode() -> Invoice:
            async with store.unit_of_work() as session:
                invoice = await registry.find_invoice(session, caller.tenant, invoice_id)
                await registry.encode(
                    session, invoice, buyer_of(store, caller), examination, caller.subject, utcnow()
                )
            return invoice

        return InvoiceView.of(await once_more_if_raced(encode))


T = TypeVar("T")


async def once_more_if_raced(step: Callable[[], Awaitable[T]]) -> T:
    """``step``, and once more when a concurrent request on the same invoice won the
    database's duplicate guard (an ``IntegrityError``): the second attempt sees the winner,
    and answers this request as its replay or records it as its duplicate (two scans of
    one paper invoice encoded at once were a 500 on PostgreSQL)."""
    try:
        return await step()
    except IntegrityError:
        return await step()


def _reading_routes(api: APIRouter) -> None:
    @api.get("/invoices", responses=invoice_problems(422))
    async def list_invoices(
        caller: Reader,
        store: StorageDep,
        state: InvoiceState | None = None,
        assigned_service: Annotated[
            str | None, Query(description="The service that approves them")
        ] = None,
        channel: Channel | None = None,
        peppol_message_id: Annotated[
            str | None, Query(description="The access point's message id of a Peppol invoice")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        offset: Offset = 0,
    ) -> Page[InvoiceSummary]:
        """The tenant's invoices, newest first (rejected ones included)."""
        where = registry.InvoiceFilter(state, assigned_service, channel, peppol_message_id)
        async with store.sessions() as session:
            rows, total = await registry.list_invoices(
                session, caller.tenant, where, limit=limit, offset=offset
            )
        return Page[InvoiceSummary](
            items=[InvoiceSummary.of(invoice) for invoice in rows],
            total=total,
            limit=limit,
            offset=offset,
        )

    @api.get("/invoices/{invoice_id}", responses=invoice_problems(404))
    async def get_invoice(invoice_id: str, caller: Reader, store: StorageDep) -> InvoiceView:
        """One invoice with its findings, its rejection reasons and its history."""
        async with store.sessions() as session:
            invoice = await registry.find_invoice(session, caller.tenant, invoice_id)
        return InvoiceView.of(invoice)

    @api.get(
        "/invoices/{invoice_id}/ubl",
        response_class=Response,
        responses={
            200: {"description": "The document as received", "content": {"application/xml": {}}},
            **invoice_problems(404),
        },
    )
    async def download_ubl(invoice_id: str, caller: Reader, store: StorageDep) -> Response:
        """The UBL document exactly as received (or encoded), byte for byte."""
        async with store.sessions() as session:
            content = await registry.read_ubl(session, caller.tenant, invoice_id)
        return download(content, "application/xml", f"{invoice_id}.xml")


def _decision_routes(api: APIRouter) -> None:
    @api.post("/invoices/{invoice_id}/approve", responses=invoice_problems(404, 409))
    async def approve_invoice(invoice_id: str, caller: Writer, store: StorageDep) -> InvoiceView:
        """Approve for payment: the accounting software books it (then ``booked``)."""
        async with store.unit_of_work() as session:
            invoice = await registry.find_invoice(session, caller.tenant, invoice_id)
            await registry.approve(
                session, invoice, buyer_of(store, caller), caller.subject, utcnow()
            )
        return InvoiceView.of(invoice)

    @api.post("/invoices/{invoice_id}/dispute", responses=invoice_problems(404, 409, 422))
    async def dispute_invoice(
        invoice_id: str, body: DisputeRequest, caller: Writer, store: StorageDep
    ) -> InvoiceView:
        """Ask the supplier to clarify (Invoice Response UQ with the reason)."""
        reason = Reason(body.reason_code, body.reason)
        async with store.unit_of_work() as session:
            invoice = await registry.find_invoice(session, caller.tenant, invoice_id)
            await registry.dispute(
                session, invoice, buyer_of(store, caller), reason, caller.subject, utcnow()
            )
        return InvoiceView.of(invoice)

    @api.post("/invoices/{invoice_id}/payment", responses=invoice_problems(404, 409, 422))
    async def mark_invoice_paid(
        invoice_id: str, body: PaymentRequest, caller: Writer, store: StorageDep
    ) -> InvoiceView:
        """Record the payment of a booked invoice (Invoice Response PD)."""
        now = utcnow()
        check_paid_on(body.paid_on, now)
        async with store.unit_of_work() as session:
            invoice = await registry.find_invoice(session, caller.tenant, invoice_id)
            await registry.mark_paid(
                session,
                invoice,
                buyer_of(store, caller),
                body.paid_on,
                body.amount,
                caller.subject,
                now,
            )
        return InvoiceView.of(invoice)
