"""Documents served for download keep their own names, accents and spaces included."""

from __future__ import annotations

from urllib.parse import unquote

from kernel.api import download


def test_a_download_names_the_document_in_rfc_8187_encoding() -> None:
    response = download(b"%PDF-1.7", "application/pdf", "Décision n°12 (annexe).pdf")
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment; filename*=UTF-8''")
    encoded = disposition.removeprefix("attachment; filename*=UTF-8''")
    assert " " not in encoded and '"' not in encoded
    assert unquote(encoded) == "Décision n°12 (annexe).pdf"
    assert response.media_type == "application/pdf" and response.body == b"%PDF-1.7"
