"""What urban consumes: NOTICe notifications and opinions (``gateway.inbound``), the
gateway's receipts (identity checks, NOTICe responses) and the college's decisions
(``meeting.events``, matched by ``external_identifier``: urban never polls meeting).

Each event is applied once (the consumer's inbox). An event that cannot be
applied (a notification with an unknown file type, a bad CaPaKey, NISS or
document, addressed to another commune's NOTICe instance, or news of a closed
notification; an opinion or a decision for a file this tenant does not have)
is kept whole in ``urban_unprocessed_events`` with the reason and the consumer
goes on: it must never stop the partition, nor be dropped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, raiseload

from contracts.envelope import CloudEvent, EnvelopeError, envelope_attributes
from contracts.events.gateway import TOPIC as RECEIPTS_TOPIC
from contracts.events.gateway import DeliveryReceipt
from contracts.events.meeting import TOPIC as MEETING_TOPIC
from contracts.events.meeting import ItemDecided
from contracts.events.outside import NoticeNotificationReceived, OpinionReceived
from contracts.events.peppol import INBOUND_TOPIC
from contracts.events.urban import Applicant, IdentificationRequested, NoticeResponseRequested
from kernel.consumer import EventConsumer, EventHandler, InboxEntry, Incoming
from kernel.database import utcnow
from kernel.errors import NotFound, ProblemError
from services.urban import permits
from services.urban.configuration import TenantUrban
from services.urban.domain import REFERENCE_PATTERN, check_applicant, check_capakey, check_file_type
from services.urban.tables import FileApplicant, NoticeResponse, Opinion, PermitFile

log = logging.getLogger(__name__)

TOPICS = (INBOUND_TOPIC, RECEIPTS_TOPIC, MEETING_TOPIC)

__all__ = ["TOPICS", "NoticeKeepingConsumer", "handlers"]


class UnknownTenant(ProblemError):
    def __init__(self, tenant: str) -> None:
        super().__init__(
            422, "unknown-tenant", "Unknown tenant", f"Tenant {tenant!r} is not configured here."
        )


#: The NOTICe response a delivery receipt answers. Built once, with the event and the tenant
#: as bound parameters, so that SQLAlchemy keys and looks it up once (see
#: ``permits.one_file``).
_RESPONSE_OF_RECEIPT = select(NoticeResponse).where(
    NoticeResponse.event_id == bindparam("event_id"),
    NoticeResponse.tenant == bindparam("tenant"),
)


#: The file whose applicant an identification receipt answers, with its applicants only:
#: the answer changes them, so the file's other collections are not loaded. Built once
#: (see ``_RESPONSE_OF_RECEIPT``); with its four loader options, building and keying it
#: was the costliest of the receipt's statements.
_FILE_OF_IDENTIFICATION = (
    select(PermitFile)
    .join(FileApplicant, FileApplicant.file_id == PermitFile.id)
    .where(
        FileApplicant.identification_event_id == bindparam("event_id"),
        FileApplicant.tenant == bindparam("tenant"),
    )
    .options(
        joinedload(PermitFile.applicants),
        raiseload(PermitFile.parcels),
        raiseload(PermitFile.opinions),
        raiseload(PermitFile.documents),
    )
)


def handlers(urban_settings: Mapping[str, TenantUrban]) -> dict[str, EventHandler]:
    def settings_of(tenant: str) -> TenantUrban:
        settings = urban_settings.get(tenant)
        if settings is None:
            raise UnknownTenant(tenant)
        return settings

    async def handle_notification(session: AsyncSession, event: CloudEvent) -> None:
        notification = event.data_as(NoticeNotificationReceived)
        try:
            settings = settings_of(event.tenant)
            await permits.receive_notification(session, settings, notification, utcnow())
        except ProblemError as exc:
            keep(session, event, exc)

    async def handle_opinion(session: AsyncSession, event: CloudEvent) -> None:
        received = event.data_as(OpinionReceived)
        try:
            settings = settings_of(event.tenant)
            opinion = await session.scalar(
                select(Opinion).where(
                    Opinion.id == received.opinion_id,
                    Opinion.file_id == received.file_id,
                    Opinion.tenant == event.tenant,
                )
            )
            if opinion is None:
                raise NotFound("opinion request", received.opinion_id)
            if opinion.received_on is not None:
                log.info("opinion %s already recorded; event %s skipped", opinion.id, event.id)
                return
            file = await permits.find_file(session, event.tenant, received.file_id)
            await permits.record_opinion(
                session,
                settings,
                file,
                opinion,
                verdict=received.verdict,
                text=received.text,
                given_on=received.given_on,
                now=utcnow(),
            )
        except ProblemError as exc:
            keep(session, event, exc)

    async def handle_decision(session: AsyncSession, event: CloudEvent) -> None:
        decided = event.data_as(ItemDecided)
        reference = decided.external_identifier
        if reference is None or not REFERENCE_PATTERN.match(reference):
            return  # an item of another service
        try:
            settings = settings_of(event.tenant)
            file = await permits.find_by_reference(session, event.tenant, reference)
            await permits.record_decision(session, settings, file, decided, utcnow())
        except ProblemError as exc:
            keep(session, event, exc)

    async def handle_receipt(session: AsyncSession, event: CloudEvent) -> None:
        receipt = event.data_as(DeliveryReceipt)
        if receipt.source_event_type == IdentificationRequested.TYPE:
            await _identity_receipt(session, event, receipt)
        elif receipt.source_event_type == NoticeResponseRequested.TYPE:
            response = await session.scalar(
                _RESPONSE_OF_RECEIPT,
                {"event_id": receipt.source_event_id, "tenant": event.tenant},
            )
            if response is None:
                log.warning("receipt %s answers no NOTICe response of ours; ignored", event.id)
                return
            await permits.record_notice_delivery(
                session, settings_of(event.tenant), response, receipt.outcome, utcnow()
            )

    return {
        NoticeNotificationReceived.TYPE: handle_notification,
        OpinionReceived.TYPE: handle_opinion,
        ItemDecided.TYPE: handle_decision,
        DeliveryReceipt.TYPE: handle_receipt,
    }


async def _identity_receipt(
    session: AsyncSession, event: CloudEvent, receipt: DeliveryReceipt
) -> None:
    # The batch's earlier receipts are flushed together at its commit, not one by one here.
    with session.no_autoflush:
        found = await session.execute(
            _FILE_OF_IDENTIFICATION,
            {"event_id": receipt.source_event_id, "tenant": event.tenant},
        )
        file = found.unique().scalar_one_or_none()
    if file is None:
        log.warning("receipt %s answers no identification request of ours; ignored", event.id)
        return
    applicant = next(
        a for a in file.applicants if a.identification_event_id == receipt.source_event_id
    )
    status = permits.record_identity(file, applicant, receipt.outcome, receipt.answer, utcnow())
    # The applicant's national number never reaches the logs: the file and position name it.
    log.info(
        "tenant %s: applicant %d of %s is %s",
        file.tenant,
        applicant.position,
        file.reference,
        status,
    )


def keep(session: AsyncSession, event: CloudEvent, problem: ProblemError) -> None:
    log.warning(
        "tenant %s: %s %s kept unprocessed: %s", event.tenant, event.type, event.id, problem.detail
    )
    permits.keep_unprocessed(
        session,
        event_id=event.id,
        tenant=event.tenant,
        event_type=event.type,
        subject=event.subject,
        problem=problem.slug,
        reason=problem.detail,
        data=event.data.model_dump(mode="json"),
        now=utcnow(),
    )


# -- notifications that do not even match their contract ------------------------------------


def explain_invalid_notification(data: Any) -> ProblemError | None:
    """The first rule a raw notification breaks, in the words of the urban domain."""
    if not isinstance(data, dict):
        return None
    try:
        check_file_type(data.get("file_type"))
        for raw in data.get("applicants") or []:
            check_applicant(Applicant.model_construct(**raw))
        for parcel in data.get("parcels") or []:
            check_capakey(str(parcel.get("capakey", "")))
    except ProblemError as exc:
        return exc
    except (TypeError, AttributeError):
        return None
    return None


class NoticeKeepingConsumer(EventConsumer):
    """The kernel's consumer, except that a NOTICe notification breaking its contract is kept.

    The kernel skips a record whose data does not match its contract (a poison
    record must not stop a partition). A NOTICe notification is a citizen's
    request: skipping it would lose it, so urban keeps it, with the reason,
    among the unprocessed events, and goes on.
    """

    async def keep_broken(self, record: Incoming, error: EnvelopeError) -> str:
        if record.headers.get("ce_type") != NoticeNotificationReceived.TYPE:
            return await super().keep_broken(record, error)
        try:
            envelope_attributes(record.headers)
        except EnvelopeError:
            # Its envelope (a 300-character id, a tenant that is no NIS code) would not fit
            # among the unprocessed notifications: kept as every broken record is.
            return await super().keep_broken(record, error)
        kept = await self._keep_invalid(record.headers, record.value, error)
        return self._count(record.topic, "kept" if kept else "duplicate")

    async def _keep_invalid(self, headers: dict[str, str], value: bytes, error: Exception) -> bool:
        event_id = headers.get("ce_id") or ""
        try:
            data: Any = json.loads(value)
        except ValueError:
            data = {"undecodable_value": value.decode("utf-8", "replace")}
        problem = explain_invalid_notification(data) or ProblemError(
            422, "contract-violation", "Not a valid notification", _short(error)
        )
        async with self._sessions() as session, session.begin():
            if not event_id or await session.get(InboxEntry, event_id) is not None:
                return False
            log.warning(
                "a NOTICe notification %s is kept unprocessed: %s", event_id, problem.detail
            )
            permits.keep_unprocessed(
                session,
                event_id=event_id,
                tenant=headers.get("ce_tenant", "")[:5],
                event_type=NoticeNotificationReceived.TYPE,
                subject=headers.get("ce_subject", "")[:200],
                problem=problem.slug,
                reason=problem.detail,
                data=data if isinstance(data, dict) else {"value": data},
                now=utcnow(),
            )
            session.add(
                InboxEntry(
                    event_id=event_id,
                    event_type=NoticeNotificationReceived.TYPE,
                    handled_at=utcnow(),
                )
            )
        return True


def _short(error: Exception) -> str:
    cause = error.__cause__
    if isinstance(cause, ValidationError):
        first = cause.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        return f"{location}: {first['msg']}"
    return str(error)
