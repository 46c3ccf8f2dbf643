"""The EN 16931 business rules for UBL (BR-*, BR-CO-*, BR-DEC-*, BR-<VAT category>-*, BR-CL-*).

Each rule re-expresses, in Python, one assertion of the CEN TC434 validation
artefacts (UBL binding): same id, flag, message and context. Contexts that the
Schematron writes relative (``cac:InvoiceLine``) match anywhere in the document,
so they are written here with ``//``; a rule whose context is absent stays quiet.

XPath 2.0 semantics the official tests depend on are kept: a comparison with a
missing value is false, ``round`` rounds halves up, ``ChargeIndicator`` is an
``xs:boolean`` ('true'/'1', 'false'/'0'), and a category belongs to VAT when its
``cac:TaxScheme/cbc:ID`` is "VAT" in any case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_FLOOR, Decimal
from typing import TypeAlias

from lxml import etree

from services.factures.rules import codelists
from services.factures.rules.engine import (
    Element,
    RuleSet,
    amount,
    decimal,
    exists,
    per_document,
    round2,
    select,
    text,
    texts,
)

EN16931 = RuleSet("EN 16931")
rule = EN16931.rule

# The official CEN artefacts (1.3.x) call the IGIC and IPSI rules BR-IG-* and BR-IP-*;
# EN 16931-1 and the VEFA unit suite, which these rules follow, BR-AF-* and BR-AG-*.
OFFICIAL_ID_PREFIXES = {"BR-IG-": "BR-AF-", "BR-IP-": "BR-AG-"}


def our_rule_id(official_id: str) -> str:
    """The id these rules give the rule the official artefacts call ``official_id``."""
    for official, ours in OFFICIAL_ID_PREFIXES.items():
        if official_id.startswith(official):
            return ours + official_id[len(official) :]
    return official_id


# Contexts and predicates shared by many rules -------------------------------------------

INVOICE = "/ubl-invoice:Invoice | /ubl-creditnote:CreditNote"
ROOT_CHILD = "/ubl-invoice:Invoice/{0} | /ubl-creditnote:CreditNote/{0}"
LINES = "//cac:InvoiceLine | //cac:CreditNoteLine"
VAT = "[cac:TaxScheme[translate(normalize-space(cbc:ID), 'vat', 'VAT') = 'VAT']]"
IS_ALLOWANCE = (
    "[normalize-space(cbc:ChargeIndicator) = 'false' or normalize-space(cbc:ChargeIndicator) = '0']"
)
IS_CHARGE = (
    "[normalize-space(cbc:ChargeIndicator) = 'true' or normalize-space(cbc:ChargeIndicator) = '1']"
)
DOC_ALLOWANCES = ROOT_CHILD.format(f"cac:AllowanceCharge{IS_ALLOWANCE}")
DOC_CHARGES = ROOT_CHILD.format(f"cac:AllowanceCharge{IS_CHARGE}")
SUBTOTAL_CATEGORIES = "/*/cac:TaxTotal/cac:TaxSubtotal/cac:TaxCategory"


def _ends_with(suffix: str) -> str:
    """XPath 1.0 for XPath 2.0's ``ends-with(name(), suffix)``."""
    return f"substring(local-name(), string-length(local-name()) - {len(suffix) - 1}) = '{suffix}'"


# Helpers for checks ---------------------------------------------------------------------


def filled(node: Element, xpath: str) -> bool:
    """``normalize-space(xpath) != ''``: the first selected node has some text."""
    return bool(text(node, xpath))


def num(node: Element, xpath: str) -> Decimal:
    """The number at ``xpath``; a missing or malformed value breaks the rule (ValueError)."""
    value = amount(node, xpath)
    if value is None:
        raise ValueError(f"no number at {xpath}")
    return value


def total(node: Element, xpath: str) -> Decimal:
    """XPath ``sum(xs:decimal(...))``: a value that is not a number breaks the rule."""
    values = [decimal(value) for value in texts(node, xpath)]
    if any(value is None for value in values):
        raise ValueError(f"not a number at {xpath}")
    return sum((value for value in values if value is not None), Decimal(0))


def xround(value: Decimal) -> Decimal:
    """XPath ``round``: to the nearest integer, halves towards positive infinity."""
    return (value + Decimal("0.5")).to_integral_value(rounding=ROUND_FLOOR)


def two_decimals(node: Element, xpath: str) -> bool:
    """``string-length(substring-after(xpath, '.')) <= 2`` on the first selected value."""
    found = select(node, xpath)
    if not found:
        return True
    value = found[0]
    content = value if isinstance(value, str) else (value.text or "")
    return len(content.partition(".")[2]) <= 2


def has_code(value: str | None, codes: frozenset[str]) -> bool:
    """The Schematron code list test: one code, no inner space, in the list."""
    return value is not None and value in codes


def as_date(node: Element, xpath: str) -> date:
    value = text(node, xpath)
    if value is None:
        raise ValueError(f"no date at {xpath}")
    return date.fromisoformat(value)


def is_positive_number(node: Element, xpath: str, *, strict: bool) -> bool:
    """``(xpath) > 0`` (or ``>= 0``) as a general comparison: true if any value qualifies."""
    for value in texts(node, xpath):
        number = decimal(value)
        if number is None:
            raise ValueError(f"not a number at {xpath}")
        if number > 0 or (not strict and number == 0):
            return True
    return False


# The Invoice -----------------------------------------------------------------------------


@rule(
    "BR-01", "fatal", INVOICE, "[BR-01]-An Invoice shall have a Specification identifier (BT-24)."
)
def br_01(node: Element) -> bool:
    return filled(node, "cbc:CustomizationID")


@rule("BR-02", "fatal", INVOICE, "[BR-02]-An Invoice shall have an Invoice number (BT-1).")
def br_02(node: Element) -> bool:
    return filled(node, "cbc:ID")


@rule("BR-03", "fatal", INVOICE, "[BR-03]-An Invoice shall have an Invoice issue date (BT-2).")
def br_03(node: Element) -> bool:
    return filled(node, "cbc:IssueDate")


@rule("BR-04", "fatal", INVOICE, "[BR-04]-An Invoice shall have an Invoice type code (BT-3).")
def br_04(node: Element) -> bool:
    return filled(node, "cbc:InvoiceTypeCode") or filled(node, "cbc:CreditNoteTypeCode")


@rule("BR-05", "fatal", INVOICE, "[BR-05]-An Invoice shall have an Invoice currency code (BT-5).")
def br_05(node: Element) -> bool:
    return filled(node, "cbc:DocumentCurrencyCode")


@rule("BR-06", "fatal", INVOICE, "[BR-06]-An Invoice shall contain the Seller name (BT-27).")
def br_06(node: Element) -> bool:
    return filled(
        node, "cac:AccountingSupplierParty/cac:Party/cac:PartyLegalEntity/cbc:RegistrationName"
    )


@rule("BR-07", "fatal", INVOICE, "[BR-07]-An Invoice shall contain the Buyer name (BT-44).")
def br_07(node: Element) -> bool:
    return filled(
        node, "cac:AccountingCustomerParty/cac:Party/cac:PartyLegalEntity/cbc:RegistrationName"
    )


@rule("BR-08", "fatal", INVOICE, "[BR-08]-An Invoice shall contain the Seller postal address.")
def br_08(node: Element) -> bool:
    return exists(node, "cac:AccountingSupplierParty/cac:Party/cac:PostalAddress")


@rule(
    "BR-10", "fatal", INVOICE, "[BR-10]-An Invoice shall contain the Buyer postal address (BG-8)."
)
def br_10(node: Element) -> bool:
    return exists(node, "cac:AccountingCustomerParty/cac:Party/cac:PostalAddress")


@rule("BR-16", "fatal", INVOICE, "[BR-16]-An Invoice shall have at least one Invoice line (BG-25)")
def br_16(node: Element) -> bool:
    return exists(node, "cac:InvoiceLine | cac:CreditNoteLine")


@rule(
    "BR-53",
    "fatal",
    INVOICE,
    "[BR-53]-If the VAT accounting currency code (BT-6) is present, then the Invoice total VAT "
    "amount in accounting currency (BT-111) shall be provided.",
)
def br_53(node: Element) -> bool:
    currencies = set(texts(node, "//cac:TaxTotal/cbc:TaxAmount/@currencyID"))
    return all(code in currencies for code in texts(node, "cbc:TaxCurrencyCode"))


@rule(
    "BR-66",
    "fatal",
    INVOICE,
    "[BR-66]-An Invoice shall contain maximum one Payment Card account (BG-18).",
)
def br_66(node: Element) -> bool:
    return len(select(node, "cac:PaymentMeans/cac:CardAccount")) <= 1


@rule(
    "BR-67",
    "fatal",
    INVOICE,
    "[BR-67]-An Invoice shall contain maximum one Payment Mandate (BG-19).",
)
def br_67(node: Element) -> bool:
    return len(select(node, "cac:PaymentMeans/cac:PaymentMandate")) <= 1


@rule(
    "BR-CO-03",
    "fatal",
    INVOICE,
    "[BR-CO-03]-Value added tax point date (BT-7) and Value added tax point date code (BT-8) "
    "are mutually exclusive.",
)
def br_co_03(node: Element) -> bool:
    return not (
        exists(node, "cbc:TaxPointDate") and exists(node, "cac:InvoicePeriod/cbc:DescriptionCode")
    )


@rule(
    "BR-CO-15",
    "fatal",
    INVOICE,
    "[BR-CO-15]-Invoice total amount with VAT (BT-112) = Invoice total amount without VAT "
    "(BT-109) + Invoice total VAT amount (BT-110).",
)
def br_co_15(node: Element) -> bool:
    for currency in texts(node, "cbc:DocumentCurrencyCode"):
        tax = [
            value
            for value in select(node, "cac:TaxTotal/cbc:TaxAmount")
            if value.get("currencyID") == currency
        ]
        if len(tax) != 1:
            return False
        vat = decimal((tax[0].text or "").strip())
        inclusive = num(node, "cac:LegalMonetaryTotal/cbc:TaxInclusiveAmount")
        exclusive = num(node, "cac:LegalMonetaryTotal/cbc:TaxExclusiveAmount")
        if vat is None or inclusive != round2(exclusive + vat):
            return False
    return True


@rule(
    "BR-CO-18",
    "fatal",
    INVOICE,
    "[BR-CO-18]-An Invoice shall at least have one VAT breakdown group (BG-23).",
)
def br_co_18(node: Element) -> bool:
    return exists(node, "cac:TaxTotal/cac:TaxSubtotal")


def _tax_amount_decimals(node: Element, currency_xpath: str) -> bool:
    currencies = set(texts(node, currency_xpath))
    return all(
        len((value.text or "").partition(".")[2]) <= 2
        for value in select(node, "//cac:TaxTotal/cbc:TaxAmount")
        if value.get("currencyID") in currencies
    )


@rule(
    "BR-DEC-13",
    "fatal",
    INVOICE,
    "[BR-DEC-13]-The allowed maximum number of decimals for the Invoice total VAT amount "
    "(BT-110) is 2.",
)
def br_dec_13(node: Element) -> bool:
    return _tax_amount_decimals(node, "cbc:DocumentCurrencyCode")


@rule(
    "BR-DEC-15",
    "fatal",
    INVOICE,
    "[BR-DEC-15]-The allowed maximum number of decimals for the Invoice total VAT amount in "
    "accounting currency (BT-111) is 2.",
)
def br_dec_15(node: Element) -> bool:
    return _tax_amount_decimals(node, "cbc:TaxCurrencyCode")


# Seller, buyer, payee, tax representative -----------------------------------------------

SELLER_PARTY = "//cac:AccountingSupplierParty/cac:Party"
BUYER_PARTY = "//cac:AccountingCustomerParty/cac:Party"


@rule(
    "BR-09",
    "fatal",
    f"{SELLER_PARTY}/cac:PostalAddress",
    "[BR-09]-The Seller postal address (BG-5) shall contain a Seller country code (BT-40).",
)
def br_09(node: Element) -> bool:
    return filled(node, "cac:Country/cbc:IdentificationCode")


@rule(
    "BR-11",
    "fatal",
    f"{BUYER_PARTY}/cac:PostalAddress",
    "[BR-11]-The Buyer postal address shall contain a Buyer country code (BT-55).",
)
def br_11(node: Element) -> bool:
    return filled(node, "cac:Country/cbc:IdentificationCode")


@rule(
    "BR-17",
    "fatal",
    "//cac:PayeeParty",
    "[BR-17]-The Payee name (BT-59) shall be provided in the Invoice, if the Payee (BG-10) is "
    "different from the Seller (BG-4)",
)
def br_17(node: Element) -> bool:
    seller = "../cac:AccountingSupplierParty/cac:Party"
    names = set(texts(node, "cac:PartyName/cbc:Name"))
    ids = set(texts(node, "cac:PartyIdentification/cbc:ID"))
    return (
        bool(names)
        and not names & set(texts(node, f"{seller}/cac:PartyName/cbc:Name"))
        and not ids & set(texts(node, f"{seller}/cac:PartyIdentification/cbc:ID"))
    )


@rule(
    "BR-18",
    "fatal",
    "//cac:TaxRepresentativeParty",
    "[BR-18]-The Seller tax representative name (BT-62) shall be provided in the Invoice, if the "
    "Seller (BG-4) has a Seller tax representative party (BG-11)",
)
def br_18(node: Element) -> bool:
    return filled(node, "cac:PartyName/cbc:Name")


@rule(
    "BR-19",
    "fatal",
    "//cac:TaxRepresentativeParty",
    "[BR-19]-The Seller tax representative postal address (BG-12) shall be provided in the "
    "Invoice, if the Seller (BG-4) has a Seller tax representative party (BG-11).",
)
def br_19(node: Element) -> bool:
    return exists(node, "cac:PostalAddress")


@rule(
    "BR-56",
    "fatal",
    "//cac:TaxRepresentativeParty",
    "[BR-56]-Each Seller tax representative party (BG-11) shall have a Seller tax representative "
    "VAT identifier (BT-63).",
)
def br_56(node: Element) -> bool:
    return exists(node, f"cac:PartyTaxScheme{VAT}/cbc:CompanyID")


@rule(
    "BR-20",
    "fatal",
    "//cac:TaxRepresentativeParty/cac:PostalAddress",
    "[BR-20]-The Seller tax representative postal address (BG-12) shall contain a Tax "
    "representative country code (BT-69), if the Seller (BG-4) has a Seller tax representative "
    "party (BG-11).",
)
def br_20(node: Element) -> bool:
    return filled(node, "cac:Country/cbc:IdentificationCode")


@rule(
    "BR-62",
    "fatal",
    f"{SELLER_PARTY}/cbc:EndpointID",
    "[BR-62]-The Seller electronic address (BT-34) shall have a Scheme identifier.",
)
def br_62(node: Element) -> bool:
    return node.get("schemeID") is not None


@rule(
    "BR-63",
    "fatal",
    f"{BUYER_PARTY}/cbc:EndpointID",
    "[BR-63]-The Buyer electronic address (BT-49) shall have a Scheme identifier.",
)
def br_63(node: Element) -> bool:
    return node.get("schemeID") is not None


@rule(
    "BR-CO-26",
    "fatal",
    "//cac:AccountingSupplierParty",
    "[BR-CO-26]-In order for the buyer to automatically identify a supplier, the Seller "
    "identifier (BT-29), the Seller legal registration identifier (BT-30) and/or the Seller VAT "
    "identifier (BT-31) shall be present.",
)
def br_co_26(node: Element) -> bool:
    return (
        exists(node, f"cac:Party/cac:PartyTaxScheme{VAT}/cbc:CompanyID")
        or exists(node, "cac:Party/cac:PartyIdentification/cbc:ID")
        or exists(node, "cac:Party/cac:PartyLegalEntity/cbc:CompanyID")
    )


# Country prefixes a VAT identifier may start with (ISO 3166-1 alpha-2, and EL for Greece),
# tested as the official rule does: the first two characters contained in the list.
_VAT_PREFIXES = " " + " ".join(sorted(codelists.COUNTRY_CODES | {"EL"})) + " "


@rule(
    "BR-CO-09",
    "fatal",
    f"//cac:PartyTaxScheme{VAT}",
    "[BR-CO-09]-The Seller VAT identifier (BT-31), the Seller tax representative VAT identifier "
    "(BT-63) and the Buyer VAT identifier (BT-48) shall have a prefix in accordance with ISO code "
    "ISO 3166-1 alpha-2 by which the country of issue may be identified. Nevertheless, Greece may "
    "use the prefix ‘EL’.",
)
def br_co_09(node: Element) -> bool:
    found = select(node, "cbc:CompanyID")
    company_id = (found[0].text or "") if found else ""
    return company_id[:2] in _VAT_PREFIXES


# Document totals -------------------------------------------------------------------------

TOTALS = "//cac:LegalMonetaryTotal"


@rule(
    "BR-12",
    "fatal",
    TOTALS,
    "[BR-12]-An Invoice shall have the Sum of Invoice line net amount (BT-106).",
)
def br_12(node: Element) -> bool:
    return exists(node, "cbc:LineExtensionAmount")


@rule(
    "BR-13",
    "fatal",
    TOTALS,
    "[BR-13]-An Invoice shall have the Invoice total amount without VAT (BT-109).",
)
def br_13(node: Element) -> bool:
    return exists(node, "cbc:TaxExclusiveAmount")


@rule(
    "BR-14",
    "fatal",
    TOTALS,
    "[BR-14]-An Invoice shall have the Invoice total amount with VAT (BT-112).",
)
def br_14(node: Element) -> bool:
    return exists(node, "cbc:TaxInclusiveAmount")


@rule(
    "BR-15", "fatal", TOTALS, "[BR-15]-An Invoice shall have the Amount due for payment (BT-115)."
)
def br_15(node: Element) -> bool:
    return exists(node, "cbc:PayableAmount")


@rule(
    "BR-CO-10",
    "fatal",
    TOTALS,
    "[BR-CO-10]-Sum of Invoice line net amount (BT-106) = Σ Invoice line net amount (BT-131).",
)
def br_co_10(node: Element) -> bool:
    lines = total(node, "//cac:InvoiceLine/cbc:LineExtensionAmount")
    lines += total(node, "//cac:CreditNoteLine/cbc:LineExtensionAmount")
    return num(node, "cbc:LineExtensionAmount") == round2(lines)


def _sum_matches(node: Element, total_xpath: str, parts_xpath: str) -> bool:
    """A document total equals the rounded sum of its parts, or both are absent."""
    if not exists(node, total_xpath):
        return not exists(node, parts_xpath)
    return num(node, total_xpath) == round2(total(node, f"{parts_xpath}/cbc:Amount"))


@rule(
    "BR-CO-11",
    "fatal",
    TOTALS,
    "[BR-CO-11]-Sum of allowances on document level (BT-107) = Σ Document level allowance "
    "amount (BT-92).",
)
def br_co_11(node: Element) -> bool:
    return _sum_matches(node, "cbc:AllowanceTotalAmount", f"../cac:AllowanceCharge{IS_ALLOWANCE}")


@rule(
    "BR-CO-12",
    "fatal",
    TOTALS,
    "[BR-CO-12]-Sum of charges on document level (BT-108) = Σ Document level charge amount "
    "(BT-99).",
)
def br_co_12(node: Element) -> bool:
    return _sum_matches(node, "cbc:ChargeTotalAmount", f"../cac:AllowanceCharge{IS_CHARGE}")


@rule(
    "BR-CO-13",
    "fatal",
    TOTALS,
    "[BR-CO-13]-Invoice total amount without VAT (BT-109) = Σ Invoice line net amount (BT-131) "
    "- Sum of allowances on document level (BT-107) + Sum of charges on document level (BT-108).",
)
def br_co_13(node: Element) -> bool:
    expected = num(node, "cbc:LineExtensionAmount")
    adjusted = False
    if exists(node, "cbc:ChargeTotalAmount"):
        expected += num(node, "cbc:ChargeTotalAmount")
        adjusted = True
    if exists(node, "cbc:AllowanceTotalAmount"):
        expected -= num(node, "cbc:AllowanceTotalAmount")
        adjusted = True
    return num(node, "cbc:TaxExclusiveAmount") == (round2(expected) if adjusted else expected)


@rule(
    "BR-CO-16",
    "fatal",
    TOTALS,
    "[BR-CO-16]-Amount due for payment (BT-115) = Invoice total amount with VAT (BT-112) -Paid "
    "amount (BT-113) +Rounding amount (BT-114).",
)
def br_co_16(node: Element) -> bool:
    due = num(node, "cbc:TaxInclusiveAmount")
    if exists(node, "cbc:PrepaidAmount"):
        due = round2(due - num(node, "cbc:PrepaidAmount"))
    payable = num(node, "cbc:PayableAmount")
    if exists(node, "cbc:PayableRoundingAmount"):
        payable = round2(payable - num(node, "cbc:PayableRoundingAmount"))
    return payable == due


_TOTAL_DECIMALS = [
    ("BR-DEC-09", "cbc:LineExtensionAmount", "Sum of Invoice line net amount (BT-106)"),
    ("BR-DEC-10", "cbc:AllowanceTotalAmount", "Sum of allowanced on document level (BT-107)"),
    ("BR-DEC-11", "cbc:ChargeTotalAmount", "Sum of charges on document level (BT-108)"),
    ("BR-DEC-12", "cbc:TaxExclusiveAmount", "Invoice total amount without VAT (BT-109)"),
    ("BR-DEC-14", "cbc:TaxInclusiveAmount", "Invoice total amount with VAT (BT-112)"),
    ("BR-DEC-16", "cbc:PrepaidAmount", "Paid amount (BT-113)"),
    ("BR-DEC-17", "cbc:PayableRoundingAmount", "Rounding amount (BT-114)"),
    ("BR-DEC-18", "cbc:PayableAmount", "Amount due for payment (BT-115)"),
]


def _decimals_rule(rule_id: str, context: str, xpath: str, term: str) -> None:
    """BR-DEC-*: at most 2 decimals for one amount of ``context``."""
    message = f"[{rule_id}]-The allowed maximum number of decimals for the {term} is 2."
    rule(rule_id, "fatal", context, message)(lambda node: two_decimals(node, xpath))


for _id, _xpath, _term in _TOTAL_DECIMALS:
    _decimals_rule(_id, TOTALS, _xpath, _term)


@rule(
    "BR-CO-25",
    "fatal",
    "/ubl-invoice:Invoice/cac:LegalMonetaryTotal/cbc:PayableAmount",
    "[BR-CO-25]-In case the Amount due for payment (BT-115) is positive, either the Payment due "
    "date (BT-9) or the Payment terms (BT-20) shall be present.",
)
def br_co_25(node: Element) -> bool:
    if num(node, ".") <= 0:
        return True
    return exists(node, "//cbc:DueDate") or exists(node, "//cac:PaymentTerms/cbc:Note")


@rule(
    "BR-CO-14",
    "fatal",
    ROOT_CHILD.format("cac:TaxTotal"),
    "[BR-CO-14]-Invoice total VAT amount (BT-110) = Σ VAT category tax amount (BT-117).",
)
def br_co_14(node: Element) -> bool:
    if not exists(node, "cac:TaxSubtotal"):
        return True
    return num(node, "cbc:TaxAmount") == round2(total(node, "cac:TaxSubtotal/cbc:TaxAmount"))


# Periods ------------------------------------------------------------------------------------

LINE_PERIOD = "//cac:InvoiceLine/cac:InvoicePeriod | //cac:CreditNoteLine/cac:InvoicePeriod"
# A line period is claimed by the line period rules first, as in the Schematron pattern.
INVOICE_PERIOD = "//cac:InvoicePeriod[not(parent::cac:InvoiceLine or parent::cac:CreditNoteLine)]"


def _dates_in_order(node: Element) -> bool:
    if not (exists(node, "cbc:StartDate") and exists(node, "cbc:EndDate")):
        return True
    return as_date(node, "cbc:EndDate") >= as_date(node, "cbc:StartDate")


@rule(
    "BR-29",
    "fatal",
    INVOICE_PERIOD,
    "[BR-29]-If both Invoicing period start date (BT-73) and Invoicing period end date (BT-74) "
    "are given then the Invoicing period end date (BT-74) shall be later or equal to the "
    "Invoicing period start date (BT-73).",
)
def br_29(node: Element) -> bool:
    return _dates_in_order(node)


@rule(
    "BR-CO-19",
    "fatal",
    INVOICE_PERIOD,
    "[BR-CO-19]-If Invoicing period (BG-14) is used, the Invoicing period start date (BT-73) or "
    "the Invoicing period end date (BT-74) shall be filled, or both.",
)
def br_co_19(node: Element) -> bool:
    return exists(node, "cbc:StartDate | cbc:EndDate | cbc:DescriptionCode")


@rule(
    "BR-30",
    "fatal",
    LINE_PERIOD,
    "[BR-30]-If both Invoice line period start date (BT-134) and Invoice line period end date "
    "(BT-135) are given then the Invoice line period end date (BT-135) shall be later or equal "
    "to the Invoice line period start date (BT-134).",
)
def br_30(node: Element) -> bool:
    return _dates_in_order(node)


@rule(
    "BR-CO-20",
    "fatal",
    LINE_PERIOD,
    "[BR-CO-20]-If Invoice line period (BG-26) is used, the Invoice line period start date "
    "(BT-134) or the Invoice line period end date (BT-135) shall be filled, or both.",
)
def br_co_20(node: Element) -> bool:
    return exists(node, "cbc:StartDate | cbc:EndDate")


# Invoice lines --------------------------------------------------------------------------------


@rule(
    "BR-21",
    "fatal",
    LINES,
    "[BR-21]-Each Invoice line (BG-25) shall have an Invoice line identifier (BT-126).",
)
def br_21(node: Element) -> bool:
    return filled(node, "cbc:ID")


@rule(
    "BR-22",
    "fatal",
    LINES,
    "[BR-22]-Each Invoice line (BG-25) shall have an Invoiced quantity (BT-129).",
)
def br_22(node: Element) -> bool:
    return exists(node, "cbc:InvoicedQuantity | cbc:CreditedQuantity")


@rule(
    "BR-23",
    "fatal",
    LINES,
    "[BR-23]-An Invoice line (BG-25) shall have an Invoiced quantity unit of measure code "
    "(BT-130).",
)
def br_23(node: Element) -> bool:
    return exists(node, "cbc:InvoicedQuantity/@unitCode | cbc:CreditedQuantity/@unitCode")


@rule(
    "BR-24",
    "fatal",
    LINES,
    "[BR-24]-Each Invoice line (BG-25) shall have an Invoice line net amount (BT-131).",
)
def br_24(node: Element) -> bool:
    return exists(node, "cbc:LineExtensionAmount")


@rule(
    "BR-25",
    "fatal",
    LINES,
    "[BR-25]-Each Invoice line (BG-25) shall contain the Item name (BT-153).",
)
def br_25(node: Element) -> bool:
    return filled(node, "cac:Item/cbc:Name")


@rule(
    "BR-26",
    "fatal",
    LINES,
    "[BR-26]-Each Invoice line (BG-25) shall contain the Item net price (BT-146).",
)
def br_26(node: Element) -> bool:
    return exists(node, "cac:Price/cbc:PriceAmount")


@rule("BR-27", "fatal", LINES, "[BR-27]-The Item net price (BT-146) shall NOT be negative.")
def br_27(node: Element) -> bool:
    return is_positive_number(node, "cac:Price/cbc:PriceAmount", strict=False)


@rule("BR-28", "fatal", LINES, "[BR-28]-The Item gross price (BT-148) shall NOT be negative.")
def br_28(node: Element) -> bool:
    base = "cac:Price/cac:AllowanceCharge/cbc:BaseAmount"
    return not exists(node, base) or is_positive_number(node, base, strict=False)


@rule(
    "BR-CO-04",
    "fatal",
    LINES,
    "[BR-CO-04]-Each Invoice line (BG-25) shall be categorized with an Invoiced item VAT "
    "category code (BT-151).",
)
def br_co_04(node: Element) -> bool:
    return exists(node, f"cac:Item/cac:ClassifiedTaxCategory{VAT}/cbc:ID")


_decimals_rule("BR-DEC-23", LINES, "cbc:LineExtensionAmount", "Invoice line net amount (BT-131)")


@rule(
    "BR-64",
    "fatal",
    "//cac:InvoiceLine/cac:Item/cac:StandardItemIdentification/cbc:ID"
    " | //cac:CreditNoteLine/cac:Item/cac:StandardItemIdentification/cbc:ID",
    "[BR-64]-The Item standard identifier (BT-157) shall have a Scheme identifier.",
)
def br_64(node: Element) -> bool:
    return node.get("schemeID") is not None


@rule(
    "BR-65",
    "fatal",
    "//cac:InvoiceLine/cac:Item/cac:CommodityClassification/cbc:ItemClassificationCode"
    " | //cac:CreditNoteLine/cac:Item/cac:CommodityClassification/cbc:ItemClassificationCode",
    "[BR-65]-The Item classification identifier (BT-158) shall have a Scheme identifier.",
)
def br_65(node: Element) -> bool:
    return node.get("listID") is not None


@rule(
    "BR-54",
    "fatal",
    "//cac:AdditionalItemProperty",
    "[BR-54]-Each Item attribute (BG-32) shall contain an Item attribute name (BT-160) and an "
    "Item attribute value (BT-161).",
)
def br_54(node: Element) -> bool:
    return exists(node, "cbc:Name") and exists(node, "cbc:Value")


# Allowances and charges, on the document and on lines --------------------------------------


@dataclass(frozen=True)
class _AllowanceCharge:
    """The ids and business terms of one kind of allowance or charge."""

    context: str
    kind: str  # "Document level allowance", ...
    group: str  # "BG-20", ...
    amount_rule: str
    amount_term: str
    reason_rule: str
    reason_message: str
    reason_co_rule: str
    reason_co_message: str
    amount_dec: tuple[str, str]
    base_dec: tuple[str, str]


def _allowance_charge_rules(spec: _AllowanceCharge) -> None:
    """The amount, reason and decimals rules every kind of allowance or charge has."""
    rule(
        spec.amount_rule,
        "fatal",
        spec.context,
        f"[{spec.amount_rule}]-Each {spec.kind} ({spec.group}) shall have a {spec.amount_term}.",
    )(lambda node: exists(node, "cbc:Amount"))
    for rule_id, message in (
        (spec.reason_rule, spec.reason_message),
        (spec.reason_co_rule, spec.reason_co_message),
    ):
        rule(rule_id, "fatal", spec.context, f"[{rule_id}]-{message}")(
            lambda node: exists(node, "cbc:AllowanceChargeReason | cbc:AllowanceChargeReasonCode")
        )
    _decimals_rule(spec.amount_dec[0], spec.context, "cbc:Amount", spec.amount_dec[1])
    _decimals_rule(spec.base_dec[0], spec.context, "cbc:BaseAmount", spec.base_dec[1])


_allowance_charge_rules(
    _AllowanceCharge(
        DOC_ALLOWANCES,
        "Document level allowance",
        "BG-20",
        "BR-31",
        "Document level allowance amount (BT-92)",
        "BR-33",
        "Each Document level allowance (BG-20) shall have a Document level allowance reason "
        "(BT-97) or a Document level allowance reason code (BT-98).",
        "BR-CO-21",
        "Each Document level allowance (BG-20) shall contain a Document level allowance reason "
        "(BT-97) or a Document level allowance reason code (BT-98), or both.",
        ("BR-DEC-01", "Document level allowance amount (BT-92)"),
        ("BR-DEC-02", "Document level allowance base amount (BT-93)"),
    )
)
_allowance_charge_rules(
    _AllowanceCharge(
        DOC_CHARGES,
        "Document level charge",
        "BG-21",
        "BR-36",
        "Document level charge amount (BT-99)",
        "BR-38",
        "Each Document level charge (BG-21) shall have a Document level charge reason (BT-104) "
        "or a Document level charge reason code (BT-105).",
        "BR-CO-22",
        "Each Document level charge (BG-21) shall contain a Document level charge reason "
        "(BT-104) or a Document level charge reason code (BT-105), or both.",
        ("BR-DEC-05", "Document level charge amount (BT-99)"),
        ("BR-DEC-06", "Document level charge base amount (BT-100)"),
    )
)
_allowance_charge_rules(
    _AllowanceCharge(
        f"//cac:InvoiceLine/cac:AllowanceCharge{IS_ALLOWANCE}"
        f" | //cac:CreditNoteLine/cac:AllowanceCharge{IS_ALLOWANCE}",
        "Invoice line allowance",
        "BG-27",
        "BR-41",
        "Invoice line allowance amount (BT-136)",
        "BR-42",
        "Each Invoice line allowance (BG-27) shall have an Invoice line allowance reason "
        "(BT-139) or an Invoice line allowance reason code (BT-140).",
        "BR-CO-23",
        "Each Invoice line allowance (BG-27) shall contain an Invoice line allowance reason "
        "(BT-139) or an Invoice line allowance reason code (BT-140), or both.",
        ("BR-DEC-24", "Invoice line allowance amount (BT-136)"),
        ("BR-DEC-25", "Invoice line allowance base amount (BT-137)"),
    )
)
_allowance_charge_rules(
    _AllowanceCharge(
        f"//cac:InvoiceLine/cac:AllowanceCharge{IS_CHARGE}"
        f" | //cac:CreditNoteLine/cac:AllowanceCharge{IS_CHARGE}",
        "Invoice line charge",
        "BG-28",
        "BR-43",
        "Invoice line charge amount (BT-141)",
        "BR-44",
        "Each Invoice line charge shall have an Invoice line charge reason or an invoice line "
        "allowance reason code.",
        "BR-CO-24",
        "Each Invoice line charge (BG-28) shall contain an Invoice line charge reason (BT-144) "
        "or an Invoice line charge reason code (BT-145), or both.",
        ("BR-DEC-27", "Invoice line charge amount (BT-141)"),
        ("BR-DEC-28", "Invoice line charge base amount (BT-142)"),
    )
)


@rule(
    "BR-32",
    "fatal",
    DOC_ALLOWANCES,
    "[BR-32]-Each Document level allowance (BG-20) shall have a Document level allowance VAT "
    "category code (BT-95).",
)
def br_32(node: Element) -> bool:
    return exists(node, f"cac:TaxCategory{VAT}/cbc:ID")


@rule(
    "BR-37",
    "fatal",
    DOC_CHARGES,
    "[BR-37]-Each Document level charge (BG-21) shall have a Document level charge VAT category "
    "code (BT-102).",
)
def br_37(node: Element) -> bool:
    return exists(node, f"cac:TaxCategory{VAT}/cbc:ID")


# VAT breakdown -----------------------------------------------------------------------------

BREAKDOWN = "//cac:TaxTotal/cac:TaxSubtotal"


@rule(
    "BR-45",
    "fatal",
    BREAKDOWN,
    "[BR-45]-Each VAT breakdown (BG-23) shall have a VAT category taxable amount (BT-116).",
)
def br_45(node: Element) -> bool:
    return exists(node, "cbc:TaxableAmount")


@rule(
    "BR-46",
    "fatal",
    BREAKDOWN,
    "[BR-46]-Each VAT breakdown (BG-23) shall have a VAT category tax amount (BT-117).",
)
def br_46(node: Element) -> bool:
    return exists(node, "cbc:TaxAmount")


@rule(
    "BR-47",
    "fatal",
    BREAKDOWN,
    "[BR-47]-Each VAT breakdown (BG-23) shall be defined through a VAT category code (BT-118).",
)
def br_47(node: Element) -> bool:
    return exists(node, f"cac:TaxCategory{VAT}/cbc:ID")


@rule(
    "BR-48",
    "fatal",
    BREAKDOWN,
    "[BR-48]-Each VAT breakdown (BG-23) shall have a VAT category rate (BT-119), except if the "
    "Invoice is not subject to VAT.",
)
def br_48(node: Element) -> bool:
    return exists(node, f"cac:TaxCategory{VAT}/cbc:Percent") or "O" in texts(
        node, f"cac:TaxCategory{VAT}/cbc:ID"
    )


@rule(
    "BR-CO-17",
    "fatal",
    BREAKDOWN,
    "[BR-CO-17]-VAT category tax amount (BT-117) = VAT category taxable amount (BT-116) x (VAT "
    "category rate (BT-119) / 100), rounded to two decimals.",
)
def br_co_17(node: Element) -> bool:
    tax = num(node, "cbc:TaxAmount")
    rate = amount(node, f"cac:TaxCategory{VAT}/cbc:Percent")
    if rate is None or xround(rate) == 0:
        return xround(tax) == 0
    return _within_one(tax, num(node, "cbc:TaxableAmount"), rate)


def _within_one(tax: Decimal, taxable: Decimal, rate: Decimal) -> bool:
    """|tax| is within 1 of |taxable| x rate / 100 rounded to 2 decimals (BR-CO-17, BR-S-09)."""
    expected = round2(abs(taxable) * (rate / 100))
    return abs(tax) - 1 < expected < abs(tax) + 1


_decimals_rule("BR-DEC-19", BREAKDOWN, "cbc:TaxableAmount", "VAT category taxable amount (BT-116)")
_decimals_rule("BR-DEC-20", BREAKDOWN, "cbc:TaxAmount", "VAT category tax amount (BT-117)")


# Payment, references, delivery ---------------------------------------------------------------


@rule(
    "BR-49",
    "fatal",
    "//cac:PaymentMeans",
    "[BR-49]-A Payment instruction (BG-16) shall specify the Payment means type code (BT-81).",
)
def br_49(node: Element) -> bool:
    return exists(node, "cbc:PaymentMeansCode")


@rule(
    "BR-61",
    "fatal",
    "//cac:PaymentMeans",
    "[BR-61]-If the Payment means type code (BT-81) means SEPA credit transfer, Local credit "
    "transfer or Non-SEPA international credit transfer, the Payment account identifier (BT-84) "
    "shall be present.",
)
def br_61(node: Element) -> bool:
    code = text(node, "cbc:PaymentMeansCode") or ""
    return code not in ("30", "58") or exists(node, "cac:PayeeFinancialAccount/cbc:ID")


@rule(
    "BR-50",
    "fatal",
    "//cac:PaymentMeans[cbc:PaymentMeansCode = '30' or cbc:PaymentMeansCode = '58']"
    "/cac:PayeeFinancialAccount",
    "[BR-50]-A Payment account identifier (BT-84) shall be present if Credit transfer (BG-17) "
    "information is provided in the Invoice.",
)
def br_50(node: Element) -> bool:
    return filled(node, "cbc:ID")


@rule(
    "BR-51",
    "warning",
    "//cac:PaymentMeans/cac:CardAccount/cbc:PrimaryAccountNumberID",
    "[BR-51]-In accordance with card payments security standards an invoice should never "
    "include a full card primary account number (BT-87). At the moment PCI Security Standards "
    "Council has defined that the first 6 digits and last 4 digits are the maximum number of "
    "digits to be shown.",
)
def br_51(node: Element) -> bool:
    return len(" ".join((node.text or "").split())) <= 10


@rule(
    "BR-52",
    "fatal",
    "//cac:AdditionalDocumentReference",
    "[BR-52]-Each Additional supporting document (BG-24) shall contain a Supporting document "
    "reference (BT-122).",
)
def br_52(node: Element) -> bool:
    return filled(node, "cbc:ID")


@rule(
    "BR-55",
    "fatal",
    "//cac:BillingReference",
    "[BR-55]-Each Preceding Invoice reference (BG-3) shall contain a Preceding Invoice reference "
    "(BT-25).",
)
def br_55(node: Element) -> bool:
    return exists(node, "cac:InvoiceDocumentReference/cbc:ID")


@rule(
    "BR-57",
    "fatal",
    "//cac:Delivery/cac:DeliveryLocation/cac:Address",
    "[BR-57]-Each Deliver to address (BG-15) shall contain a Deliver to country code (BT-80).",
)
def br_57(node: Element) -> bool:
    return exists(node, "cac:Country/cbc:IdentificationCode")


# VAT categories (BR-S, BR-Z, BR-E, BR-AE, BR-IC, BR-G, BR-O, BR-AF, BR-AG) -----------------
#
# Every category has the same ten rules: -01 the breakdown has the category when a line,
# allowance or charge uses it; -02..-04 the parties' VAT identifiers a line, allowance or
# charge of the category requires; -05..-07 the rate on lines, allowances and charges;
# -08 the taxable amount of its breakdown; -09 its tax amount; -10 its exemption reason.
# What varies between categories is captured by ``_Category``.

PartyCheck: TypeAlias = Callable[[Element], bool]


def _seller_vat_any(node: Element) -> bool:
    """A Seller VAT or tax registration identifier, or a tax representative VAT identifier."""
    return exists(node, f"{SELLER_PARTY}/cac:PartyTaxScheme/cbc:CompanyID") or exists(
        node, f"//cac:TaxRepresentativeParty/cac:PartyTaxScheme{VAT}/cbc:CompanyID"
    )


def _seller_vat(node: Element) -> bool:
    """A Seller VAT identifier or a tax representative VAT identifier."""
    return exists(node, f"{SELLER_PARTY}/cac:PartyTaxScheme{VAT}/cbc:CompanyID") or exists(
        node, f"//cac:TaxRepresentativeParty/cac:PartyTaxScheme{VAT}/cbc:CompanyID"
    )


def _buyer_vat(node: Element) -> bool:
    return exists(node, f"{BUYER_PARTY}/cac:PartyTaxScheme{VAT}/cbc:CompanyID")


def _reverse_charge_parties(node: Element) -> bool:
    return _seller_vat_any(node) and (
        _buyer_vat(node) or exists(node, f"{BUYER_PARTY}/cac:PartyLegalEntity/cbc:CompanyID")
    )


def _intra_community_parties(node: Element) -> bool:
    return _seller_vat(node) and _buyer_vat(node)


def _no_vat_identifiers(node: Element) -> bool:
    return not (_seller_vat(node) or _buyer_vat(node))


@dataclass(frozen=True)
class _Category:
    prefix: str  # "BR-S"
    code: str  # "S"
    breakdown_once: bool  # -01: exactly one breakdown (else at least one)
    parties: PartyCheck  # -02..-04
    rate: Callable[[Element], bool]  # -05..-07, on the category element
    by_rate: bool  # -08/-09: per rate within 1, tax = taxable x rate (else exact, tax 0)
    exemption: bool  # -10: an exemption reason is required (else forbidden)
    messages: dict[str, str]  # rule number -> message after "[id]-"


def _parties_when_used(used: str, parties: PartyCheck, quiet_unless: str = "") -> PartyCheck:
    """-02..-04: when a line, allowance or charge uses the category, the parties qualify.

    With ``quiet_unless``: ``(used and parties) or not quiet_unless`` (BR-S-02).
    """
    if quiet_unless:
        return lambda node: (exists(node, used) and parties(node)) or not exists(node, quiet_unless)
    return lambda node: not exists(node, used) or parties(node)


def _rate_above_zero(node: Element) -> bool:
    return is_positive_number(node, "cbc:Percent", strict=True)


def _rate_zero_or_more(node: Element) -> bool:
    return is_positive_number(node, "cbc:Percent", strict=False)


def _rate_zero(node: Element) -> bool:
    return num(node, "cbc:Percent") == 0


def _no_rate(node: Element) -> bool:
    return not exists(node, "cbc:Percent")


def _is(code: str) -> str:
    return f"[normalize-space(cbc:ID) = '{code}']"


def _category_rules(category: _Category) -> None:
    code, prefix, messages = category.code, category.prefix, category.messages

    def add(number: str, context: str, check: Callable[[Element], bool]) -> None:
        rule_id = f"{prefix}-{number}"
        rule(rule_id, "fatal", context, f"[{rule_id}]-{messages[number]}")(check)

    is_code = _is(code)
    line_categories = f"//cac:ClassifiedTaxCategory{is_code}{VAT}"
    allowances = f"//cac:AllowanceCharge{IS_ALLOWANCE}/cac:TaxCategory{is_code}{VAT}"
    charges = f"//cac:AllowanceCharge{IS_CHARGE}/cac:TaxCategory{is_code}{VAT}"
    in_breakdown = f"cac:TaxTotal/cac:TaxSubtotal/cac:TaxCategory{is_code}{VAT}"

    def breakdown_present(node: Element) -> bool:
        if category.breakdown_once:
            breakdowns = len(select(node, in_breakdown))
            used = exists(node, f"//cac:TaxCategory{is_code}{VAT} | {line_categories}")
            return not used or breakdowns == 1
        # Standard rate: the category filters of the official rule (BR-S-01) ignore the
        # tax scheme, in the breakdown too.
        scheme = "" if code == "S" else VAT
        breakdowns = len(
            select(node, f"cac:TaxTotal/cac:TaxSubtotal/cac:TaxCategory{is_code}{scheme}")
        )
        used = exists(
            node,
            f"//cac:AllowanceCharge/cac:TaxCategory{is_code}{scheme}"
            f" | //cac:ClassifiedTaxCategory{is_code}{scheme}",
        )
        return breakdowns > 0 if used else breakdowns == 0

    add("01", INVOICE, breakdown_present)
    # Two official assertions are quiet on a wider (BR-S-02: any tax scheme) or narrower
    # (BR-IG-04, our BR-AF-04: the code not space-normalized) set than the one they check.
    quiet_unless = {
        ("S", "02"): f"//cac:ClassifiedTaxCategory{is_code}",
        ("L", "04"): f"//cac:AllowanceCharge{IS_CHARGE}/cac:TaxCategory[cbc:ID = 'L']{VAT}",
    }
    for number, used_by in (("02", line_categories), ("03", allowances), ("04", charges)):
        quiet = quiet_unless.get((code, number), "")
        add(number, INVOICE, _parties_when_used(used_by, category.parties, quiet_unless=quiet))

    add(
        "05",
        f"//cac:InvoiceLine/cac:Item/cac:ClassifiedTaxCategory{is_code}{VAT}"
        f" | //cac:CreditNoteLine/cac:Item/cac:ClassifiedTaxCategory{is_code}{VAT}",
        category.rate,
    )
    add("06", f"//cac:AllowanceCharge{IS_ALLOWANCE}/cac:TaxCategory{is_code}{VAT}", category.rate)
    add("07", f"//cac:AllowanceCharge{IS_CHARGE}/cac:TaxCategory{is_code}{VAT}", category.rate)

    breakdown = f"{SUBTOTAL_CATEGORIES}{is_code}{VAT}"
    if category.by_rate:
        add("08", breakdown, lambda node: _taxable_per_rate(node, code, exact_rate=code == "S"))
        add(
            "09",
            breakdown,
            lambda node: _within_one(
                num(node, "../cbc:TaxAmount"),
                num(node, "../cbc:TaxableAmount"),
                num(node, "cbc:Percent"),
            ),
        )
    else:
        add("08", breakdown, lambda node: _taxable_of_category(node, code))
        add("09", breakdown, lambda node: num(node, "../cbc:TaxAmount") == 0)
    reason = "cbc:TaxExemptionReason | cbc:TaxExemptionReasonCode"
    if category.exemption:
        add("10", breakdown, lambda node: exists(node, reason))
    else:
        add("10", breakdown, lambda node: not exists(node, reason))


@dataclass(frozen=True)
class _Taxed:
    """A line, allowance or charge as the category sums see it (computed once per document)."""

    codes: list[str | None]  # its categories' cbc:ID
    percents: list[Decimal | None]  # its categories' cbc:Percent
    amount: Decimal | None  # its net amount; None when one is not a number

    def matches(self, code: str, rate: Decimal | None) -> bool:
        """Of the category ``code`` (and, when given, ``rate``)."""
        return code in self.codes and (rate is None or rate in self.percents)

    def net(self) -> Decimal:
        if self.amount is None:
            raise ValueError("not a number")
        return self.amount


def _taxed(node: Element, category_xpath: str, amount_xpath: str) -> _Taxed:
    try:
        net: Decimal | None = total(node, amount_xpath)
    except ValueError:
        net = None
    return _Taxed(
        [text(category, ".") for category in select(node, f"{category_xpath}/cbc:ID")],
        [decimal(text(category, "cbc:Percent")) for category in select(node, category_xpath)],
        net,
    )


@dataclass(frozen=True)
class _TaxedItems:
    lines: dict[str, list[_Taxed]]  # by line kind
    charges: list[_Taxed]
    allowances: list[_Taxed]


def _taxed_items(document: Element) -> _TaxedItems:
    line_category = "cac:Item/cac:ClassifiedTaxCategory"
    return _TaxedItems(
        {
            kind: [
                _taxed(line, line_category, "cbc:LineExtensionAmount")
                for line in select(document, f"cac:{kind}")
            ]
            for kind in ("InvoiceLine", "CreditNoteLine")
        },
        [
            _taxed(charge, "cac:TaxCategory", "cbc:Amount")
            for charge in select(document, f"cac:AllowanceCharge{IS_CHARGE}")
        ],
        [
            _taxed(allowance, "cac:TaxCategory", "cbc:Amount")
            for allowance in select(document, f"cac:AllowanceCharge{IS_ALLOWANCE}")
        ],
    )


def _category_base(
    node: Element, code: str, line_kind: str, rate: Decimal | None
) -> tuple[Decimal, bool]:
    """Σ line net amounts + Σ charges - Σ allowances of a category (and rate), from the
    breakdown category ``node``; and whether any line, allowance or charge has them."""
    document = node.getparent().getparent().getparent()
    items = per_document(document, "en16931 taxed items", _taxed_items)
    lines = [line for line in items.lines[line_kind] if line.matches(code, rate)]
    base = Decimal(0)
    for line in lines:
        base += line.net()
    used = bool(lines)
    for charges, sign in ((items.charges, 1), (items.allowances, -1)):
        for charge in charges:
            if charge.matches(code, rate):
                base += sign * charge.net()
                used = True
    return base, used


def _taxable_of_category(node: Element, code: str) -> bool:
    """-08 of the zero-rate categories: the taxable amount is exactly the category base."""
    taxable = num(node, "../cbc:TaxableAmount")
    for line_kind in ("InvoiceLine", "CreditNoteLine"):
        if exists(node, f"//cac:{line_kind}"):
            base, _ = _category_base(node, code, line_kind, None)
            if taxable == base:
                return True
    return False


def _taxable_per_rate(node: Element, code: str, *, exact_rate: bool) -> bool:
    """-08 of the rated categories: for the breakdown rate, the taxable amount is within 1 of
    the base of that category and rate (Standard rate also needs something at that rate)."""
    rate = amount(node, "cbc:Percent")
    if rate is None:
        if exists(node, "cbc:Percent"):
            raise ValueError("malformed rate")
        return True
    taxable = num(node, "../cbc:TaxableAmount")
    for line_kind in ("InvoiceLine", "CreditNoteLine"):
        if not exact_rate and not exists(node, f"//cac:{line_kind}"):
            continue
        base, used = _category_base(node, code, line_kind, rate)
        if exact_rate and not used:
            continue
        if taxable - 1 < base < taxable + 1:
            return True
    return False


_CATEGORIES = [
    _Category(  # Standard rated
        "BR-S",
        "S",
        breakdown_once=False,
        parties=_seller_vat_any,
        rate=_rate_above_zero,
        by_rate=True,
        exemption=False,
        messages={
            "01": (
                "An Invoice that contains an Invoice line (BG-25), a Document level allowance "
                "(BG-20) or a Document level charge (BG-21) where the VAT category code (BT-151, "
                'BT-95 or BT-102) is "Standard rated" shall contain in the VAT breakdown (BG-23) '
                'at least one VAT category code (BT-118) equal with "Standard rated".'
            ),
            "02": (
                "An Invoice that contains an Invoice line (BG-25) where the Invoiced item VAT "
                'category code (BT-151) is "Standard rated" shall contain the Seller VAT '
                "Identifier (BT-31), the Seller tax registration identifier (BT-32) and/or the "
                "Seller tax representative VAT identifier (BT-63)."
            ),
            "03": (
                "An Invoice that contains a Document level allowance (BG-20) where the Document "
                'level allowance VAT category code (BT-95) is "Standard rated" shall contain the '
                "Seller VAT Identifier (BT-31), the Seller tax registration identifier (BT-32) "
                "and/or the Seller tax representative VAT identifier (BT-63)."
            ),
            "04": (
                "An Invoice that contains a Document level charge (BG-21) where the Document "
                'level charge VAT category code (BT-102) is "Standard rated" shall contain the '
                "Seller VAT Identifier (BT-31), the Seller tax registration identifier (BT-32) "
                "and/or the Seller tax representative VAT identifier (BT-63)."
            ),
            "05": (
                "In an Invoice line (BG-25) where the Invoiced item VAT category code (BT-151) is"
                ' "Standard rated" the Invoiced item VAT rate (BT-152) shall be greater than '
                "zero."
            ),
            "06": (
                "In a Document level allowance (BG-20) where the Document level allowance VAT "
                'category code (BT-95) is "Standard rated" the Document level allowance VAT rate '
                "(BT-96) shall be greater than zero."
            ),
            "07": (
                "In a Document level charge (BG-21) where the Document level charge VAT category "
                'code (BT-102) is "Standard rated" the Document level charge VAT rate (BT-103) '
                "shall be greater than zero."
            ),
            "08": (
                "For each different value of VAT category rate (BT-119) where the VAT category "
                'code (BT-118) is "Standard rated", the VAT category taxable amount (BT-116) in a'
                " VAT breakdown (BG-23) shall equal the sum of Invoice line net amounts (BT-131) "
                "plus the sum of document level charge amounts (BT-99) minus the sum of document "
                "level allowance amounts (BT-92) where the VAT category code (BT-151, BT-102, "
                'BT-95) is "Standard rated" and the VAT rate (BT-152, BT-103, BT-96) equals the '
                "VAT category rate (BT-119)."
            ),
            "09": (
                "The VAT category tax amount (BT-117) in a VAT breakdown (BG-23) where VAT "
                'category code (BT-118) is "Standard rated" shall equal the VAT category taxable '
                "amount (BT-116) multiplied by the VAT category rate (BT-119)."
            ),
            "10": (
                'A VAT breakdown (BG-23) with VAT Category code (BT-118) "Standard rate" shall '
                "not have a VAT exemption reason code (BT-121) or VAT exemption reason text "
                "(BT-120)."
            ),
        },
    ),
    _Category(  # Zero rated
        "BR-Z",
        "Z",
        breakdown_once=True,
        parties=_seller_vat_any,
        rate=_rate_zero,
        by_rate=False,
        exemption=False,
        messages={
            "01": (
                "An Invoice that contains an Invoice line (BG-25), a Document level allowance "
                "(BG-20) or a Document level charge (BG-21) where the VAT category code (BT-151, "
                'BT-95 or BT-102) is "Zero rated" shall contain in the VAT breakdown (BG-23) '
                'exactly one VAT category code (BT-118) equal with "Zero rated".'
            ),
            "02": (
                "An Invoice that contains an Invoice line where the Invoiced item VAT category "
                'code (BT-151) is "Zero rated" shall contain the Seller VAT Identifier (BT-31), '
                "the Seller tax registration identifier (BT-32) and/or the Seller tax "
                "representative VAT identifier (BT-63)."
            ),
            "03": (
                "An Invoice that contains a Document level allowance (BG-20) where the Document "
                'level allowance VAT category code (BT-95) is "Zero rated" shall contain the '
                "Seller VAT Identifier (BT-31), the Seller tax registration identifier (BT-32) "
                "and/or the Seller tax representative VAT identifier (BT-63)."
            ),
            "04": (
                "An Invoice that contains a Document level charge where the Document level charge"
                ' VAT category code (BT-102) is "Zero rated" shall contain the Seller VAT '
                "Identifier (BT-31), the Seller tax registration identifier (BT-32) and/or the "
                "Seller tax representative VAT identifier (BT-63)."
            ),
            "05": (
                "In an Invoice line (BG-25) where the Invoiced item VAT category code (BT-151) is"
                ' "Zero rated" the Invoiced item VAT rate (BT-152) shall be 0 (zero).'
            ),
            "06": (
                "In a Document level allowance (BG-20) where the Document level allowance VAT "
                'category code (BT-95) is "Zero rated" the Document level allowance VAT rate '
                "(BT-96) shall be 0 (zero)."
            ),
            "07": (
                "In a Document level charge (BG-21) where the Document level charge VAT category "
                'code (BT-102) is "Zero rated" the Document level charge VAT rate (BT-103) shall '
                "be 0 (zero)."
            ),
            "08": (
                'In a VAT breakdown (BG-23) where VAT category code (BT-118) is "Zero rated" the '
                "VAT category taxable amount (BT-116) shall equal the sum of Invoice line net "
                "amount (BT-131) minus the sum of Document level allowance amounts (BT-92) plus "
                "the sum of Document level charge amounts (BT-99) where the VAT category codes "
                '(BT-151, BT-95, BT-102) are "Zero rated".'
            ),
            "09": (
                "The VAT category tax amount (BT-117) in a VAT breakdown (BG-23) where VAT "
                'category code (BT-118) is "Zero rated" shall equal 0 (zero).'
            ),
            "10": (
                'A VAT breakdown (BG-23) with VAT Category code (BT-118) "Zero rated" shall not '
                "have a VAT exemption reason code (BT-121) or VAT exemption reason text (BT-120)."
            ),
        },
    ),
    _Category(  # Exempt from VAT
        "BR-E",
        "E",
        breakdown_once=True,
        parties=_seller_vat_any,
        rate=_rate_zero,
        by_rate=False,
        exemption=True,
        messages={
            "01": (
                "An Invoice that contains an Invoice line (BG-25), a Document level allowance "
                "(BG-20) or a Document level charge (BG-21) where the VAT category code (BT-151, "
                'BT-95 or BT-102) is "Exempt from VAT" shall contain exactly one VAT breakdown '
                '(BG-23) with the VAT category code (BT-118) equal to "Exempt from VAT".'
            ),
            "02": (
                "An Invoice that contains an Invoice line (BG-25) where the Invoiced item VAT "
                'category code (BT-151) is "Exempt from VAT" shall contain the Seller VAT '
                "Identifier (BT-31), the Seller tax registration identifier (BT-32) and/or the "
                "Seller tax representative VAT identifier (BT-63)."
            ),
            "03": (
                "An Invoice that contains a Document level allowance (BG-20) where the Document "
                'level allowance VAT category code (BT-95) is "Exempt from VAT" shall contain the'
                " Seller VAT Identifier (BT-31), the Seller tax registration identifier (BT-32) "
                "and/or the Seller tax representative VAT identifier (BT-63)."
            ),
            "04": (
                "An Invoice that contains a Document level charge (BG-21) where the Document "
                'level charge VAT category code (BT-102) is "Exempt from VAT" shall contain the '
                "Seller VAT Identifier (BT-31), the Seller tax registration identifier (BT-32) "
                "and/or the Seller tax representative VAT identifier (BT-63)."
            ),
            "05": (
                "In an Invoice line (BG-25) where the Invoiced item VAT category code (BT-151) is"
                ' "Exempt from VAT", the Invoiced item VAT rate (BT-152) shall be 0 (zero).'
            ),
            "06": (
                "In a Document level allowance (BG-20) where the Document level allowance VAT "
                'category code (BT-95) is "Exempt from VAT", the Document level allowance VAT '
                "rate (BT-96) shall be 0 (zero)."
            ),
            "07": (
                "In a Document level charge (BG-21) where the Document level charge VAT category "
                'code (BT-102) is "Exempt from VAT", the Document level charge VAT rate (BT-103) '
                "shall be 0 (zero)."
            ),
            "08": (
                'In a VAT breakdown (BG-23) where the VAT category code (BT-118) is "Exempt from '
                'VAT" the VAT category taxable amount (BT-116) shall equal the sum of Invoice '
                "line net amounts (BT-131) minus the sum of Document level allowance amounts "
                "(BT-92) plus the sum of Document level charge amounts (BT-99) where the VAT "
                'category codes (BT-151, BT-95, BT-102) are "Exempt from VAT".'
            ),
            "09": (
                "The VAT category tax amount (BT-117) In a VAT breakdown (BG-23) where the VAT "
                'category code (BT-118) equals "Exempt from VAT" shall equal 0 (zero).'
            ),
            "10": (
                'A VAT breakdown (BG-23) with VAT Category code (BT-118) "Exempt from VAT" shall '
                "have a VAT exemption reason code (BT-121) or a VAT exemption reason text "
                "(BT-120)."
            ),
        },
    ),
    _Category(  # Reverse charge
        "BR-AE",
        "AE",
        breakdown_once=True,
        parties=_reverse_charge_parties,
        rate=_rate_zero,
        by_rate=False,
        exemption=True,
        messages={
            "01": (
                "An Invoice that contains an Invoice line (BG-25), a Document level allowance "
                "(BG-20) or a Document level charge (BG-21) where the VAT category code (BT-151, "
                'BT-95 or BT-102) is "Reverse charge" shall contain in the VAT Breakdown (BG-23) '
                'exactly one VAT category code (BT-118) equal with "VAT reverse charge".'
            ),
            "02": (
                "An Invoice that contains an Invoice line (BG-25) where the Invoiced item VAT "
                'category code (BT-151) is "Reverse charge" shall contain the Seller VAT '
                "Identifier (BT-31), the Seller Tax registration identifier (BT-32) and/or the "
                "Seller tax representative VAT identifier (BT-63) and the Buyer VAT identifier "
                "(BT-48) and/or the Buyer legal registration identifier (BT-47)."
            ),
            "03": (
                "An Invoice that contains a Document level allowance (BG-20) where the Document "
                'level allowance VAT category code (BT-95) is "Reverse charge" shall contain the '
                "Seller VAT Identifier (BT-31), the Seller tax registration identifier (BT-32) "
                "and/or the Seller tax representative VAT identifier (BT-63) and the Buyer VAT "
                "identifier (BT-48) and/or the Buyer legal registration identifier (BT-47)."
            ),
            "04": (
                "An Invoice that contains a Document level charge (BG-21) where the Document "
                'level charge VAT category code (BT-102) is "Reverse charge" shall contain the '
                "Seller VAT Identifier (BT-31), the Seller tax registration identifier (BT-32) "
                "and/or the Seller tax representative VAT identifier (BT-63) and the Buyer VAT "
                "identifier (BT-48) and/or the Buyer legal registration identifier (BT-47)."
            ),
            "05": (
                "In an Invoice line (BG-25) where the Invoiced item VAT category code (BT-151) is"
                ' "Reverse charge" the Invoiced item VAT rate (BT-152) shall be 0 (zero).'
            ),
            "06": (
                "In a Document level allowance (BG-20) where the Document level allowance VAT "
                'category code (BT-95) is "Reverse charge" the Document level allowance VAT rate '
                "(BT-96) shall be 0 (zero)."
            ),
            "07": (
                "In a Document level charge (BG-21) where the Document level charge VAT category "
                'code (BT-102) is "Reverse charge" the Document level charge VAT rate (BT-103) '
                "shall be 0 (zero)."
            ),
            "08": (
                'In a VAT breakdown (BG-23) where the VAT category code (BT-118) is "Reverse '
                'charge" the VAT category taxable amount (BT-116) shall equal the sum of Invoice '
                "line net amounts (BT-131) minus the sum of Document level allowance amounts "
                "(BT-92) plus the sum of Document level charge amounts (BT-99) where the VAT "
                'category codes (BT-151, BT-95, BT-102) are "Reverse charge".'
            ),
            "09": (
                "The VAT category tax amount (BT-117) in a VAT breakdown (BG-23) where the VAT "
                'category code (BT-118) is "Reverse charge" shall be 0 (zero).'
            ),
            "10": (
                'A VAT breakdown (BG-23) with VAT Category code (BT-118) "Reverse charge" shall '
                'have a VAT exemption reason code (BT-121), meaning "Reverse charge" or the VAT '
                'exemption reason text (BT-120) "Reverse charge" (or the equivalent standard text'
                " in another language)."
            ),
        },
    ),
    _Category(  # Intra-community supply
        "BR-IC",
        "K",
        breakdown_once=True,
        parties=_intra_community_parties,
        rate=_rate_zero,
        by_rate=False,
        exemption=True,
        messages={
            "01": (
                "An Invoice that contains an Invoice line (BG-25), a Document level allowance "
                "(BG-20) or a Document level charge (BG-21) where the VAT category code (BT-151, "
                'BT-95 or BT-102) is "Intra-community supply" shall contain in the VAT breakdown '
                '(BG-23) exactly one VAT category code (BT-118) equal with "Intra-community '
                'supply".'
            ),
            "02": (
                "An Invoice that contains an Invoice line (BG-25) where the Invoiced item VAT "
                'category code (BT-151) is "Intra-community supply" shall contain the Seller VAT '
                "Identifier (BT-31) or the Seller tax representative VAT identifier (BT-63) and "
                "the Buyer VAT identifier (BT-48)."
            ),
            "03": (
                "An Invoice that contains a Document level allowance (BG-20) where the Document "
                'level allowance VAT category code (BT-95) is "Intra-community supply" shall '
                "contain the Seller VAT Identifier (BT-31) or the Seller tax representative VAT "
                "identifier (BT-63) and the Buyer VAT identifier (BT-48)."
            ),
            "04": (
                "An Invoice that contains a Document level charge (BG-21) where the Document "
                'level charge VAT category code (BT-102) is "Intra-community supply" shall '
                "contain the Seller VAT Identifier (BT-31) or the Seller tax representative VAT "
                "identifier (BT-63) and the Buyer VAT identifier (BT-48)."
            ),
            "05": (
                "In an Invoice line (BG-25) where the Invoiced item VAT category code (BT-151) is"
                ' "Intracommunity supply" the Invoiced item VAT rate (BT-152) shall be 0 (zero).'
            ),
            "06": (
                "In a Document level allowance (BG-20) where the Document level allowance VAT "
                'category code (BT-95) is "Intra-community supply" the Document level allowance '
                "VAT rate (BT-96) shall be 0 (zero)."
            ),
            "07": (
                "In a Document level charge (BG-21) where the Document level charge VAT category "
                'code (BT-102) is "Intra-community supply" the Document level charge VAT rate '
                "(BT-103) shall be 0 (zero)."
            ),
            "08": (
                'In a VAT breakdown (BG-23) where the VAT category code (BT-118) is "Intra-'
                'community supply" the VAT category taxable amount (BT-116) shall equal the sum '
                "of Invoice line net amounts (BT-131) minus the sum of Document level allowance "
                "amounts (BT-92) plus the sum of Document level charge amounts (BT-99) where the "
                'VAT category codes (BT-151, BT-95, BT-102) are "Intra-community supply".'
            ),
            "09": (
                "The VAT category tax amount (BT-117) in a VAT breakdown (BG-23) where the VAT "
                'category code (BT-118) is "Intra-community supply" shall be 0 (zero).'
            ),
            "10": (
                'A VAT breakdown (BG-23) with the VAT Category code (BT-118) "Intra-community '
                'supply" shall have a VAT exemption reason code (BT-121), meaning "Intra-'
                'community supply" or the VAT exemption reason text (BT-120) "Intra-community '
                'supply" (or the equivalent standard text in another language).'
            ),
        },
    ),
    _Category(  # Export outside the EU
        "BR-G",
        "G",
        breakdown_once=True,
        parties=_seller_vat,
        rate=_rate_zero,
        by_rate=False,
        exemption=True,
        messages={
            "01": (
                "An Invoice that contains an Invoice line (BG-25), a Document level allowance "
                "(BG-20) or a Document level charge (BG-21) where the VAT category code (BT-151, "
                'BT-95 or BT-102) is "Export outside the EU" shall contain in the VAT breakdown '
                '(BG-23) exactly one VAT category code (BT-118) equal with "Export outside the '
                'EU".'
            ),
            "02": (
                "An Invoice that contains an Invoice line (BG-25) where the Invoiced item VAT "
                'category code (BT-151) is "Export outside the EU" shall contain the Seller VAT '
                "Identifier (BT-31) or the Seller tax representative VAT identifier (BT-63)."
            ),
            "03": (
                "An Invoice that contains a Document level allowance (BG-20) where the Document "
                'level allowance VAT category code (BT-95) is "Export outside the EU" shall '
                "contain the Seller VAT Identifier (BT-31) or the Seller tax representative VAT "
                "identifier (BT-63)."
            ),
            "04": (
                "An Invoice that contains a Document level charge (BG-21) where the Document "
                'level charge VAT category code (BT-102) is "Export outside the EU" shall contain'
                " the Seller VAT Identifier (BT-31) or the Seller tax representative VAT "
                "identifier (BT-63)."
            ),
            "05": (
                "In an Invoice line (BG-25) where the Invoiced item VAT category code (BT-151) is"
                ' "Export outside the EU" the Invoiced item VAT rate (BT-152) shall be 0 (zero).'
            ),
            "06": (
                "In a Document level allowance (BG-20) where the Document level allowance VAT "
                'category code (BT-95) is "Export outside the EU" the Document level allowance '
                "VAT rate (BT-96) shall be 0 (zero)."
            ),
            "07": (
                "In a Document level charge (BG-21) where the Document level charge VAT category "
                'code (BT-102) is "Export outside the EU" the Document level charge VAT rate '
                "(BT-103) shall be 0 (zero)."
            ),
            "08": (
                'In a VAT breakdown (BG-23) where the VAT category code (BT-118) is "Export '
                'outside the EU" the VAT category taxable amount (BT-116) shall equal the sum of '
                "Invoice line net amounts (BT-131) minus the sum of Document level allowance "
                "amounts (BT-92) plus the sum of Document level charge amounts (BT-99) where the "
                'VAT category codes (BT-151, BT-95, BT-102) are "Export outside the EU".'
            ),
            "09": (
                "The VAT category tax amount (BT-117) in a VAT breakdown (BG-23) where the VAT "
                'category code (BT-118) is "Export outside the EU" shall be 0 (zero).'
            ),
            "10": (
                'A VAT breakdown (BG-23) with the VAT Category code (BT-118) "Export outside the '
                'EU" shall have a VAT exemption reason code (BT-121), meaning "Export outside the'
                ' EU" or the VAT exemption reason text (BT-120) "Export outside the EU" (or the '
                "equivalent standard text in another language)."
            ),
        },
    ),
    _Category(  # Not subject to VAT
        "BR-O",
        "O",
        breakdown_once=True,
        parties=_no_vat_identifiers,
        rate=_no_rate,
        by_rate=False,
        exemption=True,
        messages={
            "01": (
                "An Invoice that contains an Invoice line (BG-25), a Document level allowance "
                "(BG-20) or a Document level charge (BG-21) where the VAT category code (BT-151, "
                'BT-95 or BT-102) is "Not subject to VAT" shall contain exactly one VAT breakdown'
                ' group (BG-23) with the VAT category code (BT-118) equal to "Not subject to '
                'VAT".'
            ),
            "02": (
                "An Invoice that contains an Invoice line (BG-25) where the Invoiced item VAT "
                'category code (BT-151) is "Not subject to VAT" shall not contain the Seller VAT '
                "identifier (BT-31), the Seller tax representative VAT identifier (BT-63) or the "
                "Buyer VAT identifier (BT-48)."
            ),
            "03": (
                "An Invoice that contains a Document level allowance (BG-20) where the Document "
                'level allowance VAT category code (BT-95) is "Not subject to VAT" shall not '
                "contain the Seller VAT identifier (BT-31), the Seller tax representative VAT "
                "identifier (BT-63) or the Buyer VAT identifier (BT-48)."
            ),
            "04": (
                "An Invoice that contains a Document level charge (BG-21) where the Document "
                'level charge VAT category code (BT-102) is "Not subject to VAT" shall not '
                "contain the Seller VAT identifier (BT-31), the Seller tax representative VAT "
                "identifier (BT-63) or the Buyer VAT identifier (BT-48)."
            ),
            "05": (
                'An Invoice line (BG-25) where the VAT category code (BT-151) is "Not subject to '
                'VAT" shall not contain an Invoiced item VAT rate (BT-152).'
            ),
            "06": (
                'A Document level allowance (BG-20) where VAT category code (BT-95) is "Not '
                'subject to VAT" shall not contain a Document level allowance VAT rate (BT-96).'
            ),
            "07": (
                'A Document level charge (BG-21) where the VAT category code (BT-102) is "Not '
                'subject to VAT" shall not contain a Document level charge VAT rate (BT-103).'
            ),
            "08": (
                'In a VAT breakdown (BG-23) where the VAT category code (BT-118) is " Not subject'
                ' to VAT" the VAT category taxable amount (BT-116) shall equal the sum of Invoice'
                " line net amounts (BT-131) minus the sum of Document level allowance amounts "
                "(BT-92) plus the sum of Document level charge amounts (BT-99) where the VAT "
                'category codes (BT-151, BT-95, BT-102) are "Not subject to VAT".'
            ),
            "09": (
                "The VAT category tax amount (BT-117) in a VAT breakdown (BG-23) where the VAT "
                'category code (BT-118) is "Not subject to VAT" shall be 0 (zero).'
            ),
            "10": (
                'A VAT breakdown (BG-23) with VAT Category code (BT-118) " Not subject to VAT" '
                'shall have a VAT exemption reason code (BT-121), meaning " Not subject to VAT" '
                'or a VAT exemption reason text (BT-120) " Not subject to VAT" (or the equivalent'
                " standard text in another language)."
            ),
        },
    ),
    _Category(  # IGIC
        "BR-AF",
        "L",
        breakdown_once=False,
        parties=_seller_vat_any,
        rate=_rate_zero_or_more,
        by_rate=True,
        exemption=False,
        messages={
            "01": (
                "An Invoice that contains an Invoice line (BG-25), a Document level allowance "
                "(BG-20) or a Document level charge (BG-21) where the VAT category code (BT-151, "
                'BT-95 or BT-102) is "IGIC" shall contain in the VAT breakdown (BG-23) at least '
                'one VAT category code (BT-118) equal with "IGIC".'
            ),
            "02": (
                "An Invoice that contains an Invoice line (BG-25) where the Invoiced item VAT "
                'category code (BT-151) is "IGIC" shall contain the Seller VAT Identifier '
                "(BT-31), the Seller tax registration identifier (BT-32) and/or the Seller tax "
                "representative VAT identifier (BT-63)."
            ),
            "03": (
                "An Invoice that contains a Document level allowance (BG-20) where the Document "
                'level allowance VAT category code (BT-95) is "IGIC" shall contain the Seller VAT'
                " Identifier (BT-31), the Seller tax registration identifier (BT-32) and/or the "
                "Seller tax representative VAT identifier (BT-63)."
            ),
            "04": (
                "An Invoice that contains a Document level charge (BG-21) where the Document "
                'level charge VAT category code (BT-102) is "IGIC" shall contain the Seller VAT '
                "Identifier (BT-31), the Seller Tax registration identifier (BT-32) and/or the "
                "Seller tax representative VAT identifier (BT-63)."
            ),
            "05": (
                "In an Invoice line (BG-25) where the Invoiced item VAT category code (BT-151) is"
                ' "IGIC" the invoiced item VAT rate (BT-152) shall be 0 (zero) or greater than '
                "zero."
            ),
            "06": (
                "In a Document level allowance (BG-20) where the Document level allowance VAT "
                'category code (BT-95) is "IGIC" the Document level allowance VAT rate (BT-96) '
                "shall be 0 (zero) or greater than zero."
            ),
            "07": (
                "In a Document level charge (BG-21) where the Document level charge VAT category "
                'code (BT-102) is "IGIC" the Document level charge VAT rate (BT-103) shall be 0 '
                "(zero) or greater than zero."
            ),
            "08": (
                "For each different value of VAT category rate (BT-119) where the VAT category "
                'code (BT-118) is "IGIC", the VAT category taxable amount (BT-116) in a VAT '
                "breakdown (BG-23) shall equal the sum of Invoice line net amounts (BT-131) plus "
                "the sum of document level charge amounts (BT-99) minus the sum of document level"
                " allowance amounts (BT-92) where the VAT category code (BT-151, BT-102, BT-95) "
                'is "IGIC" and the VAT rate (BT-152, BT-103, BT-96) equals the VAT category rate '
                "(BT-119)."
            ),
            "09": (
                "The VAT category tax amount (BT-117) in a VAT breakdown (BG-23) where VAT "
                'category code (BT-118) is "IGIC" shall equal the VAT category taxable amount '
                "(BT-116) multiplied by the VAT category rate (BT-119)."
            ),
            "10": (
                'A VAT breakdown (BG-23) with VAT Category code (BT-118) "IGIC" shall not have a '
                "VAT exemption reason code (BT-121) or VAT exemption reason text (BT-120)."
            ),
        },
    ),
    _Category(  # IPSI
        "BR-AG",
        "M",
        breakdown_once=False,
        parties=_seller_vat_any,
        rate=_rate_zero_or_more,
        by_rate=True,
        exemption=False,
        messages={
            "01": (
                "An Invoice that contains an Invoice line (BG-25), a Document level allowance "
                "(BG-20) or a Document level charge (BG-21) where the VAT category code (BT-151, "
                'BT-95 or BT-102) is "IPSI" shall contain in the VAT breakdown (BG-23) at least '
                'one VAT category code (BT-118) equal with "IPSI".'
            ),
            "02": (
                "An Invoice that contains an Invoice line (BG-25) where the Invoiced item VAT "
                'category code (BT-151) is "IPSI" shall contain the Seller VAT Identifier '
                "(BT-31), the Seller tax registration identifier (BT-32) and/or the Seller tax "
                "representative VAT identifier (BT-63)."
            ),
            "03": (
                "An Invoice that contains a Document level allowance (BG-20) where the Document "
                'level allowance VAT category code (BT-95) is "IPSI" shall contain the Seller VAT'
                " Identifier (BT-31), the Seller Tax registration identifier (BT-32) and/or the "
                "Seller tax representative VAT identifier (BT-63)."
            ),
            "04": (
                "An Invoice that contains a Document level charge (BG-21) where the Document "
                'level charge VAT category code (BT-102) is "IPSI" shall contain the Seller VAT '
                "Identifier (BT-31), the Seller Tax registration identifier (BT-32) and/or the "
                "Seller tax representative VAT identifier (BT-63)."
            ),
            "05": (
                "In an Invoice line (BG-25) where the Invoiced item VAT category code (BT-151) is"
                ' "IPSI" the Invoiced item VAT rate (BT-152) shall be 0 (zero) or greater than '
                "zero."
            ),
            "06": (
                "In a Document level allowance (BG-20) where the Document level allowance VAT "
                'category code (BT-95) is "IPSI" the Document level allowance VAT rate (BT-96) '
                "shall be 0 (zero) or greater than zero."
            ),
            "07": (
                "In a Document level charge (BG-21) where the Document level charge VAT category "
                'code (BT-102) is "IPSI" the Document level charge VAT rate (BT-103) shall be 0 '
                "(zero) or greater than zero."
            ),
            "08": (
                "For each different value of VAT category rate (BT-119) where the VAT category "
                'code (BT-118) is "IPSI", the VAT category taxable amount (BT-116) in a VAT '
                "breakdown (BG-23) shall equal the sum of Invoice line net amounts (BT-131) plus "
                "the sum of document level charge amounts (BT-99) minus the sum of document level"
                " allowance amounts (BT-92) where the VAT category code (BT-151, BT-102, BT-95) "
                'is "IPSI" and the VAT rate (BT-152, BT-103, BT-96) equals the VAT category rate '
                "(BT-119)."
            ),
            "09": (
                "The VAT category tax amount (BT-117) in a VAT breakdown (BG-23) where VAT "
                'category code (BT-118) is "IPSI" shall equal the VAT category taxable amount '
                "(BT-116) multiplied by the VAT category rate (BT-119)."
            ),
            "10": (
                'A VAT breakdown (BG-23) with VAT Category code (BT-118) "IPSI" shall not have a '
                "VAT exemption reason code (BT-121) or VAT exemption reason text (BT-120)."
            ),
        },
    ),
]

for _category in _CATEGORIES:
    _category_rules(_category)


# Rules of one VAT category that look at the whole Invoice -----------------------------------

_IC_BREAKDOWN = f"cac:TaxTotal/cac:TaxSubtotal/cac:TaxCategory{_is('K')}{VAT}"
_O_BREAKDOWN = f"cac:TaxTotal/cac:TaxSubtotal/cac:TaxCategory{_is('O')}{VAT}"


@rule(
    "BR-IC-11",
    "fatal",
    INVOICE,
    "[BR-IC-11]-In an Invoice with a VAT breakdown (BG-23) where the VAT category code (BT-118) is "
    '"Intra-community supply" the Actual delivery date (BT-72) or the Invoicing period (BG-14) '
    "shall not be blank.",
)
def br_ic_11(node: Element) -> bool:
    if not exists(node, _IC_BREAKDOWN):
        return True
    delivery = "".join(texts(node, "cac:Delivery/cbc:ActualDeliveryDate")[:1])
    return len(delivery) > 1 or exists(node, "cac:InvoicePeriod/*")


@rule(
    "BR-IC-12",
    "fatal",
    INVOICE,
    "[BR-IC-12]-In an Invoice with a VAT breakdown (BG-23) where the VAT category code (BT-118) is "
    '"Intra-community supply" the Deliver to country code (BT-80) shall not be blank.',
)
def br_ic_12(node: Element) -> bool:
    if not exists(node, _IC_BREAKDOWN):
        return True
    country = "cac:Delivery/cac:DeliveryLocation/cac:Address/cac:Country/cbc:IdentificationCode"
    return len("".join(texts(node, country)[:1])) > 1


def _only_not_subject(other_categories: str) -> Callable[[Element], bool]:
    """BR-O-11..14: with a "Not subject to VAT" breakdown, nothing else may use another category."""

    def check(node: Element) -> bool:
        return not exists(node, _O_BREAKDOWN) or not exists(
            node, f"{other_categories}[normalize-space(cbc:ID) != 'O']{VAT}"
        )

    return check


for _rule_id, _others, _message in (
    (
        "BR-O-11",
        "cac:TaxTotal/cac:TaxSubtotal/cac:TaxCategory",
        "shall not contain other VAT breakdown groups (BG-23).",
    ),
    (
        "BR-O-12",
        "//cac:ClassifiedTaxCategory",
        "shall not contain an Invoice line (BG-25) where the Invoiced item VAT category code "
        '(BT-151) is not "Not subject to VAT".',
    ),
    (
        "BR-O-13",
        f"//cac:AllowanceCharge{IS_ALLOWANCE}/cac:TaxCategory",
        "shall not contain Document level allowances (BG-20) where Document level allowance VAT "
        'category code (BT-95) is not "Not subject to VAT".',
    ),
    (
        "BR-O-14",
        f"//cac:AllowanceCharge{IS_CHARGE}/cac:TaxCategory",
        "shall not contain Document level charges (BG-21) where Document level charge VAT "
        'category code (BT-102) is not "Not subject to VAT".',
    ),
):
    rule(
        _rule_id,
        "fatal",
        INVOICE,
        f"[{_rule_id}]-An Invoice that contains a VAT breakdown group (BG-23) with a VAT category "
        f'code (BT-118) "Not subject to VAT" {_message}',
    )(_only_not_subject(_others))


# Split payment (Italy) -------------------------------------------------------------------------

_ANY_B = "//cac:TaxCategory[cbc:ID = 'B'] | //cac:ClassifiedTaxCategory[cbc:ID = 'B']"


@rule(
    "BR-B-01",
    "fatal",
    INVOICE,
    "[BR-B-01]-An Invoice where the VAT category code (BT-151, BT-95 or BT-102) is “Split "
    "payment” shall be a domestic Italian invoice.",
)
def br_b_01(node: Element) -> bool:
    if not exists(node, _ANY_B):
        return True
    return all(code == "IT" for code in texts(node, "//cbc:IdentificationCode"))


@rule(
    "BR-B-02",
    "fatal",
    INVOICE,
    "[BR-B-02]-An Invoice that contains an Invoice line (BG-25), a Document level allowance "
    "(BG-20) or a Document level charge (BG-21) where the VAT category code (BT-151, BT-95 or "
    'BT-102) is “Split payment" shall not contain an invoice line (BG-25), a Document level '
    "allowance (BG-20) or  a Document level charge (BG-21) where the VAT category code (BT-151, "
    "BT-95 or BT-102) is “Standard rated”.",
)
def br_b_02(node: Element) -> bool:
    if not exists(node, _ANY_B):  # each path below selects a subset of these
        return True
    split = exists(
        node,
        "cac:TaxTotal/cac:TaxSubtotal/cac:TaxCategory[cbc:ID = 'B']"
        " | cac:AllowanceCharge/cac:TaxCategory[cbc:ID = 'B']"
        " | //cac:ClassifiedTaxCategory[cbc:ID = 'B']",
    )
    standard = exists(
        node,
        "cac:AllowanceCharge/cac:TaxCategory[cbc:ID = 'S']"
        " | //cac:ClassifiedTaxCategory[cbc:ID = 'S']",
    )
    return not (split and standard)


# Code lists (BR-CL-*) ----------------------------------------------------------------------------


def _code_rule(
    rule_id: str, context: str, message: str, codes: frozenset[str], attribute: str = ""
) -> None:
    """The value (or ``attribute``) of every ``context`` node belongs to ``codes``."""

    def check(node: Element) -> bool:
        value = node.get(attribute) if attribute else node.text
        return has_code(" ".join((value or "").split()), codes)

    rule(rule_id, "fatal", context, f"[{rule_id}]-{message}")(check)


@rule(
    "BR-CL-01",
    "fatal",
    "//cbc:InvoiceTypeCode | //cbc:CreditNoteTypeCode",
    "[BR-CL-01]-The document type code MUST be coded by the invoice and credit note related code "
    "lists of UNTDID 1001.",
)
def br_cl_01(node: Element) -> bool:
    codes = (
        codelists.INVOICE_TYPE_CODES
        if etree.QName(node).localname == "InvoiceTypeCode"
        else codelists.CREDIT_NOTE_TYPE_CODES
    )
    return has_code(" ".join((node.text or "").split()), codes)


_AMOUNT_NAMES = (
    "Amount BaseAmount PriceAmount TaxAmount TaxableAmount LineExtensionAmount "
    "TaxExclusiveAmount TaxInclusiveAmount AllowanceTotalAmount ChargeTotalAmount "
    "PrepaidAmount PayableRoundingAmount PayableAmount"
)
_AMOUNTS = " | ".join(f"//cbc:{name}" for name in _AMOUNT_NAMES.split())
_ICD_ID = "MUST be coded using one of the ISO 6523 ICD list."
_CODE_RULES: list[tuple[str, str, str, frozenset[str], str]] = [
    (
        "BR-CL-03",
        _AMOUNTS,
        "currencyID MUST be coded using ISO code list 4217 alpha-3",
        codelists.CURRENCY_CODES,
        "currencyID",
    ),
    (
        "BR-CL-04",
        "//cbc:DocumentCurrencyCode",
        "Invoice currency code MUST be coded using ISO code list 4217 alpha-3",
        codelists.CURRENCY_CODES,
        "",
    ),
    (
        "BR-CL-05",
        "//cbc:TaxCurrencyCode",
        "Tax currency code MUST be coded using ISO code list 4217 alpha-3",
        codelists.CURRENCY_CODES,
        "",
    ),
    (
        "BR-CL-06",
        "//cac:InvoicePeriod/cbc:DescriptionCode",
        "Value added tax point date code MUST be coded using a restriction of UNTDID 2005.",
        codelists.DATE_CODES,
        "",
    ),
    (
        "BR-CL-07",
        "//cac:AdditionalDocumentReference[cbc:DocumentTypeCode = '130']/cbc:ID[@schemeID]"
        " | //cac:DocumentReference[cbc:DocumentTypeCode = '130']/cbc:ID[@schemeID]",
        "Object identifier identification scheme identifier MUST be coded using a restriction of "
        "UNTDID 1153.",
        codelists.REFERENCE_QUALIFIERS,
        "schemeID",
    ),
    (
        "BR-CL-11",
        "//cac:PartyLegalEntity/cbc:CompanyID[@schemeID]",
        f"Any registration identifier identification scheme identifier {_ICD_ID}",
        codelists.ICD_CODES,
        "schemeID",
    ),
    (
        "BR-CL-13",
        "//cac:CommodityClassification/cbc:ItemClassificationCode[@listID]",
        "Item classification identifier identification scheme identifier MUST be coded using "
        "one of the UNTDID 7143 list.",
        codelists.ITEM_CLASSIFICATION_CODES,
        "listID",
    ),
    (
        "BR-CL-14",
        "//cac:Country/cbc:IdentificationCode",
        "Country codes in an invoice MUST be coded using ISO code list 3166-1",
        codelists.COUNTRY_CODES,
        "",
    ),
    (
        "BR-CL-15",
        "//cac:OriginCountry/cbc:IdentificationCode",
        "Country codes in an invoice MUST be coded using ISO code list 3166-1",
        codelists.COUNTRY_CODES,
        "",
    ),
    (
        "BR-CL-16",
        "//cac:PaymentMeans/cbc:PaymentMeansCode",
        "Payment means in an invoice MUST be coded using UNCL4461 code list",
        codelists.PAYMENT_MEANS_CODES,
        "",
    ),
    # The official list also has B (split payment, see BR-B-*).
    (
        "BR-CL-17",
        "//cac:TaxCategory/cbc:ID",
        "Invoice tax categories MUST be coded using UNCL5305 code list",
        codelists.VAT_CATEGORY_CODES | {"B"},
        "",
    ),
    (
        "BR-CL-18",
        "//cac:ClassifiedTaxCategory/cbc:ID",
        "Invoice tax categories MUST be coded using UNCL5305 code list",
        codelists.VAT_CATEGORY_CODES | {"B"},
        "",
    ),
    (
        "BR-CL-19",
        f"//cac:AllowanceCharge{IS_ALLOWANCE}/cbc:AllowanceChargeReasonCode",
        "Coded allowance reasons MUST belong to the UNCL 5189 code list",
        codelists.ALLOWANCE_REASON_CODES,
        "",
    ),
    (
        "BR-CL-20",
        f"//cac:AllowanceCharge{IS_CHARGE}/cbc:AllowanceChargeReasonCode",
        "Coded charge reasons MUST belong to the UNCL 7161 code list",
        codelists.CHARGE_REASON_CODES,
        "",
    ),
    (
        "BR-CL-21",
        "//cac:StandardItemIdentification/cbc:ID[@schemeID]",
        "Item standard identifier scheme identifier MUST belong to the ISO 6523 ICD code list",
        codelists.ICD_CODES,
        "schemeID",
    ),
    (
        "BR-CL-23",
        "//cbc:InvoicedQuantity[@unitCode] | //cbc:BaseQuantity[@unitCode]"
        " | //cbc:CreditedQuantity[@unitCode]",
        "Unit code MUST be coded according to the UN/ECE Recommendation 20 with Rec 21 extension",
        codelists.UNIT_CODES,
        "unitCode",
    ),
    (
        "BR-CL-25",
        "//cbc:EndpointID[@schemeID]",
        "Endpoint identifier scheme identifier MUST belong to the CEF EAS code list",
        codelists.EAS_CODES,
        "schemeID",
    ),
    (
        "BR-CL-26",
        "//cac:DeliveryLocation/cbc:ID[@schemeID]",
        "Delivery location identifier scheme identifier MUST belong to the ISO 6523 ICD code list",
        codelists.ICD_CODES,
        "schemeID",
    ),
]
for _rule_id, _context, _message, _codes, _attribute in _CODE_RULES:
    _code_rule(_rule_id, _context, _message, _codes, _attribute)


@rule(
    "BR-CL-10",
    "fatal",
    "//cac:PartyIdentification/cbc:ID[@schemeID]",
    f"[BR-CL-10]-Any identifier identification scheme identifier {_ICD_ID}",
)
def br_cl_10(node: Element) -> bool:
    scheme = " ".join((node.get("schemeID") or "").split())
    if scheme in codelists.ICD_CODES:
        return True
    return scheme == "SEPA" and exists(
        node, "ancestor::cac:AccountingSupplierParty | ancestor::cac:PayeeParty"
    )


@rule(
    "BR-CL-22",
    "fatal",
    "//cbc:TaxExemptionReasonCode",
    "[BR-CL-22]-Tax exemption reason code identifier scheme identifier MUST belong to the CEF "
    "VATEX code list",
)
def br_cl_22(node: Element) -> bool:
    return has_code(" ".join((node.text or "").upper().split()), codelists.VATEX_CODES)


@rule(
    "BR-CL-24",
    "fatal",
    "//cbc:EmbeddedDocumentBinaryObject[@mimeCode]",
    "[BR-CL-24]-For Mime code in attribute use MIMEMediaType.",
)
def br_cl_24(node: Element) -> bool:
    return node.get("mimeCode") in codelists.MIME_CODES


# UBL syntax rules (UBL-SR-*, UBL-DT-*) tested by the conformance suite ---------------------------

_AMOUNT_ELEMENTS = (
    f"//*[{_ends_with('Amount')} and not({_ends_with('PriceAmount')})"
    " and not(ancestor::cac:Price/cac:AllowanceCharge)]"
)
_BINARY_OBJECTS = f"//*[{_ends_with('BinaryObject')}]"


@rule(
    "UBL-DT-01",
    "fatal",
    _AMOUNT_ELEMENTS,
    "[UBL-DT-01]-Amounts shall be decimal up to two fraction digits",
)
def ubl_dt_01(node: Element) -> bool:
    return len((node.text or "").partition(".")[2]) <= 2


@rule(
    "UBL-DT-06",
    "fatal",
    _BINARY_OBJECTS,
    "[UBL-DT-06]-Binary object elements shall contain the mime code attribute",
)
def ubl_dt_06(node: Element) -> bool:
    return node.get("mimeCode") is not None


@rule(
    "UBL-DT-07",
    "fatal",
    _BINARY_OBJECTS,
    "[UBL-DT-07]-Binary object elements shall contain the file name attribute",
)
def ubl_dt_07(node: Element) -> bool:
    return node.get("filename") is not None


def _count_vat_ids(node: Element, party: str) -> int:
    return len(select(node, f"{party}/cac:Party/cac:PartyTaxScheme{VAT}/cbc:CompanyID"))


@rule(
    "UBL-SR-12",
    "fatal",
    INVOICE,
    "[UBL-SR-12]-Seller VAT identifier shall occur maximum once",
)
def ubl_sr_12(node: Element) -> bool:
    return _count_vat_ids(node, "cac:AccountingSupplierParty") <= 1


@rule(
    "UBL-SR-18",
    "fatal",
    INVOICE,
    "[UBL-SR-18]-Buyer VAT identifier shall occur maximum once",
)
def ubl_sr_18(node: Element) -> bool:
    return _count_vat_ids(node, "cac:AccountingCustomerParty") <= 1


@rule(
    "UBL-SR-42",
    "fatal",
    "//cac:AccountingSupplierParty/cac:Party",
    "[UBL-SR-42]-Party tax scheme shall occur maximum twice in accounting supplier party",
)
def ubl_sr_42(node: Element) -> bool:
    return len(select(node, "cac:PartyTaxScheme")) <= 2


@rule(
    "UBL-SR-44",
    "fatal",
    INVOICE,
    "[UBL-SR-44]-An Invoice may only have one unique PaymentID, but the PaymentID may be used "
    "for multiple PaymentMeans",
)
def ubl_sr_44(node: Element) -> bool:
    return len(set(texts(node, "//cbc:PaymentID"))) <= 1


@rule(
    "UBL-SR-47",
    "fatal",
    INVOICE,
    "[UBL-SR-47]-When there are more than one payment means code, they shall be equal",
)
def ubl_sr_47(node: Element) -> bool:
    return len(set(texts(node, "//cbc:PaymentMeansCode"))) <= 1
