"""Handlers of ``courrier.events``: a decision's notification follows the mail that carries it.

Courrier sends the notification of a decision as an outgoing mail ``about``
the item (service ``meeting``, the item's id). Its events move the item's
``notification`` delivery on: send requested → ``in_progress``, sent →
``done`` (reference: the e-Box message id), failed → ``failed`` (detail: the
reason, and that the clerk sends the decision on paper). Mail about anything
else is not ours and is ignored. An item unknown here, of another tenant or
that owes no notification is logged and skipped: it must never stop the
consumer, which would retry it forever.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import CloudEvent
from contracts.events.courrier import TOPIC as COURRIER_TOPIC
from contracts.events.courrier import (
    DocumentReference,
    OutgoingMailFailed,
    OutgoingMailSendRequested,
    OutgoingMailSent,
)
from kernel.consumer import EventHandler
from kernel.database import utcnow
from services.meeting import agenda
from services.meeting.domain import DeliveryStatus

log = logging.getLogger(__name__)

__all__ = ["COURRIER_TOPIC", "HANDLERS"]

#: ``about.service`` of the mail that notifies one of our decisions.
MEETING = "meeting"


def paper_fallback(registration_number: str, reason: str) -> str:
    return (
        f"Outgoing mail {registration_number} could not be delivered to the e-Box: "
        f"{reason.rstrip('. ')}. "
        "Send the decision on paper (registered letter) and keep the proof of dispatch."
    )


async def _move_notification(
    session: AsyncSession,
    event: CloudEvent,
    about: DocumentReference | None,
    status: DeliveryStatus,
    *,
    reference: str | None = None,
    detail: str | None = None,
) -> None:
    if about is None or about.service != MEETING:
        return
    owed = await agenda.record_delivery(
        session,
        event.tenant,
        about.document_id,
        "notification",
        status,
        utcnow(),
        reference=reference,
        detail=detail,
    )
    if not owed:
        log.warning(
            "%s %s is about item %s of tenant %s, which owes no notification here; ignored",
            event.type,
            event.id,
            about.document_id,
            event.tenant,
        )


async def handle_send_requested(session: AsyncSession, event: CloudEvent) -> None:
    mail = event.data_as(OutgoingMailSendRequested)
    await _move_notification(
        session,
        event,
        mail.about,
        "in_progress",
        detail=f"Outgoing mail {mail.registration_number} is on its way to the e-Box.",
    )


async def handle_sent(session: AsyncSession, event: CloudEvent) -> None:
    mail = event.data_as(OutgoingMailSent)
    await _move_notification(
        session,
        event,
        mail.about,
        "done",
        reference=mail.ebox_message_id or None,
        detail=f"Delivered to the e-Box as outgoing mail {mail.registration_number}.",
    )


async def handle_failed(session: AsyncSession, event: CloudEvent) -> None:
    mail = event.data_as(OutgoingMailFailed)
    await _move_notification(
        session,
        event,
        mail.about,
        "failed",
        detail=paper_fallback(mail.registration_number, mail.reason),
    )


HANDLERS: dict[str, EventHandler] = {
    OutgoingMailSendRequested.TYPE: handle_send_requested,
    OutgoingMailSent.TYPE: handle_sent,
    OutgoingMailFailed.TYPE: handle_failed,
}
