"""Handlers of ``gateway.receipts``: an outgoing mail follows its e-Box delivery.

A receipt names the mail by its CloudEvent subject and the tenant by its
``tenant`` attribute. A receipt that matches no outgoing mail of that tenant,
or another send request than the mail's, is logged and skipped: it must
never stop the consumer, which would retry it forever.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import raiseload

from contracts.envelope import CloudEvent
from contracts.events.courrier import OutgoingMailSendRequested
from contracts.events.gateway import TOPIC as RECEIPTS_TOPIC
from contracts.events.gateway import DeliveryReceipt
from kernel.consumer import EventHandler
from kernel.database import utcnow
from services.courrier.domain import Direction, outcome_of
from services.courrier.registry import record_delivery_outcome
from services.courrier.tables import Mail

log = logging.getLogger(__name__)

__all__ = ["HANDLERS", "RECEIPTS_TOPIC", "handle_delivery_receipt"]


async def handle_delivery_receipt(session: AsyncSession, event: CloudEvent) -> None:
    receipt: DeliveryReceipt = event.data_as(DeliveryReceipt)
    if receipt.source_event_type != OutgoingMailSendRequested.TYPE:
        return  # a receipt of another of our events (e.g. an archived registration)
    # The batch's earlier receipts are flushed together at its commit, not one by one here.
    with session.no_autoflush:
        mail = await session.scalar(
            select(Mail)
            .where(
                Mail.id == event.subject,
                Mail.tenant == event.tenant,
                Mail.direction == Direction.OUTGOING,
            )
            .options(raiseload(Mail.files))  # a receipt changes the state, never the files
            .with_for_update()
        )
    if mail is None:
        log.warning(
            "receipt %s names outgoing mail %r of tenant %s, which does not exist here; ignored",
            event.id,
            event.subject,
            event.tenant,
        )
        return
    if mail.send_event_id != receipt.source_event_id:
        log.warning(
            "receipt %s answers send request %s, not mail %s's (%s); ignored",
            event.id,
            receipt.source_event_id,
            mail.registration_number,
            mail.send_event_id,
        )
        return
    if not record_delivery_outcome(session, mail, outcome_of(receipt), utcnow()):
        log.info(
            "receipt %s (%s) leaves outgoing mail %s %s",
            event.id,
            receipt.outcome,
            mail.registration_number,
            mail.state,
        )


HANDLERS: dict[str, EventHandler] = {DeliveryReceipt.TYPE: handle_delivery_receipt}
