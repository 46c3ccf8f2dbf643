"""The Peppol BIS Billing 3.0 rules (PEPPOL-EN16931-R*, -CL*, -P*, -F*, PEPPOL-COMMON-R*).

Re-expressed in Python from the official ``PEPPOL-EN16931-UBL.sch`` (release
3.0.21 wording and code lists; the ``[ID]-`` prefix of the messages is left out
since every finding carries its rule id). Where the official file groups rules
in one Schematron pattern and their contexts can select the same node (the
allowance/charge rules R040..R043, the identifier rules), they are built as a
``Pattern`` so that the first matching context claims the node, as there.

The country-specific rules (NO-R-*, DK-R-*, SE-R-*, GR-*, IS-R-*, NL-R-*,
IT-R-*, DE-R-*) are not implemented: the conformance suite does not test them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from decimal import Decimal

from services.factures.rules.codelists import (
    ALLOWANCE_REASON_CODES,
    CHARGE_REASON_CODES,
    CURRENCY_CODES,
    DATE_CODES,
    MIME_CODES,
)
from services.factures.rules.engine import (
    Check,
    Element,
    Flag,
    Pattern,
    Rule,
    RuleSet,
    amount,
    decimal,
    exists,
    per_document,
    round2,
    select,
    text,
)

PEPPOL = RuleSet("Peppol BIS Billing 3.0")

# Peppol's own restricted code lists ----------------------------------------------------


def _codes(listed: str) -> frozenset[str]:
    """The codes of a white-space separated list."""
    return frozenset(listed.split())


# PEPPOL-EN16931-P0100: invoice type codes allowed in the billing processes.
PEPPOL_INVOICE_TYPE_CODES = _codes(
    "71 80 82 84 102 218 219 326 331 380 382 383 384 386 388 393 395 553 575 623 780 817 870 "
    "875 876 877"
)
# PEPPOL-EN16931-P0101: credit note type codes allowed in the billing processes.
PEPPOL_CREDIT_NOTE_TYPE_CODES = _codes("381 396 81 83 532")
# PEPPOL-EN16931-CL008: the electronic address schemes (EAS) Peppol accepts, a subset of CEF EAS.
PEPPOL_EAS_CODES = _codes(
    "0002 0007 0009 0060 0088 0096 0097 0106 0130 0135 0142 0151 0158 0183 0184 0188 0190 0191 "
    "0192 0195 0196 0198 0199 0200 0201 0204 0208 0209 0210 0211 0216 0218 0221 0225 0230 0235 "
    "0240 0242 0244 0245 0246 0248 9910 9913 9914 9915 9918 9919 9920 9922 9923 9924 9925 9926 "
    "9927 9928 9929 9930 9931 9932 9933 9934 9935 9936 9937 9938 9939 9940 9941 9942 9943 9944 "
    "9945 9946 9947 9948 9949 9950 9951 9952 9953 9957 9959"
)
# The business process (BT-23) values that identify profile 01 and 02.
PROFILE_01 = frozenset(
    {
        "urn:fdc:peppol.eu:2017:poacc:billing:01:1.0",
        "urn:peppol:france:billing:regulated",
        "urn:peppol:france:billing:non-regulated",
    }
)
PROFILE_02 = frozenset({"urn:peppol:bis:billing_with_response"})
CUSTOMIZATION_PREFIX = "urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0"

DOCUMENT = "/ubl-invoice:Invoice | /ubl-creditnote:CreditNote"


# Helpers ------------------------------------------------------------------------------


def _normalize(value: str | None) -> str:
    """XPath ``normalize-space``."""
    return " ".join((value or "").split())


def _string(node: Element) -> str:
    """The XPath string value of an element: all its text, untrimmed."""
    return "".join(node.itertext())


def _document(node: Element) -> Element:
    return node.getroottree().getroot()


def _is_invoice(node: Element) -> bool:
    return bool(select(node, "/ubl-invoice:Invoice"))


def _profile(node: Element) -> str:
    """'01', '02' or 'Unknown', from the business process identifier (BT-23)."""
    profile_id = _normalize(text(_document(node), "cbc:ProfileID"))
    if profile_id in PROFILE_01:
        return "01"
    if profile_id in PROFILE_02:
        return "02"
    return "Unknown"


def _postal_country_is(node: Element, party: str, country: str) -> bool:
    code = text(
        _document(node),
        f"cac:{party}/cac:Party/cac:PostalAddress/cac:Country/cbc:IdentificationCode",
    )
    return _normalize(code).upper() == country


def _german_parties(node: Element) -> bool:
    """Both the seller's and the buyer's postal address are in Germany."""
    return _postal_country_is(node, "AccountingSupplierParty", "DE") and _postal_country_is(
        node, "AccountingCustomerParty", "DE"
    )


def _required_decimal(node: Element, xpath: str) -> Decimal:
    """``xs:decimal(...)``: a missing or malformed value is an error, which fails the rule."""
    value = amount(node, xpath)
    if value is None:
        raise ValueError(f"{xpath} is not a decimal")
    return value


def _within(expected: Decimal, value: Decimal, slack: Decimal) -> bool:
    """The official ``u:slack``: ``value`` lies within ``expected`` ± ``slack``."""
    return expected - slack <= value <= expected + slack


def _xs_date(value: str | None) -> date:
    if value is None or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
        raise ValueError(f"{value!r} is not an xs:date")
    return date.fromisoformat(value.strip())


def _is_integer(value: str) -> bool:
    """``castable as xs:integer``."""
    return re.fullmatch(r"\s*[+-]?[0-9]+\s*", value) is not None


# Identifier checksums (the official u:* functions) --------------------------------------


def gln_is_valid(value: str) -> bool:
    """GS1 check digit: weights 3, 1, 3, ... from the digit before the check digit."""
    if not re.fullmatch(r"[0-9]+", value):
        return False
    body, check = value[:-1], int(value[-1])
    total = sum(int(digit) * (3 if i % 2 == 0 else 1) for i, digit in enumerate(reversed(body)))
    return (10 - total % 10) % 10 == check


def mod11_is_valid(value: str) -> bool:
    """Norwegian organisation number: weights 2..7 from the right, modulus 11."""
    if not re.fullmatch(r"[0-9]+", value) or int(value) <= 0:
        return False
    body, check = value[:-1], int(value[-1])
    total = sum(int(digit) * (i % 6 + 2) for i, digit in enumerate(reversed(body)))
    return (11 - total % 11) % 11 == check


def belgian_enterprise_number_is_valid(value: str) -> bool:
    """0208: the last two digits are 97 - (the first eight modulo 97)."""
    if not re.fullmatch(r"[0-9]{10}", value):
        return False
    return int(value[8:10]) == 97 - int(value[:8]) % 97


def danish_cvr_is_valid(value: str) -> bool:
    """0184: 'DK' and eight digits, or eight digits."""
    return re.fullmatch(r"DK[0-9]{8}|[0-9]{8}", value) is not None


def ipa_code_is_valid(value: str) -> bool:
    """0201: six ASCII letters or digits."""
    return re.fullmatch(r"[A-Za-z0-9]{6}", value) is not None


def codice_fiscale_is_valid(value: str) -> bool:
    """0210/9907: 16 characters in the personal pattern, or 11 digits."""
    if len(value) == 16:
        letters = re.compile(r"[A-Za-z]*")
        return (
            letters.fullmatch(value[0:6]) is not None
            and _is_integer(value[6:8])
            and letters.fullmatch(value[8]) is not None
            and _is_integer(value[9:11])
            and _is_integer(value[14])
            and letters.fullmatch(value[15]) is not None
        )
    return len(value) == 11 and _is_integer(value)


_DOUBLED_DIGIT_SUM = "0246813579"  # the digit sum of 2 * d, for d = 0..9


def partita_iva_is_valid(value: str) -> bool:
    """0211: when prefixed 'IT', eleven digits passing the Luhn check; other prefixes pass."""
    if value[:2] not in ("IT", "it"):
        return True
    number = value[2:]
    if len(number) != 11 or not _is_integer(number):
        return False
    total = sum(
        int(digit) if i % 2 == 0 else int(_DOUBLED_DIGIT_SUM[int(digit)])
        for i, digit in enumerate(number)
    )
    return total % 10 == 0


def swedish_organisation_number_is_valid(value: str) -> bool:
    """0007: ten digits, the last a Luhn check digit of the first nine."""
    if not re.fullmatch(r"[0-9]{10}", value):
        return False
    body = value[:9]
    total = sum(
        int(_DOUBLED_DIGIT_SUM[int(digit)]) if position % 2 == 1 else int(digit)
        for position, digit in enumerate(reversed(body), start=1)
    )
    return (10 - total % 10) % 10 == int(value[9])


_ABN_WEIGHTS = (10, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19)


def abn_is_valid(value: str) -> bool:
    """0151: Australian Business Number, first digit minus one, weighted sum modulo 89."""
    if not re.fullmatch(r"[0-9]{11}", value):
        return False
    digits = [int(digit) for digit in value]
    digits[0] -= 1
    return sum(d * w for d, w in zip(digits, _ABN_WEIGHTS, strict=True)) % 89 == 0


# A family of rules in one Schematron pattern ---------------------------------------------


class _PatternBuilder:
    """Collects rules like ``RuleSet.rule`` does, grouped by context in the order given."""

    def __init__(self) -> None:
        self.groups: dict[str, list[Rule]] = {}

    def rule(
        self, rule_id: str, flag: Flag, context: str, message: str
    ) -> Callable[[Check], Check]:
        def register(check: Check) -> Check:
            self.groups.setdefault(context, []).append(Rule(rule_id, flag, context, check, message))
            return check

        return register

    def pattern(self) -> Pattern:
        return Pattern(list(self.groups.items()))


_main = _PatternBuilder()


# Empty elements ---------------------------------------------------------------------------


@PEPPOL.rule(
    "PEPPOL-EN16931-R008",
    "fatal",
    "//*[not(*) and not(normalize-space())]",
    "Document MUST not contain empty elements.",
)
def _no_empty_element(node: Element) -> bool:
    return False


# Document level (R00X, R05X) ---------------------------------------------------------------


@PEPPOL.rule(
    "PEPPOL-EN16931-R080",
    "fatal",
    "/ubl-creditnote:CreditNote",
    "Only one project reference is allowed on document level",
)
def _one_project_reference(node: Element) -> bool:
    return len(select(node, "cac:AdditionalDocumentReference[cbc:DocumentTypeCode = '50']")) <= 1


@_main.rule("PEPPOL-EN16931-R001", "fatal", DOCUMENT, "Business process MUST be provided.")
def _business_process_provided(node: Element) -> bool:
    return exists(node, "cbc:ProfileID")


@_main.rule(
    "PEPPOL-EN16931-R007", "fatal", DOCUMENT, "Business process MUST have an approved identifier."
)
def _business_process_known(node: Element) -> bool:
    return _profile(node) != "Unknown"


@_main.rule(
    "PEPPOL-EN16931-R002",
    "fatal",
    DOCUMENT,
    "No more than one note is allowed on document level, unless both the buyer and seller are "
    "German organizations.",
)
def _one_note(node: Element) -> bool:
    return len(select(node, "cbc:Note")) <= 1 or _german_parties(node)


@_main.rule(
    "PEPPOL-EN16931-R003",
    "fatal",
    DOCUMENT,
    "A buyer reference or purchase order reference MUST be provided.",
)
def _buyer_or_order_reference(node: Element) -> bool:
    return exists(node, "cbc:BuyerReference | cac:OrderReference/cbc:ID")


@_main.rule(
    "PEPPOL-EN16931-R004",
    "fatal",
    DOCUMENT,
    "Specification identifier MUST begin with the value "
    "'urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0' and follow the "
    "format rules for the identifier.",
)
def _customization_id(node: Element) -> bool:
    customization = _normalize(text(node, "cbc:CustomizationID/text()"))
    return customization.startswith(CUSTOMIZATION_PREFIX) and "::" not in customization


@_main.rule(
    "PEPPOL-EN16931-R053",
    "fatal",
    DOCUMENT,
    "Only one tax total with tax subtotals MUST be provided.",
)
def _one_tax_total_with_subtotals(node: Element) -> bool:
    return len(select(node, "cac:TaxTotal[cac:TaxSubtotal]")) == 1


@_main.rule(
    "PEPPOL-EN16931-R054",
    "fatal",
    DOCUMENT,
    "Only one tax total without tax subtotals MUST be provided when tax currency code is provided.",
)
def _tax_total_in_accounting_currency(node: Element) -> bool:
    expected = 1 if exists(node, "cbc:TaxCurrencyCode") else 0
    return len(select(node, "cac:TaxTotal[not(cac:TaxSubtotal)]")) == expected


@_main.rule(
    "PEPPOL-EN16931-R055",
    "fatal",
    DOCUMENT,
    "Invoice total VAT amount and Invoice total VAT amount in accounting currency MUST have the "
    "same operational sign",
)
def _same_sign_in_both_currencies(node: Element) -> bool:
    tax_currency = select(node, "cbc:TaxCurrencyCode")
    if not tax_currency:
        return True

    def tax_amounts(currency_element: str) -> list[Decimal]:
        currency = _normalize(text(node, currency_element))
        return [
            _required_decimal(value, ".")
            for value in select(node, "cac:TaxTotal/cbc:TaxAmount")
            if value.get("currencyID") == currency
        ]

    in_tax_currency = tax_amounts("cbc:TaxCurrencyCode")
    in_document_currency = tax_amounts("cbc:DocumentCurrencyCode")
    zero = Decimal(0)
    both_not_positive = any(v <= zero for v in in_tax_currency) and any(
        v <= zero for v in in_document_currency
    )
    both_not_negative = any(v >= zero for v in in_tax_currency) and any(
        v >= zero for v in in_document_currency
    )
    return both_not_positive or both_not_negative


@_main.rule(
    "PEPPOL-EN16931-R005",
    "fatal",
    "//cbc:TaxCurrencyCode",
    "VAT accounting currency code MUST be different from invoice currency code when provided.",
)
def _distinct_tax_currency(node: Element) -> bool:
    document_currency = _normalize(text(node, "../cbc:DocumentCurrencyCode/text()"))
    return _normalize(text(node, "text()")) != document_currency


# Parties (R01X, R02X) ----------------------------------------------------------------------


@_main.rule(
    "PEPPOL-EN16931-R010",
    "fatal",
    "//cac:AccountingCustomerParty/cac:Party",
    "Buyer electronic address MUST be provided",
)
def _buyer_endpoint(node: Element) -> bool:
    return exists(node, "cbc:EndpointID")


@_main.rule(
    "PEPPOL-EN16931-R020",
    "fatal",
    "//cac:AccountingSupplierParty/cac:Party",
    "Seller electronic address MUST be provided",
)
def _seller_endpoint(node: Element) -> bool:
    return exists(node, "cbc:EndpointID")


# Allowances and charges, document and line level (R04X) -----------------------------------
# The three contexts overlap: an allowance/charge with a percentage and no base amount (or
# the reverse) is claimed by R041 (R042) and not checked by R040/R043, as officially.


def _allowance_charges(predicate: str = "") -> str:
    return " | ".join(
        f"{parent}/cac:AllowanceCharge{predicate}"
        for parent in (
            "/ubl-invoice:Invoice",
            "/ubl-invoice:Invoice/cac:InvoiceLine",
            "/ubl-creditnote:CreditNote",
            "/ubl-creditnote:CreditNote/cac:CreditNoteLine",
        )
    )


@_main.rule(
    "PEPPOL-EN16931-R041",
    "fatal",
    _allowance_charges("[cbc:MultiplierFactorNumeric and not(cbc:BaseAmount)]"),
    "Allowance/charge base amount MUST be provided when allowance/charge percentage is provided.",
)
def _base_amount_with_percentage(node: Element) -> bool:
    return False


@_main.rule(
    "PEPPOL-EN16931-R042",
    "fatal",
    _allowance_charges("[not(cbc:MultiplierFactorNumeric) and cbc:BaseAmount]"),
    "Allowance/charge percentage MUST be provided when allowance/charge base amount is provided.",
)
def _percentage_with_base_amount(node: Element) -> bool:
    return False


@_main.rule(
    "PEPPOL-EN16931-R040",
    "fatal",
    _allowance_charges(),
    "Allowance/charge amount must equal base amount * percentage/100 if base amount and "
    "percentage exists",
)
def _amount_is_percentage_of_base(node: Element) -> bool:
    if not (exists(node, "cbc:MultiplierFactorNumeric") and exists(node, "cbc:BaseAmount")):
        return True
    charged = _required_decimal(node, "cbc:Amount") if exists(node, "cbc:Amount") else Decimal(0)
    base = _required_decimal(node, "cbc:BaseAmount")
    percentage = _required_decimal(node, "cbc:MultiplierFactorNumeric")
    return _within(charged, base * percentage / 100, Decimal("0.02"))


@_main.rule(
    "PEPPOL-EN16931-R043",
    "fatal",
    _allowance_charges(),
    "Allowance/charge ChargeIndicator value MUST equal 'true' or 'false'",
)
def _charge_indicator_is_boolean(node: Element) -> bool:
    return _normalize(text(node, "cbc:ChargeIndicator/text()")) in ("true", "false")


# Payment (R06X) ---------------------------------------------------------------------------


@_main.rule(
    "PEPPOL-EN16931-R061",
    "fatal",
    "//cac:PaymentMeans[normalize-space(cbc:PaymentMeansCode) = '49'"
    " or normalize-space(cbc:PaymentMeansCode) = '59']",
    "Mandate reference MUST be provided for direct debit.",
)
def _direct_debit_mandate(node: Element) -> bool:
    return exists(node, "cac:PaymentMandate/cbc:ID")


# Currency of amounts (R051) ----------------------------------------------------------------


@_main.rule(
    "PEPPOL-EN16931-R051",
    "fatal",
    " | ".join(
        f"//{path}"
        for path in (
            "cbc:Amount",
            "cbc:BaseAmount",
            "cbc:PriceAmount",
            "cac:TaxTotal[cac:TaxSubtotal]/cbc:TaxAmount",
            "cac:TaxSubtotal/cbc:TaxAmount",
            "cbc:TaxableAmount",
            "cbc:LineExtensionAmount",
            "cbc:TaxExclusiveAmount",
            "cbc:TaxInclusiveAmount",
            "cbc:AllowanceTotalAmount",
            "cbc:ChargeTotalAmount",
            "cbc:PrepaidAmount",
            "cbc:PayableRoundingAmount",
            "cbc:PayableAmount",
        )
    ),
    "All currencyID attributes must have the same value as the invoice currency code (BT-5), "
    "except for the invoice total VAT amount in accounting currency (BT-111).",
)
def _document_currency(node: Element) -> bool:
    return node.get("currencyID") in per_document(
        _document(node), "peppol document currencies", _document_currencies
    )


def _document_currencies(document: Element) -> list[str]:
    return [_string(code) for code in select(document, "/*/cbc:DocumentCurrencyCode")]


# Line period within the invoice period (R110, R111) ---------------------------------------


def _line_period(bound: str) -> str:
    return (
        f"/ubl-invoice:Invoice[cac:InvoicePeriod/cbc:{bound}]"
        f"/cac:InvoiceLine/cac:InvoicePeriod/cbc:{bound}"
        f" | /ubl-creditnote:CreditNote[cac:InvoicePeriod/cbc:{bound}]"
        f"/cac:CreditNoteLine/cac:InvoicePeriod/cbc:{bound}"
    )


@_main.rule(
    "PEPPOL-EN16931-R110",
    "fatal",
    _line_period("StartDate"),
    "Start date of line period MUST be within invoice period.",
)
def _line_starts_within_invoice_period(node: Element) -> bool:
    return _xs_date(node.text) >= _xs_date(text(node, "../../../cac:InvoicePeriod/cbc:StartDate"))


@_main.rule(
    "PEPPOL-EN16931-R111",
    "fatal",
    _line_period("EndDate"),
    "End date of line period MUST be within invoice period.",
)
def _line_ends_within_invoice_period(node: Element) -> bool:
    return _xs_date(node.text) <= _xs_date(text(node, "../../../cac:InvoicePeriod/cbc:EndDate"))


# Lines (R1XX) ------------------------------------------------------------------------------

LINES = "//cac:InvoiceLine | //cac:CreditNoteLine"


def _line_allowance_total(line: Element, charge: str) -> Decimal:
    """Sum of the line's allowances (charge='false') or charges ('true'), rounded to 2 decimals."""
    values = [
        _required_decimal(value, ".")
        for value in select(
            line,
            f"cac:AllowanceCharge[normalize-space(cbc:ChargeIndicator) = '{charge}']/cbc:Amount",
        )
    ]
    return round2(sum(values, Decimal(0)))


@_main.rule(
    "PEPPOL-EN16931-R120",
    "fatal",
    LINES,
    "Invoice line net amount MUST equal (Invoiced quantity * (Item net price/item price base "
    "quantity) + Sum of invoice line charge amount - sum of invoice line allowance amount",
)
def _line_net_amount(line: Element) -> bool:
    def optional(xpath: str, default: int) -> Decimal:
        found = select(line, xpath)
        if not found:
            return Decimal(default)
        value = decimal((found[0].text or "").strip())  # as _required_decimal reads it
        if value is None:
            raise ValueError(f"{xpath} is not a decimal")
        return value

    net_amount = optional("cbc:LineExtensionAmount", 0)
    quantity = optional("cbc:InvoicedQuantity" if _is_invoice(line) else "cbc:CreditedQuantity", 1)
    price = optional("cac:Price/cbc:PriceAmount", 0)
    base_quantity = optional("cac:Price/cbc:BaseQuantity", 1)
    if base_quantity == 0:
        base_quantity = Decimal(1)
    computed = (
        quantity * (price / base_quantity)
        + _line_allowance_total(line, "true")
        - _line_allowance_total(line, "false")
    )
    return _within(net_amount, computed, Decimal("0.02"))


@_main.rule(
    "PEPPOL-EN16931-R121",
    "fatal",
    LINES,
    "Base quantity MUST be a positive number above zero.",
)
def _positive_base_quantity(line: Element) -> bool:
    if not exists(line, "cac:Price/cbc:BaseQuantity"):
        return True
    return _required_decimal(line, "cac:Price/cbc:BaseQuantity") > 0


@_main.rule(
    "PEPPOL-EN16931-R100",
    "fatal",
    LINES,
    "Only one invoiced object is allowed pr line",
)
def _one_invoiced_object(line: Element) -> bool:
    return len(select(line, "cac:DocumentReference")) <= 1


@_main.rule(
    "PEPPOL-EN16931-R101",
    "fatal",
    LINES,
    "Element Document reference can only be used for Invoice line object",
)
def _document_reference_is_invoiced_object(line: Element) -> bool:
    if not exists(line, "cac:DocumentReference"):
        return True
    return "130" in [
        _string(code) for code in select(line, "cac:DocumentReference/cbc:DocumentTypeCode")
    ]


# Price level allowance and base quantity ---------------------------------------------------


@_main.rule(
    "PEPPOL-EN16931-R044",
    "fatal",
    "//cac:Price/cac:AllowanceCharge",
    "Charge on price level is NOT allowed. Only value 'false' allowed.",
)
def _no_price_charge(node: Element) -> bool:
    return _normalize(text(node, "cbc:ChargeIndicator")) == "false"


@_main.rule(
    "PEPPOL-EN16931-R046",
    "fatal",
    "//cac:Price/cac:AllowanceCharge",
    "Item net price MUST equal (Gross price - Allowance amount) when gross price is provided.",
)
def _net_price_is_gross_minus_allowance(node: Element) -> bool:
    if not exists(node, "cbc:BaseAmount"):
        return True
    net_price = _required_decimal(node, "../cbc:PriceAmount")
    return net_price == _required_decimal(node, "cbc:BaseAmount") - _required_decimal(
        node, "cbc:Amount"
    )


@_main.rule(
    "PEPPOL-EN16931-R130",
    "fatal",
    "//cac:Price/cbc:BaseQuantity[@unitCode]",
    "Unit code of price base quantity MUST be same as invoiced quantity.",
)
def _base_quantity_unit(node: Element) -> bool:
    if not exists(node, "../../cbc:InvoicedQuantity | ../../cbc:CreditedQuantity"):
        return True
    quantity = "../../cbc:InvoicedQuantity" if _is_invoice(node) else "../../cbc:CreditedQuantity"
    return node.get("unitCode") in [q.get("unitCode") for q in select(node, quantity)]


# Identifiers by scheme (PEPPOL-COMMON-R04X, R05X) ------------------------------------------
# An identifier is checked wherever it appears as an electronic address, a party
# identification or a company id carrying the scheme.


def _identifiers(scheme: str) -> str:
    return (
        f"//cbc:EndpointID[@schemeID = '{scheme}']"
        f" | //cac:PartyIdentification/cbc:ID[@schemeID = '{scheme}']"
        f" | //cbc:CompanyID[@schemeID = '{scheme}']"
    )


def _identifier_rule(
    rule_id: str, flag: Flag, context: str, message: str, valid: Callable[[str], bool]
) -> None:
    """Register ``rule_id``: the normalized identifier at ``context`` satisfies ``valid``."""
    _main.rule(rule_id, flag, context, message)(lambda node: valid(_normalize(_string(node))))


def _pattern_rule(pattern: str) -> Callable[[str], bool]:
    return lambda value: re.fullmatch(pattern, value) is not None


_identifier_rule(
    "PEPPOL-COMMON-R040",
    "fatal",
    _identifiers("0088"),
    "GLN must have a valid format according to GS1 rules.",
    gln_is_valid,
)
_identifier_rule(
    "PEPPOL-COMMON-R041",
    "fatal",
    _identifiers("0192"),
    "Norwegian organization number MUST be stated in the correct format.",
    lambda value: re.fullmatch(r"[0-9]{9}", value) is not None and mod11_is_valid(value),
)


# R042 and R052/R053 test the raw string value, without normalizing spaces.
@_main.rule(
    "PEPPOL-COMMON-R042",
    "fatal",
    _identifiers("0184"),
    "Danish organization number (CVR) MUST be stated in the correct format.",
)
def _danish_cvr(node: Element) -> bool:
    return danish_cvr_is_valid(_string(node))


@_main.rule(
    "PEPPOL-COMMON-R052",
    "fatal",
    _identifiers("0096"),
    "Danish chamber of commerce number (P) MUST be stated in the correct format.",
)
def _danish_p_number(node: Element) -> bool:
    return re.fullmatch(r"[0-9]{10}", _string(node)) is not None


@_main.rule(
    "PEPPOL-COMMON-R053",
    "fatal",
    _identifiers("0198"),
    "Danish ERSTORG number (SE) MUST be stated in the correct format.",
)
def _danish_se_number(node: Element) -> bool:
    return re.fullmatch(r"DK[0-9]{8}", _string(node)) is not None


_identifier_rule(
    "PEPPOL-COMMON-R043",
    "fatal",
    _identifiers("0208"),
    "Belgian enterprise number MUST be stated in the correct format.",
    belgian_enterprise_number_is_valid,
)
_identifier_rule(
    "PEPPOL-COMMON-R044",
    "warning",
    _identifiers("0201"),
    "IPA Code (Codice Univoco Unità Organizzativa) must be stated in the correct format",
    ipa_code_is_valid,
)
_identifier_rule(
    "PEPPOL-COMMON-R045",
    "warning",
    _identifiers("0210"),
    "Tax Code (Codice Fiscale) must be stated in the correct format",
    codice_fiscale_is_valid,
)
_identifier_rule(
    "PEPPOL-COMMON-R046",
    "warning",
    "//cbc:EndpointID[@schemeID = '9907']",
    "Tax Code (Codice Fiscale) must be stated in the correct format",
    codice_fiscale_is_valid,
)
_identifier_rule(
    "PEPPOL-COMMON-R047",
    "warning",
    _identifiers("0211"),
    "Italian VAT Code (Partita Iva) must be stated in the correct format",
    partita_iva_is_valid,
)
_identifier_rule(
    "PEPPOL-COMMON-R049",
    "fatal",
    _identifiers("0007"),
    "Swedish organization number MUST be stated in the correct format.",
    swedish_organisation_number_is_valid,
)
_identifier_rule(
    "PEPPOL-COMMON-R050",
    "fatal",
    _identifiers("0151"),
    "Australian Business Number (ABN) MUST be stated in the correct format.",
    abn_is_valid,
)
_identifier_rule(
    "PEPPOL-COMMON-R054",
    "warning",
    _identifiers("0106"),
    "Dutch Chamber of Commerce (KVK) numbers (0106) MUST be stated in the correct format "
    "(12345678).",
    _pattern_rule(r"[0-9]{8}"),
)
_identifier_rule(
    "PEPPOL-COMMON-R055",
    "warning",
    _identifiers("0190"),
    "Dutch organization identification numbers (0190) MUST be stated in the correct format "
    "(12345678901234567890).",
    _pattern_rule(r"[0-9]{20}"),
)
_identifier_rule(
    "PEPPOL-COMMON-R056-1",
    "warning",
    _identifiers("9944"),
    "Dutch VAT numbers (9944) MUST be stated in the correct format (NL123456789B12).",
    _pattern_rule(r"NL[0-9]{9}B[0-9]{2}"),
)
_identifier_rule(
    "PEPPOL-COMMON-R056-2",
    "warning",
    "//cac:PartyTaxScheme[normalize-space(cac:TaxScheme/cbc:ID) = 'VAT']"
    "/cbc:CompanyID[starts-with(normalize-space(.), 'NL')]",
    "Dutch VAT numbers MUST have the format (NL123456789B12).",
    _pattern_rule(r"NL[0-9]{9}B[0-9]{2}"),
)
_identifier_rule(
    "PEPPOL-COMMON-R057",
    "warning",
    _identifiers("0217"),
    "Dutch Chamber of Commerce Establishment numbers (0217) MUST be stated in the correct format "
    "(123456789012).",
    _pattern_rule(r"[0-9]{12}"),
)

PEPPOL.patterns.append(_main.pattern())


# Restricted code lists (CL*) ----------------------------------------------------------------


@PEPPOL.rule(
    "PEPPOL-EN16931-CL001",
    "fatal",
    "//cbc:EmbeddedDocumentBinaryObject[@mimeCode]",
    "Mime code must be according to subset of IANA code list.",
)
def _mime_code(node: Element) -> bool:
    return node.get("mimeCode") in MIME_CODES


@PEPPOL.rule(
    "PEPPOL-EN16931-CL002",
    "fatal",
    "//cac:AllowanceCharge[cbc:ChargeIndicator = 'false']/cbc:AllowanceChargeReasonCode",
    "Reason code MUST be according to subset of UNCL 5189 D.16B.",
)
def _allowance_reason_code(node: Element) -> bool:
    return _normalize(node.text) in ALLOWANCE_REASON_CODES


@PEPPOL.rule(
    "PEPPOL-EN16931-CL003",
    "fatal",
    "//cac:AllowanceCharge[cbc:ChargeIndicator = 'true']/cbc:AllowanceChargeReasonCode",
    "Reason code MUST be according to UNCL 7161 D.16B.",
)
def _charge_reason_code(node: Element) -> bool:
    return _normalize(node.text) in CHARGE_REASON_CODES


@PEPPOL.rule(
    "PEPPOL-EN16931-CL006",
    "fatal",
    "//cac:InvoicePeriod/cbc:DescriptionCode",
    "Invoice period description code must be according to UNCL 2005 D.16B.",
)
def _period_description_code(node: Element) -> bool:
    return _normalize(node.text) in DATE_CODES


@PEPPOL.rule(
    "PEPPOL-EN16931-CL007",
    "fatal",
    " | ".join(
        f"//cbc:{name}"
        for name in (
            "Amount",
            "BaseAmount",
            "PriceAmount",
            "TaxAmount",
            "TaxableAmount",
            "LineExtensionAmount",
            "TaxExclusiveAmount",
            "TaxInclusiveAmount",
            "AllowanceTotalAmount",
            "ChargeTotalAmount",
            "PrepaidAmount",
            "PayableRoundingAmount",
            "PayableAmount",
        )
    ),
    "Currency code must be according to ISO 4217:2005",
)
def _currency_code(node: Element) -> bool:
    return node.get("currencyID") in CURRENCY_CODES


@PEPPOL.rule(
    "PEPPOL-EN16931-CL008",
    "fatal",
    "//cbc:EndpointID[@schemeID]",
    'Electronic address identifier scheme must be from the codelist "Electronic Address '
    'Identifier Scheme"',
)
def _endpoint_scheme(node: Element) -> bool:
    return node.get("schemeID") in PEPPOL_EAS_CODES


# Profile (P01XX) ------------------------------------------------------------------------------


@PEPPOL.rule(
    "PEPPOL-EN16931-P0100",
    "fatal",
    "//cbc:InvoiceTypeCode",
    "Invoice type code MUST be set according to the profile.",
)
def _invoice_type_code_in_profile(node: Element) -> bool:
    return _profile(node) not in ("01", "02") or _normalize(node.text) in PEPPOL_INVOICE_TYPE_CODES


@PEPPOL.rule(
    "PEPPOL-EN16931-P0112",
    "fatal",
    "//cbc:InvoiceTypeCode",
    "Invoice type code 326 or 384 are only allowed when both buyer and seller are German "
    "organizations",
)
def _german_only_type_codes(node: Element) -> bool:
    return _normalize(node.text) not in ("326", "384") or _german_parties(node)


@PEPPOL.rule(
    "PEPPOL-EN16931-P0101",
    "fatal",
    "//cbc:CreditNoteTypeCode",
    "Credit note type code MUST be set according to the profile.",
)
def _credit_note_type_code_in_profile(node: Element) -> bool:
    return (
        _profile(node) not in ("01", "02") or _normalize(node.text) in PEPPOL_CREDIT_NOTE_TYPE_CODES
    )


# An exemption reason code VATEX-EU-x requires its VAT category (P0104..P0111).

_UPPER = (
    "translate(cbc:TaxExemptionReasonCode,"
    " 'abcdefghijklmnopqrstuvwxyz', 'ABCDEFGHIJKLMNOPQRSTUVWXYZ')"
)


def _exemption_rule(rule_id: str, exemption: str, category: str) -> None:
    PEPPOL.rule(
        rule_id,
        "fatal",
        f"//cac:TaxCategory[{_UPPER} = '{exemption}']",
        f"Tax Category {category} MUST be used when exemption reason code is {exemption}",
    )(lambda node: _normalize(text(node, "cbc:ID")) == category)


_exemption_rule("PEPPOL-EN16931-P0104", "VATEX-EU-G", "G")
_exemption_rule("PEPPOL-EN16931-P0105", "VATEX-EU-O", "O")
_exemption_rule("PEPPOL-EN16931-P0106", "VATEX-EU-IC", "K")
_exemption_rule("PEPPOL-EN16931-P0107", "VATEX-EU-AE", "AE")
_exemption_rule("PEPPOL-EN16931-P0108", "VATEX-EU-D", "E")
_exemption_rule("PEPPOL-EN16931-P0109", "VATEX-EU-F", "E")
_exemption_rule("PEPPOL-EN16931-P0110", "VATEX-EU-I", "E")
_exemption_rule("PEPPOL-EN16931-P0111", "VATEX-EU-J", "E")


# Formats (F*) ---------------------------------------------------------------------------------


@PEPPOL.rule(
    "PEPPOL-EN16931-F001",
    "fatal",
    " | ".join(
        f"//cbc:{name}"
        for name in (
            "IssueDate",
            "DueDate",
            "TaxPointDate",
            "StartDate",
            "EndDate",
            "ActualDeliveryDate",
        )
    ),
    "A date MUST be formatted YYYY-MM-DD.",
)
def _date_format(node: Element) -> bool:
    value = node.text or ""
    if len(value) != 10:
        return False
    try:
        _xs_date(_string(node))
    except ValueError:
        return False
    return True
