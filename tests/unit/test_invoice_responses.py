"""Peppol BIS Invoice Response 3.0: the ApplicationResponse the commune sends its supplier.

Each response is checked against the OASIS UBL 2.1 ApplicationResponse schema
read from the reference corpus (skipped when the corpus is absent).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from lxml import etree

from contracts.events.peppol import PeppolEndpoint
from services.factures.reasons import Reason
from services.factures.responses import (
    CUSTOMIZATION_ID,
    MAX_TEXT_CHARACTERS,
    PROFILE_ID,
    InvalidResponse,
    InvoiceResponse,
    Party,
    build_application_response,
)

NS = {
    "ar": "urn:oasis:names:specification:ubl:schema:xsd:ApplicationResponse-2",
    "cac": "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2",
    "cbc": "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2",
}
COMMUNE = Party(PeppolEndpoint(scheme="0208", identifier="0216987614"), "Ville de Sambreville")
SUPPLIER = Party(PeppolEndpoint(scheme="0208", identifier="0403170701"), "Entreprise Dupont SA")


def response(status: str, *found: Reason, kind: str | None = "Invoice") -> InvoiceResponse:
    return InvoiceResponse(
        response_id="R-1",
        issue_date=date(2026, 3, 3),
        status=status,  # type: ignore[arg-type]  # some tests pass unknown codes on purpose
        sender=COMMUNE,
        receiver=SUPPLIER,
        document_id="F2026-0001",
        document_issue_date=date(2026, 3, 2),
        document_kind=kind,
        reasons=found,
    )


@pytest.fixture(scope="module")
def schema(corpus: Path) -> etree.XMLSchema:
    path = corpus / "einvoice" / "ubl-2.1-xsd" / "maindoc" / "UBL-ApplicationResponse-2.1.xsd"
    return etree.XMLSchema(etree.parse(str(path)))


def parsed(data: bytes) -> etree._Element:
    return etree.fromstring(data)


def one(root: etree._Element, path: str) -> str:
    [value] = root.xpath(path, namespaces=NS)
    return str(value)


@pytest.mark.parametrize("status", ["AB", "IP", "AP", "PD"])
def test_a_status_response_names_both_parties_the_invoice_and_the_code(
    status: str, schema: etree.XMLSchema
) -> None:
    root = parsed(build_application_response(response(status)))
    assert schema.validate(root), schema.error_log
    assert one(root, "cbc:CustomizationID/text()") == CUSTOMIZATION_ID
    assert one(root, "cbc:ProfileID/text()") == PROFILE_ID
    assert one(root, "cac:SenderParty/cbc:EndpointID/@schemeID") == "0208"
    assert one(root, "cac:SenderParty/cbc:EndpointID/text()") == "0216987614"
    assert one(root, "cac:ReceiverParty/cbc:EndpointID/text()") == "0403170701"
    code = "cac:DocumentResponse/cac:Response/cbc:ResponseCode"
    assert one(root, f"{code}/text()") == status
    assert one(root, f"{code}/@listID") == "UNCL4343OpSubset"
    reference = "cac:DocumentResponse/cac:DocumentReference"
    assert one(root, f"{reference}/cbc:ID/text()") == "F2026-0001"
    assert one(root, f"{reference}/cbc:DocumentTypeCode/text()") == "380"
    assert not root.xpath("//cac:Status", namespaces=NS)


def test_a_rejection_gives_one_status_per_reason_with_its_code_and_text(
    schema: etree.XMLSchema,
) -> None:
    found = (
        Reason("PRI", "The total with VAT is not the total without VAT plus the VAT.", "BR-CO-15"),
        Reason("REF", "Neither a buyer reference nor an order reference is given.", "R003"),
    )
    root = parsed(build_application_response(response("RE", *found, kind="CreditNote")))
    assert schema.validate(root), schema.error_log
    statuses = root.xpath("//cac:Response/cac:Status", namespaces=NS)
    assert [
        (one(s, "cbc:StatusReasonCode/text()"), one(s, "cbc:StatusReasonCode/@listID"))
        for s in statuses
    ] == [("PRI", "OPStatusReason"), ("REF", "OPStatusReason")]
    assert [one(s, "cbc:StatusReason/text()") for s in statuses] == [r.text for r in found]
    assert one(root, "//cbc:DocumentTypeCode/text()") == "381"


def t111_missing(root: etree._Element) -> list[str]:
    """What Peppol's Invoice Response rules (T111) require and ``root`` lacks."""
    required = {
        "B00802/B01401": "cac:SenderParty/cac:PartyLegalEntity/cbc:RegistrationName",
        "B02002/B02601": "cac:ReceiverParty/cac:PartyLegalEntity/cbc:RegistrationName",
        "B03902": "cac:DocumentResponse/cac:DocumentReference/cbc:DocumentTypeCode",
    }
    return [
        rule
        for rule, path in required.items()
        if not [text for text in root.xpath(f"{path}/text()", namespaces=NS) if text.strip()]
    ]


def test_an_unreadable_document_is_answered_with_a_fallback_type_and_name(
    schema: etree.XMLSchema,
) -> None:
    unreadable = InvoiceResponse(
        response_id="R-2",
        issue_date=date(2026, 3, 3),
        status="RE",
        sender=COMMUNE,
        receiver=Party(SUPPLIER.endpoint),
        document_id="ap-message-17",
        reasons=(Reason("UNR", "This is not well-formed XML (line 1, column 1).", "not-xml"),),
    )
    root = parsed(build_application_response(unreadable))
    assert schema.validate(root), schema.error_log
    assert not root.xpath("//cac:DocumentReference/cbc:IssueDate", namespaces=NS)
    # What T111 requires all the same: a supplier's access point refused the answer without.
    assert t111_missing(root) == []
    assert one(root, "//cbc:DocumentTypeCode/text()") == "380"
    name = "cac:ReceiverParty/cac:PartyLegalEntity/cbc:RegistrationName/text()"
    assert one(root, name) == "0208:0403170701"


def test_texts_from_the_document_are_written_as_xml_can_hold_them(
    schema: etree.XMLSchema,
) -> None:
    # A refusal quotes the document: a control character in a DOCTYPE's URL made lxml
    # raise while the Peppol consumer answered RE, so the document was never stored.
    quoting = Reason("UNR", "The document has a DOCTYPE pointing to http://x/\x01\x00.dtd.", "x")
    long_reason = Reason("REF", "This credit note refers to invoice " + "F-1, " * 5_000, "y")
    supplier = Party(SUPPLIER.endpoint, "Dupont\x0b SA\ufffe")
    answer = InvoiceResponse(
        response_id="R-3",
        issue_date=date(2026, 3, 3),
        status="RE",
        sender=COMMUNE,
        receiver=supplier,
        document_id="ap-message-\x1f18",
        reasons=(quoting, long_reason),
    )
    root = parsed(build_application_response(answer))
    assert schema.validate(root), schema.error_log
    first, second = (str(text) for text in root.xpath("//cbc:StatusReason/text()", namespaces=NS))
    assert first == "The document has a DOCTYPE pointing to http://x/\ufffd\ufffd.dtd."
    assert len(second) == MAX_TEXT_CHARACTERS and second.endswith("…")
    name = "cac:ReceiverParty/cac:PartyLegalEntity/cbc:RegistrationName/text()"
    assert one(root, name) == "Dupont\ufffd SA\ufffd"
    assert one(root, "//cac:DocumentReference/cbc:ID/text()") == "ap-message-\ufffd18"


@pytest.mark.parametrize(
    ("kind", "type_code", "answered"),
    [
        ("Invoice", "384", "384"),  # a corrected invoice is no 380
        ("CreditNote", "396", "396"),  # a factored credit note is no 381
        ("Invoice", " 380 ", "380"),
        ("CreditNote", None, "381"),  # received before the type code was kept
        ("Invoice", "ABC", "380"),  # no UNTDID 1001 code: its kind's
        ("Invoice", "875", "380"),  # allowed in billing, missing from T111's code list
        (None, None, "380"),  # nobody could read it
    ],
)
def test_the_answered_document_is_named_by_its_own_type_code_else_its_kinds(
    kind: str | None, type_code: str | None, answered: str, schema: etree.XMLSchema
) -> None:
    answer = InvoiceResponse(
        response_id="R-4",
        issue_date=date(2026, 3, 3),
        status="AB",
        sender=COMMUNE,
        receiver=SUPPLIER,
        document_id="F2026-0001",
        document_kind=kind,
        document_type_code=type_code,
    )
    root = parsed(build_application_response(answer))
    assert schema.validate(root), schema.error_log
    assert one(root, "//cac:DocumentReference/cbc:DocumentTypeCode/text()") == answered


@pytest.mark.parametrize("name", [None, "", "   "])
def test_parties_without_a_name_are_named_by_their_participant_id(
    name: str | None, schema: etree.XMLSchema
) -> None:
    # An unconfigured tenant (no name) answering a supplier whose invoice has no BT-27.
    answer = InvoiceResponse(
        response_id="R-5",
        issue_date=date(2026, 3, 3),
        status="RE",
        sender=Party(COMMUNE.endpoint, name),
        receiver=Party(SUPPLIER.endpoint, name),
        document_id="F2026-0001",
        document_kind="Invoice",
        reasons=(Reason("LEG", "The seller's name (BT-27) is missing.", "BR-06"),),
    )
    root = parsed(build_application_response(answer))
    assert schema.validate(root), schema.error_log
    assert t111_missing(root) == []
    legal_name = "cac:{}/cac:PartyLegalEntity/cbc:RegistrationName/text()"
    assert one(root, legal_name.format("SenderParty")) == "0208:0216987614"
    assert one(root, legal_name.format("ReceiverParty")) == "0208:0403170701"


@pytest.mark.parametrize(
    "wrong",
    [
        response("RE"),  # a rejection must say why
        response("UQ"),
        response("XX"),
        response("RE", Reason("NOPE", "x")),
        response("UQ", Reason("PPD", "Prepaid.")),  # PPD goes only with PD (T111-R005)
    ],
)
def test_responses_the_bis_rules_would_refuse_are_never_built(wrong: InvoiceResponse) -> None:
    with pytest.raises(InvalidResponse):
        build_application_response(wrong)
