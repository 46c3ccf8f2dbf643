"""Events of the invoice service, on topic ``factures.events``.

An invoice moves: received → validated or rejected → approval requested →
approved or disputed → booked (the accounting connector's receipt) → paid.
Every step is one event whose subject is the invoice id. Answers to the
supplier (Peppol Invoice Response) are their own event, which the gateway
delivers to the access point.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from contracts.events.base import EventData
from contracts.events.peppol import PeppolEndpoint

TOPIC = "factures.events"

Channel = Literal["peppol", "upload", "scan"]
DocumentKind = Literal["Invoice", "CreditNote"]
#: BIS Invoice Response 3.0 status codes (UNCL 4343 subset).
ResponseStatus = Literal["AB", "IP", "UQ", "RE", "AP", "PD"]
#: How a ``Decimal`` is written on the wire: ``str(Decimal)``, "1234.50", "-12.5", "7",
#: and with an exponent when very small or large ("1E-7", "0E-8").
DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?([Ee][+-]?[0-9]+)?$"
#: An amount, quantity or rate. Always sent as a JSON string (exact, unlike a JSON number);
#: a number is still accepted on receipt. Only the documented schema is narrowed.
DecimalString = Annotated[
    Decimal,
    WithJsonSchema({"type": "string", "pattern": DECIMAL_PATTERN}),
]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Supplier(_Part):
    name: str
    vat_id: str | None = Field(default=None, description="BT-31")
    enterprise_number: str | None = Field(default=None, description="BT-30 legal registration")
    iban: str | None = Field(default=None, description="BT-84 payment account")
    endpoint: PeppolEndpoint | None = Field(default=None, description="BT-34")


class VatBreakdown(_Part):
    category: str = Field(description="BT-118 VAT category code")
    rate: DecimalString | None = Field(default=None, description="BT-119 percent")
    taxable_amount: DecimalString = Field(description="BT-116")
    tax_amount: DecimalString = Field(description="BT-117")


class AccountingLine(_Part):
    line_id: str = Field(description="BT-126")
    description: str = Field(description="BT-153 item name")
    quantity: DecimalString = Field(description="BT-129")
    unit: str | None = Field(default=None, description="BT-130 UN/ECE Rec 20 code")
    net_amount: DecimalString = Field(description="BT-131")
    vat_category: str = Field(description="BT-151")
    vat_rate: DecimalString | None = Field(default=None, description="BT-152")


class AccountingDocument(_Part):
    """What an accounting connector books: the invoice's EN 16931 essentials and its UBL."""

    kind: DocumentKind
    number: str = Field(description="BT-1")
    issue_date: date = Field(description="BT-2")
    due_date: date | None = Field(default=None, description="BT-9")
    currency: str = Field(description="BT-5")
    supplier: Supplier
    buyer_reference: str | None = Field(default=None, description="BT-10")
    order_reference: str | None = Field(default=None, description="BT-13")
    preceding_invoice: str | None = Field(default=None, description="BT-25, credit notes")
    tax_exclusive_amount: DecimalString = Field(description="BT-109")
    tax_amount: DecimalString = Field(description="BT-110")
    payable_amount: DecimalString = Field(description="BT-115")
    vat_breakdown: list[VatBreakdown]
    lines: list[AccountingLine]
    ubl_base64: str = Field(description="The UBL document as received, base64")


class InvoiceReceived(EventData):
    """An invoice or credit note arrived (Peppol, upload) or a paper one was scanned."""

    TYPE: ClassVar[str] = "factures.invoice.received.v1"
    TOPIC: ClassVar[str] = TOPIC

    invoice_id: str
    channel: Channel
    kind: DocumentKind | None = Field(description="None for a scanned paper invoice to encode")
    number: str | None = None
    supplier_name: str | None = None
    issue_date: date | None = None
    currency: str | None = None
    payable_amount: DecimalString | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    peppol_message_id: str | None = None
    scan_mail_id: str | None = Field(default=None, description="courrier mail of the scan")


class Finding(_Part):
    rule: str
    flag: Literal["fatal", "warning"]
    message: str
    location: str


class InvoiceValidated(EventData):
    TYPE: ClassVar[str] = "factures.invoice.validated.v1"
    TOPIC: ClassVar[str] = TOPIC

    invoice_id: str
    number: str
    warnings: list[Finding] = Field(default_factory=list)


class InvoiceRejected(EventData):
    """The invoice cannot be accepted; ``reason`` is written for the clerk and the supplier."""

    TYPE: ClassVar[str] = "factures.invoice.rejected.v1"
    TOPIC: ClassVar[str] = TOPIC

    invoice_id: str
    number: str | None = None
    reason: str
    findings: list[Finding] = Field(default_factory=list)


class InvoiceApprovalRequested(EventData):
    TYPE: ClassVar[str] = "factures.invoice.approval_requested.v1"
    TOPIC: ClassVar[str] = TOPIC

    invoice_id: str
    number: str
    assigned_service: str


class InvoiceApproved(EventData):
    """Approved for payment: the gateway hands it to the tenant's accounting software."""

    TYPE: ClassVar[str] = "factures.invoice.approved.v1"
    TOPIC: ClassVar[str] = TOPIC

    invoice_id: str
    approved_by: str
    document: AccountingDocument


class InvoiceDisputed(EventData):
    TYPE: ClassVar[str] = "factures.invoice.disputed.v1"
    TOPIC: ClassVar[str] = TOPIC

    invoice_id: str
    number: str
    reason: str


class InvoiceBooked(EventData):
    """The accounting software booked the invoice under ``accounting_reference``."""

    TYPE: ClassVar[str] = "factures.invoice.booked.v1"
    TOPIC: ClassVar[str] = TOPIC

    invoice_id: str
    number: str
    accounting_reference: str
    connector: str


class InvoicePaid(EventData):
    TYPE: ClassVar[str] = "factures.invoice.paid.v1"
    TOPIC: ClassVar[str] = TOPIC

    invoice_id: str
    number: str
    paid_on: date
    amount: DecimalString


class InvoiceResponseRequested(EventData):
    """An answer to the supplier (BIS Invoice Response 3.0); the gateway sends it via Peppol."""

    TYPE: ClassVar[str] = "factures.invoice_response.requested.v1"
    TOPIC: ClassVar[str] = TOPIC

    invoice_id: str
    status: ResponseStatus
    sender: PeppolEndpoint = Field(description="the buyer (the commune) answering")
    receiver: PeppolEndpoint = Field(description="the supplier")
    application_response_base64: str = Field(description="UBL ApplicationResponse, base64")
    in_reply_to: str | None = Field(default=None, description="Peppol message id answered")
