"""The regional oversight ("tutelle") of a decision: its transmission, then the Region's outcome.

A decision subject to oversight stages ``DecisionTransmissionRequested``; the
gateway transmits it and the meeting service follows it here:

- ``gateway.receipts``: the transmission's receipt. ``delivered`` moves the
  decision's oversight delivery to ``in_progress`` with the acknowledgement
  number as its reference (the Region has it and is examining it);
  ``failed`` and ``dead`` move it to ``failed`` with the reason (an operator
  replays it from the gateway; the next receipt moves it on again).
- ``gateway.inbound``: ``OversightOutcomeReceived``, the Region's outcome. The
  delivery is ``done`` whatever the outcome (the transmission's work is over),
  the item keeps the outcome (``oversight_outcome``: an annulled decision is
  void), and ``DecisionOversightOutcome`` tells the other services.

Both are idempotent: the consumer's inbox skips a redelivered event, a done
delivery stays done, and a second outcome for an item that has one is logged
and skipped. News of an item unknown here is logged and skipped: it must never
stop the consumer, which would retry it forever.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import CloudEvent, new_event
from contracts.events.gateway import TOPIC as RECEIPTS_TOPIC
from contracts.events.gateway import DeliveryReceipt
from contracts.events.meeting import DecisionOversightOutcome, DecisionTransmissionRequested
from contracts.events.oversight import OversightOutcomeReceived
from contracts.events.peppol import INBOUND_TOPIC
from kernel.consumer import EventHandler
from kernel.database import utcnow
from kernel.outbox import stage
from services.meeting import agenda
from services.meeting.domain import DeliveryStatus
from services.meeting.tables import Item

log = logging.getLogger(__name__)

TOPICS = (RECEIPTS_TOPIC, INBOUND_TOPIC)
OUTCOME_WORDS = {
    "approved": "approved by the oversight",
    "annulled": "annulled by the oversight",
    "no_objection": "no objection within the legal period",
}


async def handle_transmission_receipt(session: AsyncSession, event: CloudEvent) -> None:
    receipt = event.data_as(DeliveryReceipt)
    if receipt.source_event_type != DecisionTransmissionRequested.TYPE:
        return  # the receipt of another service's delivery
    status: DeliveryStatus
    if receipt.outcome == "delivered":
        status, reference = "in_progress", receipt.external_reference
        detail = "transmitted; the oversight is examining it"
    else:
        status, reference = "failed", None
        detail = f"transmission {receipt.outcome}: {receipt.reason or 'no reason given'}"
    recorded = await agenda.record_delivery(
        session,
        event.tenant,
        event.subject,
        "oversight",
        status,
        utcnow(),
        reference=reference,
        detail=detail,
    )
    if not recorded:
        log.warning(
            "receipt %s names item %r of tenant %s, which owes no oversight here; ignored",
            event.id,
            event.subject,
            event.tenant,
        )


async def handle_oversight_outcome(session: AsyncSession, event: CloudEvent) -> None:
    outcome = event.data_as(OversightOutcomeReceived)
    item = await session.scalar(
        select(Item)
        .where(Item.id == outcome.item_id, Item.tenant == event.tenant)
        .with_for_update()
    )
    if item is None or item.decision_number != outcome.decision_number:
        log.warning(
            "oversight outcome %s names decision %s (item %r) of tenant %s, unknown here; ignored",
            event.id,
            outcome.decision_number,
            outcome.item_id,
            event.tenant,
        )
        return
    if item.oversight_outcome is not None:
        log.info(
            "decision %s already has the oversight outcome %s; %s (%s) ignored",
            item.decision_number,
            item.oversight_outcome,
            outcome.outcome,
            event.id,
        )
        return
    now = utcnow()
    item.oversight_outcome, item.updated_at = outcome.outcome, now
    words = OUTCOME_WORDS[outcome.outcome]
    detail = f"{words} on {outcome.decided_on.isoformat()}" + (
        f": {outcome.reason}" if outcome.reason else ""
    )
    await agenda.record_delivery(
        session,
        event.tenant,
        item.id,
        "oversight",
        "done",
        now,
        reference=outcome.acknowledgement_number,
        detail=detail,
    )
    data = DecisionOversightOutcome(
        item_id=item.id,
        meeting_config=item.meeting_config,
        decision_number=outcome.decision_number,
        acknowledgement_number=outcome.acknowledgement_number,
        outcome=outcome.outcome,
        decided_on=outcome.decided_on,
        reason=outcome.reason,
    )
    stage(session, new_event(data, tenant=item.tenant, subject=item.id, source=agenda.SOURCE))
    log.info("tenant %s: decision %s %s", item.tenant, item.decision_number, words)


HANDLERS: dict[str, EventHandler] = {
    DeliveryReceipt.TYPE: handle_transmission_receipt,
    OversightOutcomeReceived.TYPE: handle_oversight_outcome,
}
