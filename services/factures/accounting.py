"""From the EN 16931 model of an approved invoice to what the accounting software books.

Only validated invoices are approved, so the business rules already made
sure the mandatory values are there; the fallbacks below keep a gap from
crashing the approval and are visible in the booked document.
"""

from __future__ import annotations

from decimal import Decimal

import pybase64

from contracts.events.factures import (
    AccountingDocument,
    AccountingLine,
    Supplier,
    VatBreakdown,
)
from contracts.events.peppol import PeppolEndpoint
from services.factures.model import Invoice, Party

ZERO = Decimal(0)


def peppol_endpoint_of(party: Party | None) -> PeppolEndpoint | None:
    """A party's electronic address (BT-34 / BT-49) when it is a well-formed Peppol endpoint."""
    address = party.electronic_address if party is not None else None
    if address is None or not address.scheme or not address.value.strip():
        return None
    scheme, identifier = address.scheme.strip(), address.value.strip()
    if not (len(scheme) == 4 and scheme.isascii() and scheme.isdigit()) or len(identifier) > 200:
        return None
    return PeppolEndpoint(scheme=scheme, identifier=identifier)


def supplier_name(party: Party | None) -> str | None:
    if party is None:
        return None
    return party.name or party.trading_name


def payment_iban(invoice: Invoice) -> str | None:
    instructions = invoice.payment_instructions
    if instructions is None or not instructions.credit_transfers:
        return None
    return instructions.credit_transfers[0].account


def accounting_document(invoice: Invoice, ubl: bytes) -> AccountingDocument:
    if invoice.issue_date is None:  # BR-03: a validated invoice always has one
        raise ValueError(f"invoice {invoice.number} has no issue date; it cannot be booked")
    seller = invoice.seller
    totals = invoice.totals
    return AccountingDocument(
        kind=invoice.kind,
        number=invoice.number or "",
        issue_date=invoice.issue_date,
        due_date=invoice.due_date,
        currency=invoice.currency or "EUR",
        supplier=Supplier(
            name=supplier_name(seller) or "",
            vat_id=seller.vat_id if seller else None,
            enterprise_number=(
                seller.legal_registration.value if seller and seller.legal_registration else None
            ),
            iban=payment_iban(invoice),
            endpoint=peppol_endpoint_of(seller),
        ),
        buyer_reference=invoice.buyer_reference,
        order_reference=invoice.purchase_order_reference,
        preceding_invoice=(
            invoice.preceding_invoices[0].number if invoice.preceding_invoices else None
        ),
        tax_exclusive_amount=totals.total_without_vat or ZERO,
        tax_amount=totals.vat_total or ZERO,
        payable_amount=totals.amount_due or ZERO,
        vat_breakdown=[
            VatBreakdown(
                category=subtotal.category or "",
                rate=subtotal.rate,
                taxable_amount=subtotal.taxable_amount or ZERO,
                tax_amount=subtotal.tax_amount or ZERO,
            )
            for subtotal in invoice.vat_breakdown
        ],
        lines=[
            AccountingLine(
                line_id=line.id or str(position),
                description=line.item_name or "",
                quantity=line.quantity or ZERO,
                unit=line.unit,
                net_amount=line.net_amount or ZERO,
                vat_category=line.vat_category or "",
                vat_rate=line.vat_rate,
            )
            for position, line in enumerate(invoice.lines, start=1)
        ],
        ubl_base64=pybase64.b64encode(ubl).decode("ascii"),
    )
