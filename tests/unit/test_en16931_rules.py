"""Focused tests of the EN 16931 rules whose arithmetic is easy to get subtly wrong."""

from __future__ import annotations

from decimal import Decimal

import pytest
from lxml import etree

from services.factures.rules import EN16931, validate
from services.factures.rules.engine import decimal, location_of

NAMESPACES = (
    'xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2" '
    'xmlns:cac="urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2" '
    'xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"'
)
VAT = "<cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme>"


def fired(body: str) -> set[str]:
    root = etree.fromstring(f"<Invoice {NAMESPACES}>{body}</Invoice>")
    return {finding.rule for finding in validate(root, (EN16931,))}


def line(amount: str, category: str = "S", percent: str = "25") -> str:
    return (
        f"<cac:InvoiceLine><cbc:LineExtensionAmount currencyID='EUR'>{amount}"
        "</cbc:LineExtensionAmount><cac:Item><cac:ClassifiedTaxCategory>"
        f"<cbc:ID>{category}</cbc:ID><cbc:Percent>{percent}</cbc:Percent>{VAT}"
        "</cac:ClassifiedTaxCategory></cac:Item></cac:InvoiceLine>"
    )


def breakdown(taxable: str, tax: str, category: str = "S", percent: str = "25") -> str:
    return (
        "<cac:TaxTotal><cbc:TaxAmount currencyID='EUR'>0</cbc:TaxAmount><cac:TaxSubtotal>"
        f"<cbc:TaxableAmount currencyID='EUR'>{taxable}</cbc:TaxableAmount>"
        f"<cbc:TaxAmount currencyID='EUR'>{tax}</cbc:TaxAmount><cac:TaxCategory>"
        f"<cbc:ID>{category}</cbc:ID><cbc:Percent>{percent}</cbc:Percent>{VAT}"
        "</cac:TaxCategory></cac:TaxSubtotal></cac:TaxTotal>"
    )


def totals(line_total: str) -> str:
    return (
        "<cac:LegalMonetaryTotal>"
        f"<cbc:LineExtensionAmount currencyID='EUR'>{line_total}</cbc:LineExtensionAmount>"
        "</cac:LegalMonetaryTotal>"
    )


def test_br_co_10_compares_with_the_line_sum_rounded_half_up() -> None:
    lines = line("10.005") + line("20.000")
    assert "BR-CO-10" not in fired(totals("30.01") + lines)
    assert "BR-CO-10" in fired(totals("30.00") + lines)


def test_br_co_16_rounds_negative_amounts_like_xpath() -> None:
    # round((-10.005) * 100) div 100 is -10.00 in XPath (halves go towards +infinity).
    money = (
        "<cac:LegalMonetaryTotal><cbc:TaxInclusiveAmount currencyID='EUR'>-10.000"
        "</cbc:TaxInclusiveAmount><cbc:PrepaidAmount currencyID='EUR'>0.005</cbc:PrepaidAmount>"
        "<cbc:PayableAmount currencyID='EUR'>{}</cbc:PayableAmount></cac:LegalMonetaryTotal>"
    )
    assert "BR-CO-16" not in fired(money.format("-10.00"))
    assert "BR-CO-16" in fired(money.format("-10.01"))


def test_br_co_17_allows_one_unit_around_the_rounded_tax() -> None:
    assert "BR-CO-17" not in fired(breakdown("100.00", "25.99"))
    assert "BR-CO-17" in fired(breakdown("100.00", "26.00"))


def test_br_s_08_sums_only_the_lines_at_the_breakdown_rate() -> None:
    lines = line("100.00", percent="25") + line("50.00", percent="10")
    assert "BR-S-08" not in fired(breakdown("100.00", "25.00") + lines)
    assert "BR-S-08" in fired(breakdown("150.00", "37.50") + lines)


def test_br_z_08_needs_the_exact_taxable_amount_of_the_category() -> None:
    lines = line("100.00", "Z", "0") + line("40.00", "S", "25")
    assert "BR-Z-08" not in fired(breakdown("100.00", "0", "Z", "0") + lines)
    assert "BR-Z-08" in fired(breakdown("100.50", "0", "Z", "0") + lines)


def test_br_e_01_wants_exactly_one_exempt_breakdown() -> None:
    exempt = breakdown("10.00", "0", "E", "0")
    assert "BR-E-01" not in fired(exempt + line("10.00", "E", "0"))
    assert "BR-E-01" in fired(exempt + exempt + line("10.00", "E", "0"))


@pytest.mark.parametrize("amount", ["2_42.00", "\u0662\u0664\u0662.00", "1E3", "NaN", " ", "+"])
def test_an_amount_that_is_no_xs_decimal_breaks_the_rules_reading_it(amount: str) -> None:
    assert decimal(amount) is None
    assert "BR-CO-10" in fired(line("242.00") + totals(amount))


@pytest.mark.parametrize(
    ("text", "value"), [("242.00", "242.00"), ("-.5", "-0.5"), ("+7", "7"), ("3.", "3")]
)
def test_xs_decimal_amounts_are_read(text: str, value: str) -> None:
    assert decimal(text) == Decimal(value)


def test_findings_name_each_sibling_by_its_position_among_those_of_its_tag() -> None:
    root = etree.fromstring(f"<Invoice {NAMESPACES}><cbc:Note/><cbc:ID/><cbc:Note/></Invoice>")
    notes = root.findall(
        "{urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2}Note"
    )
    assert [location_of(note) for note in notes] == ["/Invoice/cbc:Note[1]", "/Invoice/cbc:Note[2]"]
    only = root.find("{urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2}ID")
    assert location_of(only) == "/Invoice/cbc:ID"
