"""The urban service's use cases, each inside the caller's transaction with its events staged.

Callers (REST, the consumers, the deadline watcher) open the unit of work and
check their input first; a use case changes the tables and stages the
matching events, so the change and its events commit together or not at all.
Every change of a file's procedure recomputes its deadlines
(``refresh_deadlines``), so ``next_deadline_on`` and ``next_warning_on`` are
always those of the facts stored.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal, assert_never, get_args

import pybase64
from sqlalchemy import ColumnElement, Select, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, undefer
from sqlalchemy.orm.exc import StaleDataError

from contracts.envelope import CloudEvent, new_event
from contracts.events.base import EventData
from contracts.events.meeting import ItemDecided
from contracts.events.outside import (
    METADATA_MISMATCH_LENGTH,
    NoticeDocument,
    NoticeNotificationReceived,
)
from contracts.events.urban import (
    DECISION_PARTY_NAME_LENGTH,
    DECISION_TEXT_LENGTH,
    Applicant,
    DecisionConcernedParty,
    DecisionDeadlineExtended,
    DecisionNeeded,
    FileOpened,
    FileType,
    IdentificationRequested,
    NoticeResponseRequested,
    OpinionRequested,
    Parcel,
)
from kernel.api import EARLIEST_DAY, MEDIA_TYPE_PATTERN, text_problem
from kernel.database import listing_page, next_in_sequence
from kernel.days import commune_day
from kernel.errors import Conflict, NotFound, ProblemError
from kernel.migrations import table_of
from kernel.outbox import stage
from kernel.texts import clipped, plain_text
from services.urban import deadlines
from services.urban.configuration import TenantUrban
from services.urban.domain import (
    DECIDED_STATES,
    DECISION_OUTCOMES,
    DECISION_REQUEST_STATES,
    FLAGGED_IDENTITIES,
    INSTRUCTION_STATES,
    TITLES,
    UNDELIVERED,
    ComplementsBeforeTheirRequest,
    ConcurrentFileChange,
    DayOutOfProcedure,
    DecisionClockNotStarted,
    DecisionDeadlineAlreadyExtended,
    DecisionDeadlineNotExtendable,
    DecisionDeadlinePassed,
    DecisionFromAnotherMeeting,
    DeemedComplete,
    DocumentMismatch,
    DuplicateDocument,
    FileAlreadyDecided,
    FileState,
    IdentityStatus,
    InquiryRunning,
    NotANoticeFile,
    NotificationClosed,
    OpinionRequestNotDelivered,
    OpinionsPending,
    ReceivedInTheFuture,
    ReceivedTooLongAgo,
    RequestWithout,
    UnfitText,
    WrongNoticeInstance,
    check_applicant,
    check_capakey,
    check_state,
    comparable_body,
    format_reference,
    identity_status,
    split_declared_name,
)
from services.urban.tables import (
    DeadlineWarningSent,
    FileApplicant,
    FileDocument,
    FileParcel,
    NoticeResponse,
    Opinion,
    PermitFile,
    ReferenceCounter,
    UnprocessedEvent,
)

SOURCE = "urn:hub:urban"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Document:
    """A document whose bytes were checked against its size and SHA-256."""

    document_id: str
    filename: str
    media_type: str
    content: bytes
    #: How the content differs from what NOTICe's metadata declared (the gateway fetched
    #: it twice alike): kept, and shown on the file for a clerk to ask NOTICe again.
    metadata_mismatch: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class NewFile:
    """What a file is opened with; already checked (``checked_new_file``)."""

    file_type: FileType
    subject: str
    received_on: date
    applicants: tuple[Applicant, ...]
    parcels: tuple[Parcel, ...]
    documents: tuple[Document, ...] = ()


def checked_new_file(
    file_type: FileType,
    subject: str,
    received_on: date,
    applicants: list[Applicant],
    parcels: list[Parcel],
    documents: tuple[Document, ...] = (),
    *,
    today: date,
) -> NewFile:
    """Identifiers reduced to digits and checked, CaPaKeys checked, texts the tables can hold,
    or the rule broken. REST's schemas check most of it already; a NOTICe notification's
    contract does not, and must break a rule here rather than in the database."""
    if not applicants:
        raise RequestWithout("applicant")
    if not parcels:
        raise RequestWithout("parcel")
    if received_on > today:
        raise ReceivedInTheFuture(received_on, today)
    if received_on < EARLIEST_DAY:
        raise ReceivedTooLongAgo(received_on)
    fitting_text("subject", subject)
    for position, applicant in enumerate(applicants, start=1):
        fitting_text(f"applicant {position}'s name", applicant.name, APPLICANT_NAME_LENGTH)
        fitting_text(f"applicant {position}'s address", applicant.address)
    for position, parcel in enumerate(parcels, start=1):
        fitting_text(f"parcel {position}'s address", parcel.address)
    return NewFile(
        file_type=file_type,
        subject=subject,
        received_on=received_on,
        applicants=tuple(check_applicant(applicant) for applicant in applicants),
        parcels=tuple(
            parcel.model_copy(update={"capakey": check_capakey(parcel.capakey)})
            for parcel in parcels
        ),
        documents=documents,
    )


#: The longest texts the file's tables hold (``services.urban.tables``).
APPLICANT_NAME_LENGTH = 300
NOTIFICATION_ID_LENGTH = 100
DOCUMENT_ID_LENGTH = 200
FILENAME_LENGTH = 255


def fitting_text(field: str, value: str | None, longest: int | None = None) -> None:
    """Raise ``UnfitText`` when ``value`` is longer than its column or holds a character
    the database refuses."""
    if value is None:
        return
    if longest is not None and len(value) > longest:
        raise UnfitText(field, f"{len(value)} characters, where {longest} at most are kept")
    if problem := text_problem(value):
        raise UnfitText(field, problem)


def checked_document(document: NoticeDocument) -> Document:
    fitting_text("a document's id", document.document_id, DOCUMENT_ID_LENGTH)
    fitting_text(
        f"document {document.document_id!r}'s filename", document.filename, FILENAME_LENGTH
    )
    if not re.fullmatch(MEDIA_TYPE_PATTERN, document.media_type):
        # Stored as said, one with a line break made every download of it fail.
        raise DocumentMismatch(
            document.document_id,
            f"its media type {document.media_type!r} is no type/subtype (RFC 6838)",
        )
    try:
        content = pybase64.b64decode(document.content_base64, validate=True)
    except ValueError as exc:  # binascii.Error, or text that is not ASCII
        raise DocumentMismatch(document.document_id, f"its content is not base64 ({exc})") from exc
    if len(content) != document.size:
        raise DocumentMismatch(
            document.document_id,
            f"its metadata says {document.size} bytes, its content has {len(content)}",
        )
    fitting_text(
        f"document {document.document_id!r}'s metadata mismatch",
        document.metadata_mismatch,
        METADATA_MISMATCH_LENGTH,
    )
    checked = Document(
        document.document_id,
        document.filename,
        document.media_type,
        content,
        document.metadata_mismatch,
    )
    if checked.sha256 != document.sha256:
        raise DocumentMismatch(
            document.document_id,
            f"its metadata says SHA-256 {document.sha256}, its content has {checked.sha256}",
        )
    return checked


def checked_documents(documents: list[NoticeDocument]) -> tuple[Document, ...]:
    seen: set[str] = set()
    for document in documents:
        if document.document_id in seen:
            raise DuplicateDocument(document.document_id)
        seen.add(document.document_id)
    return tuple(checked_document(document) for document in documents)


# -- references ---------------------------------------------------------------------------


async def next_reference(session: AsyncSession, tenant: str, file_type: FileType, year: int) -> str:
    """The next reference of the file type and year; the counter row serialises openings."""
    prefix = format_reference(file_type, year, 1).split("/")[0]
    key = {"tenant": tenant, "prefix": prefix, "year": year}
    sequence = await next_in_sequence(session, table_of(ReferenceCounter), key)
    return format_reference(file_type, year, sequence)


# -- opening and NOTICe ---------------------------------------------------------------------


async def open_file(
    session: AsyncSession,
    settings: TenantUrban,
    new: NewFile,
    now: datetime,
    *,
    origin: str,
    notification: NoticeNotificationReceived | None = None,
) -> PermitFile:
    today = commune_day(now)
    with session.no_autoflush:  # the counter needs none of the files opened before this one
        reference = await next_reference(session, settings.tenant, new.file_type, today.year)
    file = PermitFile(
        id=str(uuid.uuid4()),
        tenant=settings.tenant,
        reference=reference,
        file_type=new.file_type,
        state=FileState.RECEIVED,
        subject=new.subject,
        received_on=new.received_on,
        identity_flagged=False,
        origin=origin,
        notice_notification_id=notification.notification_id if notification else None,
        notice_instance_code=notification.instance_code if notification else None,
        notice_state="open" if notification else None,
        created_at=now,
        updated_at=now,
        applicants=[
            FileApplicant(
                tenant=settings.tenant,
                position=position,
                kind=applicant.kind,
                identifier=applicant.identifier,
                name=applicant.name,
                address=applicant.address,
                identity_status=IdentityStatus.NOT_CHECKED,
            )
            for position, applicant in enumerate(new.applicants)
        ],
        parcels=[
            FileParcel(position=position, capakey=parcel.capakey, address=parcel.address)
            for position, parcel in enumerate(new.parcels)
        ],
        opinions=[],
        documents=[_document_row(document, now) for document in new.documents],
    )
    session.add(file)  # written at the next flush: the batch's commit, or the API's answer
    opened = FileOpened(
        file_id=file.id,
        reference=reference,
        file_type=new.file_type,
        received_on=new.received_on,
        applicants=list(new.applicants),
        parcels=list(new.parcels),
        notice_notification_id=file.notice_notification_id,
    )
    _emit(session, file, opened)
    for applicant in file.applicants:
        if applicant.kind == "person":
            _request_identification(session, file, applicant)
    await refresh_deadlines(session, file, settings, today, new_file=True)
    log.info("tenant %s opened %s file %s (%s)", file.tenant, new.file_type, reference, origin)
    return file


def _document_row(document: Document, now: datetime) -> FileDocument:
    return FileDocument(
        document_id=document.document_id,
        filename=document.filename,
        media_type=document.media_type,
        size=len(document.content),
        sha256=document.sha256,
        content=document.content,
        metadata_mismatch=document.metadata_mismatch,
        received_at=now,
    )


def _request_identification(
    session: AsyncSession, file: PermitFile, applicant: FileApplicant
) -> None:
    last_name, first_name = split_declared_name(applicant.name)
    data = IdentificationRequested(
        file_id=file.id,
        niss=applicant.identifier,
        declared_last_name=last_name,
        declared_first_name=first_name,
    )
    event = _emit(session, file, data)
    applicant.identification_event_id = event.id
    applicant.identity_status = IdentityStatus.REQUESTED


async def receive_notification(
    session: AsyncSession,
    settings: TenantUrban,
    notification: NoticeNotificationReceived,
    now: datetime,
) -> PermitFile:
    """Open the file of a new notification, or bring news to the file of a known one.

    Everything is checked before anything is written: a notification that
    breaks a rule raises and leaves no trace but the one its caller keeps.
    """
    if notification.instance_code != settings.notice_instance:
        raise WrongNoticeInstance(
            notification.instance_code, settings.tenant, settings.notice_instance
        )
    fitting_text("the notification's id", notification.notification_id, NOTIFICATION_ID_LENGTH)
    new = checked_new_file(
        notification.file_type,
        notification.subject,
        notification.received_on,
        notification.applicants,
        notification.parcels,
        checked_documents(notification.documents),
        today=commune_day(now),
    )
    file = await _file_of_notification(session, settings.tenant, notification.notification_id)
    if file is None:
        return await open_file(
            session, settings, new, now, origin="notice", notification=notification
        )
    if file.notice_state == "closed":
        raise NotificationClosed(notification.notification_id)
    known = {document.document_id for document in file.documents}
    added = [document for document in new.documents if document.document_id not in known]
    if added and file.state == FileState.INCOMPLETE:
        # The applicant sent what was missing: the completeness check starts over from today.
        # Before the documents are added: it may refuse (a file deemed complete already), and
        # the notification is then kept unprocessed, its documents not half taken.
        await receive_complements(session, settings, file, commune_day(now), now)
    file.documents.extend(_document_row(document, now) for document in added)
    file.updated_at = now
    await refresh_deadlines(session, file, settings, commune_day(now))
    log.info(
        "tenant %s: notification %s brings %d new documents to %s",
        file.tenant,
        notification.notification_id,
        len(added),
        file.reference,
    )
    return file


async def _file_of_notification(
    session: AsyncSession, tenant: str, notification_id: str
) -> PermitFile | None:
    """The file of a notification: opened earlier, or in this transaction and not yet written.

    Files a consumer's batch opens are written together at its commit (one INSERT
    per table for the batch, not a flush of four INSERTs per file), so the lookup
    neither flushes them nor would find them in the database: it looks among them first.
    """
    for pending in session.new:
        if (
            isinstance(pending, PermitFile)
            and pending.tenant == tenant
            and pending.notice_notification_id == notification_id
        ):
            return pending
    with session.no_autoflush:
        return await one_file(session, tenant, "notice_notification_id", notification_id)


# -- the procedure --------------------------------------------------------------------------


@asynccontextmanager
async def one_change(session: AsyncSession, file: PermitFile) -> AsyncIterator[None]:
    """A change of ``file``, written at its end; if a concurrent change of the file came
    first (its optimistic version, checked at any flush), this one is refused with a 409
    rather than failing at commit."""
    reference = file.reference  # a failed flush expires the file's attributes
    try:
        yield
        await session.flush()
    except StaleDataError as exc:
        raise ConcurrentFileChange(reference) from exc


async def declare_complete(
    session: AsyncSession, settings: TenantUrban, file: PermitFile, now: datetime
) -> None:
    check_state(
        file.reference,
        file.state,
        "the completeness check",
        frozenset({FileState.RECEIVED, FileState.INCOMPLETE}),
    )
    today = commune_day(now)
    file.state, file.complete_on, file.missing_documents = FileState.COMPLETE, today, None
    file.updated_at = now
    await refresh_deadlines(session, file, settings, today)
    if file.notice_notification_id is not None:
        decision_due = file_deadlines(file).get(deadlines.DECISION)
        message = f"Dossier {file.reference} complet le {today.isoformat()}"
        if decision_due is not None:
            message += f"; décision attendue au plus tard le {decision_due.isoformat()}"
        respond_to_notice(session, file, "PARTIAL", message + ".", now)


async def declare_incomplete(
    session: AsyncSession,
    settings: TenantUrban,
    file: PermitFile,
    missing: list[str],
    now: datetime,
) -> None:
    check_state(
        file.reference, file.state, "the completeness check", frozenset({FileState.RECEIVED})
    )
    _refuse_once_deemed_complete(file, commune_day(now), "a list of missing documents")
    # The completeness deadline is met: the list of missing documents was sent in time.
    file.state, file.missing_documents = FileState.INCOMPLETE, missing
    file.missing_asked_on, file.updated_at = commune_day(now), now
    await refresh_deadlines(session, file, settings, commune_day(now))


def _refuse_once_deemed_complete(file: PermitFile, today: date, what: str) -> None:
    """Raise ``DeemedComplete`` when the file's completeness check went unanswered in its
    days (CoDT D.IV.33†): it is complete since, and its decision days run; asking for
    documents now, or starting the check over with complements, would push them back."""
    start, deemed = deadlines.decision_clock_start(facts_of(file))
    if deemed and start is not None and today > start:
        raise DeemedComplete(file.reference, start, what)


async def receive_complements(
    session: AsyncSession, settings: TenantUrban, file: PermitFile, came_on: date, now: datetime
) -> None:
    """The applicant sent what was missing on ``came_on``: the completeness check starts
    over from that day (the file's receipt day stays as it was)."""
    check_state(file.reference, file.state, "complements", frozenset({FileState.INCOMPLETE}))
    today = commune_day(now)
    # A list sent after the check's days (before that rule) started nothing over either.
    _refuse_once_deemed_complete(file, today, "complements")
    if came_on > today:
        raise ReceivedInTheFuture(came_on, today)
    if came_on < (file.missing_asked_on or file.received_on):
        raise ComplementsBeforeTheirRequest(file.reference, came_on, file.missing_asked_on)
    file.state, file.complements_received_on = FileState.RECEIVED, came_on
    file.missing_asked_on, file.updated_at = None, now
    await refresh_deadlines(session, file, settings, today)


async def record_inquiry(
    session: AsyncSession, settings: TenantUrban, file: PermitFile, starts_on: date, now: datetime
) -> None:
    check_state(file.reference, file.state, "a public inquiry", INSTRUCTION_STATES)
    if file.complete_on is not None and starts_on < file.complete_on:
        raise DayOutOfProcedure(
            "inquiry-before-completeness",
            f"File {file.reference}: a public inquiry starting on {starts_on.isoformat()},"
            f" before the file was found complete ({file.complete_on.isoformat()}).",
        )
    file.inquiry_starts_on, file.updated_at = starts_on, now
    await refresh_deadlines(session, file, settings, commune_day(now))


async def request_opinion(
    session: AsyncSession,
    settings: TenantUrban,
    file: PermitFile,
    body: str,
    subject: str,
    due_on: date,
    now: datetime,
) -> Opinion:
    check_state(file.reference, file.state, "an opinion request", INSTRUCTION_STATES)
    if due_on < commune_day(now):
        raise DayOutOfProcedure(
            "opinion-due-in-the-past",
            f"File {file.reference}: an opinion of {body} due on {due_on.isoformat()}, before"
            " today: the body would have no day to give it (it would be deemed favourable at"
            " once).",
        )
    opinion = Opinion(
        id=str(uuid.uuid4()),
        tenant=file.tenant,
        body=body,
        subject=subject,
        due_on=due_on,
        requested_at=now,
        delivery="pending",
    )
    file.opinions.append(opinion)
    file.updated_at = now
    data = OpinionRequested(
        file_id=file.id,
        opinion_id=opinion.id,
        body=body,
        subject=subject,
        due_on=due_on,
        reference=file.reference,
    )
    # The gateway's receipt names this event: it tells whether the body was reached.
    opinion.request_event_id = _emit(session, file, data).id
    await refresh_deadlines(session, file, settings, commune_day(now))
    return opinion


async def record_opinion_delivery(
    session: AsyncSession,
    settings: TenantUrban,
    file: PermitFile,
    opinion: Opinion,
    outcome: str,
    now: datetime,
) -> None:
    """The gateway's receipt of an opinion request. One not delivered is shown on the file,
    is no deadline of the body's, and holds the decision back until the body is asked again
    (``request_decision``): a body never consulted gives no opinion deemed favourable."""
    if opinion.delivery == "delivered":
        return  # a delivered request stays delivered whatever comes late
    opinion.delivery = outcome
    if outcome in UNDELIVERED:
        file.updated_at = now  # the file's deadlines change: a clerk's change racing it is told
        if opinion.received_on is not None:
            # Retried past its due day, and deemed favourable meanwhile: the clerk sees both
            # on the file; the decision already asked on it is not undone here.
            log.warning(
                "opinion %s of %s on %s not delivered, but recorded already as %s",
                opinion.id,
                opinion.body,
                file.reference,
                opinion.verdict,
            )
        await refresh_deadlines(session, file, settings, commune_day(now))


async def record_opinion(
    session: AsyncSession,
    settings: TenantUrban,
    file: PermitFile,
    opinion: Opinion,
    *,
    verdict: str,
    text: str,
    given_on: date,
    now: datetime,
) -> None:
    """Record a body's opinion; the last one in makes the file ready and asks for the decision."""
    today = commune_day(now)
    opinion.verdict, opinion.text, opinion.given_on, opinion.received_on = (
        verdict,
        text,
        given_on,
        today,
    )
    file.updated_at = now
    await refresh_deadlines(session, file, settings, today)
    if file.state == FileState.COMPLETE and not _readiness_problems(file, today):
        await request_decision(session, settings, file, now)


#: The verdict of an opinion not given in its time (CoDT D.IV.37†): the college decides
#: as if it were favourable. A body silent for ever held the file for ever before.
DEEMED_FAVOURABLE = "deemed_favourable"


def deem_favourable(opinion: Opinion, today: date) -> None:
    """Record an opinion past its due day, never given, as deemed favourable; an answer
    arriving after this is kept for the clerk, not recorded over it."""
    opinion.verdict, opinion.received_on = DEEMED_FAVOURABLE, today
    opinion.text = (
        f"Aucun avis reçu au {deadlines.opinion_last_day(opinion.due_on).isoformat()},"
        " terme du délai: avis réputé favorable (CoDT D.IV.37)."
    )
    log.info("opinion %s of %s deemed favourable", opinion.id, opinion.body)


def _undelivered(opinion: Opinion) -> bool:
    return opinion.received_on is None and opinion.delivery in UNDELIVERED


def _awaited(file: PermitFile) -> list[Opinion]:
    """The file's opinion requests that reached their body, or may have: only those run a
    term (a request whose receipt has not come yet counts as delivered)."""
    return [opinion for opinion in file.opinions if not _undelivered(opinion)]


def _not_reached(file: PermitFile) -> list[str]:
    """The bodies whose last request did not reach them and that gave no opinion. A request
    that failed and was sent to the same body again since is replaced by the new one."""
    bodies = []
    for position, opinion in enumerate(file.opinions):
        asked_again = any(
            comparable_body(later.body) == comparable_body(opinion.body)
            for later in file.opinions[position + 1 :]
        )
        if _undelivered(opinion) and not asked_again:
            bodies.append(opinion.body)
    return sorted(bodies)


def _readiness_problems(file: PermitFile, today: date) -> list[str]:
    pending = sorted([o.body for o in _awaited(file) if o.received_on is None] + _not_reached(file))
    if pending:
        return pending
    if file.inquiry_starts_on is not None:
        end, _ = deadlines.inquiry_end(file.inquiry_starts_on)
        if today <= end:
            return [f"inquiry until {end.isoformat()}"]
    return []


async def request_decision(
    session: AsyncSession, settings: TenantUrban, file: PermitFile, now: datetime
) -> None:
    """Ask the college for its decision (``urban.file.decision_needed.v1``); again while it
    has not decided, for meeting keeps a request it cannot place apart (its unplaced
    requests) and only a new one reaches it."""
    check_state(file.reference, file.state, "asking for the decision", DECISION_REQUEST_STATES)
    today = commune_day(now)
    not_reached = _not_reached(file)
    if not_reached:
        raise OpinionRequestNotDelivered(file.reference, not_reached)
    awaited = [opinion for opinion in _awaited(file) if opinion.received_on is None]
    overdue = [o for o in awaited if deadlines.opinion_last_day(o.due_on) < today]
    for opinion in overdue:
        deem_favourable(opinion, today)
    pending = sorted(opinion.body for opinion in awaited if opinion.received_on is None)
    if pending:
        raise OpinionsPending(file.reference, pending)
    if file.inquiry_starts_on is not None:
        end, _ = deadlines.inquiry_end(file.inquiry_starts_on)
        if today <= end:
            raise InquiryRunning(file.reference, end.isoformat())
    if overdue:  # their deadlines are met now
        await refresh_deadlines(session, file, settings, today)
    target = settings.decision
    first = file.applicants[0] if file.applicants else None
    title = f"{TITLES[_file_type(file)]} {file.reference}: {file.subject}"
    data = DecisionNeeded(
        file_id=file.id,
        title=title[:1000],
        proposing_service=target.proposing_service,
        category=target.category,
        # Cut to what meeting's item holds: a longer text was parked there, unplaced.
        description=clipped(_description(file), DECISION_TEXT_LENGTH),
        meeting_config=target.meeting_config,
        external_identifier=file.reference,
        concerned_party=(
            DecisionConcernedParty.model_validate(
                {
                    "kind": first.kind,
                    "identifier": first.identifier,
                    "name": clipped(first.name, DECISION_PARTY_NAME_LENGTH),
                }
            )
            if first is not None
            else None
        ),
    )
    event = _emit(session, file, data)
    file.state, file.decision_requested_event_id, file.updated_at = (
        FileState.AWAITING_DECISION,
        event.id,
        now,
    )
    file.decision_meeting_config = target.meeting_config
    log.info(
        "tenant %s asked %s for a decision on %s",
        file.tenant,
        target.meeting_config,
        file.reference,
    )


def _description(file: PermitFile) -> str:
    parcels = ", ".join(
        f"{parcel.capakey}" + (f" ({parcel.address})" if parcel.address else "")
        for parcel in file.parcels
    )
    opinions = "; ".join(f"{opinion.body}: {opinion.verdict}" for opinion in file.opinions)
    lines = [f"Parcelles: {parcels or '-'}", f"Avis: {opinions or 'aucun'}"]
    if file.inquiry_starts_on is not None:
        lines.append(f"Enquête publique ouverte le {file.inquiry_starts_on.isoformat()}")
    return "\n".join(lines)


async def record_decision(
    session: AsyncSession,
    settings: TenantUrban,
    file: PermitFile,
    decided: ItemDecided,
    now: datetime,
) -> bool:
    """Apply the college's decision; False for a postponement (the file keeps waiting).

    Only a file that asked for it takes one, and only from the meeting it asked: an item
    that merely names the file (a council's debate, a clerk's typing) grants nothing
    while opinions are pending or the inquiry runs."""
    # The configuration asked, which the tenant's file may have changed since.
    asked = file.decision_meeting_config or settings.decision.meeting_config
    if decided.meeting_config != asked:
        raise DecisionFromAnotherMeeting(file.reference, decided.meeting_config, asked)
    outcome = DECISION_OUTCOMES.get(decided.decision)
    if outcome is None:
        log.info("tenant %s: decision on %s postponed", file.tenant, file.reference)
        return False
    check_state(file.reference, file.state, "a decision", frozenset({FileState.AWAITING_DECISION}))
    if file.notice_state == "closed":
        raise NotificationClosed(file.notice_notification_id or "")
    decided_on = commune_day(decided.meeting_date)
    file.state, file.decision, file.decision_number = (
        outcome,
        outcome.value,
        decided.decision_number,
    )
    file.decision_text, file.decided_on, file.updated_at = decided.decision_text, decided_on, now
    if file.notice_notification_id is None:
        # Nothing in the hub tells urban when a counter file's decision reached the applicant
        # (courrier notifies from meeting's decision): its notification is not followed here.
        file.notified_on = decided_on
    await refresh_deadlines(session, file, settings, commune_day(now))
    if file.notice_notification_id is not None:
        verb = "octroie" if outcome == FileState.GRANTED else "refuse"
        message = (
            f"Le collège communal {verb} la demande {file.reference} "
            f"(décision {decided.decision_number or '-'} du {decided_on.isoformat()})."
        )
        respond_to_notice(
            session,
            file,
            "FINAL",
            message,
            now,
            decision="granted" if outcome == FileState.GRANTED else "refused",
            decision_number=decided.decision_number,
        )
    log.info("tenant %s: %s is %s", file.tenant, file.reference, outcome)
    return True


# -- the college's extension of its decision deadline (CoDT D.IV.46, last paragraph) ----------


async def extend_decision_deadline(
    session: AsyncSession, settings: TenantUrban, file: PermitFile, reason: str, now: datetime
) -> None:
    """Record the college's one extension of the decision deadline, decided today
    (``urban.file.decision_deadline_extended.v1``), or refuse it with the rule it breaks."""
    today = commune_day(now)
    refusal = deadlines.extension_refusal(facts_of(file), today)
    if refusal is not None:
        raise _extension_refused(file, refusal)
    previous_due_on = file_deadlines(file)[deadlines.DECISION]
    file.decision_extended_on, file.updated_at = today, now
    # The extended deadline is a new last day: its warnings are due again.
    await refresh_deadlines(session, file, settings, today)
    data = DecisionDeadlineExtended(
        file_id=file.id,
        reference=file.reference,
        extended_on=today,
        previous_due_on=previous_due_on,
        due_on=file_deadlines(file)[deadlines.DECISION],
        reason=reason,
    )
    _emit(session, file, data)
    log.info(
        "tenant %s: decision deadline of %s extended to %s",
        file.tenant,
        file.reference,
        data.due_on,
    )


def _extension_refused(file: PermitFile, refusal: deadlines.ExtensionRefusal) -> Conflict:
    match refusal:
        case deadlines.ExtensionRefusal.NOT_EXTENDABLE:
            return DecisionDeadlineNotExtendable(file.reference, _file_type(file))
        case deadlines.ExtensionRefusal.ALREADY_EXTENDED:
            assert file.decision_extended_on is not None
            return DecisionDeadlineAlreadyExtended(file.reference, file.decision_extended_on)
        case deadlines.ExtensionRefusal.DECIDED:
            assert file.decided_on is not None
            return FileAlreadyDecided(file.reference, file.decided_on)
        case deadlines.ExtensionRefusal.NOT_STARTED:
            return DecisionClockNotStarted(file.reference, file.state)
        case deadlines.ExtensionRefusal.TOO_LATE:
            return DecisionDeadlinePassed(file.reference, file_deadlines(file)[deadlines.DECISION])
        case _:
            assert_never(refusal)


def respond_to_notice(
    session: AsyncSession,
    file: PermitFile,
    state: str,
    message: str,
    now: datetime,
    *,
    decision: str | None = None,
    decision_number: str | None = None,
) -> NoticeResponse:
    if file.notice_notification_id is None or file.notice_instance_code is None:
        raise NotANoticeFile(file.reference)
    if file.notice_state == "closed":
        raise NotificationClosed(file.notice_notification_id)
    data = NoticeResponseRequested.model_validate(
        {
            "file_id": file.id,
            "notification_id": file.notice_notification_id,
            "instance_code": file.notice_instance_code,
            "state": state,
            "message": message,
            "decision": decision,
            "decision_number": decision_number,
        }
    )
    event = _emit(session, file, data)
    file.notice_state = "closed" if state == "FINAL" else "partial_sent"
    response = NoticeResponse(
        event_id=event.id,
        file_id=file.id,
        tenant=file.tenant,
        state=state,
        message=message,
        delivery="pending",
        created_at=now,
        updated_at=now,
    )
    session.add(response)
    return response


def send_final_response(
    session: AsyncSession, file: PermitFile, message: str, now: datetime
) -> NoticeResponse:
    """The decided file's FINAL response, sent by the clerk: again, corrected, once NOTICe
    refused the first for good (``record_notice_delivery`` opened the notification again)."""
    check_state(file.reference, file.state, "a FINAL response (the decision)", DECIDED_STATES)
    return respond_to_notice(
        session,
        file,
        "FINAL",
        message,
        now,
        decision=file.decision,
        decision_number=file.decision_number,
    )


async def record_notice_delivery(
    session: AsyncSession,
    settings: TenantUrban,
    response: NoticeResponse,
    outcome: str,
    now: datetime,
) -> None:
    """The gateway's receipt of a response; a delivered FINAL is the decision's notification,
    one NOTICe refused for good opens the notification again for a corrected FINAL."""
    if response.delivery == "delivered":
        return  # a delivered response stays delivered whatever comes late
    response.delivery, response.updated_at = outcome, now
    if response.state != "FINAL":
        return
    file = await find_file(session, response.tenant, response.file_id)
    if outcome == "delivered":
        # Closed again, should an operator's replay have brought a refused one through.
        file.notice_state = "closed"
        file.notified_on, file.updated_at = commune_day(now), now
        await refresh_deadlines(session, file, settings, commune_day(now))
    elif file.notice_state == "closed" and not await _final_on_its_way(session, file, response):
        # Nothing answered NOTICe: closed, the notification took no corrected FINAL and the
        # decision was never notified. A file is decided only once complete, which sent its
        # PARTIAL: that is the state it goes back to.
        file.notice_state, file.updated_at = "partial_sent", now
        log.warning(
            "tenant %s: NOTICe refused the FINAL response of %s (%s); the notification is open"
            " again for a corrected one",
            file.tenant,
            file.reference,
            outcome,
        )


async def _final_on_its_way(
    session: AsyncSession, file: PermitFile, refused: NoticeResponse
) -> bool:
    """Whether another FINAL response of the file is pending or delivered: a late receipt of
    an older, refused one must not open the notification that one answers."""
    return any(
        other.state == "FINAL"
        and other.event_id != refused.event_id
        and other.delivery not in UNDELIVERED
        for other in await notice_responses(session, file)
    )


def record_identity(
    file: PermitFile,
    applicant: FileApplicant,
    outcome: str,
    answer: dict[str, str | None] | None,
    now: datetime,
) -> IdentityStatus:
    """Compare the register's answer with the declared identity; flag the file on a mismatch."""
    if outcome != "delivered" or answer is None:
        status = IdentityStatus.FAILED
    else:
        last_name, first_name = split_declared_name(applicant.name)
        status = identity_status(last_name, first_name, answer)
        registered = ", ".join(
            part for part in (answer.get("last_name"), answer.get("first_names")) if part
        )
        applicant.registered_name = registered or None
    applicant.identity_status = status
    file.identity_flagged = any(
        IdentityStatus(other.identity_status) in FLAGGED_IDENTITIES for other in file.applicants
    )
    file.updated_at = now
    return status


# -- deadlines ------------------------------------------------------------------------------


def facts_of(file: PermitFile) -> deadlines.Facts:
    return deadlines.Facts(
        file_type=_file_type(file),
        received_on=file.received_on,
        complete_on=file.complete_on,
        missing_asked_on=file.missing_asked_on,
        complements_received_on=file.complements_received_on,
        opinions=tuple(
            deadlines.OpinionFacts(
                o.id, o.body, o.due_on, o.received_on, delivered=o.delivery not in UNDELIVERED
            )
            for o in file.opinions
        ),
        inquiry_starts_on=file.inquiry_starts_on,
        decided_on=file.decided_on,
        notified_on=file.notified_on,
        decision_extended_on=file.decision_extended_on,
    )


def file_deadlines(file: PermitFile) -> dict[str, date]:
    return {deadline.name: deadline.due_on for deadline in deadlines.deadlines(facts_of(file))}


#: The warnings sent for a file, read at each of its changes: built once, with the file
#: bound as a parameter (see ``_WHOLE_FILE_BY``).
_WARNINGS_SENT = select(
    DeadlineWarningSent.deadline, DeadlineWarningSent.level, DeadlineWarningSent.due_on
).where(DeadlineWarningSent.file_id == bindparam("file_id"))


async def warnings_sent(session: AsyncSession, file_id: str) -> dict[tuple[str, str], date]:
    """The warnings the watcher sent for the file. Only the watcher records them, and it
    reads them before it adds any; so the caller's pending changes need no flush first
    (they are written once, with the rest of the change)."""
    with session.no_autoflush:
        rows = await session.execute(_WARNINGS_SENT, {"file_id": file_id})
    return {(deadline, level): due_on for deadline, level, due_on in rows.tuples()}


async def refresh_deadlines(
    session: AsyncSession,
    file: PermitFile,
    settings: TenantUrban,
    today: date,
    *,
    new_file: bool = False,
    already: deadlines.SentWarnings | None = None,
) -> list[deadlines.Deadline]:
    found = deadlines.deadlines(facts_of(file))
    if already is None:
        already = {} if new_file else await warnings_sent(session, file.id)
    upcoming = deadlines.next_open(found)
    file.next_deadline = upcoming.name if upcoming else None
    file.next_deadline_on = upcoming.due_on if upcoming else None
    file.next_warning_on = deadlines.next_warning_on(found, today, settings.warning_days, already)
    return found


def _file_type(file: PermitFile) -> FileType:
    for file_type in TITLES:
        if file_type == file.file_type:
            return file_type
    raise ValueError(f"file {file.id} has an unknown type {file.file_type!r}")


def _emit(session: AsyncSession, file: PermitFile, data: EventData) -> CloudEvent:
    """Stage an event of the file: subject the file id, so its events keep their order."""
    event = new_event(data, tenant=file.tenant, subject=file.id, source=SOURCE)
    stage(session, event)
    return event


# -- unprocessed events -------------------------------------------------------------------


def keep_unprocessed(
    session: AsyncSession,
    *,
    event_id: str,
    tenant: str,
    event_type: str,
    subject: str,
    problem: str,
    reason: str,
    data: dict[str, Any] | None,
    now: datetime,
) -> None:
    listed, contents = contents_apart(data)
    session.add(
        UnprocessedEvent(
            event_id=event_id,
            tenant=tenant,
            event_type=event_type,
            subject=subject,
            problem=problem,
            reason=plain_text(reason),  # it may quote the notification: a NUL, PostgreSQL refuses
            data=listed,
            contents=contents,
            received_at=now,
        )
    )


def contents_apart(
    data: dict[str, Any] | None,
) -> tuple[dict[str, Any] | None, list[str | None] | None]:
    """``data`` without its documents' ``content_base64``, and those, in order."""
    documents = data.get("documents") if data else None
    if not data or not isinstance(documents, list):
        return data, None
    contents = [d.get("content_base64") if isinstance(d, dict) else None for d in documents]
    listed = [
        {key: value for key, value in d.items() if key != "content_base64"}
        if isinstance(d, dict)
        else d
        for d in documents
    ]
    return {**data, "documents": listed}, contents


def kept_data(kept: UnprocessedEvent) -> dict[str, Any] | None:
    """A kept event's data as it came, its documents' bytes put back (``contents`` must be
    loaded: ``find_unprocessed`` does)."""
    if kept.data is None or not kept.contents:
        return kept.data
    documents = kept.data.get("documents") or []
    return {
        **kept.data,
        "documents": [
            {**document, "content_base64": content} if content is not None else document
            for document, content in zip(documents, kept.contents, strict=False)
        ],
    }


class UnprocessedNotFound(NotFound):
    def __init__(self, event_id: str) -> None:
        super().__init__("unprocessed event", event_id)


async def find_unprocessed(session: AsyncSession, tenant: str, event_id: str) -> UnprocessedEvent:
    kept = await session.get(
        UnprocessedEvent, event_id, options=[undefer(UnprocessedEvent.contents)]
    )
    if kept is None or kept.tenant != tenant:
        raise UnprocessedNotFound(event_id)
    return kept


async def note_replay_failed(
    session: AsyncSession, tenant: str, event_id: str, problem: ProblemError
) -> None:
    """The kept event's reason, as its last replay found it."""
    kept = await find_unprocessed(session, tenant, event_id)
    kept.problem, kept.reason = problem.slug, problem.detail


# -- queries --------------------------------------------------------------------------------


#: One file is read with its small collections joined in (a few applicants, parcels and
#: opinions each) and its documents, which may be many, by the relationship's second query:
#: two queries instead of five cost 2.5 ms of CPU instead of 4.4 (docs/benchmarks.md).
_WHOLE_FILE = (
    joinedload(PermitFile.applicants),
    joinedload(PermitFile.parcels),
    joinedload(PermitFile.opinions),
)


#: What a file is looked up by, besides its tenant.
FileKey = Literal["id", "reference", "notice_notification_id"]

#: The whole-file query for each key, built once with the tenant and the key's value bound
#: as parameters: SQLAlchemy keys and looks it up once, where a query with three joined
#: loads built for each lookup cost 0.2 ms more to run (measured on a 2-vCPU AMD EPYC host).
_WHOLE_FILE_BY: dict[str, Select[tuple[PermitFile]]] = {
    key: select(PermitFile)
    .where(
        PermitFile.tenant == bindparam("tenant"),
        table_of(PermitFile).c[key] == bindparam("value"),
    )
    .options(*_WHOLE_FILE)
    for key in get_args(FileKey)
}


async def one_file(
    session: AsyncSession, tenant: str, key: FileKey, value: str
) -> PermitFile | None:
    """The tenant's file whose ``key`` is ``value``, with its collections, or None."""
    parameters = {"tenant": tenant, "value": value}
    result = await session.execute(_WHOLE_FILE_BY[key], parameters)
    return result.unique().scalar_one_or_none()


async def find_file(session: AsyncSession, tenant: str, file_id: str) -> PermitFile:
    """The tenant's file; another tenant's file is "not found", never "forbidden"."""
    file = await one_file(session, tenant, "id", file_id)
    if file is None:
        raise NotFound("file", file_id)
    return file


async def find_by_reference(session: AsyncSession, tenant: str, reference: str) -> PermitFile:
    file = await one_file(session, tenant, "reference", reference)
    if file is None:
        raise NotFound("file", reference)
    return file


async def read_document(
    session: AsyncSession, tenant: str, file_id: str, document_id: str
) -> FileDocument:
    document = await session.scalar(
        select(FileDocument)
        .join(PermitFile, PermitFile.id == FileDocument.file_id)
        .where(
            PermitFile.tenant == tenant,
            FileDocument.file_id == file_id,
            FileDocument.document_id == document_id,
        )
        .options(undefer(FileDocument.content))
    )
    if document is None:
        raise NotFound("document", document_id)
    return document


@dataclass(frozen=True)
class FileFilter:
    state: FileState | None = None
    file_type: str | None = None
    reference: str | None = None
    identity_flagged: bool | None = None
    deadline_before: date | None = None


async def list_files(
    session: AsyncSession, tenant: str, where: FileFilter, *, limit: int, offset: int
) -> tuple[list[PermitFile], int]:
    conditions: list[ColumnElement[bool]] = [PermitFile.tenant == tenant]
    for column, value in (
        (PermitFile.state, where.state),
        (PermitFile.file_type, where.file_type),
        (PermitFile.reference, where.reference),
        (PermitFile.identity_flagged, where.identity_flagged),
    ):
        if value is not None:
            conditions.append(column == value)
    if where.deadline_before is not None:
        conditions.append(PermitFile.next_deadline_on <= where.deadline_before)
        order: tuple[Any, ...] = (PermitFile.next_deadline_on, PermitFile.id)
    else:
        order = (PermitFile.created_at.desc(), PermitFile.id)
    return await listing_page(session, PermitFile, conditions, order, limit=limit, offset=offset)


async def list_unprocessed(
    session: AsyncSession, tenant: str, *, limit: int, offset: int
) -> list[UnprocessedEvent]:
    rows = await session.scalars(
        select(UnprocessedEvent)
        .where(UnprocessedEvent.tenant == tenant)
        .order_by(UnprocessedEvent.received_at.desc(), UnprocessedEvent.event_id)
        .limit(limit)
        .offset(offset)
    )
    return list(rows.all())


#: A file's NOTICe responses, shown with the file: built once (see ``_WHOLE_FILE_BY``).
_NOTICE_RESPONSES = (
    select(NoticeResponse)
    .where(
        NoticeResponse.file_id == bindparam("file_id"),
        NoticeResponse.tenant == bindparam("tenant"),
    )
    .order_by(NoticeResponse.created_at)
)


async def notice_responses(session: AsyncSession, file: PermitFile) -> list[NoticeResponse]:
    parameters = {"file_id": file.id, "tenant": file.tenant}
    rows = await session.scalars(_NOTICE_RESPONSES, parameters)
    return list(rows.all())
