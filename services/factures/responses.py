"""Answers to the supplier: Peppol BIS Invoice Response 3.0 (a UBL 2.1 ApplicationResponse).

The commune (sender) tells the supplier (receiver) what became of one invoice
(``cac:DocumentResponse/cac:DocumentReference``) with one status code of the
UNCL 4343 subset: AB received, IP in process, UQ under query, RE rejected, AP
accepted, PD paid. RE and UQ say why, one ``cac:Status`` per reason, each with
an OPStatusReason code (machine-readable) and a sentence (human-readable).
Elements are written in the order the UBL 2.1 schema requires.

Peppol's rules (T111) require what the hub does not always know, so that the
answers to the documents it could not read still reach the supplier:

- each party's ``PartyLegalEntity/RegistrationName`` (B00802, B02002): a party
  without a known name (an unreadable document, an invoice without BT-27, a
  tenant file without a name) is named by its Peppol participant id;
- the answered document's ``DocumentTypeCode`` (B03902): its own BT-3 when it
  had one that T111's code list holds, else the code of its kind (380 invoice,
  381 credit note), else 380 for a document nobody could read.
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
from services.factures.reasons import PAYMENT_ONLY_REASON_CODE, STATUS_REASON_CODES, Reason
from services.factures.rules.codelists import CREDIT_NOTE_TYPE_CODES, INVOICE_TYPE_CODES

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
#: The code of a document the hub could not read: most Peppol documents are invoices.
UNREAD_DOCUMENT_TYPE_CODE = DOCUMENT_TYPE_CODES["Invoice"]
#: BT-3 codes an answer echoes: BIS Billing's (BR-CL-01) but those missing from the older
#: UNTDID 1001 edition T111 checks ``DocumentTypeCode`` against (B04201).
ECHOED_TYPE_CODES = (INVOICE_TYPE_CODES | CREDIT_NOTE_TYPE_CODES) - {
    "471",
    "472",
    "473",
    "500",
    "501",
    "502",
    "503",
    "817",
    "875",
    "876",
    "877",
}

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
    #: The answered document's BT-3 (UNCL 1001), when it gave one.
    document_type_code: str | None = None
    reasons: Sequence[Reason] = field(default_factory=tuple)


class InvalidResponse(ValueError):
    """An answer that the BIS rules would refuse; a programming error, never user input."""


def _check(response: InvoiceResponse) -> None:
    if response.status not in STATUS_CODES:
        raise InvalidResponse(f"unknown response status {response.status!r}")
    if response.status in STATUSES_WITH_REASONS and not response.reasons:
        raise InvalidResponse(f"a {response.status} response must give at least one reason")
    codes = {reason.code for reason in response.reasons}
    unknown = codes - STATUS_REASON_CODES
    if unknown:
        raise InvalidResponse(f"unknown OPStatusReason codes {sorted(unknown)}")
    if PAYMENT_ONLY_REASON_CODE in codes and response.status != "PD":
        raise InvalidResponse(f"PPD goes only with PD (PEPPOL-T111-R005), not {response.status}")
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
    endpoint = party.endpoint
    _cbc(element, "EndpointID", endpoint.identifier, schemeID=endpoint.scheme)
    # Required (T111 B00802, B02002): without it the supplier's access point refused the
    # answer, and the rejections of unreadable documents were the ones that never arrived.
    registration_name = (party.name or "").strip() or f"{endpoint.scheme}:{endpoint.identifier}"
    _cbc(_cac(element, "PartyLegalEntity"), "RegistrationName", _free_text(registration_name))


def document_type_code(kind: str | None, type_code: str | None) -> str:
    """The ``DocumentTypeCode`` an answer names its document by (required, T111 B03902)."""
    if type_code is not None and type_code.strip() in ECHOED_TYPE_CODES:
        return type_code.strip()
    return DOCUMENT_TYPE_CODES.get(kind or "", UNREAD_DOCUMENT_TYPE_CODE)


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
    _cbc(
        reference,
        "DocumentTypeCode",
        document_type_code(response.document_kind, response.document_type_code),
    )
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
