"""WS-Security X.509 signatures: what the hub signs, and what a receiver refuses."""

from __future__ import annotations

import base64
import copy
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from lxml import etree

from gateway.wssecurity import (
    DS,
    EXC_C14N,
    RSA_SHA256,
    SHA256,
    SOAP11_ENV,
    WSSE,
    WSU,
    WSU_ID,
    SignatureError,
    UntrustedCertificateError,
    X509Signature,
    verify_signed_envelope,
)
from kernel.pki import ensure_tenant_signing_identity
from sandbox import ebox_soap

NS = {"soap": SOAP11_ENV, "wsse": WSSE, "wsu": WSU, "ds": DS}
BODY = '<m:Publish xmlns:m="urn:test"><m:Subject>Permis de bâtir</m:Subject></m:Publish>'


@pytest.fixture
def signer(tmp_path: Path) -> X509Signature:
    return X509Signature.from_files(*ensure_tenant_signing_identity(tmp_path, "92137"))


@pytest.fixture
def trusted(signer: X509Signature) -> list[x509.Certificate]:
    return [signer.certificate]


def envelope(body: str = BODY) -> etree._Element:
    return etree.fromstring(
        f'<soap:Envelope xmlns:soap="{SOAP11_ENV}"><soap:Body>{body}</soap:Body></soap:Envelope>'
    )


def signed(signer: X509Signature, now: datetime | None = None) -> etree._Element:
    document = envelope()
    signer.sign(document, now=now)
    return document


def as_bytes(document: etree._Element) -> bytes:
    return etree.tostring(document)


def test_round_trip_returns_the_signer_and_the_body(
    signer: X509Signature, trusted: list[x509.Certificate]
) -> None:
    verified = verify_signed_envelope(as_bytes(signed(signer)), trusted)

    assert verified.tenant == "92137"
    assert "CN=hub-92137" in verified.subject
    assert verified.body.findtext("{urn:test}Publish/{urn:test}Subject") == "Permis de bâtir"


def test_signature_follows_the_x509_sha256_policy(signer: X509Signature) -> None:
    document = signed(signer)
    security = document.find("soap:Header/wsse:Security", NS)
    assert security is not None
    assert security.get(f"{{{SOAP11_ENV}}}mustUnderstand") == "1"
    timestamp = security.find("wsu:Timestamp", NS)
    token = security.find("wsse:BinarySecurityToken", NS)
    body = document.find("soap:Body", NS)
    assert timestamp is not None and token is not None and body is not None
    created = datetime.fromisoformat(timestamp.findtext("wsu:Created", namespaces=NS) or "")
    expires = datetime.fromisoformat(timestamp.findtext("wsu:Expires", namespaces=NS) or "")
    assert expires - created == timedelta(minutes=5)

    signed_info = security.find("ds:Signature/ds:SignedInfo", NS)
    assert signed_info is not None
    assert signed_info.xpath("string(ds:SignatureMethod/@Algorithm)", namespaces=NS) == RSA_SHA256
    assert signed_info.xpath("string(ds:CanonicalizationMethod/@Algorithm)", namespaces=NS) == (
        EXC_C14N
    )
    references = signed_info.findall("ds:Reference", NS)
    assert {r.get("URI") for r in references} == {
        f"#{timestamp.get(WSU_ID)}",
        f"#{token.get(WSU_ID)}",
        f"#{body.get(WSU_ID)}",
    }
    for reference in references:
        assert reference.xpath("string(ds:DigestMethod/@Algorithm)", namespaces=NS) == SHA256
    key_reference = security.find(
        "ds:Signature/ds:KeyInfo/wsse:SecurityTokenReference/wsse:Reference", NS
    )
    assert key_reference is not None
    assert key_reference.get("URI") == f"#{token.get(WSU_ID)}"


def test_a_comment_slipped_into_a_signed_value_does_not_change_what_is_read(
    signer: X509Signature, trusted: list[x509.Certificate]
) -> None:
    # The signature's canonical form leaves comments out: the message still verifies.
    # lxml's text would stop at the comment, and "Permis" would be another value
    # under the same signature (a new ticket past the replay check, say).
    slipped = as_bytes(signed(signer)).replace(b"Permis de", b"Permis<!-- --> de")

    verified = verify_signed_envelope(slipped, trusted)

    assert verified.body.findtext("{urn:test}Publish/{urn:test}Subject") == "Permis de bâtir"


def test_a_signed_soap_12_envelope_is_refused(
    signer: X509Signature, trusted: list[x509.Certificate]
) -> None:
    soap12 = "http://www.w3.org/2003/05/soap-envelope"
    document = etree.fromstring(
        f'<soap:Envelope xmlns:soap="{soap12}"><soap:Body>{BODY}</soap:Body></soap:Envelope>'
    )

    with pytest.raises(
        SignatureError, match=re.escape("a SOAP 1.2 envelope; this service speaks SOAP 1.1")
    ):
        verify_signed_envelope(as_bytes(document), trusted)


def test_tampered_body_is_refused(signer: X509Signature, trusted: list[x509.Certificate]) -> None:
    tampered = as_bytes(signed(signer)).replace(b"Permis de b", b"Permis de d")

    with pytest.raises(SignatureError, match="does not match the signed content"):
        verify_signed_envelope(tampered, trusted)


def test_lengthened_timestamp_is_refused(
    signer: X509Signature, trusted: list[x509.Certificate]
) -> None:
    document = signed(signer)
    expires = document.find("soap:Header/wsse:Security/wsu:Timestamp/wsu:Expires", NS)
    assert expires is not None
    expires.text = (datetime.now(UTC) + timedelta(minutes=4, seconds=59)).isoformat()

    with pytest.raises(SignatureError, match="does not match the signed content"):
        verify_signed_envelope(as_bytes(document), trusted)


def test_certificate_not_in_the_trust_store_is_refused(
    tmp_path: Path, signer: X509Signature
) -> None:
    stranger = X509Signature.from_files(
        *ensure_tenant_signing_identity(tmp_path / "elsewhere", "92137")
    )

    with pytest.raises(UntrustedCertificateError, match="not trusted"):
        verify_signed_envelope(as_bytes(signed(stranger)), [signer.certificate])


def test_a_certificate_whose_subject_does_not_decode_is_refused_as_untrusted(
    tmp_path: Path, signer: X509Signature
) -> None:
    stranger = X509Signature.from_files(
        *ensure_tenant_signing_identity(tmp_path / "elsewhere", "92137")
    )
    document = signed(stranger)
    token = document.find("soap:Header/wsse:Security/wsse:BinarySecurityToken", NS)
    assert token is not None and token.text is not None
    # The subject's UTF-8 name broken (the certificate's own signature is not checked here).
    der = base64.b64decode(token.text).replace(b"hub-92137", b"\xff\xfe\xff-92137")
    token.text = base64.b64encode(der).decode()

    with pytest.raises(UntrustedCertificateError, match="a subject that cannot be read"):
        verify_signed_envelope(as_bytes(document), [signer.certificate])


def test_message_without_timestamp_is_refused(
    signer: X509Signature, trusted: list[x509.Certificate]
) -> None:
    document = signed(signer)
    timestamp = document.find("soap:Header/wsse:Security/wsu:Timestamp", NS)
    assert timestamp is not None
    timestamp.getparent().remove(timestamp)

    with pytest.raises(SignatureError, match="no wsu:Timestamp"):
        verify_signed_envelope(as_bytes(document), trusted)


def test_unsigned_message_is_refused(trusted: list[x509.Certificate]) -> None:
    with pytest.raises(SignatureError, match="not signed"):
        verify_signed_envelope(as_bytes(envelope()), trusted)


@pytest.mark.parametrize(
    ("received_after", "reason"),
    [
        (timedelta(minutes=7), "expired"),
        (timedelta(minutes=-5), "in the future"),
    ],
)
def test_stale_or_early_message_is_refused(
    signer: X509Signature,
    trusted: list[x509.Certificate],
    received_after: timedelta,
    reason: str,
) -> None:
    sent = datetime.now(UTC)
    document = signed(signer, now=sent)

    with pytest.raises(SignatureError, match=reason):
        verify_signed_envelope(as_bytes(document), trusted, now=sent + received_after)


def test_far_expires_does_not_widen_the_replay_window(
    tmp_path: Path, trusted: list[x509.Certificate]
) -> None:
    generous = X509Signature.from_files(
        *ensure_tenant_signing_identity(tmp_path, "92137"), timestamp_lifetime=timedelta(days=1)
    )
    sent = datetime.now(UTC)
    document = signed(generous, now=sent)

    with pytest.raises(SignatureError, match="too old"):
        verify_signed_envelope(as_bytes(document), trusted, now=sent + timedelta(minutes=10))


def test_signature_must_cover_the_body(
    signer: X509Signature, trusted: list[x509.Certificate]
) -> None:
    document = signed(signer)
    body = document.find("soap:Body", NS)
    assert body is not None
    reference = document.find(
        f"soap:Header/wsse:Security/ds:Signature/ds:SignedInfo/ds:Reference[@URI='#{body.get(WSU_ID)}']",
        NS,
    )
    assert reference is not None
    reference.getparent().remove(reference)

    with pytest.raises(SignatureError, match="does not cover the SOAP Body"):
        verify_signed_envelope(as_bytes(document), trusted)


def test_signature_must_cover_the_token(
    signer: X509Signature, trusted: list[x509.Certificate]
) -> None:
    document = signed(signer)
    token = document.find("soap:Header/wsse:Security/wsse:BinarySecurityToken", NS)
    assert token is not None
    reference = document.find(
        f"soap:Header/wsse:Security/ds:Signature/ds:SignedInfo/ds:Reference[@URI='#{token.get(WSU_ID)}']",
        NS,
    )
    assert reference is not None
    reference.getparent().remove(reference)

    with pytest.raises(SignatureError, match="does not cover the wsse:BinarySecurityToken"):
        verify_signed_envelope(as_bytes(document), trusted)


def test_references_repeated_or_too_many_are_refused_before_any_digest(
    signer: X509Signature, trusted: list[x509.Certificate]
) -> None:
    # Anyone can add references (a digest of the Body needs no key); each cost a digest.
    document = signed(signer)
    body = document.find("soap:Body", NS)
    assert body is not None
    signed_info = document.find("soap:Header/wsse:Security/ds:Signature/ds:SignedInfo", NS)
    assert signed_info is not None
    reference = signed_info.find(f"ds:Reference[@URI='#{body.get(WSU_ID)}']", NS)
    assert reference is not None
    signed_info.append(copy.deepcopy(reference))

    with pytest.raises(SignatureError, match="is there more than once"):
        verify_signed_envelope(as_bytes(document), trusted)

    for _ in range(600):
        signed_info.append(copy.deepcopy(reference))
    with pytest.raises(SignatureError, match="604 references; at most 6"):
        verify_signed_envelope(as_bytes(document), trusted)


@pytest.mark.parametrize(
    ("name", "instant"),
    [
        ("Created", "0001-01-01T00:00:00+14:00"),
        ("Expires", "0001-01-01T00:00:00+01:00"),
        ("Created", "9999-12-31T23:59:59-01:00"),
    ],
)
def test_a_timestamp_out_of_the_calendar_is_refused(
    signer: X509Signature, trusted: list[x509.Certificate], name: str, instant: str
) -> None:
    document = signed(signer)
    moment = document.find(f"soap:Header/wsse:Security/wsu:Timestamp/wsu:{name}", NS)
    assert moment is not None
    moment.text = instant

    with pytest.raises(SignatureError, match=re.escape(f"{name} {instant!r} is out of range")):
        verify_signed_envelope(as_bytes(document), trusted)


def test_wrapped_copy_of_the_signed_body_is_refused(
    signer: X509Signature, trusted: list[x509.Certificate]
) -> None:
    # Signature wrapping: the signed Body is hidden in the header, a forged one takes its place.
    document = signed(signer)
    body = document.find("soap:Body", NS)
    header = document.find("soap:Header", NS)
    assert body is not None and header is not None
    header.append(copy.deepcopy(body))
    subject = body.find("{urn:test}Publish/{urn:test}Subject")
    assert subject is not None
    subject.text = "Forged"

    with pytest.raises(SignatureError, match="more than one element has the id"):
        verify_signed_envelope(as_bytes(document), trusted)


@pytest.mark.parametrize("attribute", ["{http://www.w3.org/XML/1998/namespace}id", "Id", "ID"])
def test_decoy_with_the_body_id_under_another_id_attribute_is_refused(
    signer: X509Signature, trusted: list[x509.Certificate], attribute: str
) -> None:
    document = signed(signer)
    body = document.find("soap:Body", NS)
    header = document.find("soap:Header", NS)
    assert body is not None and header is not None
    etree.SubElement(header, "{urn:test}Decoy", {attribute: body.get(WSU_ID) or ""})

    with pytest.raises(SignatureError, match="more than one element has the id"):
        verify_signed_envelope(as_bytes(document), trusted)


def test_sha1_digest_is_refused(signer: X509Signature, trusted: list[x509.Certificate]) -> None:
    document = signed(signer)
    digest_method = document.find(".//ds:Reference/ds:DigestMethod", NS)
    assert digest_method is not None
    digest_method.set("Algorithm", "http://www.w3.org/2000/09/xmldsig#sha1")

    with pytest.raises(SignatureError, match="SHA-256 digest"):
        verify_signed_envelope(as_bytes(document), trusted)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Body><lolz>&lol3;</lolz></soap:Body>
</soap:Envelope>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Body><foo>&xxe;</foo></soap:Body>
</soap:Envelope>"""


@pytest.mark.parametrize(
    "document",
    [
        BILLION_LAUGHS,
        EXTERNAL_ENTITY,
        # UTF-16 hides the DOCTYPE from a byte search; the parsed document still shows it.
        BILLION_LAUGHS.decode()
        .replace('version="1.0"', 'version="1.0" encoding="UTF-16"')
        .encode("utf-16"),
    ],
    ids=["billion-laughs", "external-entity", "utf-16"],
)
def test_doctype_and_entities_are_refused(document: bytes, trusted: list[x509.Certificate]) -> None:
    with pytest.raises(SignatureError, match="DOCTYPE and ENTITY declarations are not accepted"):
        verify_signed_envelope(document, trusted)


def test_malformed_xml_is_refused(trusted: list[x509.Certificate]) -> None:
    with pytest.raises(SignatureError, match="not well-formed XML"):
        verify_signed_envelope(b"<soap:Envelope", trusted)


def test_key_of_another_certificate_is_refused_when_the_plugin_is_built(tmp_path: Path) -> None:
    key_file, _ = ensure_tenant_signing_identity(tmp_path, "92137")
    _, other_cert = ensure_tenant_signing_identity(tmp_path, "62063")

    with pytest.raises(ValueError, match="does not belong"):
        X509Signature.from_files(key_file, other_cert)


def test_the_sandbox_reads_its_trusted_keys_again_only_when_they_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = tmp_path / "keys"
    ensure_tenant_signing_identity(keys, "62063")  # a tenant before the sandbox starts
    reads: list[Path] = []
    real = ebox_soap.trusted_tenant_certificates

    def counted(directory: Path) -> list[x509.Certificate]:
        reads.append(directory)
        return real(directory)

    monkeypatch.setattr(ebox_soap, "trusted_tenant_certificates", counted)
    store = ebox_soap.TrustStore(keys)
    stranger = X509Signature.from_files(*ensure_tenant_signing_identity(tmp_path / "x", "92137"))
    message = as_bytes(signed(stranger))

    for _ in range(3):  # anyone may send these: each read the folder again
        with pytest.raises(UntrustedCertificateError):
            store.verify(message)
    assert len(reads) == 1

    signer = X509Signature.from_files(*ensure_tenant_signing_identity(keys, "92137"))
    assert store.verify(as_bytes(signed(signer))).tenant == "92137"  # a tenant added since
    assert len(reads) == 2
