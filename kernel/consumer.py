"""The one way a service consumes events: handlers run in a transaction, at most once per event.

Each event's handler runs in one database transaction that also records the
event id in the ``inbox`` table (and may stage outgoing events in the outbox),
so a redelivered event is recognised and skipped. Offsets are committed to
Kafka only after the batch's transactions committed. Records that are not hub
CloudEvents are counted, logged and skipped: a poison record must not stop a
partition.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime

from aiokafka import AIOKafkaConsumer
from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from contracts.envelope import CloudEvent, EnvelopeError, from_record, headers_as_text
from kernel.database import Base, UtcDateTime, utcnow
from kernel.kafka import make_consumer
from kernel.metrics import EVENTS_CONSUMED
from kernel.outbox import OutboxRelay
from kernel.telemetry import continue_trace, tracer

log = logging.getLogger(__name__)

EventHandler = Callable[[AsyncSession, CloudEvent], Awaitable[None]]


class InboxEntry(Base):
    """An event this process has already handled (by CloudEvent id)."""

    __tablename__ = "inbox"
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(128))
    handled_at: Mapped[datetime] = mapped_column(UtcDateTime)


class EventConsumer:
    def __init__(
        self,
        *,
        component: str,
        sessions: async_sessionmaker[AsyncSession],
        handlers: dict[str, EventHandler],
        relay: OutboxRelay | None = None,
    ) -> None:
        self._component = component
        self._sessions = sessions
        self._handlers = handlers
        self._relay = relay

    async def handle(self, headers: dict[str, str], value: bytes, topic: str) -> str:
        """Handle one record; return the outcome label (handled, duplicate, ignored, rejected)."""
        try:
            event = from_record(headers, value)
        except EnvelopeError as exc:
            log.warning("%s skipped a record on %s: %s", self._component, topic, exc)
            return self._count(topic, "rejected")
        handler = self._handlers.get(event.type)
        if handler is None:
            return self._count(topic, "ignored")
        with (
            continue_trace(headers),
            tracer(self._component).start_as_current_span(f"handle {event.type}"),
        ):
            async with self._sessions() as session, session.begin():
                if await session.get(InboxEntry, event.id) is not None:
                    return self._count(topic, "duplicate")
                await handler(session, event)
                session.add(
                    InboxEntry(event_id=event.id, event_type=event.type, handled_at=utcnow())
                )
        if self._relay:
            self._relay.wake()
        return self._count(topic, "handled")

    def _count(self, topic: str, outcome: str) -> str:
        EVENTS_CONSUMED.labels(component=self._component, topic=topic, outcome=outcome).inc()
        return outcome

    async def run(self, bootstrap_servers: str, group_id: str, topics: Iterable[str]) -> None:
        consumer = make_consumer(bootstrap_servers, group_id, topics, client_id=self._component)
        try:
            # start() waits for the group join; a shutdown during it must still stop the client.
            await consumer.start()
            await self._consume(consumer)
        finally:
            await consumer.stop()

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            for partition, records in batches.items():
                for record in records:
                    while True:
                        try:
                            await self.handle(
                                headers_as_text(record.headers),
                                record.value or b"",
                                partition.topic,
                            )
                            break
                        except Exception:
                            # The database is away or the handler failed: do not skip the
                            # event, do not commit past it; try again shortly.
                            log.exception(
                                "%s could not handle an event on %s; retrying",
                                self._component,
                                partition.topic,
                            )
                            await asyncio.sleep(1.0)
            if batches:
                await consumer.commit()
