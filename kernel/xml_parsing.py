"""The one safe way the services parse XML that comes from outside: ``parse_untrusted``.

``safe_parser`` is its parser, for callers that refuse a DOCTYPE themselves, with a
message of their own (``services.factures.ubl``, ``gateway.wssecurity``,
``services.meeting.ws4pm``).
"""

from __future__ import annotations

from lxml import etree


class DoctypeRefused(etree.XMLSyntaxError):  # type: ignore[misc]  # lxml ships no type hints
    """The document has a DOCTYPE. An ``XMLSyntaxError``: a caller's handling of an
    unreadable document handles it too."""

    def __init__(self) -> None:
        super().__init__("a DOCTYPE is not accepted", 0, None, 1)


def parse_untrusted(data: bytes) -> etree._Element:
    """The root element of ``data`` parsed with ``safe_parser``, refusing any DOCTYPE
    (``DoctypeRefused``).

    ``safe_parser`` loads no external DTD and expands no entity, but it still reads a
    DOCTYPE's internal subset, and a reference to an entity it declares stays in the
    tree as a node of its own, where ``text`` ends as at a comment:
    ``<!DOCTYPE a [<!ENTITY x "">]><a>242&x;0.00</a>`` read as 242, where any other
    reader sees 2420.00. No document the hub exchanges has a DOCTYPE.
    """
    root = etree.fromstring(data, parser=safe_parser())
    docinfo = root.getroottree().docinfo
    # After parsing, not by looking for "<!DOCTYPE": a UTF-16 document hides it from that.
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise DoctypeRefused()
    return root


def safe_parser() -> etree.XMLParser:
    """No external DTD and no entity expanded (hence no "billion laughs"), no network,
    libxml2's size limits kept, no comments, no processing instructions. A DOCTYPE's
    internal subset is still read: ``parse_untrusted`` refuses it.

    Comments and processing instructions go because lxml's ``text`` (and
    ``findtext``) ends at the first one: ``<Ticket>abc<!---->def</Ticket>`` read as
    "abc", while a signature's canonical form (and XPath's ``string()``, which the
    official rules use) skip the comment and see "abcdef". A signed message with a
    comment slipped into a value read as another value under the same signature, and
    passed the replay check; an invoice's ``242<?x?>0.00`` was read as 242 where its
    schema, the official rules and the accounting software read 2420.00.

    A new one for each document: an lxml parser must not serve two threads at once.
    """
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )
