"""Handlers of ``urban.events``: the urban tool asks for an item by event, not by calling us.

``urban.file.decision_needed.v1`` becomes an agenda item of the configuration
it names. It is idempotent twice over: the consumer's inbox skips a
redelivered event, and a new request for an external identifier that already
has an item in that configuration is logged and skipped. A request that
cannot be placed (tenant or configuration unknown here, a category the
configuration lacks, a text longer than the item stores) is kept in
``meeting_unplaced_requests`` and logged: it must never stop the consumer,
which would retry it forever.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.envelope import CloudEvent
from contracts.events.urban import TOPIC as URBAN_TOPIC
from contracts.events.urban import DecisionNeeded
from kernel.consumer import EventHandler
from kernel.database import utcnow
from kernel.errors import ProblemError
from services.meeting import agenda
from services.meeting.configuration import TenantMeetings
from services.meeting.domain import check_item_fields, configuration

log = logging.getLogger(__name__)

__all__ = ["URBAN_TOPIC", "urban_handlers"]


def urban_handlers(meeting_settings: dict[str, TenantMeetings]) -> dict[str, EventHandler]:
    async def handle_decision_needed(session: AsyncSession, event: CloudEvent) -> None:
        request = event.data_as(DecisionNeeded)
        tenant_meetings = meeting_settings.get(event.tenant)
        try:
            if tenant_meetings is None:
                raise ProblemError(
                    422, "unknown-tenant", "Unknown tenant", "the tenant is not configured here"
                )
            config = configuration(tenant_meetings.configurations, request.meeting_config)
            check_item_fields(config, request.category, request.proposing_service)
            new = agenda.NewItem(
                title=request.title,
                proposing_service=request.proposing_service,
                category=request.category,
                description=request.description,
                motivation=request.motivation,
                external_identifier=request.external_identifier,
                concerned_party=request.concerned_party,
            )
            # Urban takes longer names than the item stores: refused by PostgreSQL at
            # insert, the request failed its retries and was rejected, out of sight.
            agenda.check_new_item(new)
        except ProblemError as exc:
            log.warning(
                "tenant %s: request %s for file %s cannot be placed, kept for operators: %s",
                event.tenant,
                event.id,
                request.file_id,
                exc.detail,
            )
            agenda.keep_unplaced_request(
                session,
                event_id=event.id,
                tenant=event.tenant,
                event_type=event.type,
                subject=event.subject,
                reason=exc.detail,
                data=request.model_dump(mode="json"),
                now=utcnow(),
            )
            return
        linked = await agenda.find_linked_item(
            session, event.tenant, request.external_identifier, config.id
        )
        if linked is not None:
            log.info(
                "tenant %s: %s already has item %s in %s; request %s skipped",
                event.tenant,
                request.external_identifier,
                linked.id,
                config.id,
                event.id,
            )
            return
        await agenda.create_item(
            session,
            tenant=event.tenant,
            config=config,
            new=new,
            origin="event",
            creator=event.source,
            now=utcnow(),
            requested_by_event_id=event.id,
        )

    return {DecisionNeeded.TYPE: handle_decision_needed}
