"""Answers to the supplier: Peppol BIS Invoice Response 3.0 (a UBL 2.1 ApplicationResponse).

The commune (sender) tells the supplier (receiver) what became of one invoice
(``cac:DocumentResponse/cac:DocumentReference``) with one status code of the
UNCL 4343 subset: AB received, IP in process, UQ under query, RE rejected, AP
accepted, PD paid. RE and UQ say why, one ``cac:Status`` per reason, each with
an OPStatusReason code (machine-readable) and a sentence (human-readable).
Elements are written in the order the UBL 2.1 schema requires.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

from lxml import etree

from contracts.events.factures import ResponseStatus
from contracts.events.peppol import PeppolEndpoint
from kernel.texts import clipped
from services.factures.reasons import STATUS_REASON_CODES, Reason

CUSTOMIZATION_ID = "urn:fdc:peppol.eu:poacc:trns:invoice_response:3"
PROFILE_ID = "urn:fdc:peppol.eu:poacc:bis:invoice_response:3"
#: The Peppol document type identifier the gateway sends it under.
DOCUMENT_TYPE = (
    "urn:oasis:names:specification:ubl:schema:xsd:ApplicationResponse-2::ApplicationResponse"
    f"##{CUSTOMIZATION_ID}::2.1"
)
STATUS_CODES: frozenset[str] = frozenset({"AB", "IP", "UQ", "RE", "AP", "PD"})
#: Statuses that must say why (BIS Invoice Response: RE and UQ carry a reason).
STATUSES_WITH_REASONS: frozenset[str] = frozenset({"RE", "UQ"})
#: UNCL 1001: commercial invoice, credit note.
DOCUMENT_TYPE_CODES = {"Invoice": "380", "CreditNote": "381"}

_NS_ROOT = "urn:oasis:names:specification:ubl:schema:xsd:ApplicationResponse-2"
_NS_CAC = "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
_NS_CBC = "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"
_NSMAP = {None: _NS_ROOT, "cac": _NS_CAC, "cbc": _NS_CBC}
#: What XML 1.0 cannot hold (its ``Char``: no control character but tab and line breaks,
#: no surrogate, neither U+FFFE nor U+FFFF): lxml refuses to write it.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
#: The longest free text (a reason, a party's name) an answer carries: reasons can quote
#: the document (a DOCTYPE's URL, a credit note's invoice numbers), and the answer travels
#: in an event, which the producer refuses beyond 8 MiB.
MAX_TEXT_CHARACTERS = 2_000


@dataclass(frozen=True)
class Party:
    endpoint: PeppolEndpoint
    name: str | None = None


@dataclass(frozen=True)
class InvoiceResponse:
    """One answer about one invoice; ``reasons`` only for RE and UQ."""

    response_id: str
    issue_date: date
    status: ResponseStatus
    sender: Party
    receiver: Party
    document_id: str
    document_issue_date: date | None = None
    document_kind: str | None = None
    reasons: Sequence[Reason] = field(default_factory=tuple)


class InvalidResponse(ValueError):
    """An answer that the BIS rules would refuse; a programming error, never user input."""


def _check(response: InvoiceResponse) -> None:
    if response.status not in STATUS_CODES:
        raise InvalidResponse(f"unknown response status {response.status!r}")
    if response.status in STATUSES_WITH_REASONS and not response.reasons:
        raise InvalidResponse(f"a {response.status} response must give at least one reason")
    unknown = {reason.code for reason in response.reasons} - STATUS_REASON_CODES
    if unknown:
        raise InvalidResponse(f"unknown OPStatusReason codes {sorted(unknown)}")
    if not response.document_id.strip():
        raise InvalidResponse("the answered document needs an id")


def xml_text(text: str) -> str:
    """``text`` as XML can hold it: each character XML 1.0 refuses becomes U+FFFD.

    Texts come from the supplier's document (a control character in a DOCTYPE's URL
    is quoted by the refusal): lxml raised ``ValueError`` while the Peppol consumer
    answered RE, so the document was never stored, retried, then put aside.
    """
    return _NOT_XML_CHAR.sub("\ufffd", text)


def _free_text(text: str) -> str:
    return clipped(text, MAX_TEXT_CHARACTERS)


def _cbc(parent: etree._Element, name: str, text: str, **attributes: str) -> etree._Element:
    element = etree.SubElement(
        parent,
        f"{{{_NS_CBC}}}{name}",
        {attribute: xml_text(value) for attribute, value in attributes.items()},
    )
    element.text = xml_text(text)
    return element


def _cac(parent: etree._Element, name: str) -> etree._Element:
    return etree.SubElement(parent, f"{{{_NS_CAC}}}{name}")


def _party(parent: etree._Element, name: str, party: Party) -> None:
    element = _cac(parent, name)
    _cbc(element, "EndpointID", party.endpoint.identifier, schemeID=party.endpoint.scheme)
    if party.name:
        _cbc(_cac(element, "PartyLegalEntity"), "RegistrationName", _free_text(party.name))


def build_application_response(response: InvoiceResponse) -> bytes:
    """The UBL ApplicationResponse of ``response``, as UTF-8 XML bytes."""
    _check(response)
    root = etree.Element(f"{{{_NS_ROOT}}}ApplicationResponse", nsmap=_NSMAP)
    _cbc(root, "CustomizationID", CUSTOMIZATION_ID)
    _cbc(root, "ProfileID", PROFILE_ID)
    _cbc(root, "ID", response.response_id)
    _cbc(root, "IssueDate", response.issue_date.isoformat())
    _party(root, "SenderParty", response.sender)
    _party(root, "ReceiverParty", response.receiver)
    document_response = _cac(root, "DocumentResponse")
    answer = _cac(document_response, "Response")
    _cbc(answer, "ResponseCode", response.status, listID="UNCL4343OpSubset")
    for reason in response.reasons:
        status = _cac(answer, "Status")
        _cbc(status, "StatusReasonCode", reason.code, listID="OPStatusReason")
        _cbc(status, "StatusReason", _free_text(reason.text))
    reference = _cac(document_response, "DocumentReference")
    _cbc(reference, "ID", response.document_id)
    if response.document_issue_date is not None:
        _cbc(reference, "IssueDate", response.document_issue_date.isoformat())
    type_code = DOCUMENT_TYPE_CODES.get(response.document_kind or "")
    if type_code is not None:
        _cbc(reference, "DocumentTypeCode", type_code)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
