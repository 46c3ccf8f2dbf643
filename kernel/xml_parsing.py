"""The one safe way the services parse XML that comes from outside."""

from __future__ import annotations

from lxml import etree


def safe_parser() -> etree.XMLParser:
    """No DTD (hence no entity, no "billion laughs"), no network, libxml2's size limits kept.

    A new one for each document: an lxml parser must not serve two threads at once.
    """
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
    )
