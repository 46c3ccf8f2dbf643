"""Simulated federal e-Box SOAP service ``EboxMessage`` v1 (WS-Security X.509, SHA-256).

Modelled on the contract in the reference corpus (read at run time from
``HubSettings.corpus_dir``, never copied):
``contracts/ebox/soap/be/socialsecurity/eboxmessage/v1/EboxMessage-X509Sha256_v1.wsdl``
with its XSDs. ``POST /ebox/soap/EboxMessage`` takes SOAP 1.1, as ``text/xml``
or as SOAP with Attachments (``multipart/related``, the way the contract's
``wsi:swaRef`` documents travel); ``GET ?wsdl`` serves the WSDL with this
endpoint as its address, and ``?xsd=<path>`` the schemas it imports.

``publishEboxMessage`` is checked in this order, and the first problem is the
SOAP 1.1 Fault that answers (HTTP 500):

1. the message is at most ``max_envelope_bytes`` and has no DOCTYPE/entities;
2. the WS-Security signature (``gateway.wssecurity.verify_signed_envelope``):
   a fresh Timestamp, Body and Timestamp signed with RSA-SHA256, by one of the
   tenants' development certificates under ``HubSettings.keys_dir``
   (``kernel/pki.py``; re-read when an unknown certificate shows up, since
   ``hub up`` makes them) → ``soap:Client`` saying why;
3. the request against the contract's XSD → ``soap:Client`` naming the problem;
4. each ``cid:`` document is an attachment of the message, and has a signed
   ``Digest`` (SHA-256 or SHA-512) that it matches → ``soap:Client``. This is
   stricter than the XSD, which makes ``Digest`` optional and still lists
   SHA-1 (deprecated since 2018): SwA attachments travel outside the
   WS-Security signature, so the Digest is all that binds the bytes to the
   signed Body, and the hub's connector relies on it (without one, nothing
   vouches for the bytes; a SHA-1 one no longer does);
5. recipients without a digital e-Box (``sandbox/fixtures/ebox_recipients.yaml``,
   shared with the REST sandbox) → the contract's ``BusinessError`` detail,
   code ``NO_DIGITAL_USER``.

Then it answers ``PublishEboxMessageResponse`` with a new message ID.
Idempotency: the sender's own reference, ``MessageID/Ticket``, is signed and
part of the contract, so it is the key (scoped by the signing tenant); the
``Idempotency-Key`` header, which the real service ignores, is only recorded.
A repeated Ticket gets the first answer and publishes nothing new; a Ticket
repeated for another message (another request element, canonicalised: its
Digests stand for the attachments) is refused with a ``soap:Client`` fault,
rather than answered as the first and lost without a word.
"""

from __future__ import annotations

import asyncio
import binascii
import copy
import email.message
import email.parser
import hashlib
import posixpath
import uuid
from pathlib import Path
from urllib.parse import unquote

import pybase64
from fastapi import APIRouter, Request, Response
from lxml import etree

from gateway.wssecurity import (
    WSU,
    SignatureError,
    StaleMessageError,
    UntrustedCertificateError,
    VerifiedEnvelope,
    verify_signed_envelope,
)
from kernel.logs import mask_national_numbers
from kernel.pki import identities_stamp, trusted_tenant_certificates
from kernel.settings import HubSettings
from sandbox.ebox_rest import EboxId, load_recipients_without_ebox
from sandbox.recorder import Recorder

SERVICE = "ebox_soap"
CONTRACT_ROOT = Path("contracts/ebox/soap")
WSDL = "be/socialsecurity/eboxmessage/v1/EboxMessage-X509Sha256_v1.wsdl"
SCHEMA = "be/socialsecurity/eboxmessage/v1/EboxMessage_v1.xsd"
MAX_ENVELOPE_BYTES = 10 * 1024 * 1024

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
MESSAGE_NS = "http://socialsecurity.be/eboxmessage/v1"
TYPES_NS = "http://socialsecurity.be/eboxmessage/types/v1"
ERRORS_NS = "http://socialsecurity.be/errors/v1"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
WSDL_SOAP11_NS = "http://schemas.xmlsoap.org/wsdl/soap/"
PUBLISH = f"{{{MESSAGE_NS}}}PublishEboxMessageRequest"
#: The Digest methods accepted: the XSD's SHA-1 is not (deprecated since 2018).
DIGESTS = {"SHA-256": "sha256", "SHA-512": "sha512"}
XML_MEDIA_TYPE = "text/xml; charset=utf-8"


class ClientFault(Exception):
    """The sender's message is wrong; answered as a fault with this reason, its code
    ``soapenv:Client`` or WS-Security's own (``MESSAGE_EXPIRED``)."""

    def __init__(self, reason: str, code: str = "soapenv:Client") -> None:
        super().__init__(reason)
        self.code = code


#: WS-Security 1.0's fault for a Timestamp out of its time (§12): a client that sees it
#: checks its clock, where a ``soap:Client`` fault says its message will never pass.
MESSAGE_EXPIRED = "wsu:MessageExpired"


def ws_security_fault(error: SignatureError) -> ClientFault:
    """The fault a message whose WS-Security is refused is answered with."""
    code = MESSAGE_EXPIRED if isinstance(error, StaleMessageError) else "soapenv:Client"
    return ClientFault(f"WS-Security: {error.reason}", code)


# -- answers ------------------------------------------------------------------------------


def soap_fault(
    code: str, reason: str, detail: etree._Element | None = None, status: int = 500
) -> Response:
    """A SOAP 1.1 Fault; ``code`` is ``Client`` or ``Server``, or a prefixed name
    (``soapenv:Client``, ``wsu:MessageExpired``)."""
    envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soapenv": SOAP_ENV, "wsu": WSU})
    body = etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body")
    fault = etree.SubElement(body, f"{{{SOAP_ENV}}}Fault")
    etree.SubElement(fault, "faultcode").text = code if ":" in code else f"soapenv:{code}"
    etree.SubElement(fault, "faultstring").text = reason
    if detail is not None:
        etree.SubElement(fault, "detail").append(detail)
    return _xml_response(envelope, status)


def business_fault(code: str, message: str, ticket: str) -> Response:
    """The contract's ``err:BusinessError`` (socsec-errors-schema-v1) as the fault detail."""
    error = etree.Element(f"{{{ERRORS_NS}}}BusinessError", {"Id": ticket}, nsmap={"err": ERRORS_NS})
    etree.SubElement(error, f"{{{ERRORS_NS}}}Origin").text = "consumer"
    etree.SubElement(error, f"{{{ERRORS_NS}}}Code").text = code
    text = etree.SubElement(error, f"{{{ERRORS_NS}}}Message")
    text.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    text.text = message
    etree.SubElement(error, f"{{{ERRORS_NS}}}Retry").text = "false"
    etree.SubElement(error, f"{{{ERRORS_NS}}}Environment").text = "Simulation"
    return soap_fault("Client", f"{code}: {message}", detail=error)


def publish_response(message_id: str) -> Response:
    envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soapenv": SOAP_ENV})
    answer = etree.SubElement(
        etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body"),
        f"{{{MESSAGE_NS}}}PublishEboxMessageResponse",
        nsmap={"msg": MESSAGE_NS, "types": TYPES_NS},
    )
    etree.SubElement(answer, f"{{{TYPES_NS}}}ID").text = message_id
    return _xml_response(envelope, 200)


def _xml_response(envelope: etree._Element, status: int) -> Response:
    content = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
    return Response(content, status_code=status, media_type=XML_MEDIA_TYPE)


# -- reading the message ------------------------------------------------------------------


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ClientFault(f"the message is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ClientFault(f"the message is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def split_message(body: bytes, content_type: str) -> tuple[bytes, dict[str, bytes]]:
    """The SOAP envelope and the attachments by Content-ID, from text/xml or multipart/related."""
    header = email.message.Message()
    header["Content-Type"] = content_type
    media_type = header.get_content_type()
    if media_type == "text/xml":
        return body, {}
    if media_type != "multipart/related":
        raise ClientFault(f"SOAP 1.1 messages are text/xml or multipart/related, not {media_type}")
    boundary, start = header.get_param("boundary"), header.get_param("start")
    if not isinstance(boundary, str) or not boundary:
        raise ClientFault("the multipart/related message names no boundary")
    parts = _mime_parts(body, boundary.encode("ascii", "replace"))
    if not parts:
        raise ClientFault("the multipart/related message has no parts")
    root_id = start.strip("<>") if isinstance(start, str) else next(iter(parts))
    if root_id not in parts:
        raise ClientFault(f"the multipart/related message has no start part <{root_id}>")
    envelope = parts.pop(root_id)
    return envelope, parts


#: Parts a message may have: the envelope and its attachments. 200,000 empty parts took the
#: header parser 3.5 s of the loop before the message was refused.
MAX_MIME_PARTS = 64


def _mime_parts(body: bytes, boundary: bytes) -> dict[str, bytes]:
    # Split by hand rather than through the email package: attachments are binary, kept exact.
    chunks = (b"\r\n" + body).split(b"\r\n--" + boundary, MAX_MIME_PARTS + 1)
    if len(chunks) > MAX_MIME_PARTS + 1:
        raise ClientFault(f"the multipart/related message has more than {MAX_MIME_PARTS} parts")
    if len(chunks) < 2 or not chunks[-1].startswith(b"--"):
        raise ClientFault("the multipart/related message is not closed by its boundary")
    parts: dict[str, bytes] = {}
    for number, chunk in enumerate(chunks[1:-1], start=1):
        _, _, rest = chunk.partition(b"\r\n")  # the rest of the boundary line
        head, separator, content = rest.partition(b"\r\n\r\n")
        if not separator:
            head, content = b"", rest.removeprefix(b"\r\n")
        headers = email.parser.BytesHeaderParser().parsebytes(head + b"\r\n\r\n")
        encoding = (headers.get("Content-Transfer-Encoding") or "binary").strip().lower()
        if encoding == "base64":
            try:
                content = pybase64.b64decode(content)
            except binascii.Error as exc:
                raise ClientFault(f"MIME part {number} is not valid base64") from exc
        content_id = (headers.get("Content-ID") or f"part-{number}").strip().strip("<>")
        parts[content_id] = content
    return parts


class TrustStore:
    """The tenants' development certificates, re-read when an unknown one signs a message
    and the keys' folder changed since they were read (``hub up`` creates a tenant's
    identity while the sandbox may already run). Re-read at every unknown signature,
    anyone could make the sandbox read the folder and check the message twice."""

    def __init__(self, keys_dir: Path) -> None:
        self._keys_dir = keys_dir
        self._read_at = identities_stamp(keys_dir)
        self._certificates = trusted_tenant_certificates(keys_dir)

    def verify(self, envelope: bytes) -> VerifiedEnvelope:
        try:
            return verify_signed_envelope(envelope, self._certificates)
        except UntrustedCertificateError:
            stamp = identities_stamp(self._keys_dir)
            if stamp == self._read_at:
                raise
            self._read_at = stamp
            self._certificates = trusted_tenant_certificates(self._keys_dir)
            return verify_signed_envelope(envelope, self._certificates)


def schema_problem(schema: etree.XMLSchema, request: etree._Element) -> str | None:
    # Validated on its own copy: the request is a fragment of the SOAP envelope.
    if schema.validate(etree.ElementTree(copy.deepcopy(request))):
        return None
    problems = [error.message for error in schema.error_log][:3]
    return mask_national_numbers("; ".join(problems))


def request_fingerprint(request: etree._Element) -> str:
    """What a repeated idempotency key (a Ticket, an ItemId) must come with again: the
    SHA-256 of the request element in exclusive C14N, the same for the same request signed
    anew (another Timestamp, the namespaces declared elsewhere in the envelope)."""
    canonical = etree.tostring(request, method="c14n", exclusive=True, with_comments=False)
    return hashlib.sha256(canonical).hexdigest()


def reused_key_fault(what: str, key: str) -> Response:
    """The ``soap:Client`` fault of an idempotency key repeated for another message."""
    return soap_fault(
        "Client",
        f"{what} {key!r} was already used for another message: the first one was kept, this"
        " one is not published (send it under a new one)",
    )


def check_documents(request: etree._Element, attachments: dict[str, bytes]) -> list[str]:
    """Each document's ``cid:`` attachment exists and matches its Digest, which it must
    have (stricter than the XSD: see the module's docstring); their names."""
    names = []
    for document in (
        *request.findall(f"{{{TYPES_NS}}}Document"),
        *request.findall(f"{{{TYPES_NS}}}Annex"),
    ):
        reference = (document.findtext(f"{{{TYPES_NS}}}Content") or "").strip()
        if not reference.startswith("cid:"):
            raise ClientFault(f"Content {reference!r} is not a cid: reference to an attachment")
        content = attachments.get(unquote(reference[4:]))
        if content is None:
            raise ClientFault(f"Content {reference!r} names no attachment of this message")
        method = document.findtext(f"{{{TYPES_NS}}}Digest/{{{TYPES_NS}}}DigestMethod")
        value = document.findtext(f"{{{TYPES_NS}}}Digest/{{{TYPES_NS}}}DigestValue")
        if not method or not value:
            # The attachment is outside the signature: without a Digest nothing signs it.
            raise ClientFault(
                f"the document {reference} has no Digest: this service requires a SHA-256 or"
                " SHA-512 Digest of every attachment"
            )
        if method not in DIGESTS:
            raise ClientFault(
                f"the document {reference} has a {method} Digest: this service accepts"
                f" {' or '.join(DIGESTS)} only"
            )
        actual = hashlib.new(DIGESTS[method], content).digest()
        if pybase64.b64encode(actual).decode() != "".join(value.split()):
            raise ClientFault(f"the attachment {reference} does not match its {method} Digest")
        names.append(document.findtext(f"{{{TYPES_NS}}}DownloadFileName") or "")
    return names


def recipients_of(request: etree._Element) -> list[EboxId]:
    recipients = []
    for recipient in request.findall(f"{{{TYPES_NS}}}RecipientID"):
        inss = recipient.findtext(f"{{{TYPES_NS}}}INSS")
        company = recipient.findtext(f"{{{TYPES_NS}}}CompanyID")
        if inss:
            recipients.append(EboxId("citizen", inss))
        elif company:
            recipients.append(EboxId("enterprise", company))
    return recipients


def served_contract(corpus_dir: Path, relative: str, endpoint: str) -> bytes:
    """A WSDL or XSD of the contract, its imports pointing back here and its address at us."""
    document = etree.parse(
        str(corpus_dir / CONTRACT_ROOT / relative), etree.XMLParser(no_network=True)
    )
    folder = posixpath.dirname(relative)
    for node in document.iter(f"{{{XSD_NS}}}import", f"{{{XSD_NS}}}include"):
        location = node.get("schemaLocation")
        if location:
            node.set(
                "schemaLocation", "?xsd=" + posixpath.normpath(posixpath.join(folder, location))
            )
    for address in document.iter(f"{{{WSDL_SOAP11_NS}}}address"):
        address.set("location", endpoint)
    content: bytes = etree.tostring(document, xml_declaration=True, encoding="UTF-8")
    return content


# -- the routes ---------------------------------------------------------------------------


def router(
    recorder: Recorder, settings: HubSettings, *, max_envelope_bytes: int = MAX_ENVELOPE_BYTES
) -> APIRouter:
    """``/ebox/soap/EboxMessage``. Bodies above ``HubSettings.max_body_bytes`` never get here:
    the process-wide limit refuses them first (413, Problem JSON)."""
    contract_root = (settings.corpus_dir / CONTRACT_ROOT).resolve()
    schema = etree.XMLSchema(
        etree.parse(str(contract_root / SCHEMA), etree.XMLParser(no_network=True))
    )
    trust = TrustStore(settings.keys_dir)
    without_ebox = load_recipients_without_ebox()
    soap = APIRouter(prefix="/ebox/soap/EboxMessage", tags=["sandbox: e-Box SOAP"])

    @soap.get("")
    async def contract(
        request: Request, wsdl: str | None = None, xsd: str | None = None
    ) -> Response:
        """``?wsdl``: the WSDL (X.509 SHA-256 policy); ``?xsd=<path>``: a schema it imports."""
        endpoint = str(request.url.remove_query_params(["wsdl", "xsd"]))
        if wsdl is not None:
            return Response(
                served_contract(settings.corpus_dir, WSDL, endpoint), media_type=XML_MEDIA_TYPE
            )
        if xsd:
            path = (contract_root / xsd).resolve()
            if path.suffix == ".xsd" and path.is_file() and path.is_relative_to(contract_root):
                relative = path.relative_to(contract_root).as_posix()
                return Response(
                    served_contract(settings.corpus_dir, relative, endpoint),
                    media_type=XML_MEDIA_TYPE,
                )
        return Response("Not found: ask for ?wsdl", status_code=404, media_type="text/plain")

    @soap.post("")
    async def endpoint(request: Request) -> Response:
        if await recorder.inject_faults(SERVICE, request.headers.get("Idempotency-Key")):
            return soap_fault("Server", "The sandbox was told to fail this request.", status=503)
        try:
            body = await read_limited(request, max_envelope_bytes)
            envelope, attachments = split_message(body, request.headers.get("content-type", ""))
            try:
                # In a worker thread: canonicalising and hashing a body of megabytes
                # would hold every other request to the sandbox meanwhile.
                verified = await asyncio.to_thread(trust.verify, envelope)
            except SignatureError as exc:
                raise ws_security_fault(exc) from exc
            operation = [child for child in verified.body if isinstance(child.tag, str)]
            if len(operation) != 1 or operation[0].tag != PUBLISH:
                raise ClientFault("this sandbox implements publishEboxMessage only")
            request_element = operation[0]
            problem = schema_problem(schema, request_element)
            if problem:
                raise ClientFault(f"the request does not conform to the e-Box XSD: {problem}")
            documents = check_documents(request_element, attachments)
        except ClientFault as exc:
            return soap_fault(exc.code, str(exc))

        ticket = request_element.findtext(f"{{{TYPES_NS}}}MessageID/{{{TYPES_NS}}}Ticket") or ""
        recipients = recipients_of(request_element)
        for recipient in recipients:
            if recipient in without_ebox:
                return business_fault(
                    "NO_DIGITAL_USER",
                    f"The {recipient.ebox_type} {recipient.masked} has no digital e-Box.",
                    ticket,
                )
        tenant = verified.tenant or verified.subject
        fingerprint = request_fingerprint(request_element)
        async with recorder.lock:
            first = recorder.first(SERVICE, f"{tenant}:{ticket}")
            if first is not None:
                if first.summary.get("fingerprint") != fingerprint:
                    recorder.count_reuse(first)  # not an arrival of the first message
                    return reused_key_fault("MessageID/Ticket", ticket)
                recorder.count_repeat(first)
                return publish_response(first.answer["message_id"])
            answer = {"message_id": str(uuid.uuid4())}
            recorder.record(
                SERVICE,
                f"{tenant}:{ticket}",
                tenant=verified.tenant,
                answer=answer,
                traceparent=request.headers.get("traceparent"),
                summary={
                    "ticket": ticket,
                    "idempotency_key_header": request.headers.get("Idempotency-Key"),
                    "recipients": [recipient.masked for recipient in recipients],
                    "message_type": request_element.findtext(f"{{{TYPES_NS}}}MessageType"),
                    "documents": documents,
                    "signed_by": verified.subject,
                    "fingerprint": fingerprint,
                },
            )
        return publish_response(answer["message_id"])

    return soap
