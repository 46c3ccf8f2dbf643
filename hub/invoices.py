"""Realistic Peppol BIS Billing 3.0 invoices for ``hub demo`` and the benchmarks.

Each invoice is built from the structure of a BIS 3.0 invoice (not copied from
an example): a Belgian supplier with a valid enterprise number and VAT id, the
commune as buyer (its Peppol participant), one to a dozen lines spread over
VAT categories S (21, 12, 6 %), Z and E, totals computed as EN 16931 rounds
them. ``broken`` variants carry the faults a clerk meets: wrong totals, an
unknown VAT category, no buyer or order reference, and a CII document.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from lxml import etree
from lxml.builder import ElementMaker

from kernel.days import commune_day

INVOICE_NS = "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
CAC_NS = "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
CBC_NS = "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"
CUSTOMIZATION = "urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0"
PROFILE = "urn:fdc:peppol.eu:2017:poacc:billing:01:1.0"

Fault = Literal["wrong-totals", "unknown-vat-category", "no-buyer-reference", "cii"]
FAULTS: tuple[Fault, ...] = ("wrong-totals", "unknown-vat-category", "no-buyer-reference", "cii")

_NSMAP = {None: INVOICE_NS, "cac": CAC_NS, "cbc": CBC_NS}
_root = ElementMaker(namespace=INVOICE_NS, nsmap=_NSMAP)
cac = ElementMaker(namespace=CAC_NS, nsmap=_NSMAP)
cbc = ElementMaker(namespace=CBC_NS, nsmap=_NSMAP)

_SUPPLIERS = (
    ("Travaux Mosans", "Rue de la Station 12", "Namur", "5000"),
    ("Imprimerie du Condroz", "Chaussée de Marche 401", "Ciney", "5590"),
    ("Fournitures Scolaires Wallonnes", "Rue des Écoles 3", "Charleroi", "6000"),
    ("Garage Communal Services", "Avenue Albert Ier 88", "Sambreville", "5060"),
    ("Éclairage Public Hainaut", "Rue du Port 5", "Mons", "7000"),
    ("Informatique Locale", "Boulevard d'Avroy 20", "Liège", "4000"),
)
_ITEMS = (
    ("Réfection de trottoir", "MTK", Decimal("45.00"), "S", Decimal("21")),
    ("Ramettes de papier A4", "C62", Decimal("4.35"), "S", Decimal("21")),
    ("Manuels scolaires", "C62", Decimal("18.90"), "S", Decimal("6")),
    ("Repas scolaires", "C62", Decimal("3.80"), "S", Decimal("12")),
    ("Entretien véhicule", "HUR", Decimal("62.00"), "S", Decimal("21")),
    ("Lampes LED éclairage public", "C62", Decimal("129.99"), "S", Decimal("21")),
    ("Formation du personnel", "HUR", Decimal("85.00"), "E", Decimal("0")),
    ("Transport intracommunautaire exonéré", "C62", Decimal("250.00"), "Z", Decimal("0")),
)
_CENT = Decimal("0.01")


def enterprise_number(rng: random.Random) -> str:
    """A 10-digit Belgian enterprise number with its modulo-97 check digits."""
    first_eight = rng.randrange(2_000_000, 9_999_999)  # "0" + 7 digits, as most are
    return f"{first_eight:08d}{97 - first_eight % 97:02d}"


@dataclass(frozen=True)
class Line:
    name: str
    unit: str
    quantity: Decimal
    price: Decimal
    category: str
    rate: Decimal

    @property
    def net(self) -> Decimal:
        return (self.quantity * self.price).quantize(_CENT, ROUND_HALF_UP)


@dataclass(frozen=True)
class SupplierInvoice:
    """What a supplier's access point sends: the document, from whom, and its number."""

    document: bytes
    sender: str  # the supplier's Peppol participant, "0208:<enterprise number>"
    number: str
    fault: Fault | None


def supplier_invoice(
    rng: random.Random, number: int, *, buyer_participant: str, fault: Fault | None = None
) -> SupplierInvoice:
    """One invoice for the buyer ``"0208:<enterprise number>"``; with ``fault``, a broken one."""
    supplier_number = enterprise_number(rng)
    invoice_number = (
        f"F{commune_day(datetime.now(UTC)).year}-{number:06d}-{rng.randrange(10**6):06d}"
    )
    if fault == "cii":
        document = _cii_invoice(invoice_number)
    else:
        document = _ubl_invoice(rng, invoice_number, supplier_number, buyer_participant, fault)
    return SupplierInvoice(document, f"0208:{supplier_number}", invoice_number, fault)


def peppol_invoice(
    rng: random.Random, number: int, *, buyer_participant: str, fault: Fault | None = None
) -> bytes:
    """The document alone (benchmarks, tests)."""
    return supplier_invoice(rng, number, buyer_participant=buyer_participant, fault=fault).document


def _ubl_invoice(
    rng: random.Random,
    invoice_number: str,
    supplier_number: str,
    buyer_participant: str,
    fault: Fault | None,
) -> bytes:
    supplier_name, street, city, postcode = rng.choice(_SUPPLIERS)
    buyer_scheme, buyer_id = buyer_participant.split(":", 1)
    issued = commune_day(datetime.now(UTC)) - timedelta(days=rng.randrange(0, 20))
    lines = [
        Line(name, unit, Decimal(rng.randrange(1, 40)), price, category, rate)
        for name, unit, price, category, rate in rng.sample(_ITEMS, rng.randrange(1, 6))
    ]
    breakdown: dict[tuple[str, Decimal], Decimal] = {}
    for line in lines:
        breakdown[(line.category, line.rate)] = (
            breakdown.get((line.category, line.rate), 0) + line.net
        )
    taxes = {
        key: (base * key[1] / 100).quantize(_CENT, ROUND_HALF_UP) for key, base in breakdown.items()
    }
    net_total = sum((line.net for line in lines), Decimal(0))
    tax_total = sum(taxes.values(), Decimal(0))
    payable = net_total + tax_total
    if fault == "wrong-totals":
        payable += Decimal("10.00")

    def amount(tag: str, value: Decimal) -> etree._Element:
        return getattr(cbc, tag)(f"{value:.2f}", currencyID="EUR")

    def category(code: str, rate: Decimal, tag: str = "TaxCategory") -> etree._Element:
        code = "X" if fault == "unknown-vat-category" else code  # whatever the lines hold
        parts = [cbc.ID(code), cbc.Percent(f"{rate}")]
        if code == "E" and tag == "TaxCategory":  # the reason belongs to the breakdown only
            parts.append(cbc.TaxExemptionReason("Formation professionnelle, art. 44 CTVA"))
        return getattr(cac, tag)(*parts, cac.TaxScheme(cbc.ID("VAT")))

    references = (
        [] if fault == "no-buyer-reference" else [cbc.BuyerReference(f"DEMO-{invoice_number}")]
    )
    invoice = _root.Invoice(
        cbc.CustomizationID(CUSTOMIZATION),
        cbc.ProfileID(PROFILE),
        cbc.ID(invoice_number),
        cbc.IssueDate(issued.isoformat()),
        cbc.DueDate((issued + timedelta(days=30)).isoformat()),
        cbc.InvoiceTypeCode("380"),
        cbc.DocumentCurrencyCode("EUR"),
        *references,
        cac.AccountingSupplierParty(
            cac.Party(
                cbc.EndpointID(supplier_number, schemeID="0208"),
                cac.PartyName(cbc.Name(supplier_name)),
                _address(street, city, postcode),
                cac.PartyTaxScheme(
                    cbc.CompanyID(f"BE{supplier_number}"), cac.TaxScheme(cbc.ID("VAT"))
                ),
                cac.PartyLegalEntity(
                    cbc.RegistrationName(f"{supplier_name} SRL"),
                    cbc.CompanyID(supplier_number, schemeID="0208"),
                ),
            )
        ),
        cac.AccountingCustomerParty(
            cac.Party(
                cbc.EndpointID(buyer_id, schemeID=buyer_scheme),
                _address("Place communale 1", "Commune", "5060"),
                cac.PartyLegalEntity(
                    cbc.RegistrationName("Administration communale"),
                    cbc.CompanyID(buyer_id, schemeID=buyer_scheme),
                ),
            )
        ),
        cac.PaymentMeans(
            cbc.PaymentMeansCode("30"),
            cbc.PaymentID(f"Facture {invoice_number}"),
            cac.PayeeFinancialAccount(cbc.ID("BE71096123456769")),
        ),
        cac.TaxTotal(
            amount("TaxAmount", tax_total),
            *(
                cac.TaxSubtotal(
                    amount("TaxableAmount", base),
                    amount("TaxAmount", taxes[key]),
                    category(*key),
                )
                for key, base in breakdown.items()
            ),
        ),
        cac.LegalMonetaryTotal(
            amount("LineExtensionAmount", net_total),
            amount("TaxExclusiveAmount", net_total),
            amount("TaxInclusiveAmount", net_total + tax_total),
            amount("PayableAmount", payable),
        ),
        *(
            cac.InvoiceLine(
                cbc.ID(str(position)),
                cbc.InvoicedQuantity(f"{line.quantity}", unitCode=line.unit),
                amount("LineExtensionAmount", line.net),
                cac.Item(
                    cbc.Name(line.name),
                    category(line.category, line.rate, "ClassifiedTaxCategory"),
                ),
                cac.Price(amount("PriceAmount", line.price)),
            )
            for position, line in enumerate(lines, start=1)
        ),
    )
    return bytes(etree.tostring(invoice, xml_declaration=True, encoding="UTF-8"))


def _address(street: str, city: str, postcode: str) -> etree._Element:
    return cac.PostalAddress(
        cbc.StreetName(street),
        cbc.CityName(city),
        cbc.PostalZone(postcode),
        cac.Country(cbc.IdentificationCode("BE")),
    )


def _cii_invoice(number: str) -> bytes:
    """A UN/CEFACT Cross Industry Invoice: a syntax the hub refuses, asking for UBL."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<rsm:CrossIndustryInvoice xmlns:rsm="urn:un:unece:uncefact:data:standard:'
        'CrossIndustryInvoice:100"><rsm:ExchangedDocument><ID>CII-'
        f"{number}</ID></rsm:ExchangedDocument></rsm:CrossIndustryInvoice>\n"
    ).encode()
