"""The EN 16931 model read from UBL: every business term where the binding puts it."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel

from services.factures.model import (
    AllowanceCharge,
    CreditTransfer,
    Identifier,
    Invoice,
    InvoiceLine,
    PrecedingInvoice,
    VatBreakdown,
    read_invoice,
)
from services.factures.ubl import parse_document

NAMESPACES = (
    'xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2" '
    'xmlns:cac="urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"'
)

# A supplier in Namur invoices the commune of Gembloux: two lines, one document
# allowance, one document charge, 21% and 6% VAT.
COMMUNE_INVOICE = f"""<?xml version="1.0" encoding="UTF-8"?>
<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2" {NAMESPACES}>
  <cbc:CustomizationID>urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0</cbc:CustomizationID>
  <cbc:ProfileID>urn:fdc:peppol.eu:2017:poacc:billing:01:1.0</cbc:ProfileID>
  <cbc:ID>F-2024-0815</cbc:ID>
  <cbc:IssueDate>2024-03-14</cbc:IssueDate>
  <cbc:DueDate>2024-04-13</cbc:DueDate>
  <cbc:InvoiceTypeCode>380</cbc:InvoiceTypeCode>
  <cbc:DocumentCurrencyCode>EUR</cbc:DocumentCurrencyCode>
  <cbc:BuyerReference>SERV-TRAVAUX-17</cbc:BuyerReference>
  <cac:OrderReference><cbc:ID>BC-2024-311</cbc:ID></cac:OrderReference>
  <cac:AccountingSupplierParty><cac:Party>
    <cbc:EndpointID schemeID="0208">0456789123</cbc:EndpointID>
    <cac:PartyName><cbc:Name>Voirie Mosane</cbc:Name></cac:PartyName>
    <cac:PostalAddress>
      <cbc:StreetName>Rue de Fer 12</cbc:StreetName>
      <cbc:CityName>Namur</cbc:CityName>
      <cbc:PostalZone>5000</cbc:PostalZone>
      <cac:Country><cbc:IdentificationCode>BE</cbc:IdentificationCode></cac:Country>
    </cac:PostalAddress>
    <cac:PartyTaxScheme>
      <cbc:CompanyID>BE0456789123</cbc:CompanyID>
      <cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme>
    </cac:PartyTaxScheme>
    <cac:PartyLegalEntity>
      <cbc:RegistrationName>Voirie Mosane SRL</cbc:RegistrationName>
      <cbc:CompanyID schemeID="0208">0456789123</cbc:CompanyID>
    </cac:PartyLegalEntity>
  </cac:Party></cac:AccountingSupplierParty>
  <cac:AccountingCustomerParty><cac:Party>
    <cbc:EndpointID schemeID="0208">0207361485</cbc:EndpointID>
    <cac:PostalAddress>
      <cbc:CityName>Gembloux</cbc:CityName>
      <cac:Country><cbc:IdentificationCode>BE</cbc:IdentificationCode></cac:Country>
    </cac:PostalAddress>
    <cac:PartyLegalEntity>
      <cbc:RegistrationName>Commune de Gembloux</cbc:RegistrationName>
    </cac:PartyLegalEntity>
  </cac:Party></cac:AccountingCustomerParty>
  <cac:PaymentMeans>
    <cbc:PaymentMeansCode>30</cbc:PaymentMeansCode>
    <cbc:PaymentID>+++090/9337/55493+++</cbc:PaymentID>
    <cac:PayeeFinancialAccount>
      <cbc:ID>BE71096123456769</cbc:ID>
      <cbc:Name>Voirie Mosane SRL</cbc:Name>
      <cac:FinancialInstitutionBranch><cbc:ID>GKCCBEBB</cbc:ID></cac:FinancialInstitutionBranch>
    </cac:PayeeFinancialAccount>
  </cac:PaymentMeans>
  <cac:AllowanceCharge>
    <cbc:ChargeIndicator>false</cbc:ChargeIndicator>
    <cbc:AllowanceChargeReasonCode>95</cbc:AllowanceChargeReasonCode>
    <cbc:AllowanceChargeReason>Remise fidélité</cbc:AllowanceChargeReason>
    <cbc:MultiplierFactorNumeric>5</cbc:MultiplierFactorNumeric>
    <cbc:Amount currencyID="EUR">50.00</cbc:Amount>
    <cbc:BaseAmount currencyID="EUR">1000.00</cbc:BaseAmount>
    <cac:TaxCategory><cbc:ID>S</cbc:ID><cbc:Percent>21</cbc:Percent>
      <cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme></cac:TaxCategory>
  </cac:AllowanceCharge>
  <cac:AllowanceCharge>
    <cbc:ChargeIndicator>true</cbc:ChargeIndicator>
    <cbc:AllowanceChargeReason>Transport</cbc:AllowanceChargeReason>
    <cbc:Amount currencyID="EUR">40.00</cbc:Amount>
    <cac:TaxCategory><cbc:ID>S</cbc:ID><cbc:Percent>21</cbc:Percent>
      <cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme></cac:TaxCategory>
  </cac:AllowanceCharge>
  <cac:TaxTotal>
    <cbc:TaxAmount currencyID="EUR">210.90</cbc:TaxAmount>
    <cac:TaxSubtotal>
      <cbc:TaxableAmount currencyID="EUR">990.00</cbc:TaxableAmount>
      <cbc:TaxAmount currencyID="EUR">207.90</cbc:TaxAmount>
      <cac:TaxCategory><cbc:ID>S</cbc:ID><cbc:Percent>21</cbc:Percent>
        <cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme></cac:TaxCategory>
    </cac:TaxSubtotal>
    <cac:TaxSubtotal>
      <cbc:TaxableAmount currencyID="EUR">50.00</cbc:TaxableAmount>
      <cbc:TaxAmount currencyID="EUR">3.00</cbc:TaxAmount>
      <cac:TaxCategory><cbc:ID>AA</cbc:ID><cbc:Percent>6</cbc:Percent>
        <cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme></cac:TaxCategory>
    </cac:TaxSubtotal>
  </cac:TaxTotal>
  <cac:LegalMonetaryTotal>
    <cbc:LineExtensionAmount currencyID="EUR">1050.00</cbc:LineExtensionAmount>
    <cbc:TaxExclusiveAmount currencyID="EUR">1040.00</cbc:TaxExclusiveAmount>
    <cbc:TaxInclusiveAmount currencyID="EUR">1250.90</cbc:TaxInclusiveAmount>
    <cbc:AllowanceTotalAmount currencyID="EUR">50.00</cbc:AllowanceTotalAmount>
    <cbc:ChargeTotalAmount currencyID="EUR">40.00</cbc:ChargeTotalAmount>
    <cbc:PrepaidAmount currencyID="EUR">250.90</cbc:PrepaidAmount>
    <cbc:PayableRoundingAmount currencyID="EUR">0.00</cbc:PayableRoundingAmount>
    <cbc:PayableAmount currencyID="EUR">1000.00</cbc:PayableAmount>
  </cac:LegalMonetaryTotal>
  <cac:InvoiceLine>
    <cbc:ID>1</cbc:ID>
    <cbc:InvoicedQuantity unitCode="MTK">40</cbc:InvoicedQuantity>
    <cbc:LineExtensionAmount currencyID="EUR">1000.00</cbc:LineExtensionAmount>
    <cac:Item><cbc:Name>Réfection de trottoir</cbc:Name>
      <cac:ClassifiedTaxCategory><cbc:ID>S</cbc:ID><cbc:Percent>21</cbc:Percent>
        <cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme></cac:ClassifiedTaxCategory></cac:Item>
    <cac:Price><cbc:PriceAmount currencyID="EUR">25.00</cbc:PriceAmount>
      <cbc:BaseQuantity unitCode="MTK">1</cbc:BaseQuantity></cac:Price>
  </cac:InvoiceLine>
  <cac:InvoiceLine>
    <cbc:ID>2</cbc:ID>
    <cbc:InvoicedQuantity unitCode="H87">10</cbc:InvoicedQuantity>
    <cbc:LineExtensionAmount currencyID="EUR">50.00</cbc:LineExtensionAmount>
    <cac:Item><cbc:Name>Plants de haie</cbc:Name>
      <cac:ClassifiedTaxCategory><cbc:ID>AA</cbc:ID><cbc:Percent>6</cbc:Percent>
        <cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme></cac:ClassifiedTaxCategory></cac:Item>
    <cac:Price><cbc:PriceAmount currencyID="EUR">5.00</cbc:PriceAmount></cac:Price>
  </cac:InvoiceLine>
</Invoice>
"""

# The credit note cancelling line 2 of the invoice above.
CREDIT_NOTE = f"""
<CreditNote xmlns="urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2" {NAMESPACES}>
  <cbc:ID>NC-2024-0007</cbc:ID>
  <cbc:IssueDate>2024-03-20</cbc:IssueDate>
  <cbc:CreditNoteTypeCode>381</cbc:CreditNoteTypeCode>
  <cbc:DocumentCurrencyCode>EUR</cbc:DocumentCurrencyCode>
  <cbc:TaxCurrencyCode>USD</cbc:TaxCurrencyCode>
  <cac:BillingReference><cac:InvoiceDocumentReference>
    <cbc:ID>F-2024-0815</cbc:ID><cbc:IssueDate>2024-03-14</cbc:IssueDate>
  </cac:InvoiceDocumentReference></cac:BillingReference>
  <cac:BillingReference><cac:InvoiceDocumentReference>
    <cbc:ID>F-2024-0790</cbc:ID>
  </cac:InvoiceDocumentReference></cac:BillingReference>
  <cac:PaymentMeans>
    <cbc:PaymentMeansCode>30</cbc:PaymentMeansCode>
    <cbc:PaymentDueDate>2024-04-19</cbc:PaymentDueDate>
  </cac:PaymentMeans>
  <cac:TaxTotal><cbc:TaxAmount currencyID="USD">3.25</cbc:TaxAmount></cac:TaxTotal>
  <cac:TaxTotal><cbc:TaxAmount currencyID="EUR">3.00</cbc:TaxAmount></cac:TaxTotal>
  <cac:LegalMonetaryTotal>
    <cbc:PayableAmount currencyID="EUR">53.00</cbc:PayableAmount>
  </cac:LegalMonetaryTotal>
  <cac:CreditNoteLine>
    <cbc:ID>1</cbc:ID>
    <cbc:CreditedQuantity unitCode="H87">10</cbc:CreditedQuantity>
    <cbc:LineExtensionAmount currencyID="EUR">50.00</cbc:LineExtensionAmount>
    <cac:Item><cbc:Name>Plants de haie</cbc:Name></cac:Item>
  </cac:CreditNoteLine>
</CreditNote>
"""


def read(xml: str) -> Invoice:
    return read_invoice(parse_document(xml.encode()))


def test_the_header_terms_are_read() -> None:
    invoice = read(COMMUNE_INVOICE)
    assert invoice.kind == "Invoice"
    assert invoice.number == "F-2024-0815"
    assert invoice.issue_date == date(2024, 3, 14)
    assert invoice.document_type == "380"
    assert invoice.currency == "EUR"
    assert invoice.due_date == date(2024, 4, 13)
    assert invoice.buyer_reference == "SERV-TRAVAUX-17"
    assert invoice.purchase_order_reference == "BC-2024-311"
    assert invoice.profile_id == "urn:fdc:peppol.eu:2017:poacc:billing:01:1.0"
    assert invoice.preceding_invoices == []


def test_seller_and_buyer_are_read_with_their_identifier_schemes() -> None:
    invoice = read(COMMUNE_INVOICE)
    seller, buyer = invoice.seller, invoice.buyer
    assert seller is not None and buyer is not None
    assert seller.name == "Voirie Mosane SRL"
    assert seller.trading_name == "Voirie Mosane"
    assert seller.vat_id == "BE0456789123"
    assert seller.legal_registration == Identifier(value="0456789123", scheme="0208")
    assert seller.electronic_address == Identifier(value="0456789123", scheme="0208")
    assert seller.address is not None
    assert (seller.address.street, seller.address.postal_code) == ("Rue de Fer 12", "5000")
    assert buyer.name == "Commune de Gembloux"
    assert buyer.vat_id is None
    assert buyer.electronic_address == Identifier(value="0207361485", scheme="0208")
    assert buyer.address is not None
    assert (buyer.address.city, buyer.address.country_code) == ("Gembloux", "BE")


def test_payment_instructions_are_read() -> None:
    payment = read(COMMUNE_INVOICE).payment_instructions
    assert payment is not None
    assert payment.means_code == "30"
    assert payment.remittance_information == "+++090/9337/55493+++"
    assert payment.credit_transfers == [
        CreditTransfer(
            account="BE71096123456769", account_name="Voirie Mosane SRL", bank="GKCCBEBB"
        )
    ]


def test_document_allowances_and_charges_are_told_apart() -> None:
    invoice = read(COMMUNE_INVOICE)
    assert invoice.allowances == [
        AllowanceCharge(
            is_charge=False,
            amount=Decimal("50.00"),
            base_amount=Decimal("1000.00"),
            percentage=Decimal(5),
            vat_category="S",
            vat_rate=Decimal(21),
            reason="Remise fidélité",
            reason_code="95",
        )
    ]
    assert [(charge.reason, charge.amount) for charge in invoice.charges] == [
        ("Transport", Decimal("40.00"))
    ]


def test_totals_and_vat_breakdown_are_decimals() -> None:
    invoice = read(COMMUNE_INVOICE)
    totals = invoice.totals
    assert totals.line_net_total == Decimal("1050.00")
    assert totals.allowance_total == Decimal("50.00")
    assert totals.charge_total == Decimal("40.00")
    assert totals.total_without_vat == Decimal("1040.00")
    assert totals.vat_total == Decimal("210.90")
    assert totals.vat_total_in_accounting_currency is None
    assert totals.total_with_vat == Decimal("1250.90")
    assert totals.paid_amount == Decimal("250.90")
    assert totals.rounding_amount == Decimal("0.00")
    assert totals.amount_due == Decimal("1000.00")
    assert invoice.vat_breakdown == [
        VatBreakdown(
            taxable_amount=Decimal("990.00"),
            tax_amount=Decimal("207.90"),
            category="S",
            rate=Decimal(21),
        ),
        VatBreakdown(
            taxable_amount=Decimal("50.00"),
            tax_amount=Decimal("3.00"),
            category="AA",
            rate=Decimal(6),
        ),
    ]


def test_lines_are_read() -> None:
    lines = read(COMMUNE_INVOICE).lines
    assert lines[0] == InvoiceLine(
        id="1",
        quantity=Decimal(40),
        unit="MTK",
        net_amount=Decimal("1000.00"),
        item_name="Réfection de trottoir",
        price=Decimal("25.00"),
        price_base_quantity=Decimal(1),
        vat_category="S",
        vat_rate=Decimal(21),
    )
    assert [(line.id, line.unit, line.price_base_quantity) for line in lines] == [
        ("1", "MTK", Decimal(1)),
        ("2", "H87", None),
    ]


def test_a_credit_note_reads_its_own_bindings() -> None:
    credit_note = read(CREDIT_NOTE)
    assert credit_note.kind == "CreditNote"
    assert credit_note.document_type == "381"
    assert credit_note.due_date == date(2024, 4, 19)
    assert credit_note.preceding_invoices == [
        PrecedingInvoice(number="F-2024-0815", issue_date=date(2024, 3, 14)),
        PrecedingInvoice(number="F-2024-0790"),
    ]
    assert credit_note.vat_accounting_currency == "USD"
    assert credit_note.totals.vat_total == Decimal("3.00")
    assert credit_note.totals.vat_total_in_accounting_currency == Decimal("3.25")
    assert [(line.id, line.quantity, line.unit) for line in credit_note.lines] == [
        ("1", Decimal(10), "H87")
    ]


def test_an_empty_invoice_reads_as_nothing_known() -> None:
    invoice = read('<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"/>')
    assert invoice.number is None
    assert invoice.issue_date is None
    assert invoice.seller is None
    assert invoice.payment_instructions is None
    assert invoice.totals.amount_due is None
    assert invoice.lines == []
    assert invoice.vat_breakdown == []


def test_malformed_values_read_as_none_instead_of_raising() -> None:
    broken = (
        COMMUNE_INVOICE.replace("2024-03-14", "14/03/2024")
        .replace("1000.00</cbc:PayableAmount>", "mille euros</cbc:PayableAmount>")
        .replace(">40</cbc:InvoicedQuantity>", ">NaN</cbc:InvoicedQuantity>")
        .replace("<cbc:ID>F-2024-0815</cbc:ID>", "<cbc:ID>  </cbc:ID>")
        .replace("<cbc:ID>BE71096123456769</cbc:ID>", "<cbc:ID/>")
    )
    invoice = read(broken)
    assert invoice.issue_date is None
    assert invoice.totals.amount_due is None
    assert invoice.lines[0].quantity is None
    assert invoice.number is None
    assert invoice.payment_instructions is not None
    assert invoice.payment_instructions.credit_transfers == []


def test_every_corpus_example_reads_with_its_amount_due(corpus: Path) -> None:
    for folder in ("cen-examples", "peppol-examples"):
        for path in sorted((corpus / "einvoice" / folder).iterdir()):
            if path.suffix.lower() != ".xml":
                continue
            invoice = read_invoice(parse_document(path.read_bytes()))
            assert invoice.number, path.name
            assert invoice.totals.amount_due is not None, path.name
            assert invoice.lines, path.name


BUSINESS_TERM = re.compile(r"\bB[TG]-\d+\b")


def test_every_field_names_its_en16931_business_term() -> None:
    models: list[type[BaseModel]] = [Invoice]
    missing = []
    while models:
        model = models.pop()
        for name, field in model.model_fields.items():
            if model in {Identifier, AllowanceCharge} and name in {"value", "scheme", "is_charge"}:
                continue  # parts of a term, not terms
            if not BUSINESS_TERM.search(field.description or ""):
                missing.append(f"{model.__name__}.{name}")
            for nested in _models_in(field.annotation):
                models.append(nested)
    assert missing == []


def _models_in(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [
        model for argument in getattr(annotation, "__args__", ()) for model in _models_in(argument)
    ]
