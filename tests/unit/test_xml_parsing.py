"""kernel.xml_parsing: untrusted XML is parsed without a DOCTYPE, whatever it declares."""

from __future__ import annotations

import pytest
from lxml import etree

from kernel.xml_parsing import DoctypeRefused, parse_untrusted


@pytest.mark.parametrize(
    "document",
    [
        # An entity declared empty: lxml's text stopped at it (242), every other reader
        # sees 2420.00.
        b'<!DOCTYPE a [<!ENTITY x "">]><a>242&x;0.00</a>',
        b'<!DOCTYPE a SYSTEM "http://example.org/a.dtd"><a>1</a>',
        b"<!DOCTYPE a><a>1</a>",
        # Hidden from a look for the bytes "<!DOCTYPE".
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY x "">]><a>1&x;2</a>'.encode(
            "utf-16"
        ),
    ],
    ids=["internal-entity", "external-dtd", "bare", "utf-16"],
)
def test_a_doctype_is_refused_as_a_syntax_error(document: bytes) -> None:
    with pytest.raises(DoctypeRefused, match="a DOCTYPE is not accepted"):
        parse_untrusted(document)
    # Its callers' handling of unreadable XML handles it too.
    assert issubclass(DoctypeRefused, etree.XMLSyntaxError)


def test_a_document_without_a_doctype_is_read_without_its_comments() -> None:
    root = parse_untrusted(b"<?xml version='1.0'?><a>242<!-- -->0.00<?pi x?></a>")
    assert root.text == "2420.00"
