"""The invoice API's request and response documents.

Requests refuse unknown fields (``extra="forbid"``), as courrier's do. Paging
and the Problem documentation are the kernel's (``kernel.api``): one shape for
every API of the hub.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field, field_validator

from kernel.api import Page, RequestModel, problem_responses
from services.factures.domain import InvoiceState
from services.factures.reasons import DISPUTE_REASON_CODES, PAYMENT_ONLY_REASON_CODE
from services.factures.tables import Invoice, InvoiceStep

__all__ = [
    "DisputeRequest",
    "InvoiceSummary",
    "InvoiceView",
    "Page",
    "PaymentRequest",
    "invoice_problems",
]


class DisputeRequest(RequestModel):
    reason: str = Field(
        min_length=3,
        max_length=2000,
        description="What the supplier must clarify; sent to them in the Invoice Response (UQ).",
    )
    reason_code: str = Field(
        default="OTH",
        pattern="^(" + "|".join(sorted(DISPUTE_REASON_CODES)) + ")$",
        description="OPStatusReason code: REF references, PRI prices, QTY quantities, "
        "ITM items, DEL delivery, PAY payment details, LEG legal, OTH other… (not PPD, "
        "which Peppol allows only with a payment)",
    )

    @field_validator("reason_code", mode="before")
    @classmethod
    def _not_payment_only(cls, value: object) -> object:
        # Before the pattern: the clerk reads why, not only that PPD matches no pattern.
        if value == PAYMENT_ONLY_REASON_CODE:
            raise ValueError(
                "PPD (partially paid) is sent only with a payment (Invoice Response PD, "
                "PEPPOL-T111-R005); give a dispute another code, e.g. PAY or OTH"
            )
        return value


class PaymentRequest(RequestModel):
    paid_on: date
    amount: Decimal | None = Field(
        default=None,
        ge=0,
        # Money as the invoice's own amounts are (BR-DEC-*: two decimals at most); 1E+999999999
        # or five thousand digits were taken, and published in the invoice's "paid" event.
        max_digits=19,
        decimal_places=2,
        description="Paid amount; the amount due (BT-115) when omitted",
    )


class FindingView(BaseModel):
    rule: str
    flag: str
    message: str
    location: str


class ReasonView(BaseModel):
    code: str = Field(description="OPStatusReason code sent to the supplier")
    text: str = Field(description="The reason, for the clerk and the supplier")
    rule: str | None


class StepView(BaseModel):
    at: datetime
    state: InvoiceState
    event_type: str | None
    response_status: str | None = Field(description="Invoice Response sent to the supplier")
    actor: str | None
    note: str | None

    @classmethod
    def of(cls, step: InvoiceStep) -> StepView:
        return cls(
            at=step.at,
            state=InvoiceState(step.state),
            event_type=step.event_type,
            response_status=step.response_status,
            actor=step.actor,
            note=step.note,
        )


class InvoiceSummary(BaseModel):
    """One line of the invoice list."""

    id: str
    state: InvoiceState
    channel: str
    kind: str | None = Field(description="Invoice or CreditNote; None for a scan to encode")
    number: str | None
    issue_date: date | None
    supplier_name: str | None
    currency: str | None
    payable_amount: Decimal | None
    assigned_service: str | None
    created_at: datetime

    @classmethod
    def of(cls, invoice: Invoice) -> InvoiceSummary:
        return cls(
            id=invoice.id,
            state=InvoiceState(invoice.state),
            channel=invoice.channel,
            kind=invoice.kind,
            number=invoice.number,
            issue_date=invoice.issue_date,
            supplier_name=invoice.supplier_name,
            currency=invoice.currency,
            payable_amount=invoice.payable_amount,
            assigned_service=invoice.assigned_service,
            created_at=invoice.created_at,
        )


class InvoiceView(InvoiceSummary):
    """One invoice with its checks and its history."""

    due_date: date | None
    supplier_vat_id: str | None
    supplier_legal_id: str | None
    supplier_endpoint: str | None = Field(description="Peppol endpoint answered, scheme:id")
    buyer_endpoint: str | None
    buyer_reference: str | None
    order_reference: str | None
    preceding_invoices: list[str] = Field(description="BT-25 of a credit note")
    credited_invoice_id: str | None = Field(description="The invoice a credit note corrects")
    tax_exclusive_amount: Decimal | None
    tax_amount: Decimal | None
    peppol_message_id: str | None
    scan_mail_id: str | None = Field(description="courrier's mail of a scanned invoice")
    scan_registration_number: str | None
    sha256: str | None
    size: int | None
    rejection_reasons: list[ReasonView]
    findings: list[FindingView]
    approved_by: str | None
    accounting_reference: str | None
    booking_failure: str | None
    dispute_reason: str | None
    paid_on: date | None
    updated_at: datetime
    history: list[StepView]

    @classmethod
    def of(cls, invoice: Invoice) -> InvoiceView:
        summary = InvoiceSummary.of(invoice).model_dump()
        return cls(
            **summary,
            due_date=invoice.due_date,
            supplier_vat_id=invoice.supplier_vat_id,
            supplier_legal_id=invoice.supplier_legal_id,
            supplier_endpoint=invoice.supplier_endpoint,
            buyer_endpoint=invoice.buyer_endpoint,
            buyer_reference=invoice.buyer_reference,
            order_reference=invoice.order_reference,
            preceding_invoices=list(invoice.preceding_invoices),
            credited_invoice_id=invoice.credited_invoice_id,
            tax_exclusive_amount=invoice.tax_exclusive_amount,
            tax_amount=invoice.tax_amount,
            peppol_message_id=invoice.peppol_message_id,
            scan_mail_id=invoice.scan_mail_id,
            scan_registration_number=invoice.scan_registration_number,
            sha256=invoice.sha256,
            size=invoice.size,
            rejection_reasons=[ReasonView.model_validate(r) for r in invoice.rejection_reasons],
            findings=[FindingView.model_validate(f) for f in invoice.findings],
            approved_by=invoice.approved_by,
            accounting_reference=invoice.accounting_reference,
            booking_failure=invoice.booking_failure,
            dispute_reason=invoice.dispute_reason,
            paid_on=invoice.paid_on,
            updated_at=invoice.updated_at,
            history=[StepView.of(step) for step in invoice.history],
        )


def invoice_problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The kernel's Problem documentation; 415 says the body must be application/xml."""
    documented = problem_responses(*statuses)
    if 415 in documented:
        documented[415] = {**documented[415], "description": "The body is not application/xml"}
    return documented
