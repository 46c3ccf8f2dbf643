"""What urban consumes: NOTICe notifications and opinions (``gateway.inbound``), the
gateway's receipts (identity checks, NOTICe responses, opinion requests) and the college's
decisions (``meeting.events``, matched by ``external_identifier``: urban never polls meeting).

Each event is applied once (the consumer's inbox). An event that cannot be
applied (a notification with an unknown file type, a bad CaPaKey, NISS or
document, addressed to another commune's NOTICe instance, or news of a closed
notification; an opinion or a decision for a file this tenant does not have)
is kept whole in ``urban_unprocessed_events`` with the reason and the consumer
goes on: it must never stop the partition, nor be dropped. Once its cause is
fixed (the tenant's NOTICe instance configured, the file it names opened), an
operator replays it (``replay``, ``POST /v1/unprocessed-notifications/{id}/replay``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import ValidationError
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, raiseload

from contracts.envelope import CloudEvent, EnvelopeError, envelope_attributes
from contracts.events.base import EventData
from contracts.events.gateway import TOPIC as RECEIPTS_TOPIC
from contracts.events.gateway import DeliveryReceipt
from contracts.events.meeting import TOPIC as MEETING_TOPIC
from contracts.events.meeting import ItemDecided
from contracts.events.outside import NoticeNotificationReceived, OpinionReceived
from contracts.events.peppol import INBOUND_TOPIC
from contracts.events.urban import (
    Applicant,
    IdentificationRequested,
    NoticeResponseRequested,
    OpinionRequested,
)
from kernel.consumer import EventConsumer, EventHandler, InboxEntry, Incoming
from kernel.database import utcnow
from kernel.errors import NotFound, ProblemError
from services.urban import permits
from services.urban.configuration import TenantUrban
from services.urban.domain import (
    REFERENCE_PATTERN,
    OpinionAlreadyRecorded,
    OpinionFromAnotherBody,
    check_applicant,
    check_capakey,
    check_file_type,
    comparable_body,
)
from services.urban.tables import (
    FileApplicant,
    NoticeResponse,
    Opinion,
    PermitFile,
    UnprocessedEvent,
)

log = logging.getLogger(__name__)

TOPICS = (INBOUND_TOPIC, RECEIPTS_TOPIC, MEETING_TOPIC)

__all__ = ["TOPICS", "NoticeKeepingConsumer", "handlers", "replay"]


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


#: The opinion request a delivery receipt answers (built once, see ``_RESPONSE_OF_RECEIPT``).
_OPINION_OF_RECEIPT = select(Opinion).where(
    Opinion.request_event_id == bindparam("event_id"),
    Opinion.tenant == bindparam("tenant"),
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


#: Applies one kept kind of event's data for a tenant, raising the ``ProblemError`` of the
#: rule it breaks; the file it opened or changed, if any.
Applier = Callable[[AsyncSession, str, Any], Awaitable[PermitFile | None]]


def appliers(urban_settings: Mapping[str, TenantUrban]) -> dict[str, Applier]:
    """How each kind of event that may be kept unprocessed is applied: by the consumer as it
    comes, and again by an operator's replay once its cause is fixed (``replay``)."""

    def settings_of(tenant: str) -> TenantUrban:
        settings = urban_settings.get(tenant)
        if settings is None:
            raise UnknownTenant(tenant)
        return settings

    async def apply_notification(session: AsyncSession, tenant: str, data: Any) -> PermitFile:
        notification: NoticeNotificationReceived = data
        settings = settings_of(tenant)
        return await permits.receive_notification(session, settings, notification, utcnow())

    async def apply_opinion(session: AsyncSession, tenant: str, data: Any) -> PermitFile | None:
        received: OpinionReceived = data
        settings = settings_of(tenant)
        opinion = await session.scalar(
            select(Opinion).where(
                Opinion.id == received.opinion_id,
                Opinion.file_id == received.file_id,
                Opinion.tenant == tenant,
            )
        )
        if opinion is None:
            raise NotFound("opinion request", received.opinion_id)
        if comparable_body(received.body) != comparable_body(opinion.body):
            # Another body's answer would fill this one's place (the delegated official's
            # sets the decision's time) and could make the file ready.
            raise OpinionFromAnotherBody(opinion.id, opinion.body, received.body)
        if opinion.received_on is not None:
            if (opinion.verdict, opinion.text) == (received.verdict, received.text):
                log.info("opinion %s already recorded; the same answer skipped", opinion.id)
                return None
            # A corrected answer, or one after the opinion was deemed favourable: kept for
            # the clerk to see, not written over the one the file went on with.
            raise OpinionAlreadyRecorded(
                opinion.id, opinion.verdict or "", opinion.received_on, received.verdict
            )
        file = await permits.find_file(session, tenant, received.file_id)
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
        return file

    async def apply_decision(session: AsyncSession, tenant: str, data: Any) -> PermitFile | None:
        decided: ItemDecided = data
        reference = decided.external_identifier
        if reference is None or not REFERENCE_PATTERN.match(reference):
            return None  # an item of another service
        settings = settings_of(tenant)
        file = await permits.find_by_reference(session, tenant, reference)
        await permits.record_decision(session, settings, file, decided, utcnow())
        return file

    return {
        NoticeNotificationReceived.TYPE: apply_notification,
        OpinionReceived.TYPE: apply_opinion,
        ItemDecided.TYPE: apply_decision,
    }


#: The data model of each kind of event ``appliers`` knows.
KEPT_KINDS: dict[str, type[EventData]] = {
    NoticeNotificationReceived.TYPE: NoticeNotificationReceived,
    OpinionReceived.TYPE: OpinionReceived,
    ItemDecided.TYPE: ItemDecided,
}


def handlers(urban_settings: Mapping[str, TenantUrban]) -> dict[str, EventHandler]:
    def keeping(apply: Applier) -> EventHandler:
        async def handle(session: AsyncSession, event: CloudEvent) -> None:
            try:
                await apply(session, event.tenant, event.data)
            except ProblemError as exc:
                keep(session, event, exc)

        return handle

    def settings_of(tenant: str) -> TenantUrban:
        settings = urban_settings.get(tenant)
        if settings is None:
            raise UnknownTenant(tenant)
        return settings

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
        elif receipt.source_event_type == OpinionRequested.TYPE:
            await _opinion_receipt(session, settings_of(event.tenant), event, receipt)

    kept_kinds = {kind: keeping(apply) for kind, apply in appliers(urban_settings).items()}
    return {**kept_kinds, DeliveryReceipt.TYPE: handle_receipt}


class StillBroken(ProblemError):
    def __init__(self, event_id: str, reason: str) -> None:
        super().__init__(
            422,
            "contract-violation",
            "The kept event still breaks its contract",
            f"Event {event_id}: {reason}. A replay applies the event as it came; it cannot"
            " mend what it says.",
        )


class NotReplayable(ProblemError):
    def __init__(self, event_id: str, event_type: str) -> None:
        super().__init__(
            422,
            "not-replayable",
            "This kind of event is not replayed here",
            f"Event {event_id} is {event_type}, which urban does not apply.",
        )


async def replay(
    session: AsyncSession,
    urban_settings: Mapping[str, TenantUrban],
    kept: UnprocessedEvent,
) -> PermitFile | None:
    """Apply a kept event again, its cause fixed (the tenant's NOTICe instance configured,
    the file it named opened meanwhile): the file it opened or changed, and the event is no
    longer kept. Raises the ``ProblemError`` of the rule it still breaks; the caller's
    transaction then rolls back whatever the attempt changed."""
    kind = KEPT_KINDS.get(kept.event_type)
    if kind is None:
        raise NotReplayable(kept.event_id, kept.event_type)
    try:
        data = kind.model_validate(permits.kept_data(kept))
    except ValidationError as exc:
        raise StillBroken(kept.event_id, _first_error(exc)) from exc
    file = await appliers(urban_settings)[kept.event_type](session, kept.tenant, data)
    await session.delete(kept)
    log.info("tenant %s: kept event %s applied on replay", kept.tenant, kept.event_id)
    return file


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


async def _opinion_receipt(
    session: AsyncSession, settings: TenantUrban, event: CloudEvent, receipt: DeliveryReceipt
) -> None:
    opinion = await session.scalar(
        _OPINION_OF_RECEIPT, {"event_id": receipt.source_event_id, "tenant": event.tenant}
    )
    if opinion is None:
        log.warning("receipt %s answers no opinion request of ours; ignored", event.id)
        return
    file = await permits.find_file(session, event.tenant, opinion.file_id)
    await permits.record_opinion_delivery(
        session, settings, file, opinion, receipt.outcome, utcnow()
    )
    if receipt.outcome != "delivered":
        log.warning(
            "tenant %s: the opinion request to %s on %s was not delivered (%s): %s",
            file.tenant,
            opinion.body,
            file.reference,
            receipt.outcome,
            receipt.reason,
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
        return _first_error(cause)
    return str(error)


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"])
    return f"{location}: {first['msg']}"
