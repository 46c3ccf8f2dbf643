"""The registry's use cases, each inside the caller's transaction with its events staged.

Callers open the unit of work (``kernel.outbox.transaction``) and check their
input first; a use case changes the tables and stages the matching event, so
the change and its event commit together or not at all.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import date, datetime

import pybase64
from sqlalchemy import ColumnElement, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import undefer
from sqlalchemy.orm.exc import StaleDataError

from contracts.envelope import CloudEvent, new_event
from contracts.events.courrier import (
    AttachedFile,
    DocumentReference,
    IncomingMailRegistered,
    OutgoingMailFailed,
    OutgoingMailSendRequested,
    OutgoingMailSent,
    Recipient,
)
from contracts.identifiers import mask_niss
from kernel.database import listing_page, next_in_sequence
from kernel.days import commune_day
from kernel.errors import NotFound
from kernel.migrations import table_of
from kernel.outbox import stage
from services.courrier.domain import (
    Delivered,
    DeliveryOutcome,
    Direction,
    MailState,
    RecipientKind,
    SendAlreadyRequested,
    allocate_registration_number,
    request_send,
    state_after,
)
from services.courrier.tables import Mail, MailFile, RegistrationCounter

SOURCE = "urn:hub:courrier"
log = logging.getLogger(__name__)


class SqlRegistrationCounters:
    """One counter row per (tenant, year, direction), incremented in the caller's transaction.

    The UPDATE takes the row's write lock (PostgreSQL) or the database's
    (SQLite) until commit, so concurrent registrations queue on it; a rolled
    back registration rolls its number back too: numbers are unique and gap-free.
    """

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def next_sequence(self, tenant: str, year: int, direction: Direction) -> int:
        key = {"tenant": tenant, "year": year, "direction": str(direction)}
        return await next_in_sequence(self._session, table_of(RegistrationCounter), key)


@dataclass(frozen=True)
class Upload:
    filename: str
    media_type: str
    content: bytes

    @property
    def md5(self) -> str:
        return hashlib.md5(self.content).hexdigest()


@dataclass(frozen=True)
class MailFilter:
    direction: Direction | None = None
    state: MailState | None = None
    date_from: date | None = None
    date_to: date | None = None


def _new_file(tenant: str, role: str, upload: Upload, now: datetime) -> MailFile:
    return MailFile(
        id=str(uuid.uuid4()),
        tenant=tenant,
        role=role,
        filename=upload.filename,
        media_type=upload.media_type,
        size=len(upload.content),
        md5=upload.md5,
        content=upload.content,
        created_at=now,
    )


def _attached(file: MailFile) -> AttachedFile:
    return AttachedFile(
        file_id=file.id,
        filename=file.filename,
        media_type=file.media_type,
        size=file.size,
        md5=file.md5,
    )


async def register_incoming(
    session: AsyncSession,
    *,
    tenant: str,
    received_on: date,
    sender: str,
    subject: str,
    assigned_service: str | None,
    now: datetime,
    scan_type: str | None = None,
    external_id: str | None = None,
    scans: tuple[Upload, ...] = (),
) -> Mail:
    number = await allocate_registration_number(
        SqlRegistrationCounters(session), tenant, Direction.INCOMING, now
    )
    mail = Mail(
        id=str(uuid.uuid4()),
        tenant=tenant,
        direction=Direction.INCOMING,
        registration_number=number,
        state=MailState.REGISTERED,
        mail_date=received_on,
        subject=subject,
        sender=sender,
        assigned_service=assigned_service,
        scan_type=scan_type,
        external_id=external_id,
        created_at=now,
        updated_at=now,
        files=[_new_file(tenant, "scan", scan, now) for scan in scans],
    )
    session.add(mail)
    event = IncomingMailRegistered(
        mail_id=mail.id,
        registration_number=number,
        received_on=received_on,
        sender=sender,
        subject=subject,
        assigned_service=assigned_service,
        scan_type=scan_type,
        files=[_attached(file) for file in mail.files],
    )
    stage(session, new_event(event, tenant=tenant, subject=mail.id, source=SOURCE))
    log.info("tenant %s registered incoming mail %s (%s)", tenant, number, mail.id)
    return mail


async def create_outgoing(
    session: AsyncSession,
    *,
    tenant: str,
    recipient_kind: RecipientKind,
    recipient_identifier: str,
    recipient_name: str | None,
    subject: str,
    letter: bytes,
    now: datetime,
    about: DocumentReference | None = None,
    requested_by_event_id: str | None = None,
    send: bool = False,
) -> Mail:
    """A draft outgoing mail; its arguments are already checked (``domain.check_letter``…).

    ``about`` names the other service's document the mail is for; its events
    carry it back. ``requested_by_event_id`` is the event that asked for the mail.
    ``send``: the mail is sent at once, born in ``sending`` with its delivery
    request staged, written by one INSERT (a draft sent later is updated by
    ``send_outgoing``, which also guards against a concurrent send).
    """
    number = await allocate_registration_number(
        SqlRegistrationCounters(session), tenant, Direction.OUTGOING, now
    )
    upload = Upload(number.replace("/", "-") + ".pdf", "application/pdf", letter)
    mail = Mail(
        id=str(uuid.uuid4()),
        tenant=tenant,
        direction=Direction.OUTGOING,
        registration_number=number,
        state=MailState.DRAFT,
        mail_date=commune_day(now),
        subject=subject,
        recipient_kind=recipient_kind,
        recipient_identifier=recipient_identifier,
        recipient_name=recipient_name,
        about_service=about.service if about else None,
        about_document_id=about.document_id if about else None,
        requested_by_event_id=requested_by_event_id,
        created_at=now,
        updated_at=now,
        files=[_new_file(tenant, "letter", upload, now)],
    )
    shown = mask_niss(recipient_identifier) if recipient_kind == "person" else recipient_identifier
    if send:
        event = _send_request(mail, mail.files[0], letter)
        mail.state, mail.send_event_id = request_send(MailState.DRAFT, number), event.id
        stage(session, event)
    done = "sends" if send else "drafted"
    log.info("tenant %s %s outgoing mail %s to %s %s", tenant, done, number, recipient_kind, shown)
    session.add(mail)
    return mail


def _send_request(mail: Mail, letter: MailFile, content: bytes) -> CloudEvent:
    """The e-Box delivery request of ``mail``, whose letter is ``letter`` holding ``content``."""
    kind: RecipientKind = "enterprise" if mail.recipient_kind == "enterprise" else "person"
    data = OutgoingMailSendRequested(
        mail_id=mail.id,
        registration_number=mail.registration_number,
        recipient=Recipient(
            kind=kind,
            identifier=mail.recipient_identifier or "",
            name=mail.recipient_name,
        ),
        subject=mail.subject,
        body_pdf_base64=pybase64.b64encode(content).decode("ascii"),
        body_pdf_md5=letter.md5,
        about=about_of(mail),
    )
    return new_event(data, tenant=mail.tenant, subject=mail.id, source=SOURCE)


async def send_outgoing(session: AsyncSession, mail: Mail, now: datetime) -> None:
    """Move a stored draft to ``sending`` and stage the e-Box delivery request."""
    new_state = request_send(MailState(mail.state), mail.registration_number)
    letter = next(file for file in mail.files if file.role == "letter")
    # A mail drafted in this transaction still holds its letter; a stored one reads it
    # (the column is deferred: lists of mails never load the PDFs).
    content = inspect(letter).dict.get("content") or await session.scalar(
        select(MailFile.content).where(MailFile.id == letter.id)
    )
    if content is None:
        raise RuntimeError(f"the letter of outgoing mail {mail.id} has no content")
    event = _send_request(mail, letter, content)
    number = mail.registration_number  # the failed flush below expires the mail's attributes
    mail.state, mail.send_event_id, mail.updated_at = new_state, event.id, now
    try:
        await session.flush()
    except StaleDataError as exc:  # a concurrent request sent it first
        raise SendAlreadyRequested(number, MailState.SENDING) from exc
    stage(session, event)
    log.info("tenant %s asked to send outgoing mail %s", mail.tenant, number)


def record_delivery_outcome(
    session: AsyncSession, mail: Mail, outcome: DeliveryOutcome, now: datetime
) -> bool:
    """Apply a delivery outcome; return False when it changes nothing."""
    new_state = state_after(MailState(mail.state), outcome)
    if new_state is None:
        return False
    mail.state, mail.updated_at = new_state, now
    if isinstance(outcome, Delivered):
        mail.ebox_message_id, mail.failure_reason = outcome.ebox_message_id, None
        data: OutgoingMailSent | OutgoingMailFailed = OutgoingMailSent(
            mail_id=mail.id,
            registration_number=mail.registration_number,
            ebox_message_id=outcome.ebox_message_id or "",
            about=about_of(mail),
        )
    else:
        mail.failure_reason = outcome.reason
        data = OutgoingMailFailed(
            mail_id=mail.id,
            registration_number=mail.registration_number,
            reason=outcome.reason,
            about=about_of(mail),
        )
    stage(session, new_event(data, tenant=mail.tenant, subject=mail.id, source=SOURCE))
    log.info("tenant %s outgoing mail %s is %s", mail.tenant, mail.registration_number, new_state)
    return True


def about_of(mail: Mail) -> DocumentReference | None:
    if mail.about_service is None or mail.about_document_id is None:
        return None
    return DocumentReference(service=mail.about_service, document_id=mail.about_document_id)


# -- queries --------------------------------------------------------------------------


async def find_mail(
    session: AsyncSession, tenant: str, mail_id: str, direction: Direction | None = None
) -> Mail:
    """The tenant's mail; another tenant's mail is "not found", never "forbidden"."""
    query = select(Mail).where(Mail.id == mail_id, Mail.tenant == tenant)
    if direction is not None:
        query = query.where(Mail.direction == direction)
    mail = await session.scalar(query)
    if mail is None:
        what = "mail" if direction is None else f"{direction} mail"
        raise NotFound(what, mail_id)
    return mail


async def find_by_external_id(session: AsyncSession, tenant: str, external_id: str) -> Mail | None:
    return await session.scalar(
        select(Mail).where(Mail.tenant == tenant, Mail.external_id == external_id)
    )


async def find_requested_mail(
    session: AsyncSession, tenant: str, about: DocumentReference, event_id: str
) -> Mail | None:
    """The mail an event already asked for: by that event, or by another about the same document.

    The second covers a request published again under a new event id: a
    document asks for its mail once, whatever carried the request.
    """
    return await session.scalar(
        select(Mail)
        .where(
            Mail.tenant == tenant,
            Mail.requested_by_event_id.is_not(None),
            (Mail.requested_by_event_id == event_id)
            | (
                (Mail.about_service == about.service)
                & (Mail.about_document_id == about.document_id)
            ),
        )
        .limit(1)
    )


async def read_file(session: AsyncSession, tenant: str, mail_id: str, file_id: str) -> MailFile:
    file = await session.scalar(
        select(MailFile)
        .where(MailFile.id == file_id, MailFile.mail_id == mail_id, MailFile.tenant == tenant)
        .options(undefer(MailFile.content))
    )
    if file is None:
        raise NotFound("file", file_id)
    return file


def _conditions(tenant: str, where: MailFilter) -> list[ColumnElement[bool]]:
    conditions = [Mail.tenant == tenant]
    if where.direction is not None:
        conditions.append(Mail.direction == where.direction)
    if where.state is not None:
        conditions.append(Mail.state == where.state)
    if where.date_from is not None:
        conditions.append(Mail.mail_date >= where.date_from)
    if where.date_to is not None:
        conditions.append(Mail.mail_date <= where.date_to)
    return conditions


async def list_mails(
    session: AsyncSession, tenant: str, where: MailFilter, *, limit: int, offset: int
) -> tuple[list[Mail], int]:
    """One page of the tenant's mail, newest first, and how many match in all."""
    conditions = _conditions(tenant, where)
    order = (Mail.created_at.desc(), Mail.registration_number.desc())
    return await listing_page(session, Mail, conditions, order, limit=limit, offset=offset)
