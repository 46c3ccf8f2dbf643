"""Inbound adapter: the regional oversight's outcomes on the decisions transmitted to it.

A background task of the gateway asks the oversight service
(``contracts/oversight/tutelle.wsdl``, a modelled contract) for the outcomes of
every tenant that has an ``oversight_soap`` connector (``listOutcomes`` after a
cursor, signed with the tenant's certificate). Each outcome is recorded once
in ``gateway_inbound`` (channel ``oversight``, keyed by tenant and
acknowledgement number: the oversight decides once on a transmission) and, in
the same transaction, ``OversightOutcomeReceived`` is staged in the gateway's
outbox for the meeting service.

The cursor needs no table of its own: outcomes come oldest first and are
recorded in that order, so the last recorded outcome of a tenant holds the
cursor to resume from after a restart. A crash in the middle of a page loses
at most the rest of it, which the next call lists again; one listed twice
(another replica, a crash after the commit) is found by its key and skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import new_event
from contracts.events.oversight import OversightOutcomeReceived
from gateway.connectors.oversight_soap import Outcome
from gateway.inbound.health import POLL_HEALTH
from gateway.inbound.records import InboundDocument, contract_problem, too_large_problem
from kernel.database import utcnow
from kernel.outbox import OutboxRelay, stage
from kernel.telemetry import tracer

log = logging.getLogger(__name__)
SOURCE = "urn:hub:gateway:oversight"
CHANNEL = "oversight"
SENDER = "tutelle"
DOCUMENT_TYPE = "oversight outcome"


class OutcomeSource(Protocol):
    """Where one tenant's outcomes are read (the ``oversight_soap`` connector, or a fake)."""

    tenant: str

    async def list_outcomes(self, since: int) -> tuple[list[Outcome], int]: ...


def source_id(tenant: str, acknowledgement_number: str) -> str:
    return f"{CHANNEL}:{tenant}:{acknowledgement_number}"


class OversightInbound:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        sources: Sequence[OutcomeSource],
        relay: OutboxRelay | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._sources = list(sources)
        self._relay = relay
        self._clock = clock
        self._cursors: dict[str, int] = {}
        self._tracer = tracer("gateway")

    async def run(self, poll_seconds: float = 5.0) -> None:
        if not self._sources:
            log.info("no tenant has an oversight connector: no outcomes to poll")
            return
        while True:
            await self.poll_once()
            await asyncio.sleep(poll_seconds)

    async def poll_once(self) -> int:
        """Take every new outcome of every tenant; return how many were published now."""
        published = 0
        for source in self._sources:
            try:
                published += await self.take(source)
            except Exception as exc:  # the service is away: try at the next poll
                log.warning("oversight outcomes of tenant %s not taken: %r", source.tenant, exc)
                POLL_HEALTH.failed(CHANNEL, source.tenant, source.tenant, self._clock(), exc)
            else:
                POLL_HEALTH.succeeded(CHANNEL, source.tenant, source.tenant, self._clock())
        return published

    async def take(self, source: OutcomeSource) -> int:
        tenant = source.tenant
        if tenant not in self._cursors:
            self._cursors[tenant] = await self._resume_cursor(tenant)
        published = 0
        while True:
            since = self._cursors[tenant]
            outcomes, next_cursor = await source.list_outcomes(since)
            for outcome in outcomes:
                published += await self._record(tenant, outcome)
                self._cursors[tenant] = max(self._cursors[tenant], outcome.cursor)
            self._cursors[tenant] = max(self._cursors[tenant], next_cursor)
            if not outcomes or self._cursors[tenant] == since:
                return published

    async def _resume_cursor(self, tenant: str) -> int:
        async with self._sessions() as session:
            last = await session.scalar(
                select(InboundDocument.document)
                .where(InboundDocument.channel == CHANNEL, InboundDocument.tenant == tenant)
                .order_by(InboundDocument.id.desc())
                .limit(1)
            )
        return int(json.loads(last)["cursor"]) if last is not None else 0

    async def _known(self, key: str) -> bool:
        async with self._sessions() as session:
            found = await session.scalar(
                select(InboundDocument.id).where(
                    InboundDocument.channel == CHANNEL, InboundDocument.source_message_id == key
                )
            )
        return found is not None

    async def _record(self, tenant: str, outcome: Outcome) -> int:
        """1 when the outcome was recorded and staged now, 0 when it already was."""
        key = source_id(tenant, outcome.acknowledgement_number)
        if await self._known(key):
            return 0
        # Whatever the service gave: ``decided_on.isoformat()`` of an outcome without a
        # readable date raised before it could be refused, the cursor stayed before it,
        # and every later outcome of the tenant (annulments too) waited for ever.
        decided_on = outcome.decided_on
        document = json.dumps(
            {
                "cursor": outcome.cursor,
                "acknowledgement_number": outcome.acknowledgement_number,
                "item_id": outcome.item_id,
                "decision_number": outcome.decision_number,
                "outcome": outcome.outcome,
                "decided_on": decided_on.isoformat() if decided_on is not None else None,
                "reason": outcome.reason,
            },
            sort_keys=True,
            default=str,
        ).encode()
        now = self._clock()
        record = InboundDocument(
            channel=CHANNEL,
            source_message_id=key,
            tenant=tenant,
            sender=SENDER,
            receiver=tenant,
            document_type=DOCUMENT_TYPE,
            size=len(document),
            sha256=hashlib.sha256(document).hexdigest(),
            document=document,
            status="published",
            # Reading after the cursor is the acknowledgement: nothing to tell the source.
            source_status="acknowledged",
            fetched_at=now,
            updated_at=now,
        )
        event = None
        if outcome.problem is not None:
            record.status, record.reason = "refused", f"As listed, {outcome.problem}."
        elif outcome.decided_on is None:
            record.status = "refused"
            record.reason = "As listed, the service gave it no readable DecidedOn (a date)."
        else:
            try:
                data = OversightOutcomeReceived(
                    item_id=outcome.item_id,
                    decision_number=outcome.decision_number,
                    acknowledgement_number=outcome.acknowledgement_number,
                    outcome=outcome.outcome,
                    decided_on=outcome.decided_on,
                    reason=outcome.reason,
                )
                event = new_event(data, tenant=tenant, subject=outcome.item_id, source=SOURCE)
            except Exception as exc:  # ValidationError, or whatever else zeep gave
                # Kept for an operator, and the cursor goes past it: an outcome the event
                # cannot carry (one the contract does not know, "suspended") was read again
                # at every poll, and every later outcome of the tenant waited behind it.
                record.status, record.reason = "refused", contract_problem("outcome", exc)
            else:
                if problem := too_large_problem("outcome", event):
                    record.status, record.reason, event = "refused", problem, None
        with self._tracer.start_as_current_span(
            "oversight inbound", attributes={"hub.oversight.acknowledgement": key}
        ):
            try:
                async with self._sessions() as session, session.begin():
                    session.add(record)
                    if event is not None:
                        record.event_id = event.id
                        stage(session, event)
            except IntegrityError:
                if not await self._known(key):
                    raise
                return 0  # another gateway replica recorded it meanwhile: theirs is the one
        if event is None:
            log.error("oversight outcome %s of tenant %s refused: %s", key, tenant, record.reason)
            return 0
        log.info(
            "oversight outcome %s on %s (%s) published for tenant %s",
            outcome.outcome,
            outcome.decision_number,
            outcome.acknowledgement_number,
            tenant,
        )
        if self._relay:
            self._relay.wake()
        return 1
