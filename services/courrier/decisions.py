"""Handlers of ``meeting.events``: a decision is notified to the person or company it concerns.

A numbered decision (``meeting.item.decided.v1``) that names a concerned
party becomes an outgoing mail, sent at once to that party's e-Box with the
letter of ``decision_letters``. The mail is ``about`` the meeting item, so
its events (send requested, sent, failed) tell the meeting service how the
notification went.

One mail per decision: the consumer's inbox skips a redelivered event, and a
decision already notified (by this event or another one about the same item)
is logged and skipped; a unique index on the requesting event backs this up
against concurrent consumers. A decision of a tenant unknown here is logged
and skipped: it must never stop the consumer, which would retry it forever.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import CloudEvent
from contracts.events.courrier import DocumentReference
from contracts.events.meeting import TOPIC as MEETING_TOPIC
from contracts.events.meeting import ItemDecided
from kernel.consumer import EventHandler, KeptUntilFixed
from kernel.database import utcnow
from kernel.tenants import Tenant
from services.courrier import registry
from services.courrier.decision_letters import DecisionLetter, render

log = logging.getLogger(__name__)

__all__ = ["MEETING_TOPIC", "decision_handlers"]

#: ``about.service`` of a decision's notification; the meeting service looks for it.
MEETING = "meeting"


def decision_handlers(tenants: dict[str, Tenant]) -> dict[str, EventHandler]:
    async def handle_item_decided(session: AsyncSession, event: CloudEvent) -> None:
        decided = event.data_as(ItemDecided)
        party = decided.concerned_party
        if party is None or decided.decision_number is None:
            return  # nobody to notify, or postponed: no decision was taken
        tenant = tenants.get(event.tenant)
        if tenant is None:
            # Kept, not dropped: replayed once the tenant is configured, its party notified.
            raise KeptUntilFixed(
                f"decision {decided.decision_number} of item {decided.item_id} is for tenant"
                f" {event.tenant}, not configured in courrier: configure it, then replay"
            )
        about = DocumentReference(service=MEETING, document_id=decided.item_id)
        existing = await registry.find_requested_mail(session, event.tenant, about, event.id)
        if existing is not None:
            log.info(
                "tenant %s: decision %s is already notified by outgoing mail %s; event %s skipped",
                event.tenant,
                decided.decision_number,
                existing.registration_number,
                event.id,
            )
            return
        now = utcnow()
        letter = DecisionLetter.of(decided, tenant.name, now)
        await registry.create_outgoing(
            session,
            tenant=event.tenant,
            recipient_kind=party.kind,
            recipient_identifier=party.identifier,
            recipient_name=party.name,
            subject=letter.subject,
            letter=render(letter),
            now=now,
            about=about,
            requested_by_event_id=event.id,
            send=True,
        )

    return {ItemDecided.TYPE: handle_item_decided}
