"""The delivery engine: consume events, deliver each on its routes, record, retry, announce.

Nothing lost, nothing twice:
- Kafka offsets are committed only after every record of the batch has its
  first attempt's outcome recorded (delivered, failed, or scheduled for retry).
- The idempotency key ``<event id>:<route>`` is recorded with the outcome and
  sent to the target; after a crash the same event is attempted again with the
  same key and the target recognises it.
- Transient failures are retried by ``run_retries`` from the delivery log with
  exponential backoff and jitter; other documents go on meanwhile. One
  document's deliveries on one route keep their order: a later event waits
  while an earlier one is still being retried.
- Final outcomes are announced on ``gateway.receipts`` through the outbox, in
  the transaction that records them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from sqlalchemy import and_, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from contracts.envelope import CloudEvent, EnvelopeError, from_record, headers_as_text, new_event
from contracts.events import event_class_for
from contracts.events.gateway import DeliveryReceipt
from gateway.connectors.base import Connector, Delivery
from gateway.deliveries import FINAL_STATUSES, DeliveryRecord, idempotency_key, next_attempt_time
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from gateway.routing import Route, RoutingTable
from kernel.database import utcnow
from kernel.kafka import make_consumer
from kernel.metrics import DELIVERIES, DELIVERY_LATENCY, EVENTS_CONSUMED
from kernel.outbox import OutboxRelay, stage
from kernel.telemetry import continue_trace, inject_headers, tracer

log = logging.getLogger(__name__)
SOURCE = "urn:hub:gateway"
#: A claimed retry is hidden from other schedulers this long (a crashed one's claim expires).
RETRY_LEASE = timedelta(seconds=120)


@dataclass(frozen=True)
class Outcome:
    status: str  # delivered | failed | retry
    external_reference: str | None = None
    reason: str | None = None
    answer: dict[str, str | None] | None = None


class DeliveryEngine:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        routing: RoutingTable,
        connectors: Mapping[tuple[str, str], Connector],
        relay: OutboxRelay | None = None,
        concurrency: int = 64,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._routing = routing
        self._connectors = connectors
        self._relay = relay
        self._slots = asyncio.Semaphore(concurrency)
        self._clock = clock
        self._tracer = tracer("gateway")

    # -- consuming -----------------------------------------------------------------

    def topics(self) -> set[str]:
        classes = (event_class_for(t) for t in self._routing.event_types())
        return {cls.TOPIC for cls in classes if cls is not None}

    async def run_consumer(self, bootstrap_servers: str, group_id: str = "gateway") -> None:
        topics = self.topics()
        if not topics:
            log.warning("no routes configured: the gateway consumes nothing")
            return
        consumer = make_consumer(bootstrap_servers, group_id, sorted(topics), client_id="gateway")
        try:
            # start() waits for the group join; a shutdown during it must still stop the client.
            await consumer.start()
            while True:
                await self.consume_batch(consumer)
        finally:
            await consumer.stop()

    async def consume_batch(self, consumer: AIOKafkaConsumer) -> int:
        batches = await consumer.getmany(timeout_ms=200, max_records=500)
        if not batches:
            return 0
        by_key: dict[bytes, list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
        for records in batches.values():
            for record in records:
                by_key[record.key or b""].append(record)
        results = await asyncio.gather(
            *(self._handle_in_order(records) for records in by_key.values()),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            # The database is away (or worse): record nothing as consumed. Rewind to the
            # batch's first offsets; what was recorded meanwhile is recognised and skipped.
            log.error("gateway batch failed (%d keys), rewinding: %r", len(failures), failures[0])
            for partition, records in batches.items():
                consumer.seek(partition, records[0].offset)
            await asyncio.sleep(1.0)
            return 0
        await consumer.commit()
        return sum(len(records) for records in batches.values())

    async def _handle_in_order(self, records: Iterable[ConsumerRecord[bytes, bytes]]) -> None:
        for record in records:
            await self.handle_record(
                headers_as_text(record.headers), record.value or b"", record.topic
            )

    async def handle_record(self, headers: dict[str, str], value: bytes, topic: str) -> None:
        try:
            event = from_record(headers, value)
        except EnvelopeError as exc:
            log.warning("gateway skipped a record on %s: %s", topic, exc)
            EVENTS_CONSUMED.labels("gateway", topic, "rejected").inc()
            return
        routes = self._routing.routes_for(event.tenant, event.type)
        EVENTS_CONSUMED.labels("gateway", topic, "routed" if routes else "ignored").inc()
        await asyncio.gather(
            *(self._first_attempt(event, route, headers, value) for route in routes)
        )

    async def _first_attempt(
        self, event: CloudEvent, route: Route, headers: dict[str, str], value: bytes
    ) -> None:
        key = idempotency_key(event.id, route.name)
        async with self._sessions() as session:
            known = await session.scalar(
                select(DeliveryRecord.status).where(DeliveryRecord.idempotency_key == key)
            )
            waiting_behind = known is None and await self._has_unfinished_earlier(
                session, event, route
            )
        if known is not None:
            return  # seen before a crash or a rebalance: recorded, or owned by the retries
        record = DeliveryRecord(
            idempotency_key=key,
            event_id=event.id,
            event_type=event.type,
            event_time=event.time,
            tenant=event.tenant,
            subject=event.subject,
            route=route.name,
            connector=route.connector_type,
            status="retrying",
            attempts=0,
            next_attempt_at=self._clock(),
            record_headers=headers,
            record_value=value,
            created_at=self._clock(),
            updated_at=self._clock(),
        )
        outcome = None if waiting_behind else await self._attempt(record, event, route)
        async with self._sessions() as session:
            try:
                async with session.begin():
                    session.add(record)
                    if outcome is not None:
                        self._apply(session, record, event, route, outcome)
            except IntegrityError:
                # Another member of the group recorded the same key during a rebalance.
                log.info("delivery %s was recorded concurrently; keeping the first record", key)
                return
        if outcome is not None and outcome.status != "retry" and self._relay:
            self._relay.wake()

    async def _has_unfinished_earlier(
        self, session: AsyncSession, event: CloudEvent, route: Route
    ) -> bool:
        found = await session.scalar(
            select(DeliveryRecord.id)
            .where(
                DeliveryRecord.tenant == event.tenant,
                DeliveryRecord.subject == event.subject,
                DeliveryRecord.route == route.name,
                DeliveryRecord.status == "retrying",
            )
            .limit(1)
        )
        return found is not None

    # -- attempting ----------------------------------------------------------------

    async def _attempt(self, record: DeliveryRecord, event: CloudEvent, route: Route) -> Outcome:
        connector = self._connectors[(route.tenant, route.connector_name)]
        async with self._slots:
            with (
                continue_trace(record.record_headers),
                self._tracer.start_as_current_span(
                    f"deliver {route.name}",
                    attributes={
                        "hub.route": route.name,
                        "hub.tenant": route.tenant,
                        "hub.idempotency_key": record.idempotency_key,
                    },
                ),
            ):
                delivery = Delivery(
                    idempotency_key=record.idempotency_key,
                    tenant=route.tenant,
                    route=route.name,
                    event=event,
                    attempt=record.attempts + 1,
                    trace_headers=inject_headers(),
                )
                try:
                    result = await connector.deliver(delivery)
                except PermanentDeliveryError as exc:
                    return Outcome("failed", reason=exc.reason)
                except RetryableDeliveryError as exc:
                    return Outcome("retry", reason=exc.reason)
                except Exception as exc:
                    # A connector bug must not lose the event: keep retrying, visibly.
                    log.exception(
                        "connector %s crashed on %s", route.connector_type, record.idempotency_key
                    )
                    return Outcome("retry", reason=f"internal connector error: {exc!r}")
                return Outcome(
                    "delivered", external_reference=result.external_reference, answer=result.answer
                )

    def _apply(
        self,
        session: AsyncSession,
        record: DeliveryRecord,
        event: CloudEvent,
        route: Route,
        outcome: Outcome,
    ) -> None:
        now = self._clock()
        record.attempts += 1
        record.updated_at = now
        record.last_error = outcome.reason
        policy = self._routing.retry_policy(route)
        status = outcome.status
        if status == "retry":
            if record.attempts < policy.max_attempts:
                record.status = "retrying"
                record.next_attempt_at = next_attempt_time(now, record.attempts, policy)
                DELIVERIES.labels(route.connector_type, "retry").inc()
                return
            status = "dead"
        record.status = status
        record.next_attempt_at = None
        record.finished_at = now
        record.external_reference = outcome.external_reference
        DELIVERIES.labels(route.connector_type, status).inc()
        DELIVERY_LATENCY.labels(route.connector_type).observe((now - event.time).total_seconds())
        receipt = DeliveryReceipt(
            source_event_id=event.id,
            source_event_type=event.type,
            route=route.name,
            connector=route.connector_type,
            idempotency_key=record.idempotency_key,
            outcome=status,  # type: ignore[arg-type]
            external_reference=outcome.external_reference,
            reason=outcome.reason if status != "delivered" else None,
            attempts=record.attempts,
            # Not kept in the delivery log (it may be personal data): the receipt is staged
            # in this transaction, so it is never needed again.
            answer=outcome.answer if status == "delivered" else None,
        )
        with continue_trace(record.record_headers):
            stage(
                session,
                new_event(receipt, tenant=event.tenant, subject=event.subject, source=SOURCE),
            )

    # -- retrying ------------------------------------------------------------------

    async def run_retries(self, poll_seconds: float = 0.5) -> None:
        while True:
            try:
                attempted = await self.retry_due()
            except Exception:
                log.exception("gateway retry scheduler failed; trying again")
                attempted = 0
            if attempted == 0:
                await asyncio.sleep(poll_seconds)

    async def retry_due(self, limit: int = 200) -> int:
        """Attempt the deliveries whose retry time has come; return how many."""
        now = self._clock()
        earlier = aliased(DeliveryRecord)
        async with self._sessions() as session, session.begin():
            query = (
                select(DeliveryRecord)
                .where(
                    DeliveryRecord.status == "retrying",
                    DeliveryRecord.next_attempt_at <= now,
                    ~exists().where(
                        and_(
                            earlier.tenant == DeliveryRecord.tenant,
                            earlier.subject == DeliveryRecord.subject,
                            earlier.route == DeliveryRecord.route,
                            earlier.status == "retrying",
                            earlier.id < DeliveryRecord.id,
                        )
                    ),
                )
                .order_by(DeliveryRecord.next_attempt_at)
                .limit(limit)
            )
            if session.bind.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True, of=DeliveryRecord)
            due = list((await session.scalars(query)).all())
            if due:
                await session.execute(
                    update(DeliveryRecord)
                    .where(DeliveryRecord.id.in_([r.id for r in due]))
                    .values(next_attempt_at=now + RETRY_LEASE)
                )
        await asyncio.gather(*(self._retry_one(record) for record in due))
        return len(due)

    async def _retry_one(self, record: DeliveryRecord) -> None:
        try:
            event = from_record(record.record_headers, record.record_value)
        except EnvelopeError as exc:  # the contract changed under a stored event
            outcome, event_for_receipt = Outcome("failed", reason=f"unreadable event: {exc}"), None
        else:
            event_for_receipt = event
            route = self._routing.route(record.tenant, record.route)
            if route is None:
                outcome = Outcome("retry", reason=f"route {record.route!r} is no longer configured")
            else:
                outcome = await self._attempt(record, event, route)
        async with self._sessions() as session, session.begin():
            fresh = await session.get(DeliveryRecord, record.id)
            if fresh is None or fresh.status in FINAL_STATUSES:
                return
            route = self._routing.route(record.tenant, record.route)
            if event_for_receipt is None or route is None:
                fresh.attempts += 1
                fresh.last_error = outcome.reason
                fresh.updated_at = self._clock()
                fresh.status = "dead" if event_for_receipt is None else "retrying"
                fresh.next_attempt_at = (
                    None if event_for_receipt is None else self._clock() + timedelta(minutes=5)
                )
                return
            self._apply(session, fresh, event_for_receipt, route, outcome)
        if outcome.status != "retry" and self._relay:
            self._relay.wake()

    async def replay(self, key: str, tenant: str) -> DeliveryRecord | None:
        """An operator asks for a failed or dead delivery to be tried again from scratch."""
        async with self._sessions() as session, session.begin():
            record = await session.scalar(
                select(DeliveryRecord).where(
                    DeliveryRecord.idempotency_key == key, DeliveryRecord.tenant == tenant
                )
            )
            if record is None or record.status not in ("failed", "dead"):
                return record
            record.status = "retrying"
            record.attempts = 0
            record.next_attempt_at = self._clock()
            record.finished_at = None
            record.updated_at = self._clock()
            return record
