"""Safe parsing of received UBL 2.1 invoices and credit notes.

Everything a supplier sends is untrusted. ``parse_document`` refuses, with a
stable code and a sentence a clerk can act on:

- ``too-large``: more than ``MAX_DOCUMENT_BYTES``, checked before parsing;
- ``not-xml``: not well-formed (garbage, truncated, wrong encoding), with the
  parser's line and column;
- ``entity-forbidden``: a DOCTYPE declaring entities (billion laughs, quadratic
  blowup, external entities pointing at files or URLs);
- ``dtd-forbidden``: any other DOCTYPE, external DTDs included;
- ``unsupported-syntax``: a UN/CEFACT CII invoice, the other EN 16931 syntax;
- ``not-an-invoice``: well-formed XML that is not a UBL Invoice or CreditNote;
- ``too-many-lines``: more than ``MAX_LINES`` invoice or credit-note lines.

The parser never loads a DTD, never expands an entity and never touches the
network, so declaring an attack is harmless; it is refused only to say so.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from lxml import etree

from contracts.events.peppol import MAX_DOCUMENT_BYTES as MAX_EVENT_DOCUMENT_BYTES
from kernel.xml_parsing import safe_parser
from services.factures.rules.engine import NS

MAX_DOCUMENT_BYTES = MAX_EVENT_DOCUMENT_BYTES  # what an event can carry
#: Far above any real invoice (a few hundred lines at most); the accounting event
#: carries the lines too, which keeps it, with the document, within a Kafka record.
MAX_LINES = 5_000

DocumentKind = Literal["Invoice", "CreditNote"]

_UBL_ROOTS: dict[str, DocumentKind] = {
    f"{{{NS['ubl-invoice']}}}Invoice": "Invoice",
    f"{{{NS['ubl-creditnote']}}}CreditNote": "CreditNote",
}
_LINE_TAG = {
    "Invoice": f"{{{NS['cac']}}}InvoiceLine",
    "CreditNote": f"{{{NS['cac']}}}CreditNoteLine",
}
_CII_NAMESPACE = "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
_UBL_NAMESPACE_PREFIX = "urn:oasis:names:specification:ubl:schema:xsd:"
_SBDH_NAMESPACE = "http://www.unece.org/cefact/namespaces/StandardBusinessDocumentHeader"

# UTF-32 before UTF-16: the UTF-32-LE byte order mark begins with UTF-16-LE's.
_WIDE_ENCODINGS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
    (b"\x00\x00\x00<", "utf-32-be"),
    (b"<\x00\x00\x00", "utf-32-le"),
    (b"\x00<", "utf-16-be"),
    (b"<\x00", "utf-16-le"),
)
_DOCTYPE = "<!DOCTYPE"
_NOT_SPACE = re.compile(r"\S")
# The rest of the DOCTYPE: its name and external id, then the internal subset if any.
_DOCTYPE_BODY = re.compile(r"[^\[>]*(?:\[.*?\]\s*)?>?", re.DOTALL)
_QUOTED_URL = r"""(?:"([^"]*)"|'([^']*)')"""
_EXTERNAL_ID = rf"""(?:SYSTEM|PUBLIC\s+(?:"[^"]*"|'[^']*'))\s+{_QUOTED_URL}"""
_EXTERNAL_DTD = re.compile(rf"\s+[^\s\[>]+\s+{_EXTERNAL_ID}")
_ENTITY_DECLARATION = re.compile(rf"""<!ENTITY\s+(?:%\s+)?([^\s"'>]+)(?:\s+{_EXTERNAL_ID})?""")


class DocumentRejected(Exception):
    """A received document the hub refuses to read; ``code`` is stable, ``message`` plain."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class UblDocument:
    """A UBL Invoice or CreditNote that passed every safety check."""

    root: etree._Element
    kind: DocumentKind
    customization_id: str | None
    profile_id: str | None
    size: int
    sha256: str


def parse_document(data: bytes) -> UblDocument:
    """Parse ``data`` as a UBL 2.1 Invoice or CreditNote, or raise ``DocumentRejected``."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentRejected(
            "too-large",
            f"The document is {len(data):,} bytes; the limit is {MAX_DOCUMENT_BYTES:,} bytes.",
        )
    if not data.strip():
        raise DocumentRejected("not-xml", "The document is empty.")
    _refuse_doctype(data)
    try:
        root = etree.fromstring(data, safe_parser())
    except etree.XMLSyntaxError as error:
        line, column = error.position
        raise DocumentRejected(
            "not-xml",
            f"This is not well-formed XML (line {line}, column {column}): {error.msg}.",
        ) from error
    kind = _invoice_kind(root)
    _refuse_too_many_lines(root, kind)
    return UblDocument(
        root=root,
        kind=kind,
        customization_id=_child_text(root, "CustomizationID"),
        profile_id=_child_text(root, "ProfileID"),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _refuse_doctype(data: bytes) -> None:
    """Refuse any DOCTYPE, before the parser sees it.

    This runs before parsing because libxml2 itself aborts on an entity bomb with
    a generic "amplification factor exceeded", which would hide the attack behind
    "not-xml".
    """
    text = _text_for_scanning(data)
    found = _doctype_in_prolog(text)
    if found is None:
        return
    declaration = _DOCTYPE_BODY.match(text, found + len(_DOCTYPE))
    body = declaration.group() if declaration else ""
    entities = _ENTITY_DECLARATION.findall(body)
    external = sorted({double or single for _, double, single in entities if double or single})
    if external:
        raise DocumentRejected(
            "entity-forbidden",
            f"The document declares external entities ({', '.join(external)}); "
            "entities are refused, send plain UBL without a DOCTYPE.",
        )
    if entities:
        names = ", ".join(name for name, _, _ in entities)
        raise DocumentRejected(
            "entity-forbidden",
            f"The document declares entities ({names}); "
            "entities are refused, send plain UBL without a DOCTYPE.",
        )
    external_dtd = _EXTERNAL_DTD.match(body)
    where = f" pointing to {''.join(external_dtd.groups(''))}" if external_dtd else ""
    raise DocumentRejected(
        "dtd-forbidden",
        f"The document has a DOCTYPE{where}; DTDs are refused, send plain UBL without a DOCTYPE.",
    )


def _doctype_in_prolog(text: str) -> int | None:
    """Where the DOCTYPE starts, when one comes after nothing but whitespace, processing
    instructions and comments (the prolog); None otherwise.

    Scanned by hand, each step jumping to the end of what it skips: a regular
    expression for the same tried every way to split n processing instructions
    (2^n; 25 of them in a 3 kB invoice held a core for a quarter of an hour).
    """
    position = 0
    while True:
        first = _NOT_SPACE.search(text, position)
        if first is None:
            return None
        position = first.start()
        if text.startswith("<?", position):
            closing, length = text.find("?>", position + 2), 2
        elif text.startswith("<!--", position):
            closing, length = text.find("-->", position + 4), 3
        elif text.startswith(_DOCTYPE, position):
            after = text[position + len(_DOCTYPE) : position + len(_DOCTYPE) + 1]
            return position if not (after.isalnum() or after == "_") else None
        else:
            return None
        if closing < 0:
            return None
        position = closing + length


def _text_for_scanning(data: bytes) -> str:
    """``data`` as text in which XML markup can be searched, whatever its encoding."""
    for signature, encoding in _WIDE_ENCODINGS:
        if data.startswith(signature):
            return data.decode(encoding, errors="replace")
    # Every ASCII-compatible encoding, UTF-8 included, keeps markup bytes as they are.
    return data.removeprefix(codecs.BOM_UTF8).decode("latin-1")


def _invoice_kind(root: etree._Element) -> DocumentKind:
    kind = _UBL_ROOTS.get(root.tag)
    if kind is not None:
        return kind
    name = etree.QName(root)
    if name.namespace == _CII_NAMESPACE:
        raise DocumentRejected(
            "unsupported-syntax",
            "This is a UN/CEFACT CII invoice; unsupported syntax, "
            "send UBL (Peppol BIS Billing 3.0).",
        )
    if name.namespace and name.namespace.startswith(_UBL_NAMESPACE_PREFIX):
        found = f"a UBL {name.localname}"
    elif name.namespace == _SBDH_NAMESPACE:
        found = "a Peppol business envelope (SBDH)"
    elif name.localname in {"Invoice", "CreditNote"}:
        namespace = f"namespace {name.namespace}" if name.namespace else "no namespace"
        found = f"an element {name.localname} in {namespace}"
    else:
        namespace = f" in namespace {name.namespace}" if name.namespace else ""
        found = f"an XML document whose root is {name.localname}{namespace}"
    raise DocumentRejected(
        "not-an-invoice",
        f"This is {found}, not a UBL 2.1 Invoice or CreditNote; "
        "send the invoice itself (Peppol BIS Billing 3.0).",
    )


def _refuse_too_many_lines(root: etree._Element, kind: DocumentKind) -> None:
    count = sum(1 for _ in root.iterchildren(_LINE_TAG[kind]))
    if count > MAX_LINES:
        raise DocumentRejected(
            "too-many-lines",
            f"The document has {count:,} lines; the limit is {MAX_LINES:,}. "
            "Ask the supplier to split it into several invoices.",
        )


def _child_text(root: etree._Element, cbc_name: str) -> str | None:
    child = root.find(f"{{{NS['cbc']}}}{cbc_name}")
    if child is None or not (child.text or "").strip():
        return None
    return (child.text or "").strip()
