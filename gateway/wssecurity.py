"""WS-Security X.509 signatures (SHA-256), for senders and receivers.

The one WS-Security module of the hub: every SOAP connector that must sign
(the federal e-Box, the regional oversight service…) uses ``X509Signature``
as its zeep ``wsse`` plugin, and every simulated receiver checks messages
with ``verify_signed_envelope``.

What a signed message looks like (the e-Box ``X509_SHA256`` policy:
X.509 token always sent to the recipient, Basic256Sha256, IncludeTimestamp,
ProtectTokens, signed Body)::

    soap:Header/wsse:Security  (soap:mustUnderstand="1")
        wsu:Timestamp           Created, Expires (Created + 5 minutes)
        wsse:BinarySecurityToken  the signer's X.509 certificate (base64 DER)
        ds:Signature            RSA-SHA256 over an exc-c14n SignedInfo whose
                                three References (SHA-256, exc-c14n) cover the
                                Timestamp, the token and the soap:Body; KeyInfo
                                points at the token (SecurityTokenReference)

A receiver accepts a message only when all of this holds, checked in this
order so the reason it gives is the first thing wrong: the XML is safe to
parse (no DOCTYPE, no entities), the Timestamp is fresh, the references use
exactly the algorithms above and each points (by ``wsu:Id``, unique in the
message) at one element, the Body and the Timestamp are among them, the
token's certificate is one of the trusted ones (by SHA-256 fingerprint) and
currently valid, and xmlsec verifies the signature with that certificate.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pybase64
import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from lxml import etree

from kernel.pki import tenant_of
from kernel.xml_parsing import safe_parser

SOAP11_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV = "http://www.w3.org/2003/05/soap-envelope"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
DS = "http://www.w3.org/2000/09/xmldsig#"
X509V3 = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509v3"
BASE64_BINARY = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"
)
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"

WSU_ID = f"{{{WSU}}}Id"
_ID_ATTRIBUTES = (WSU_ID, "Id", "ID", "{http://www.w3.org/XML/1998/namespace}id")
TIMESTAMP_LIFETIME = timedelta(minutes=5)
#: Tolerated difference between the sender's clock and ours.
CLOCK_SKEW = timedelta(minutes=1)
#: References one signature may hold: the hub signs three (Body, Timestamp, token).
MAX_SIGNED_PARTS = 6


class SignatureError(Exception):
    """A message that must not be trusted; ``reason`` says why in words a sender can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StaleMessageError(SignatureError):
    """A Timestamp out of its time (expired, too old, created in the future): the sender's
    clock or a replay, not its signature; WS-Security answers it ``wsu:MessageExpired``."""


class UntrustedCertificateError(SignatureError):
    """Signed with a certificate the receiver does not trust (yet: its trust store may be stale)."""


# --------------------------------------------------------------------------- signing


class X509Signature:
    """zeep ``wsse`` plugin: timestamp, include the certificate and sign (RSA-SHA256).

    ``apply`` runs on every outgoing envelope after zeep's other plugins, so
    nothing changes the message once it is signed.
    """

    def __init__(
        self,
        key_pem: bytes,
        cert_pem: bytes,
        *,
        password: str | None = None,
        timestamp_lifetime: timedelta = TIMESTAMP_LIFETIME,
    ) -> None:
        try:
            private_key = serialization.load_pem_private_key(
                key_pem, password.encode() if password else None
            )
        except TypeError as exc:  # encrypted without a passphrase given, or the reverse
            raise ValueError(f"the signing key cannot be read: {exc} (key_password)") from exc
        self.certificate = x509.load_pem_x509_certificate(cert_pem)
        if private_key.public_key() != self.certificate.public_key():
            raise ValueError("the signing key does not belong to the signing certificate")
        self._key = xmlsec.Key.from_memory(key_pem, xmlsec.constants.KeyDataFormatPem, password)
        self._token = pybase64.b64encode(
            self.certificate.public_bytes(serialization.Encoding.DER)
        ).decode("ascii")
        self._lifetime = timestamp_lifetime

    @classmethod
    def from_files(
        cls,
        key_file: Path,
        cert_file: Path,
        *,
        password: str | None = None,
        timestamp_lifetime: timedelta = TIMESTAMP_LIFETIME,
    ) -> X509Signature:
        return cls(
            key_file.read_bytes(),
            cert_file.read_bytes(),
            password=password,
            timestamp_lifetime=timestamp_lifetime,
        )

    def apply(self, envelope: etree._Element, headers: dict[str, Any]) -> tuple[Any, Any]:
        self.sign(envelope)
        return envelope, headers

    def verify(self, envelope: etree._Element) -> etree._Element:
        # The e-Box policy signs requests only; answers come over TLS unsigned.
        return envelope

    def sign(self, envelope: etree._Element, now: datetime | None = None) -> None:
        soap_env = _soap_namespace(envelope)
        body = envelope.find(f"{{{soap_env}}}Body")
        if body is None:
            raise ValueError("the SOAP envelope has no Body to sign")
        security = _new_security_header(envelope, soap_env)

        created = now or datetime.now(UTC)
        timestamp = etree.SubElement(security, f"{{{WSU}}}Timestamp", nsmap={"wsu": WSU})
        etree.SubElement(timestamp, f"{{{WSU}}}Created").text = _instant(created)
        etree.SubElement(timestamp, f"{{{WSU}}}Expires").text = _instant(created + self._lifetime)

        token = etree.SubElement(
            security,
            f"{{{WSSE}}}BinarySecurityToken",
            {"ValueType": X509V3, "EncodingType": BASE64_BINARY},
        )
        token.text = self._token

        signature = xmlsec.template.create(
            envelope,
            xmlsec.constants.TransformExclC14N,
            xmlsec.constants.TransformRsaSha256,
            ns="ds",
        )
        security.append(signature)
        context = xmlsec.SignatureContext()
        # The token is signed too (ProtectTokens): nobody can swap in another certificate.
        for node in (timestamp, token, body):
            node_id = node.get(WSU_ID) or f"id-{uuid.uuid4()}"
            node.set(WSU_ID, node_id)
            context.register_id(node, "Id", WSU)
            reference = xmlsec.template.add_reference(
                signature, xmlsec.constants.TransformSha256, uri=f"#{node_id}"
            )
            xmlsec.template.add_transform(reference, xmlsec.constants.TransformExclC14N)
        context.key = self._key
        context.sign(signature)

        # KeyInfo is not signed; added afterwards so xmlsec does not try to fill it itself.
        key_info = etree.SubElement(signature, f"{{{DS}}}KeyInfo")
        token_reference = etree.SubElement(key_info, f"{{{WSSE}}}SecurityTokenReference")
        etree.SubElement(
            token_reference,
            f"{{{WSSE}}}Reference",
            {"URI": f"#{token.get(WSU_ID)}", "ValueType": X509V3},
        )


def _new_security_header(envelope: etree._Element, soap_env: str) -> etree._Element:
    header = envelope.find(f"{{{soap_env}}}Header")
    if header is None:
        header = etree.Element(f"{{{soap_env}}}Header")
        envelope.insert(0, header)
    if header.find(f"{{{WSSE}}}Security") is not None:
        raise ValueError("the envelope already carries a wsse:Security header")
    security = etree.SubElement(header, f"{{{WSSE}}}Security", nsmap={"wsse": WSSE, "wsu": WSU})
    security.set(f"{{{soap_env}}}mustUnderstand", "1")
    return security


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- verifying


@dataclass(frozen=True)
class VerifiedEnvelope:
    envelope: etree._Element
    body: etree._Element
    certificate: x509.Certificate
    subject: str  # RFC 4514, e.g. "O=92137,CN=hub-92137"
    tenant: str | None  # the hub tenant the certificate speaks for, if it is a hub certificate
    created: datetime


def parse_xml_safely(data: bytes) -> etree._Element:
    """Parse untrusted XML (``kernel.xml_parsing.safe_parser``), refusing any DTD."""
    # Refused before parsing: a DOCTYPE is how billion-laughs and external entities get in.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise SignatureError("DOCTYPE and ENTITY declarations are not accepted in SOAP messages")
    try:
        root = etree.fromstring(data, parser=safe_parser())
    except etree.XMLSyntaxError as exc:
        raise SignatureError(f"the message is not well-formed XML: {exc}") from exc
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:  # e.g. hidden by a UTF-16 encoding
        raise SignatureError("DOCTYPE and ENTITY declarations are not accepted in SOAP messages")
    return root


def verify_signed_envelope(
    envelope_bytes: bytes,
    trusted_certificates: Iterable[x509.Certificate],
    *,
    now: datetime | None = None,
    max_age: timedelta = TIMESTAMP_LIFETIME,
) -> VerifiedEnvelope:
    """Check a signed SOAP message (see the module docstring) or raise ``SignatureError``."""
    envelope = parse_xml_safely(envelope_bytes)
    soap_env = _soap_namespace(envelope)
    body = _only_child(envelope, f"{{{soap_env}}}Body", "SOAP Body")
    header = envelope.find(f"{{{soap_env}}}Header")
    if header is None:
        raise SignatureError("the message is not signed: it has no SOAP Header")
    security = _only_child(header, f"{{{WSSE}}}Security", "wsse:Security header")
    timestamp = _only_child(security, f"{{{WSU}}}Timestamp", "wsu:Timestamp")
    created = _check_freshness(timestamp, now or datetime.now(UTC), max_age)
    signature = _only_child(security, f"{{{DS}}}Signature", "ds:Signature")

    elements_by_id = _elements_by_id(envelope)
    signed = _signed_elements(signature, elements_by_id)
    if not any(element is body for element in signed):
        raise SignatureError("the signature does not cover the SOAP Body")
    if not any(element is timestamp for element in signed):
        raise SignatureError("the signature does not cover the wsu:Timestamp")

    certificate = _trusted_token_certificate(
        signature, security, elements_by_id, signed, trusted_certificates, now or datetime.now(UTC)
    )
    context = xmlsec.SignatureContext()
    for element in elements_by_id.values():
        context.register_id(element, "Id", WSU)
    # The key is the trusted certificate's, never one read from the message's KeyInfo.
    context.key = xmlsec.Key.from_memory(
        certificate.public_bytes(serialization.Encoding.DER),
        xmlsec.constants.KeyDataFormatCertDer,
    )
    try:
        context.verify(signature)
    except xmlsec.Error as exc:
        raise SignatureError(
            "the signature does not match the signed content"
            " (the Body, the Timestamp or the token was changed after signing)"
        ) from exc
    return VerifiedEnvelope(
        envelope=envelope,
        body=body,
        certificate=certificate,
        subject=certificate.subject.rfc4514_string(),
        tenant=tenant_of(certificate),
        created=created,
    )


def _soap_namespace(envelope: etree._Element) -> str:
    """The envelope's namespace: SOAP 1.1's, which every service the hub signs for speaks.
    A SOAP 1.2 envelope was taken for one, and answered in SOAP 1.1."""
    qname = etree.QName(envelope)
    if qname.localname != "Envelope" or qname.namespace not in (SOAP11_ENV, SOAP12_ENV):
        raise SignatureError("the message is not a SOAP envelope")
    if qname.namespace != SOAP11_ENV:
        raise SignatureError("the message is a SOAP 1.2 envelope; this service speaks SOAP 1.1")
    return qname.namespace


def _only_child(parent: etree._Element, tag: str, what: str) -> etree._Element:
    found = parent.findall(tag)
    if not found:
        raise SignatureError(f"the message is not signed: it has no {what}")
    if len(found) > 1:
        raise SignatureError(f"the message has more than one {what}")
    return found[0]


def _check_freshness(timestamp: etree._Element, now: datetime, max_age: timedelta) -> datetime:
    created = _parse_instant(timestamp.findtext(f"{{{WSU}}}Created"), "Created")
    expires = _parse_instant(timestamp.findtext(f"{{{WSU}}}Expires"), "Expires")
    if created > now + CLOCK_SKEW:
        raise StaleMessageError(
            f"the wsu:Timestamp was created in the future ({_instant(created)})"
        )
    if expires <= now - CLOCK_SKEW:
        raise StaleMessageError(f"the message expired at {_instant(expires)}")
    # Expires is the sender's word; the age limit is ours, so a far Expires cannot widen replays.
    if now - created > max_age + CLOCK_SKEW:
        raise StaleMessageError(
            f"the message is too old (created {_instant(created)},"
            f" accepted for {int(max_age.total_seconds())} s)"
        )
    return created


def _parse_instant(text: str | None, name: str) -> datetime:
    if not text:
        raise SignatureError(f"the wsu:Timestamp has no {name}")
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise SignatureError(f"the wsu:Timestamp {name} {text!r} is not a date-time") from exc
    if moment.tzinfo is None:
        raise SignatureError(f"the wsu:Timestamp {name} {text!r} has no time zone")
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+14:00, before the first instant
        raise SignatureError(f"the wsu:Timestamp {name} {text!r} is out of range") from exc


def _elements_by_id(envelope: etree._Element) -> dict[str, etree._Element]:
    """The elements carrying a ``wsu:Id``, by id.

    An id used twice, under any of the attribute names an XML signature library
    may resolve, is refused: that is how signature wrapping hides the signed
    Body in the header and puts a forged one in its place.
    """
    found: dict[str, etree._Element] = {}
    seen: set[str] = set()
    for element in envelope.iter():
        if not isinstance(element.tag, str):  # comments, processing instructions
            continue
        for attribute in _ID_ATTRIBUTES:
            node_id = element.get(attribute)
            if node_id is None:
                continue
            if node_id in seen:
                raise SignatureError(f"more than one element has the id {node_id!r}")
            seen.add(node_id)
            if attribute == WSU_ID:
                found[node_id] = element
    return found


def _signed_elements(
    signature: etree._Element, elements_by_id: dict[str, etree._Element]
) -> list[etree._Element]:
    ns = {"ds": DS}
    signed_info = _only_child(signature, f"{{{DS}}}SignedInfo", "ds:SignedInfo")
    if signed_info.xpath("string(ds:CanonicalizationMethod/@Algorithm)", namespaces=ns) != EXC_C14N:
        raise SignatureError("SignedInfo must be canonicalised with exclusive C14N")
    if signed_info.xpath("string(ds:SignatureMethod/@Algorithm)", namespaces=ns) != RSA_SHA256:
        raise SignatureError("the signature method must be RSA-SHA256")
    references = signed_info.findall(f"{{{DS}}}Reference")
    # Each reference costs a digest of its element before the signature itself is checked,
    # and anyone can write references: 600 copies of one to a 2 MB Body held the sandbox's
    # loop for 6 s, with no key needed.
    if len(references) > MAX_SIGNED_PARTS:
        raise SignatureError(
            f"the signature has {len(references)} references; at most {MAX_SIGNED_PARTS}"
            " are accepted (the Body, the Timestamp, the token and a header or two)"
        )
    signed: list[etree._Element] = []
    for reference in references:
        uri = reference.get("URI") or ""
        # Only same-message references by wsu:Id: no XPointer, no whole document, no fetching.
        if not uri.startswith("#") or uri[1:] not in elements_by_id:
            raise SignatureError(f"signature reference {uri!r} does not name an element by wsu:Id")
        if elements_by_id[uri[1:]] in signed:
            raise SignatureError(f"signature reference {uri!r} is there more than once")
        if reference.xpath("string(ds:DigestMethod/@Algorithm)", namespaces=ns) != SHA256:
            raise SignatureError(f"signature reference {uri!r} must use a SHA-256 digest")
        transforms = reference.xpath("ds:Transforms/ds:Transform/@Algorithm", namespaces=ns)
        if transforms != [EXC_C14N]:
            raise SignatureError(
                f"signature reference {uri!r} may only use the exclusive C14N transform"
            )
        signed.append(elements_by_id[uri[1:]])
    return signed


def _trusted_token_certificate(
    signature: etree._Element,
    security: etree._Element,
    elements_by_id: dict[str, etree._Element],
    signed: list[etree._Element],
    trusted_certificates: Iterable[x509.Certificate],
    now: datetime,
) -> x509.Certificate:
    uri = signature.xpath(
        "string(ds:KeyInfo/wsse:SecurityTokenReference/wsse:Reference/@URI)",
        namespaces={"ds": DS, "wsse": WSSE},
    )
    token = elements_by_id.get(uri[1:]) if uri.startswith("#") else None
    if (
        token is None
        or token.tag != f"{{{WSSE}}}BinarySecurityToken"
        or token.getparent() is not security
        or token.get("ValueType") != X509V3
    ):
        raise SignatureError(
            "the signature's KeyInfo must reference an X.509 wsse:BinarySecurityToken"
            " of the same wsse:Security header"
        )
    if not any(element is token for element in signed):
        # The e-Box policy protects the token (sp:ProtectTokens), as the hub's signer does.
        raise SignatureError("the signature does not cover the wsse:BinarySecurityToken")
    try:
        der = pybase64.b64decode("".join((token.text or "").split()), validate=True)
        presented = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise SignatureError("the wsse:BinarySecurityToken is not an X.509 certificate") from exc
    fingerprint = presented.fingerprint(hashes.SHA256())
    trusted = next(
        (c for c in trusted_certificates if c.fingerprint(hashes.SHA256()) == fingerprint), None
    )
    if trusted is None:
        raise UntrustedCertificateError(
            f"the signing certificate ({_subject_of(presented)},"
            f" SHA-256 {fingerprint.hex()}) is not trusted"
        )
    if not trusted.not_valid_before_utc <= now <= trusted.not_valid_after_utc:
        raise SignatureError(
            f"the signing certificate ({trusted.subject.rfc4514_string()}) is not valid now"
        )
    return trusted


def _subject_of(certificate: x509.Certificate) -> str:
    """The certificate's subject for a message; a subject that does not decode (anyone may
    present such a certificate) is said so, not raised."""
    try:
        return certificate.subject.rfc4514_string()
    except ValueError:
        return "a subject that cannot be read"
