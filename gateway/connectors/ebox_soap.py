# zeep ships py.typed but leaves most functions unannotated; calling them is intended here.
"""Connector to the federal e-Box SOAP service ``EboxMessage`` v1 (WS-Security X.509, SHA-256).

One ``courrier.outgoing_mail.send_requested.v1`` event becomes one
``publishEboxMessage`` call, signed with the tenant's X.509 certificate
(``gateway.wssecurity``: Timestamp, BinarySecurityToken, RSA-SHA256 over
Body, Timestamp and token). The answer's ``ID`` is the delivery's external
reference.

The contract carries the letter as a SOAP-with-Attachments part: the
request's ``Document/Content`` is a ``wsi:swaRef`` (``cid:…``) naming a MIME
part of a ``multipart/related`` message. The signature covers the envelope,
not the attachment, so the Body also carries the letter's SHA-256 ``Digest``: altering the PDF
breaks the digest, altering the digest breaks the signature. zeep cannot
send attachments, so zeep builds and signs the envelope and reads the answer
(faults included), and this module wraps the envelope and the PDF into the
multipart message and posts it through zeep's transport.

Idempotency: the delivery's key travels as the ``Idempotency-Key`` header
and, because the real service knows nothing of that header, also inside the
signed Body as ``MessageID/Ticket``, the sender's own reference of the
message. A Ticket holds at most 25 characters, so it is a digest of the key.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from zeep.exceptions import Fault

from contracts.envelope import EnvelopeError
from contracts.events.courrier import OutgoingMailSendRequested
from contracts.identifiers import EnterpriseNumber
from gateway.connectors.base import (
    ConnectorContext,
    Delivery,
    DeliveryResult,
    TargetUrl,
    attempt_seconds_for,
    register_connector,
    settings_of,
)
from gateway.connectors.letters import letter_file_name, letter_of, recipient_number
from gateway.connectors.soap import SignedSoapClient, SigningSettings, signing_files
from gateway.errors import (
    SOCSEC_ERRORS_NS,
    PermanentDeliveryError,
    RetryableDeliveryError,
    socsec_error,
    translate_transport_errors,
)

TYPE_NAME = "ebox_soap"
TARGET = "e-Box SOAP"
#: The contract's WSDL with the X.509 SHA-256 policy, under ``HubSettings.corpus_dir``.
DEFAULT_WSDL = Path(
    "contracts/ebox/soap/be/socialsecurity/eboxmessage/v1/EboxMessage-X509Sha256_v1.wsdl"
)
BINDING = "{http://socialsecurity.be/eboxmessage/v1}EboxMessageSOAPBinding"
OPERATION = "publishEboxMessage"
NO_DIGITAL_USER = "NO_DIGITAL_USER"
ERRORS_NS = SOCSEC_ERRORS_NS
TICKET_LENGTH = 25  # the contract's Ticket: at most 25 characters


class EboxSoapSettings(SigningSettings):
    type: Literal["ebox_soap"]
    endpoint: TargetUrl
    #: Defaults to the corpus WSDL; loaded once, when the connector is built.
    wsdl: Path | None = None
    timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    #: The sender as the e-Box registered it: the application and the commune's or CPAS's
    #: enterprise number (``SenderID``, optional in the contract), and the message type.
    sender_application: str = Field(default="wallonia-interop-hub", min_length=1, max_length=150)
    sender_institution: EnterpriseNumber | None = None
    message_type: str = Field(default="OUTGOING_MAIL", min_length=6, max_length=80)


class EboxSoapConnector:
    type_name = TYPE_NAME

    def __init__(self, ctx: ConnectorContext, settings: EboxSoapSettings) -> None:
        self.settings = settings
        self.attempt_seconds = attempt_seconds_for(settings.timeout_seconds)
        identity = signing_files(ctx, settings, TYPE_NAME)
        self.certificate = identity.certificate
        self._soap = SignedSoapClient(
            wsdl=str(settings.wsdl or ctx.hub.corpus_dir / DEFAULT_WSDL),
            binding=BINDING,
            endpoint=settings.endpoint,
            http=ctx.http,
            timeout_seconds=settings.timeout_seconds,
            identity=identity,
        )

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        try:
            mail: OutgoingMailSendRequested = delivery.event.data_as(OutgoingMailSendRequested)
        except EnvelopeError as exc:
            raise PermanentDeliveryError(
                f"{TARGET} delivers {OutgoingMailSendRequested.TYPE} only,"
                f" not {delivery.event.type}"
            ) from exc
        letter = letter_of(mail)
        ticket = ticket_for(delivery.idempotency_key)
        content_id = f"letter-{ticket}@hub"
        with translate_transport_errors(TARGET):
            envelope = self._soap.envelope(
                OPERATION, **self._request(mail, ticket, content_id, letter)
            )
            payload, content_type = soap_with_attachment(
                envelope, content_id, letter, "application/pdf"
            )
            headers = {
                **delivery.trace_headers,
                "Content-Type": content_type,
                "SOAPAction": '""',
                "Idempotency-Key": delivery.idempotency_key,
            }
            response = await self._soap.post(payload, headers)
            try:
                answer = self._soap.answer(OPERATION, response)
            except Fault as fault:
                if business_error_code(fault) == NO_DIGITAL_USER:
                    raise PermanentDeliveryError("the recipient has no digital e-Box") from fault
                raise
        # zeep hands back the response's only child, ID, as itself.
        message_id = answer if isinstance(answer, str) else getattr(answer, "ID", None)
        if not message_id:
            # It may have been published: a retry under the same Ticket is answered, not re-sent.
            raise RetryableDeliveryError(f"{TARGET} answered without a message ID")
        return DeliveryResult(external_reference=str(message_id))

    async def aclose(self) -> None:
        await self._soap.aclose()

    def _request(
        self, mail: OutgoingMailSendRequested, ticket: str, content_id: str, letter: bytes
    ) -> dict[str, Any]:
        settings = self.settings
        sender = (
            {"Application": settings.sender_application, "Institution": settings.sender_institution}
            if settings.sender_institution
            else None
        )
        return {
            "MessageID": {"Ticket": ticket},
            "SenderID": sender,
            "RecipientID": [_recipient(mail)],
            "MessageType": settings.message_type,
            "Document": {
                "Title": mail.subject,
                "Content": f"cid:{content_id}",
                "Digest": {
                    "DigestMethod": "SHA-256",
                    "DigestValue": hashlib.sha256(letter).digest(),
                },
                "DownloadFileName": letter_file_name(mail),
                "MIME": "application/pdf",
            },
        }


def ticket_for(idempotency_key: str) -> str:
    """The ``MessageID/Ticket`` standing for an idempotency key (125 bits of its SHA-256)."""
    digest = hashlib.sha256(idempotency_key.encode()).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:TICKET_LENGTH]


def soap_with_attachment(
    envelope: bytes, content_id: str, content: bytes, media_type: str
) -> tuple[bytes, str]:
    """A SOAP 1.1 with Attachments message: the envelope, then one attachment part.

    Returns the body and its ``Content-Type``.
    """
    boundary = f"uuid:{uuid.uuid4()}"
    root_id = "<envelope@hub>"
    parts = [
        (
            f"Content-Type: text/xml; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            f"Content-ID: {root_id}\r\n\r\n",
            envelope,
        ),
        (
            f"Content-Type: {media_type}\r\nContent-Transfer-Encoding: binary\r\n"
            f"Content-ID: <{content_id}>\r\n\r\n",
            content,
        ),
    ]
    body = b"".join(
        f"--{boundary}\r\n{headers}".encode("ascii") + data + b"\r\n" for headers, data in parts
    )
    body += f"--{boundary}--\r\n".encode("ascii")
    content_type = f'multipart/related; type="text/xml"; start="{root_id}"; boundary="{boundary}"'
    return body, content_type


def business_error_code(fault: Fault) -> str | None:
    """The ``Code`` of the contract's ``BusinessError`` fault detail, if the fault carries one."""
    # Read as ``translate_transport_errors`` reads it: zeep's "Unknown fault" carries text,
    # not an element, as its detail.
    error = socsec_error(fault)
    if error is None or error.tag != f"{{{ERRORS_NS}}}BusinessError":
        return None
    code = error.findtext(f"{{{ERRORS_NS}}}Code")
    return code.strip() if code else None


def _recipient(mail: OutgoingMailSendRequested) -> dict[str, str]:
    """The contract's ``RecipientID``."""
    if mail.recipient.kind == "person":
        return {"INSS": recipient_number(mail), "EboxType": "CITIZEN"}
    return {"CompanyID": recipient_number(mail), "EboxType": "ENTERPRISE"}


def _build(ctx: ConnectorContext, raw: dict[str, Any]) -> EboxSoapConnector:
    return EboxSoapConnector(ctx, settings_of(EboxSoapSettings, ctx, raw))


register_connector(TYPE_NAME, _build, event_types=[OutgoingMailSendRequested.TYPE])
