"""The EN 16931 semantic model of an invoice or credit note, read from its UBL syntax.

Each field's description names its business term (BT-n) or group (BG-n) in
EN 16931-1, so the API schema documents the meaning of every value.
``read_invoice`` is deliberately tolerant: whatever is missing or malformed
becomes None (or an empty list), because saying what is wrong is the job of the
business rules, not of the reader.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.factures.rules.engine import Element, decimal, select, text
from services.factures.ubl import UblDocument


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class Identifier(_Model):
    """An identifier with the scheme it belongs to (an ISO 6523 ICD or EAS code)."""

    value: str = Field(description="The identifier itself.")
    scheme: str | None = Field(default=None, description="Its scheme (schemeID), if given.")


class PostalAddress(_Model):
    street: str | None = Field(default=None, description="BT-35 / BT-50 address line 1.")
    additional_street: str | None = Field(default=None, description="BT-36 / BT-51 address line 2.")
    city: str | None = Field(default=None, description="BT-37 / BT-52 city.")
    postal_code: str | None = Field(default=None, description="BT-38 / BT-53 post code.")
    country_code: str | None = Field(
        default=None, description="BT-40 / BT-55 country code (ISO 3166-1 alpha-2)."
    )


class Party(_Model):
    """BG-4 seller or BG-7 buyer; descriptions give the seller's term, then the buyer's."""

    name: str | None = Field(default=None, description="BT-27 / BT-44 legal name.")
    trading_name: str | None = Field(default=None, description="BT-28 / BT-45 trading name.")
    vat_id: str | None = Field(default=None, description="BT-31 / BT-48 VAT identifier.")
    legal_registration: Identifier | None = Field(
        default=None,
        description="BT-30 / BT-47 legal registration identifier (e.g. the KBO-BCE number).",
    )
    electronic_address: Identifier | None = Field(
        default=None,
        description="BT-34 / BT-49 electronic address (Peppol endpoint) with its EAS scheme.",
    )
    address: PostalAddress | None = Field(default=None, description="BG-5 / BG-8 postal address.")


class PrecedingInvoice(_Model):
    number: str = Field(description="BT-25 preceding invoice reference.")
    issue_date: date | None = Field(default=None, description="BT-26 preceding invoice date.")


class CreditTransfer(_Model):
    """BG-17 credit transfer: the account the buyer pays into."""

    account: str = Field(description="BT-84 payment account identifier (IBAN).")
    account_name: str | None = Field(default=None, description="BT-85 payment account name.")
    bank: str | None = Field(default=None, description="BT-86 payment service provider (BIC).")


class PaymentInstructions(_Model):
    means_code: str | None = Field(default=None, description="BT-81 payment means type code.")
    remittance_information: str | None = Field(
        default=None, description="BT-83 remittance information (structured communication)."
    )
    credit_transfers: list[CreditTransfer] = Field(
        default_factory=list, description="BG-17 credit transfers."
    )


class AllowanceCharge(_Model):
    """BG-20 document allowance or BG-21 document charge (allowance term, then charge term)."""

    is_charge: bool = Field(description="ChargeIndicator: true for BG-21, false for BG-20.")
    amount: Decimal | None = Field(default=None, description="BT-92 / BT-99 amount.")
    base_amount: Decimal | None = Field(default=None, description="BT-93 / BT-100 base amount.")
    percentage: Decimal | None = Field(default=None, description="BT-94 / BT-101 percentage.")
    vat_category: str | None = Field(default=None, description="BT-95 / BT-102 VAT category code.")
    vat_rate: Decimal | None = Field(default=None, description="BT-96 / BT-103 VAT rate.")
    reason: str | None = Field(default=None, description="BT-97 / BT-104 reason.")
    reason_code: str | None = Field(default=None, description="BT-98 / BT-105 reason code.")


class DocumentTotals(_Model):
    """BG-22 document totals."""

    line_net_total: Decimal | None = Field(
        default=None, description="BT-106 sum of invoice line net amounts."
    )
    allowance_total: Decimal | None = Field(
        default=None, description="BT-107 sum of allowances on document level."
    )
    charge_total: Decimal | None = Field(
        default=None, description="BT-108 sum of charges on document level."
    )
    total_without_vat: Decimal | None = Field(
        default=None, description="BT-109 invoice total amount without VAT."
    )
    vat_total: Decimal | None = Field(
        default=None, description="BT-110 invoice total VAT amount (document currency)."
    )
    vat_total_in_accounting_currency: Decimal | None = Field(
        default=None, description="BT-111 invoice total VAT amount in accounting currency."
    )
    total_with_vat: Decimal | None = Field(
        default=None, description="BT-112 invoice total amount with VAT."
    )
    paid_amount: Decimal | None = Field(default=None, description="BT-113 paid amount.")
    rounding_amount: Decimal | None = Field(default=None, description="BT-114 rounding amount.")
    amount_due: Decimal | None = Field(default=None, description="BT-115 amount due for payment.")


class VatBreakdown(_Model):
    """BG-23 VAT breakdown: one per VAT category and rate."""

    taxable_amount: Decimal | None = Field(
        default=None, description="BT-116 VAT category taxable amount."
    )
    tax_amount: Decimal | None = Field(default=None, description="BT-117 VAT category tax amount.")
    category: str | None = Field(default=None, description="BT-118 VAT category code.")
    rate: Decimal | None = Field(default=None, description="BT-119 VAT category rate.")
    exemption_reason: str | None = Field(
        default=None, description="BT-120 VAT exemption reason text."
    )
    exemption_reason_code: str | None = Field(
        default=None, description="BT-121 VAT exemption reason code."
    )


class InvoiceLine(_Model):
    """BG-25 invoice line (a credit-note line in a credit note)."""

    id: str | None = Field(default=None, description="BT-126 invoice line identifier.")
    quantity: Decimal | None = Field(default=None, description="BT-129 invoiced quantity.")
    unit: str | None = Field(
        default=None, description="BT-130 invoiced quantity unit of measure code."
    )
    net_amount: Decimal | None = Field(default=None, description="BT-131 line net amount.")
    item_name: str | None = Field(default=None, description="BT-153 item name.")
    price: Decimal | None = Field(default=None, description="BT-146 item net price.")
    price_base_quantity: Decimal | None = Field(
        default=None, description="BT-149 item price base quantity."
    )
    vat_category: str | None = Field(
        default=None, description="BT-151 invoiced item VAT category code."
    )
    vat_rate: Decimal | None = Field(default=None, description="BT-152 invoiced item VAT rate.")


class Invoice(_Model):
    """An EN 16931 invoice or credit note, as far as the UBL document provides it."""

    kind: Literal["Invoice", "CreditNote"] = Field(
        description="The UBL root (syntax of BT-3): Invoice or CreditNote."
    )
    customization_id: str | None = Field(
        default=None, description="BT-24 specification identifier."
    )
    profile_id: str | None = Field(default=None, description="BT-23 business process type.")
    number: str | None = Field(default=None, description="BT-1 invoice number.")
    issue_date: date | None = Field(default=None, description="BT-2 invoice issue date.")
    document_type: str | None = Field(
        default=None,
        description="BT-3 invoice type code (UNTDID 1001: 380 invoice, 381 credit note, ...).",
    )
    currency: str | None = Field(default=None, description="BT-5 invoice currency code.")
    vat_accounting_currency: str | None = Field(
        default=None, description="BT-6 VAT accounting currency code."
    )
    due_date: date | None = Field(default=None, description="BT-9 payment due date.")
    buyer_reference: str | None = Field(default=None, description="BT-10 buyer reference.")
    purchase_order_reference: str | None = Field(
        default=None, description="BT-13 purchase order reference."
    )
    preceding_invoices: list[PrecedingInvoice] = Field(
        default_factory=list,
        description="BG-3 preceding invoice references (BT-25), mainly for credit notes.",
    )
    seller: Party | None = Field(default=None, description="BG-4 seller.")
    buyer: Party | None = Field(default=None, description="BG-7 buyer.")
    payment_instructions: PaymentInstructions | None = Field(
        default=None, description="BG-16 payment instructions."
    )
    allowances: list[AllowanceCharge] = Field(
        default_factory=list, description="BG-20 document level allowances."
    )
    charges: list[AllowanceCharge] = Field(
        default_factory=list, description="BG-21 document level charges."
    )
    totals: DocumentTotals = Field(description="BG-22 document totals.")
    vat_breakdown: list[VatBreakdown] = Field(
        default_factory=list, description="BG-23 VAT breakdown."
    )
    lines: list[InvoiceLine] = Field(default_factory=list, description="BG-25 invoice lines.")


def read_invoice(document: UblDocument) -> Invoice:
    """The semantic model of ``document``; never raises on a document ``parse_document`` took."""
    root = document.root
    is_invoice = document.kind == "Invoice"
    currency = _text(root, "cbc:DocumentCurrencyCode")
    vat_accounting_currency = _text(root, "cbc:TaxCurrencyCode")
    document_charges = [_allowance_charge(node) for node in select(root, "cac:AllowanceCharge")]
    return Invoice(
        kind=document.kind,
        customization_id=document.customization_id,
        profile_id=document.profile_id,
        number=_text(root, "cbc:ID"),
        issue_date=_date(root, "cbc:IssueDate"),
        document_type=_text(
            root, "cbc:InvoiceTypeCode" if is_invoice else "cbc:CreditNoteTypeCode"
        ),
        currency=currency,
        vat_accounting_currency=vat_accounting_currency,
        # A UBL 2.1 credit note has no DueDate of its own; EN 16931 binds BT-9 to its
        # payment means there.
        due_date=_date(
            root, "cbc:DueDate" if is_invoice else "cac:PaymentMeans/cbc:PaymentDueDate"
        ),
        buyer_reference=_text(root, "cbc:BuyerReference"),
        purchase_order_reference=_text(root, "cac:OrderReference/cbc:ID"),
        preceding_invoices=[
            PrecedingInvoice(number=number, issue_date=_date(reference, "cbc:IssueDate"))
            for reference in select(root, "cac:BillingReference/cac:InvoiceDocumentReference")
            if (number := _text(reference, "cbc:ID"))
        ],
        seller=_party(root, "cac:AccountingSupplierParty/cac:Party"),
        buyer=_party(root, "cac:AccountingCustomerParty/cac:Party"),
        payment_instructions=_payment_instructions(root),
        allowances=[item for item in document_charges if not item.is_charge],
        charges=[item for item in document_charges if item.is_charge],
        totals=_totals(root, currency, vat_accounting_currency),
        vat_breakdown=[
            _vat_breakdown(subtotal) for subtotal in select(root, "cac:TaxTotal/cac:TaxSubtotal")
        ],
        lines=[
            _line(line, "cbc:InvoicedQuantity" if is_invoice else "cbc:CreditedQuantity")
            for line in select(root, "cac:InvoiceLine" if is_invoice else "cac:CreditNoteLine")
        ],
    )


def _text(node: Element, xpath: str) -> str | None:
    return text(node, xpath) or None


def _amount(node: Element, xpath: str) -> Decimal | None:
    return decimal(text(node, xpath))


def _date(node: Element, xpath: str) -> date | None:
    value = _text(node, xpath)
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def _identifier(node: Element, xpath: str) -> Identifier | None:
    value = _text(node, xpath)
    if value is None:
        return None
    return Identifier(value=value, scheme=_text(node, f"{xpath}/@schemeID"))


def _party(root: Element, xpath: str) -> Party | None:
    found = select(root, xpath)
    if not found:
        return None
    party = found[0]
    address = select(party, "cac:PostalAddress")
    return Party(
        name=_text(party, "cac:PartyLegalEntity/cbc:RegistrationName"),
        trading_name=_text(party, "cac:PartyName/cbc:Name"),
        vat_id=_text(party, "cac:PartyTaxScheme[cac:TaxScheme/cbc:ID = 'VAT']/cbc:CompanyID"),
        legal_registration=_identifier(party, "cac:PartyLegalEntity/cbc:CompanyID"),
        electronic_address=_identifier(party, "cbc:EndpointID"),
        address=_postal_address(address[0]) if address else None,
    )


def _postal_address(address: Element) -> PostalAddress:
    return PostalAddress(
        street=_text(address, "cbc:StreetName"),
        additional_street=_text(address, "cbc:AdditionalStreetName"),
        city=_text(address, "cbc:CityName"),
        postal_code=_text(address, "cbc:PostalZone"),
        country_code=_text(address, "cac:Country/cbc:IdentificationCode"),
    )


def _payment_instructions(root: Element) -> PaymentInstructions | None:
    means = select(root, "cac:PaymentMeans")
    if not means:
        return None
    return PaymentInstructions(
        means_code=_text(means[0], "cbc:PaymentMeansCode"),
        remittance_information=_text(means[0], "cbc:PaymentID"),
        credit_transfers=[
            CreditTransfer(
                account=account_id,
                account_name=_text(account, "cbc:Name"),
                bank=_text(account, "cac:FinancialInstitutionBranch/cbc:ID"),
            )
            for account in select(root, "cac:PaymentMeans/cac:PayeeFinancialAccount")
            if (account_id := _text(account, "cbc:ID"))
        ],
    )


def _allowance_charge(node: Element) -> AllowanceCharge:
    return AllowanceCharge(
        is_charge=_text(node, "cbc:ChargeIndicator") in {"true", "1"},
        amount=_amount(node, "cbc:Amount"),
        base_amount=_amount(node, "cbc:BaseAmount"),
        percentage=_amount(node, "cbc:MultiplierFactorNumeric"),
        vat_category=_text(node, "cac:TaxCategory/cbc:ID"),
        vat_rate=_amount(node, "cac:TaxCategory/cbc:Percent"),
        reason=_text(node, "cbc:AllowanceChargeReason"),
        reason_code=_text(node, "cbc:AllowanceChargeReasonCode"),
    )


def _totals(root: Element, currency: str | None, accounting: str | None) -> DocumentTotals:
    monetary = "cac:LegalMonetaryTotal/cbc:"
    return DocumentTotals(
        line_net_total=_amount(root, monetary + "LineExtensionAmount"),
        allowance_total=_amount(root, monetary + "AllowanceTotalAmount"),
        charge_total=_amount(root, monetary + "ChargeTotalAmount"),
        total_without_vat=_amount(root, monetary + "TaxExclusiveAmount"),
        vat_total=_vat_total(root, currency),
        vat_total_in_accounting_currency=(
            _vat_total(root, accounting) if accounting and accounting != currency else None
        ),
        total_with_vat=_amount(root, monetary + "TaxInclusiveAmount"),
        paid_amount=_amount(root, monetary + "PrepaidAmount"),
        rounding_amount=_amount(root, monetary + "PayableRoundingAmount"),
        amount_due=_amount(root, monetary + "PayableAmount"),
    )


def _vat_total(root: Element, currency: str | None) -> Decimal | None:
    """The TaxTotal amount in ``currency``; with no currency to match, the first one."""
    for tax_amount in select(root, "cac:TaxTotal/cbc:TaxAmount"):
        if currency is None or tax_amount.get("currencyID") == currency:
            return decimal((tax_amount.text or "").strip())
    return None


def _vat_breakdown(subtotal: Element) -> VatBreakdown:
    return VatBreakdown(
        taxable_amount=_amount(subtotal, "cbc:TaxableAmount"),
        tax_amount=_amount(subtotal, "cbc:TaxAmount"),
        category=_text(subtotal, "cac:TaxCategory/cbc:ID"),
        rate=_amount(subtotal, "cac:TaxCategory/cbc:Percent"),
        exemption_reason=_text(subtotal, "cac:TaxCategory/cbc:TaxExemptionReason"),
        exemption_reason_code=_text(subtotal, "cac:TaxCategory/cbc:TaxExemptionReasonCode"),
    )


def _line(line: Element, quantity_xpath: str) -> InvoiceLine:
    return InvoiceLine(
        id=_text(line, "cbc:ID"),
        quantity=_amount(line, quantity_xpath),
        unit=_text(line, f"{quantity_xpath}/@unitCode"),
        net_amount=_amount(line, "cbc:LineExtensionAmount"),
        item_name=_text(line, "cac:Item/cbc:Name"),
        price=_amount(line, "cac:Price/cbc:PriceAmount"),
        price_base_quantity=_amount(line, "cac:Price/cbc:BaseQuantity"),
        vat_category=_text(line, "cac:Item/cac:ClassifiedTaxCategory/cbc:ID"),
        vat_rate=_amount(line, "cac:Item/cac:ClassifiedTaxCategory/cbc:Percent"),
    )
