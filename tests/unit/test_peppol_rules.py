"""Focused tests of the Peppol BIS Billing 3.0 rules whose logic is easy to get wrong."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from lxml import etree

from services.factures.rules import PEPPOL, validate
from services.factures.rules.peppol import (
    abn_is_valid,
    belgian_enterprise_number_is_valid,
    codice_fiscale_is_valid,
    danish_cvr_is_valid,
    gln_is_valid,
    ipa_code_is_valid,
    mod11_is_valid,
    partita_iva_is_valid,
    swedish_organisation_number_is_valid,
)

NAMESPACES = (
    'xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2" '
    'xmlns:cac="urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2" '
    'xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"'
)


def fired(body: str) -> set[str]:
    """The Peppol rules that fire on an Invoice fragment made of ``body``."""
    root = etree.fromstring(f"<Invoice {NAMESPACES}>{body}</Invoice>")
    return {finding.rule for finding in validate(root, (PEPPOL,))}


def line(quantity: str, price: str, net: str, extra: str = "", base_quantity: str = "") -> str:
    base = (
        f'<cbc:BaseQuantity unitCode="C62">{base_quantity}</cbc:BaseQuantity>'
        if base_quantity
        else ""
    )
    return (
        "<cac:InvoiceLine><cbc:ID>1</cbc:ID>"
        f'<cbc:InvoicedQuantity unitCode="C62">{quantity}</cbc:InvoicedQuantity>'
        f'<cbc:LineExtensionAmount currencyID="EUR">{net}</cbc:LineExtensionAmount>{extra}'
        f'<cac:Price><cbc:PriceAmount currencyID="EUR">{price}</cbc:PriceAmount>{base}</cac:Price>'
        "</cac:InvoiceLine>"
    )


def line_allowance(indicator: str, amount: str) -> str:
    return (
        f"<cac:AllowanceCharge><cbc:ChargeIndicator>{indicator}</cbc:ChargeIndicator>"
        f'<cbc:Amount currencyID="EUR">{amount}</cbc:Amount></cac:AllowanceCharge>'
    )


# PEPPOL-EN16931-R120: line net amount = quantity * (price / base quantity) + charges - allowances


@pytest.mark.parametrize(
    ("consistent", "inconsistent"),
    [
        # the 0.02 tolerance
        (line("3", "10.00", "30.02"), line("3", "10.00", "30.03")),
        # a price per 100 units
        (
            line("10", "25.00", "2.50", base_quantity="100"),
            line("10", "25.00", "250.00", base_quantity="100"),
        ),
        # line allowances are deducted and charges added
        (
            line("2", "10.00", "17.00", line_allowance("false", "5") + line_allowance("true", "2")),
            line("2", "10.00", "20.00", line_allowance("false", "5") + line_allowance("true", "2")),
        ),
        # a negative (correcting) line
        (line("-1", "10.00", "-10.00"), line("-1", "10.00", "10.00")),
        # an amount that is not a number breaks the rule
        (line("2", "10", "20"), line("2", "abc", "20.00")),
    ],
    ids=["tolerance", "base-quantity", "line-allowances", "negative", "not-a-number"],
)
def test_r120_line_net_amount(consistent: str, inconsistent: str) -> None:
    assert "PEPPOL-EN16931-R120" not in fired(consistent)
    assert "PEPPOL-EN16931-R120" in fired(inconsistent)


# PEPPOL-EN16931-R040..R043 share one Schematron pattern: the first matching context wins.


def test_a_percentage_without_base_amount_fires_r041_and_not_r043() -> None:
    allowance = (
        "<cac:AllowanceCharge><cbc:ChargeIndicator>maybe</cbc:ChargeIndicator>"
        "<cbc:MultiplierFactorNumeric>10</cbc:MultiplierFactorNumeric>"
        '<cbc:Amount currencyID="EUR">5</cbc:Amount></cac:AllowanceCharge>'
    )
    rules = fired(allowance)
    assert "PEPPOL-EN16931-R041" in rules
    assert "PEPPOL-EN16931-R043" not in rules


def test_r040_checks_amount_against_base_and_percentage() -> None:
    def allowance(amount: str) -> str:
        return (
            "<cac:AllowanceCharge><cbc:ChargeIndicator>false</cbc:ChargeIndicator>"
            "<cbc:MultiplierFactorNumeric>10</cbc:MultiplierFactorNumeric>"
            f'<cbc:Amount currencyID="EUR">{amount}</cbc:Amount>'
            '<cbc:BaseAmount currencyID="EUR">200</cbc:BaseAmount></cac:AllowanceCharge>'
        )

    assert "PEPPOL-EN16931-R040" not in fired(allowance("20.01"))
    assert "PEPPOL-EN16931-R040" in fired(allowance("20.03"))


# PEPPOL-EN16931-R002 and P0112: German-only exceptions decided on the postal addresses.


def parties(seller: str, buyer: str) -> str:
    def party(role: str, country: str) -> str:
        return (
            f"<cac:{role}><cac:Party><cac:PostalAddress><cac:Country>"
            f"<cbc:IdentificationCode>{country}</cbc:IdentificationCode>"
            f"</cac:Country></cac:PostalAddress></cac:Party></cac:{role}>"
        )

    return party("AccountingSupplierParty", seller) + party("AccountingCustomerParty", buyer)


def test_several_notes_only_between_german_parties() -> None:
    notes = "<cbc:Note>a</cbc:Note><cbc:Note>b</cbc:Note>"
    assert "PEPPOL-EN16931-R002" in fired(notes + parties("DE", "NL"))
    assert "PEPPOL-EN16931-R002" not in fired(notes + parties("DE", "DE"))


def test_type_code_384_only_between_german_parties() -> None:
    code = "<cbc:InvoiceTypeCode>384</cbc:InvoiceTypeCode>"
    assert "PEPPOL-EN16931-P0112" in fired(code + parties("DE", "FR"))
    assert "PEPPOL-EN16931-P0112" not in fired(code + parties("DE", "DE"))


# PEPPOL-COMMON-R040..R050: identifier formats and checksums.


@pytest.mark.parametrize(
    ("check", "valid", "invalid"),
    [
        (gln_is_valid, "9429041098400", "9429041098401"),
        (mod11_is_valid, "987654325", "987654321"),
        (danish_cvr_is_valid, "DK12345678", "DK1234567"),
        (danish_cvr_is_valid, "12345678", "1234567X"),
        (belgian_enterprise_number_is_valid, "0739484052", "0739484059"),
        (ipa_code_is_valid, "F7VRDL", "F7VRDL1"),
        (codice_fiscale_is_valid, "RSSMRA85T10A562S", "RSSMRA85T10A56"),
        (codice_fiscale_is_valid, "97735020584", "9773502058X"),
        (partita_iva_is_valid, "IT02985591201", "IT02985591202"),
        (swedish_organisation_number_is_valid, "2021005489", "2021005480"),
        (abn_is_valid, "51824753556", "51824753550"),
    ],
)
def test_identifier_checksums(check: Callable[[str], bool], valid: str, invalid: str) -> None:
    assert check(valid) is True
    assert check(invalid) is False


@pytest.mark.parametrize(
    ("scheme", "value", "rule"),
    [
        ("0088", "9429041098401", "PEPPOL-COMMON-R040"),
        ("0192", "987654321", "PEPPOL-COMMON-R041"),
        ("0184", "DK1234567", "PEPPOL-COMMON-R042"),
        ("0208", "0739484059", "PEPPOL-COMMON-R043"),
        ("0201", "F7VRDLF7", "PEPPOL-COMMON-R044"),
        ("0210", "ABC", "PEPPOL-COMMON-R045"),
        ("9907", "ABC", "PEPPOL-COMMON-R046"),
        ("0211", "ITABC", "PEPPOL-COMMON-R047"),
        ("0007", "556622-1100", "PEPPOL-COMMON-R049"),
        ("0151", "51824753550", "PEPPOL-COMMON-R050"),
    ],
)
def test_identifier_rules_fire_on_an_endpoint_with_a_bad_identifier(
    scheme: str, value: str, rule: str
) -> None:
    endpoint = (
        "<cac:AccountingCustomerParty><cac:Party>"
        f'<cbc:EndpointID schemeID="{scheme}">{value}</cbc:EndpointID>'
        "</cac:Party></cac:AccountingCustomerParty>"
    )
    assert rule in fired(endpoint)
