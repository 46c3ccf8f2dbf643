"""Safe parsing: every attack and every non-invoice is refused with its own code and words."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services.factures import ubl
from services.factures.ubl import DocumentRejected, parse_document

INVOICE_NS = "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
CREDIT_NOTE_NS = "urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2"
CBC = "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"
CAC = "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
PEPPOL_CUSTOMIZATION = "urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0"
PEPPOL_PROFILE = "urn:fdc:peppol.eu:2017:poacc:billing:01:1.0"


def invoice(lines: int = 1, prolog: str = "", body: str = "") -> bytes:
    line = "<cac:InvoiceLine><cbc:ID>{n}</cbc:ID></cac:InvoiceLine>"
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>{prolog}'
        f'<Invoice xmlns="{INVOICE_NS}" xmlns:cbc="{CBC}" xmlns:cac="{CAC}">'
        f"<cbc:CustomizationID>{PEPPOL_CUSTOMIZATION}</cbc:CustomizationID>"
        f"<cbc:ProfileID>{PEPPOL_PROFILE}</cbc:ProfileID>"
        f"<cbc:ID>2024-0042</cbc:ID>{body}"
        + "".join(line.format(n=n + 1) for n in range(lines))
        + "</Invoice>"
    ).encode()


def rejection(data: bytes) -> DocumentRejected:
    with pytest.raises(DocumentRejected) as caught:
        parse_document(data)
    return caught.value


class _RecordingHandler(BaseHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        body = b'<!ENTITY leaked "from the network">'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def spy_server() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 that records every request: proof that none is made."""
    requests: list[str] = []
    handler = type("Handler", (_RecordingHandler,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# Accepted documents ----------------------------------------------------------------------


def test_an_invoice_is_accepted_with_its_identity_and_fingerprint() -> None:
    data = invoice()
    document = parse_document(data)
    assert document.kind == "Invoice"
    assert document.customization_id == PEPPOL_CUSTOMIZATION
    assert document.profile_id == PEPPOL_PROFILE
    assert document.size == len(data)
    assert document.sha256 == hashlib.sha256(data).hexdigest()
    assert document.root.findtext(f"{{{CBC}}}ID") == "2024-0042"


def test_a_credit_note_is_accepted_as_such() -> None:
    data = f'<CreditNote xmlns="{CREDIT_NOTE_NS}"/>'.encode()
    document = parse_document(data)
    assert document.kind == "CreditNote"
    assert document.customization_id is None
    assert document.profile_id is None


def test_every_corpus_example_is_accepted(corpus: Path) -> None:
    examples = [
        path
        for folder in ("cen-examples", "peppol-examples")
        for path in sorted((corpus / "einvoice" / folder).iterdir())
        if path.suffix.lower() == ".xml"
    ]
    assert examples
    for path in examples:
        assert parse_document(path.read_bytes()).kind in {"Invoice", "CreditNote"}, path.name


# Size and line limits --------------------------------------------------------------------


def invoice_of_size(size: int) -> bytes:
    """A well-formed invoice of exactly ``size`` bytes, padded with notes."""
    note = f"<cbc:Note>{'x' * 1000}</cbc:Note>"
    notes, spaces = divmod(size - len(invoice()), len(note))
    data = invoice(body=note * notes + " " * spaces)
    assert len(data) == size
    return data


def test_a_document_over_the_size_limit_is_refused_before_parsing() -> None:
    refused = rejection(invoice_of_size(ubl.MAX_DOCUMENT_BYTES + 1))
    assert refused.code == "too-large"
    assert f"{ubl.MAX_DOCUMENT_BYTES:,}" in refused.message


def test_a_document_at_the_size_limit_is_parsed() -> None:
    assert parse_document(invoice_of_size(ubl.MAX_DOCUMENT_BYTES)).size == ubl.MAX_DOCUMENT_BYTES


def test_more_lines_than_the_limit_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ubl, "MAX_LINES", 3)
    assert parse_document(invoice(lines=3)).kind == "Invoice"
    refused = rejection(invoice(lines=4))
    assert refused.code == "too-many-lines"
    assert "4 lines" in refused.message
    assert "limit is 3" in refused.message


# Not XML ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "line 1, column 1"),
        (invoice()[:-30], "line 1, column"),
        (invoice().replace(b"2024-0042", b"\n\n<cbc:Note>caf\xe9</cbc:Note>"), "line 3, column"),
        (invoice(body="<cbc:Note>&undeclared;</cbc:Note>"), "line 1, column"),
    ],
    ids=["binary", "truncated", "latin-1-in-utf-8", "undeclared-entity"],
)
def test_what_is_not_well_formed_xml_is_refused_with_its_position(data: bytes, where: str) -> None:
    refused = rejection(data)
    assert refused.code == "not-xml"
    assert where in refused.message


def test_an_empty_document_is_refused_as_not_xml() -> None:
    refused = rejection(b"  \n")
    assert (refused.code, refused.message) == ("not-xml", "The document is empty.")


# DTDs and entities -----------------------------------------------------------------------


def test_billion_laughs_is_refused_as_entity_forbidden() -> None:
    levels = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">' for n in range(1, 10)
    ]
    bomb = invoice(
        prolog=f"<!DOCTYPE Invoice [{''.join(levels)}]>",
        body="<cbc:Note>&lol9;</cbc:Note>",
    )
    refused = rejection(bomb)
    assert refused.code == "entity-forbidden"
    assert "lol9" in refused.message


def test_quadratic_blowup_is_refused_as_entity_forbidden() -> None:
    blowup = invoice(
        prolog=f'<!DOCTYPE Invoice [<!ENTITY big "{"x" * 50_000}">]>',
        body=f"<cbc:Note>{'&big;' * 20_000}</cbc:Note>",
    )
    refused = rejection(blowup)
    assert refused.code == "entity-forbidden"
    assert "big" in refused.message


def test_an_external_file_entity_is_refused_without_reading_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the commune's private key")
    xxe = invoice(
        prolog=f'<!DOCTYPE Invoice [<!ENTITY leak SYSTEM "{secret.as_uri()}">]>',
        body="<cbc:Note>&leak;</cbc:Note>",
    )
    refused = rejection(xxe)
    assert refused.code == "entity-forbidden"
    assert secret.as_uri() in refused.message
    assert "private key" not in refused.message


def test_an_external_http_entity_is_refused_without_any_request(
    spy_server: tuple[str, list[str]],
) -> None:
    base, requests = spy_server
    xxe = invoice(
        prolog=f'<!DOCTYPE Invoice [<!ENTITY leak SYSTEM "{base}/entity">]>',
        body="<cbc:Note>&leak;</cbc:Note>",
    )
    assert rejection(xxe).code == "entity-forbidden"
    assert requests == []


def test_an_external_parameter_entity_is_refused_without_any_request(
    spy_server: tuple[str, list[str]],
) -> None:
    base, requests = spy_server
    attack = invoice(prolog=f'<!DOCTYPE Invoice [<!ENTITY % remote SYSTEM "{base}/dtd"> %remote;]>')
    refused = rejection(attack)
    assert refused.code == "entity-forbidden"
    assert f"{base}/dtd" in refused.message
    assert requests == []


def test_an_external_dtd_is_refused_without_any_request(
    spy_server: tuple[str, list[str]],
) -> None:
    base, requests = spy_server
    refused = rejection(invoice(prolog=f'<!DOCTYPE Invoice SYSTEM "{base}/invoice.dtd">'))
    assert refused.code == "dtd-forbidden"
    assert f"{base}/invoice.dtd" in refused.message
    assert requests == []


def test_any_doctype_is_refused_as_dtd_forbidden() -> None:
    refused = rejection(invoice(prolog="<!DOCTYPE Invoice [<!ELEMENT Invoice ANY>]>"))
    assert refused.code == "dtd-forbidden"
    assert "DOCTYPE" in refused.message


# Not a speed test: without the hand scan, 40 processing instructions took years.
@pytest.mark.timeout(60)
def test_the_prolog_is_scanned_in_one_pass_however_many_instructions_it_holds() -> None:
    many = "<?a?>" * 40 + "<!-- x -->" * 40
    assert parse_document(invoice(prolog=many)).kind == "Invoice"
    refused = rejection(invoice(prolog=many + "<!DOCTYPE Invoice>"))
    assert refused.code == "dtd-forbidden"
    unterminated = invoice(prolog="<?a?>" * 40 + "<?never closed")
    assert rejection(unterminated).code == "not-xml"


def test_a_processing_instruction_inside_a_value_is_read_through() -> None:
    document = parse_document(invoice(body="").replace(b"2024-0042", b"20<?x?>24-00<?y?>42"))
    assert document.root.findtext(f"{{{CBC}}}ID") == "2024-0042"


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-be", "utf-32"])
def test_an_entity_bomb_is_recognised_in_every_encoding_xml_allows(encoding: str) -> None:
    bomb = (
        f'<?xml version="1.0" encoding="{encoding.removesuffix("-sig").upper()}"?>'
        '<!-- an innocent comment --><!DOCTYPE Invoice [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        f'<Invoice xmlns="{INVOICE_NS}">&b;</Invoice>'
    )
    refused = rejection(bomb.encode(encoding))
    assert refused.code == "entity-forbidden"
    assert "(a, b)" in refused.message


# Other syntaxes and documents ------------------------------------------------------------


def test_a_cii_invoice_is_refused_as_unsupported_syntax() -> None:
    cii = (
        b'<rsm:CrossIndustryInvoice xmlns:rsm="urn:un:unece:uncefact:data:standard:'
        b'CrossIndustryInvoice:100"><rsm:ExchangedDocument/></rsm:CrossIndustryInvoice>'
    )
    refused = rejection(cii)
    assert refused.code == "unsupported-syntax"
    assert "CII" in refused.message
    assert "send UBL" in refused.message


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b'<Order xmlns="urn:oasis:names:specification:ubl:schema:xsd:Order-2"/>', "UBL Order"),
        (b"<Invoice><ID>1</ID></Invoice>", "Invoice in no namespace"),
        (b"<html><body>Invoice</body></html>", "root is html"),
        (
            b'<StandardBusinessDocument xmlns="http://www.unece.org/cefact/namespaces/'
            b'StandardBusinessDocumentHeader"/>',
            "SBDH",
        ),
    ],
    ids=["ubl-order", "invoice-without-namespace", "html", "sbdh-envelope"],
)
def test_other_xml_is_refused_as_not_an_invoice_naming_what_it_is(data: bytes, named: str) -> None:
    refused = rejection(data)
    assert refused.code == "not-an-invoice"
    assert named in refused.message
