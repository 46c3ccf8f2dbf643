"""Events of the mail registry, on topic ``courrier.events``.

An outgoing mail that another service asked for (e.g. the notification of a
college decision) names that service's document in ``about``, on each of its
events, so the asking service follows the mail without calling courrier.
``about`` is optional and left out of the JSON when absent: events of mail
typed in by a clerk are the same as before it existed.
"""

from __future__ import annotations

from datetime import date
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.events.base import EventData

TOPIC = "courrier.events"


class AttachedFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    file_id: str
    filename: str
    media_type: str
    size: int = Field(ge=0)
    md5: str = Field(pattern=r"^[0-9a-f]{32}$")


class IncomingMailRegistered(EventData):
    """An incoming mail (paper scan, e-mail or counter deposit) got its registration number."""

    TYPE: ClassVar[str] = "courrier.incoming_mail.registered.v1"
    TOPIC: ClassVar[str] = TOPIC

    mail_id: str
    registration_number: str = Field(description="Yearly per tenant, e.g. E2026/000123")
    received_on: date
    sender: str
    subject: str
    assigned_service: str | None = None
    scan_type: str | None = Field(default=None, description="IMIO intake type (COUR_E, FACT…)")
    files: list[AttachedFile] = Field(default_factory=list)


class Recipient(BaseModel):
    """Who receives an outgoing mail in their e-Box: a person (NISS) or a company (BCE/KBO)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["person", "enterprise"]
    identifier: str = Field(description="11-digit NISS or 10-digit enterprise number")
    name: str | None = None


def _absent(value: object) -> bool:
    return value is None


class DocumentReference(BaseModel):
    """A document of another service, e.g. the agenda item whose decision a mail notifies."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    service: str = Field(
        min_length=1, max_length=32, description="The service that owns it, e.g. meeting"
    )
    document_id: str = Field(
        min_length=1, max_length=200, description="Its id in that service, e.g. the item's id"
    )


ABOUT_DESCRIPTION = "The document of another service this mail was sent for, if any"


class OutgoingMailSendRequested(EventData):
    """A clerk or another service's event asked to send an outgoing mail; the gateway
    delivers it to the e-Box."""

    TYPE: ClassVar[str] = "courrier.outgoing_mail.send_requested.v1"
    TOPIC: ClassVar[str] = TOPIC

    mail_id: str
    registration_number: str
    recipient: Recipient
    subject: str
    body_pdf_base64: str = Field(description="The letter as a PDF, base64-encoded")
    body_pdf_md5: str = Field(pattern=r"^[0-9a-f]{32}$")
    about: DocumentReference | None = Field(
        default=None, exclude_if=_absent, description=ABOUT_DESCRIPTION
    )


class OutgoingMailSent(EventData):
    """The e-Box accepted the outgoing mail."""

    TYPE: ClassVar[str] = "courrier.outgoing_mail.sent.v1"
    TOPIC: ClassVar[str] = TOPIC

    mail_id: str
    registration_number: str
    ebox_message_id: str
    about: DocumentReference | None = Field(
        default=None, exclude_if=_absent, description=ABOUT_DESCRIPTION
    )


class OutgoingMailFailed(EventData):
    """The outgoing mail could not be delivered (e.g. the recipient has no digital e-Box)."""

    TYPE: ClassVar[str] = "courrier.outgoing_mail.failed.v1"
    TOPIC: ClassVar[str] = TOPIC

    mail_id: str
    registration_number: str
    reason: str
    about: DocumentReference | None = Field(
        default=None, exclude_if=_absent, description=ABOUT_DESCRIPTION
    )
