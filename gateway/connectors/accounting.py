"""What every accounting connector reads of an approved invoice before booking it.

An accounting connector (``inforius``, ``stesud``) books the
``AccountingDocument`` of ``factures.invoice.approved.v1``; its delivery's
external reference is the accounting's booking reference, which the factures
service records on the invoice.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal

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


#: The decimals of a quantity both packages take.
QUANTITY_DECIMALS = Decimal("1e-10")


def quantity(value: Decimal | None) -> str | None:
    """A line's quantity as plain text without trailing zeros, or None. The packages take
    10 decimals: "1.00000000000", as an invoice may write 1, was refused by Inforius's
    pattern, and the invoice never booked. A quantity past 10 decimals (BT-129 sets no
    limit) is rounded to them: the line's net amount (BT-131), not its quantity, is what
    is booked, so the rounding changes no amount. (An amount keeps its form: EN 16931
    allows it two decimals.)"""
    if value is None:
        return None
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -10:
        value = value.quantize(QUANTITY_DECIMALS, rounding=ROUND_HALF_EVEN)
    return format(value.normalize(), "f")


def vat_number(value: str) -> str:
    """A VAT identifier (BT-31) as the packages look a supplier up: without the spaces,
    dots and hyphens an invoice may write it with ("BE 0406.798.006"), in capitals."""
    return re.sub(r"[\s.\-]+", "", value).upper()
