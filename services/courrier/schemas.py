"""The REST API's request and response documents.

Requests refuse unknown fields (``extra="forbid"``): a misspelt field is an
error the caller sees, not a value silently dropped.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

from kernel.api import RequestModel
from services.courrier.domain import Direction, MailState
from services.courrier.tables import Mail, MailFile


class IncomingMailCreate(RequestModel):
    received_on: date = Field(description="The day the mail reached the administration")
    sender: str = Field(min_length=1, max_length=500)
    subject: str = Field(min_length=1, max_length=1000)
    assigned_service: str | None = Field(
        default=None, min_length=1, max_length=200, description="The service that handles it"
    )


class RecipientIn(RequestModel):
    kind: Literal["person", "enterprise"]
    identifier: str = Field(
        min_length=1,
        max_length=32,
        description="A person's national number (NISS, 11 digits) or an enterprise number "
        "(BCE/KBO, 10 digits); dots, dashes, spaces and a 'BE' prefix are accepted.",
        examples=["85.07.30-033.28", "BE 0403.170.701"],
    )
    name: str | None = Field(default=None, min_length=1, max_length=200)


class OutgoingMailCreate(RequestModel):
    recipient: RecipientIn
    subject: str = Field(min_length=1, max_length=1000)
    body_pdf_base64: str = Field(
        min_length=1,
        description="The letter: a PDF of at most 4 MiB, base64-encoded (RFC 4648 alphabet).",
    )


class FileView(BaseModel):
    file_id: str
    filename: str
    media_type: str
    size: int
    md5: str

    @classmethod
    def of(cls, file: MailFile) -> FileView:
        return cls(
            file_id=file.id,
            filename=file.filename,
            media_type=file.media_type,
            size=file.size,
            md5=file.md5,
        )


class IncomingMailView(BaseModel):
    id: str
    registration_number: str = Field(examples=["E2026/000123"])
    state: MailState
    received_on: date
    sender: str
    subject: str
    assigned_service: str | None
    scan_type: str | None = Field(description="IMIO intake type of a scanned mail (COUR_E…)")
    external_id: str | None = Field(description="The scanner's id of a scanned mail")
    files: list[FileView]
    created_at: datetime

    @classmethod
    def of(cls, mail: Mail) -> IncomingMailView:
        return cls(
            id=mail.id,
            registration_number=mail.registration_number,
            state=MailState(mail.state),
            received_on=mail.mail_date,
            sender=mail.sender or "",
            subject=mail.subject,
            assigned_service=mail.assigned_service,
            scan_type=mail.scan_type,
            external_id=mail.external_id,
            files=[FileView.of(file) for file in mail.files],
            created_at=mail.created_at,
        )


class RecipientView(BaseModel):
    kind: Literal["person", "enterprise"]
    identifier: str
    name: str | None


class AboutView(BaseModel):
    """The document of another service an outgoing mail was sent for."""

    service: str = Field(examples=["meeting"])
    document_id: str = Field(description="Its id in that service, e.g. the agenda item's id")


class OutgoingMailView(BaseModel):
    id: str
    registration_number: str = Field(examples=["S2026/000045"])
    state: MailState
    recipient: RecipientView
    subject: str
    letter: FileView
    ebox_message_id: str | None = Field(description="The e-Box's id of the delivered message")
    failure_reason: str | None
    about: AboutView | None = Field(
        description="Set when another service's event asked for the mail, e.g. the "
        "notification of a college decision (service meeting, the item's id)"
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, mail: Mail) -> OutgoingMailView:
        return cls(
            id=mail.id,
            registration_number=mail.registration_number,
            state=MailState(mail.state),
            recipient=RecipientView(
                kind="enterprise" if mail.recipient_kind == "enterprise" else "person",
                identifier=mail.recipient_identifier or "",
                name=mail.recipient_name,
            ),
            subject=mail.subject,
            letter=FileView.of(next(file for file in mail.files if file.role == "letter")),
            ebox_message_id=mail.ebox_message_id,
            failure_reason=mail.failure_reason,
            about=None
            if mail.about_service is None or mail.about_document_id is None
            else AboutView(service=mail.about_service, document_id=mail.about_document_id),
            created_at=mail.created_at,
            updated_at=mail.updated_at,
        )


class MailSummary(BaseModel):
    """One line of the registry, whatever the direction."""

    id: str
    direction: Direction
    registration_number: str
    state: MailState
    mail_date: date = Field(
        description="received_on of incoming mail, creation day of outgoing mail"
    )
    subject: str
    correspondent: str | None = Field(description="The sender, or the recipient's name")

    @classmethod
    def of(cls, mail: Mail) -> MailSummary:
        return cls(
            id=mail.id,
            direction=Direction(mail.direction),
            registration_number=mail.registration_number,
            state=MailState(mail.state),
            mail_date=mail.mail_date,
            subject=mail.subject,
            correspondent=mail.sender
            if mail.direction == Direction.INCOMING
            else mail.recipient_name,
        )
