"""What every accounting connector reads of an approved invoice before booking it.

An accounting connector (``inforius``, ``stesud``) books the
``AccountingDocument`` of ``factures.invoice.approved.v1``; its delivery's
external reference is the accounting's booking reference, which the factures
service records on the invoice.
"""

from __future__ import annotations

import re
from decimal import Decimal

import pybase64

from contracts.envelope import EnvelopeError
from contracts.events.factures import AccountingDocument, InvoiceApproved
from gateway.connectors.base import Delivery
from gateway.errors import PermanentDeliveryError


def approved_invoice_of(delivery: Delivery, target: str) -> InvoiceApproved:
    try:
        approved: InvoiceApproved = delivery.event.data_as(InvoiceApproved)
    except EnvelopeError as exc:
        raise PermanentDeliveryError(
            f"{target} books {InvoiceApproved.TYPE} only, not {delivery.event.type}"
        ) from exc
    try:
        pybase64.b64decode(approved.document.ubl_base64, validate=True)
    except ValueError as exc:  # binascii.Error, or text that is not ASCII
        raise PermanentDeliveryError("The invoice's UBL document is not valid base64.") from exc
    return approved


def ubl_file_name(document: AccountingDocument, max_length: int = 80) -> str:
    """The invoice number made file-safe: ``F-2026/0042`` → ``F-2026-0042.xml``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", document.number).strip("-.") or "invoice"
    return stem[: max_length - 4] + ".xml"


def amount(value: Decimal | None) -> str | None:
    """A decimal as plain text (never in exponent notation), or None."""
    return None if value is None else format(value, "f")


def quantity(value: Decimal | None) -> str | None:
    """A line's quantity as plain text without trailing zeros, or None. The packages take
    10 decimals: "1.00000000000", as an invoice may write 1, was refused by Inforius's
    pattern, and the invoice never booked. (An amount keeps its form: EN 16931 allows it
    two decimals.)"""
    return None if value is None else format(value.normalize(), "f")
