"""The delivery engine: consume events, deliver each on its routes, record, retry, announce.

Nothing lost, nothing twice:
- Kafka offsets are committed only after every record of the batch is recorded:
  with its first attempt's outcome (delivered, failed, or scheduled for retry),
  or, when its target has not answered within ``FIRST_ATTEMPT_SECONDS``, as an
  attempt under way. That attempt goes on in the background and records its
  outcome when it ends; the consumer goes on meanwhile. A slow target holds
  its own documents only, not every tenant's next fetch.
- The idempotency key ``<event id>:<route>`` is recorded with the outcome and
  sent to the target; after a crash the same event is attempted again with the
  same key and the target recognises it.
- Transient failures are retried by ``run_retries`` from the delivery log with
  exponential backoff and jitter; other documents go on meanwhile. One
  document's deliveries on one route keep their order: a later event waits
  while an earlier one is still being retried.
- Each target (a tenant's connector) has its own slots, and the scheduler
  claims for a target only the retries its slots can take soon: a target that
  answers slowly, or not at all, keeps its own deliveries waiting, not the
  other targets'.
- Final outcomes are announced on ``gateway.receipts`` through the outbox, in
  the transaction that records them.
- A record of a routed type whose envelope is broken (its tenant, id or time) has
  no route to take: it is kept in ``rejected_events``, in the transaction that
  records its fetch, for an operator to read and replay (``kernel.api``'s
  ``/v1/rejected-events``), as the services keep theirs.
- A record of another version of a type the gateway routes (``….v2``, its
  producer upgraded before the gateway) ends dead on the routes of its
  tenant that take that type, its service told, as a routed record whose data
  breaks its contract does; once the gateway is upgraded and that route made to
  take its version (under its name, the delivery's key), its deliveries are
  replayed (``replay_delivery``, ``replay_all``); never sent on a route of
  another version. Skipped, it was lost, and its document stayed "sending" for
  ever.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, nullcontext, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta

from aiokafka import AIOKafkaConsumer
from sqlalchemy import and_, bindparam, delete, exists, func, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from contracts.envelope import (
    Attributes,
    CloudEvent,
    EnvelopeError,
    envelope_attributes,
    from_record,
    headers_as_text,
    new_event,
    newer_than,
    type_stem,
    usable_event_id,
)
from contracts.events import event_class_for
from contracts.events.gateway import DeliveryReceipt
from gateway.connectors.base import (
    ATTEMPT_SECONDS,
    Connector,
    Delivery,
    attempt_deadline,
    delivered_event_types,
)
from gateway.deliveries import (
    FINAL_STATUSES,
    WITHOUT_STORED_EVENT,
    DeliveryRecord,
    idempotency_key,
    next_attempt_time,
)
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from gateway.routing import Route, RoutingTable
from kernel.consumer import NotHandledHere, RejectedEvent, rejected_event
from kernel.database import utcnow, write_transaction
from kernel.errors import Conflict
from kernel.kafka import (
    FETCH_MAX_WAIT_MS,
    LAST_COMMIT_SECONDS,
    FetchPacing,
    OffsetCommits,
    make_consumer,
)
from kernel.logs import mask_national_numbers
from kernel.metrics import DELIVERIES, DELIVERY_LATENCY, EVENTS_CONSUMED
from kernel.outbox import OutboxRelay, stage
from kernel.telemetry import continue_trace, inject_headers, tracer
from kernel.texts import clipped, plain_text

log = logging.getLogger(__name__)
SOURCE = "urn:hub:gateway"
#: How long a delivery whose route was removed waits for it to come back before it is dead.
ROUTE_GONE_FOR = timedelta(hours=2)
#: The retry scheduler counts a removed route's retries as a target of their own, named so.
REMOVED_ROUTE = "route:"
#: The stored events the retry scheduler holds at most, claimed and not yet ended.
RETRY_BATCH_BYTES = 32 * 1024 * 1024
#: The retries the scheduler holds at most, claimed and not yet ended.
RETRIES_AT_ONCE = 200
#: How long a fetch waits for its first attempts before it is recorded and committed. A
#: target answers in tens of milliseconds; one that has not answered after this keeps its
#: attempt going in the background, and the consumer reads the next fetch meanwhile.
FIRST_ATTEMPT_SECONDS = 2.0
#: The ended outcomes kept while the database refuses to record them: a few fetches'.
UNRECORDED_OUTCOMES = 10_000

#: The delivery log keeps a target's reference up to its column's length.
REFERENCE_LENGTH: int = DeliveryRecord.__table__.c.external_reference.type.length  # type: ignore[attr-defined]

#: A fetch's deliveries already recorded (parameter ``keys``), and the chains among its
#: documents (``subjects``) that wait on a retry. Built once, the values bound as
#: expanding parameters: statements built for each fetch cost 0.1 ms more each to run, as
#: SQLAlchemy keys and looks them up again (measured on a 2-vCPU AMD EPYC host), and at a
#: steady rate a fetch holds one or two events.
_RECORDED_KEYS = select(DeliveryRecord.idempotency_key).where(
    DeliveryRecord.idempotency_key.in_(bindparam("keys", expanding=True))
)
_RECORD_ID_OF_KEY = select(DeliveryRecord.id).where(
    DeliveryRecord.idempotency_key == bindparam("key")
)
_RETRYING_CHAINS = (
    select(DeliveryRecord.tenant, DeliveryRecord.subject, DeliveryRecord.route)
    .where(
        DeliveryRecord.subject.in_(bindparam("subjects", expanding=True)),
        DeliveryRecord.status == "retrying",
    )
    .distinct()
)
#: Which of a fetch's records with a broken envelope are kept already (by their ``ids``).
_KEPT_IDS = select(RejectedEvent.event_id).where(
    RejectedEvent.event_id.in_(bindparam("ids", expanding=True))
)


@dataclass
class _Pending:
    """One event's delivery on one route, in a fetch: what was attempted and its outcome."""

    event: CloudEvent
    route: Route
    headers: dict[str, str]
    value: bytes
    record: DeliveryRecord | None = None
    #: None while it waits behind an earlier delivery of its document being retried.
    outcome: Outcome | None = None
    #: The claim of its attempt under way in the background, when an earlier reading of
    #: this fetch handed it over and could not record it: recorded under it, not attempted.
    under_way_claim: datetime | None = None

    @property
    def key(self) -> str:
        return idempotency_key(self.event.id, self.route.name)

    @property
    def chain(self) -> tuple[str, str, str]:
        """Deliveries of one document on one route keep their order."""
        return (self.event.tenant, self.event.subject or "", self.route.name)


@dataclass
class _Chain:
    """One document's deliveries on one route in a fetch, attempted in order by one task."""

    items: list[_Pending]
    #: Set once the fetch's transaction has ended (recorded or not): a delivery handed
    #: over to the background records its outcome only after it.
    recorded: asyncio.Event
    #: The delivery whose attempt is under way (its slots taken), if any.
    current: _Pending | None = None
    #: Set when the fetch stopped waiting for this chain: its attempt under way records
    #: its own outcome, under ``claim``, and the chain attempts nothing more (the retry
    #: scheduler takes its later deliveries).
    handed_over: bool = False
    claim: datetime | None = None


@dataclass(frozen=True)
class _Unreadable:
    """A record of a type the gateway routes whose envelope is broken: no route can be
    told from it (its tenant may be the broken part), so it is kept for an operator."""

    headers: dict[str, str]
    value: bytes
    topic: str
    reason: str

    @property
    def event_id(self) -> str | None:
        return usable_event_id(self.headers.get("ce_id"))

    def kept_row(self, received_at: datetime, served: set[str]) -> RejectedEvent:
        # A new row each time: a rolled-back transaction's object is not reused.
        row = rejected_event(self.headers, self.value, self.topic, self.reason, received_at)
        if row.tenant not in served:
            # A tenant this gateway does not serve: listed to the hub's operators
            # (``gateway:unroutable``) with the records of no tenant, not to no one.
            row.tenant = None
        return row


@dataclass(frozen=True)
class _Claimed:
    """A retry the scheduler claimed: until ``claim``, for ``target``, ``size`` bytes held."""

    record: DeliveryRecord
    claim: datetime
    target: tuple[str, str]
    size: int


#: How long the fetches may fail to be recorded, one after the other, before ``/healthz``
#: says so: a database restarting takes seconds.
STUCK_AFTER_SECONDS = 30.0


class DeliveriesStuck(Exception):
    """The gateway's fetches keep failing to be recorded (``DeliveryEngine.check_recording``)."""


class NoRouteToReplay(Conflict):
    def __init__(self, key: str, tenant: str, event_type: str) -> None:
        super().__init__(
            "no-route-to-replay",
            f"Delivery {key} failed because no route of tenant {tenant} takes {event_type};"
            " there is no target to try again. Configure the route, then have the document"
            " sent again from its service.",
        )


class NotReplayable(Conflict):
    """A replay asked of a delivery that is neither failed nor dead: it would change
    nothing, and answering as if replayed told a retrying one's operator it would go now."""

    def __init__(self, record: DeliveryRecord) -> None:
        key = record.idempotency_key
        next_attempt_at = (
            record.next_attempt_at.isoformat(timespec="seconds")
            if record.next_attempt_at is not None
            else None
        )
        if record.status == "retrying":
            detail = (
                f"Delivery {key} is already retrying ({record.attempts} attempts so far):"
                f" its next attempt is at {next_attempt_at}. Only failed or dead deliveries"
                " are replayed."
            )
        else:
            detail = (
                f"Delivery {key} is {record.status}; only failed or dead deliveries are replayed."
            )
        super().__init__(
            "not-replayable",
            detail,
            delivery_status=record.status,
            next_attempt_at=next_attempt_at,
        )


@dataclass(frozen=True)
class Outcome:
    status: str  # delivered | failed | retry
    external_reference: str | None = None
    reason: str | None = None
    answer: dict[str, str | None] | None = None
    #: For a retry: how long the target asked to be left alone (its Retry-After).
    retry_after_seconds: float | None = None

    def __post_init__(self) -> None:
        # Every reason goes to the delivery log, the receipt, the service's document and
        # the operators' API: masked here, whatever made it (a connector's error, an event
        # whose data breaks its contract and is quoted whole, a connector's crash).
        # A target's words too, as they came: a NUL in an error page failed the outcome's
        # write on PostgreSQL, and the fetch with it, again and again; and their length:
        # megabytes of an error page made a receipt larger than the producer sends.
        if self.reason is not None:
            reason = clipped(plain_text(mask_national_numbers(self.reason)), REASON_LENGTH)
            object.__setattr__(self, "reason", reason)
        if self.external_reference is not None:
            object.__setattr__(self, "external_reference", plain_text(self.external_reference))
        if self.answer is not None:
            answer = {
                key[:ANSWER_TEXT_LENGTH]: None
                if value is None
                else clipped(plain_text(value), ANSWER_TEXT_LENGTH)
                for key, value in list(self.answer.items())[:ANSWER_ITEMS]
            }
            object.__setattr__(self, "answer", answer)


def _route_takes(route: Route, event_type: str) -> bool:
    """Whether a delivery of ``event_type`` may go on ``route``: the type it routes, or
    another version of it that its connector type says it delivers (``register_connector``'s
    ``event_types``): a ``….v2`` that ended dead on its ``….v1`` route before the gateway's
    upgrade is replayed there, under its key, once the connector delivers ``….v2``."""
    if route.event_type == event_type:
        return True
    delivered = delivered_event_types(route.connector_type)
    return (
        delivered is not None
        and event_type in delivered
        and type_stem(event_type) == type_stem(route.event_type)
    )


def _not_routed_reason(event_type: str, versions: list[str]) -> str:
    """Why a record of another version of a routed type (``versions``) ended dead."""
    if not newer_than(event_type, versions):
        what_to_do = "have its service send it again in a version routed here"
    elif event_class_for(event_type) is None:
        what_to_do = "upgrade the gateway, then replay the delivery"
    else:  # read by this gateway already (another tenant routes it, say)
        what_to_do = (
            "make its route take it (under the same name), or have the route's connector"
            " deliver it, then replay the delivery"
        )
    return (
        f"{event_type} is not routed here (this gateway routes {', '.join(versions)}): {what_to_do}"
    )


#: The longest reason an outcome keeps (the delivery log, the receipt, the operators' API).
REASON_LENGTH = 2000
#: The route and connector of a request no route of its tenant takes (``_unrouted``): no
#: route's name, which starts with a letter or a digit.
NO_ROUTE = "(none)"
#: What an outcome keeps of a target's answer (a register's names and address): so many
#: items, each so long at most.
ANSWER_ITEMS, ANSWER_TEXT_LENGTH = 50, 2000


class DeliveryEngine:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        routing: RoutingTable,
        connectors: Mapping[tuple[str, str], Connector],
        relay: OutboxRelay | None = None,
        concurrency: int = 8,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """``concurrency``: the attempts in flight at once on one target (a tenant's
        connector). Slots are a target's own, none shared: a target that does not answer
        holds its own, and the others go on with theirs (what all of them hold together
        is bounded by the HTTP pool, ``gateway.http``)."""
        self._sessions = sessions
        self._routing = routing
        self._connectors = connectors
        self._relay = relay
        self._concurrency = concurrency
        self._target_slots = {target: asyncio.Semaphore(concurrency) for target in connectors}
        # A target's retries take at most half its slots: its first attempts find some.
        retry_share = max(1, concurrency // 2)
        self._retry_slots = {target: asyncio.Semaphore(retry_share) for target in connectors}
        # The retries the scheduler claims for one target: one round of its share queued
        # behind the round in flight. More would sit claimed in memory, and the retries of
        # a target that does not answer would take the place of the others'.
        self._retries_per_target = 2 * retry_share
        # Targets with an attempt handed over by a fetch (it took longer than
        # FIRST_ATTEMPT_SECONDS): how many each, until the attempt's task ends. While a
        # target has one and no free slot, a fetch leaves its deliveries to the retries at
        # once instead of waiting for a slot again (``_held_by_slow_attempts``).
        self._slow: defaultdict[tuple[str, str], int] = defaultdict(int)
        # The keys of those attempts, with their claims: a fetch read again meanwhile
        # (after a failed recording) records them under their claim instead of sending
        # them twice, so the document's later deliveries wait behind them.
        self._handed_over: dict[str, datetime] = {}
        # The outcomes a target gave to a fetch whose recording then failed (a read-only
        # database after a failover, a full disk), by key: the fetch is read again every
        # second, and each reading sent its letters again; a target that ignores the key
        # (the real e-Box REST) published a copy each time. Recorded at the next reading
        # instead of attempted, and forgotten once recorded.
        self._unrecorded: dict[str, Outcome] = {}
        self._routes_of_target: dict[tuple[str, str], list[str]] = defaultdict(list)
        for routes in routing.routes.values():
            for route in routes:
                self._routes_of_target[(route.tenant, route.connector_name)].append(route.name)
        # Attempts handed over by a fetch, and the scheduler's retries: ended at stop.
        self._background: set[asyncio.Task[None]] = set()
        # The retries claimed and not ended: how many of each target, their stored events'
        # bytes; and a signal that one ended (the scheduler may claim another).
        self._retrying: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._retrying_bytes = 0
        self._retry_ended = asyncio.Event()
        self._claims_held_back = False
        # A claimed retry is hidden from other schedulers this long (a crashed one's claim
        # expires). The claim is renewed when the attempt gets its slot (``_renew_claim``),
        # for its own connector's deadline.
        slowest = max(
            (attempt_deadline(connector) for connector in connectors.values()),
            default=ATTEMPT_SECONDS,
        )
        self._retry_lease = timedelta(seconds=2 * slowest + 30)
        self._clock = clock
        self._tracer = tracer("gateway")
        # Since when (``time.monotonic``) the fetches fail to be recorded, one after the
        # other, and the last error; None while they are recorded (``check_recording``).
        self._failing_since: float | None = None
        self._last_failure = ""

    # -- consuming -----------------------------------------------------------------

    async def check_recording(self) -> None:
        """A health check: raises while the fetches have failed to be recorded for
        ``STUCK_AFTER_SECONDS``. Each is read again and retried, so a cause that stays
        (a value the database refuses) held every document behind it while ``/healthz``
        said ok."""
        if self._failing_since is None:
            return
        failing = time.monotonic() - self._failing_since
        if failing >= STUCK_AFTER_SECONDS:
            raise DeliveriesStuck(
                f"no fetch recorded for {failing:.0f} s; the last error: {self._last_failure}"
            )

    def topics(self) -> set[str]:
        classes = (event_class_for(t) for t in self._routing.event_types())
        return {cls.TOPIC for cls in classes if cls is not None}

    async def run_consumer(
        self,
        bootstrap_servers: str,
        group_id: str = "gateway",
        *,
        fetch_wait_ms: int = FETCH_MAX_WAIT_MS,
    ) -> None:
        topics = self.topics()
        if not topics:
            log.warning("no routes configured: the gateway consumes nothing")
            return
        consumer = make_consumer(
            bootstrap_servers,
            group_id,
            sorted(topics),
            client_id="gateway",
            fetch_max_wait_ms=fetch_wait_ms,
        )
        try:
            # start() waits for the group join; a shutdown during it must still stop the client.
            await consumer.start()
            commits = OffsetCommits(consumer, "gateway")
            pacing = FetchPacing(consumer, fetch_wait_ms)
            try:
                while True:
                    await self.consume_batch(consumer, commits, pacing)
            finally:
                await commits.drain(timeout=LAST_COMMIT_SECONDS)
        finally:
            await consumer.stop()

    async def consume_batch(
        self, consumer: AIOKafkaConsumer, commits: OffsetCommits, pacing: FetchPacing
    ) -> int:
        batches = await consumer.getmany(timeout_ms=200, max_records=500)
        pacing.note(bool(batches))
        if not batches:
            return 0
        records = [
            (headers_as_text(record.headers), record.value or b"", partition.topic)
            for partition, partition_records in batches.items()
            for record in partition_records
        ]
        try:
            await self.handle_records(records)
        except Exception as exc:
            # The database is away (or worse): record nothing as consumed. Rewind to the
            # batch's first offsets; what was recorded meanwhile is recognised and skipped.
            log.error("gateway batch of %d records failed, rewinding: %r", len(records), exc)
            if self._failing_since is None:
                self._failing_since = time.monotonic()
            self._last_failure = plain_text(repr(exc))[:500]
            assigned = consumer.assignment()
            for partition, partition_records in batches.items():
                if partition in assigned:  # a revoked one is another member's now
                    consumer.seek(partition, partition_records[0].offset)
            await asyncio.sleep(1.0)
            return 0
        self._failing_since = None
        await commits.commit(batches)
        return len(records)

    async def handle_record(self, headers: dict[str, str], value: bytes, topic: str) -> None:
        await self.handle_records([(headers, value, topic)])

    async def handle_records(self, records: Sequence[tuple[dict[str, str], bytes, str]]) -> None:
        """First attempts of a fetch's records on their routes, recorded in one transaction.

        One read tells which deliveries are known (a redelivery after a crash or a
        rebalance) and which documents wait behind a retry; the attempts run
        concurrently across documents and in order within a document's route; one
        transaction records every outcome with its receipt. Two per fetch instead
        of two per record is what lets the gateway keep up with a busy service.
        """
        pending: list[_Pending] = []
        broken: list[DeliveryRecord] = []
        unreadable: list[_Unreadable] = []
        for headers, value, topic in records:
            try:
                event = from_record(headers, value)
            except EnvelopeError as exc:
                EVENTS_CONSUMED.labels("gateway", topic, "rejected").inc()
                log.warning("gateway rejected a record on %s: %s", topic, exc)
                try:
                    attributes = envelope_attributes(headers)
                except EnvelopeError:
                    # Of a type no route takes, it is the services' to keep, not ours.
                    event_type = headers.get("ce_type", "")
                    if event_type in self._routing.event_types() or self._other_versions(
                        event_type
                    ):
                        unreadable.append(_Unreadable(headers, value, topic, str(exc)))
                    continue
                broken.extend(self._broken_deliveries(attributes, headers, value, exc))
                continue
            routes = self._routing.routes_for(event.tenant, event.type)
            if not routes and (versions := self._other_versions(event.type, event.tenant)):
                # A version this gateway reads but routes nowhere: as one it cannot read.
                EVENTS_CONSUMED.labels("gateway", topic, "rejected").inc()
                log.warning("gateway rejected a record on %s: %s is not routed", topic, event.type)
                broken.extend(self._version_not_routed(event, headers, value, versions))
                continue
            EVENTS_CONSUMED.labels("gateway", topic, "routed" if routes else "ignored").inc()
            pending.extend(_Pending(event, route, headers, value) for route in routes)
            if not routes and event.type in self._routing.event_types():
                broken.append(self._unrouted(event, headers, value))
        if not pending and not broken and not unreadable:
            return
        async with self._sessions() as session:
            keys = list({p.key for p in pending} | {b.idempotency_key for b in broken})
            known = set(await session.scalars(_RECORDED_KEYS, {"keys": keys}))
            subjects = list({p.event.subject for p in pending})
            retrying = (await session.execute(_RETRYING_CHAINS, {"subjects": subjects})).all()
            to_keep = await self._not_kept_yet(session, unreadable)
        blocked = {tuple(row) for row in retrying}
        recorded = asyncio.Event()
        chains: dict[tuple[str, str, str], _Chain] = {}
        for item in pending:
            if item.key in known:
                # Seen before a crash or a rebalance (recorded, or owned by the retries),
                # or twice in this fetch: nothing to do.
                self._unrecorded.pop(item.key, None)
                continue
            known.add(item.key)
            if item.key in self._handed_over:
                # Under way in the background since this fetch was read before (its
                # recording failed): recorded under the attempt's claim, which records its
                # outcome there (or, stopped, leaves it to the retries when the claim ends);
                # the document's later deliveries wait behind it.
                item.under_way_claim = self._handed_over[item.key]
            chains.setdefault(item.chain, _Chain([], recorded)).items.append(item)
        try:
            await self._attempt_chains(list(chains.values()), blocked)
            # Each with the claim of its attempt under way, if a fetch handed it over.
            fresh = [
                (item, chain.claim if item is chain.current else item.under_way_claim)
                for chain in chains.values()
                for item in chain.items
            ]
            dead = [record for record in broken if record.idempotency_key not in known]
            try:
                try:
                    async with write_transaction(self._sessions) as session:
                        for item, claim in fresh:
                            self._record(session, item, claim)
                        for record in dead:
                            self._record_dead(session, record)
                        served = self._routing.tenants()
                        session.add_all(kept.kept_row(self._clock(), served) for kept in to_keep)
                except IntegrityError:
                    # Another member of the group recorded some of them during a rebalance:
                    # record the others one by one, keeping the first record of each.
                    for item, claim in fresh:
                        await self._record_alone(item, claim)
                    for record in dead:
                        await self._record_dead_alone(record)
                    for kept in to_keep:
                        await self._keep_alone(kept)
            except Exception:
                # Those recorded one by one before the failure are known at the next
                # reading, and forgotten then.
                self._remember_unrecorded(item for item, _ in fresh)
                raise
            for item, _ in fresh:
                self._unrecorded.pop(item.key, None)
        finally:
            # Recorded or not (the fetch is then read again): the attempts handed over
            # may record their outcome, or find that they cannot.
            recorded.set()
        ended = any(item.outcome and item.outcome.status != "retry" for item, _ in fresh)
        if self._relay and (dead or ended):
            self._relay.wake()

    def _remember_unrecorded(self, items: Iterable[_Pending]) -> None:
        """Keep the ended outcomes of a fetch that could not be recorded (a retry is simply
        attempted again), at most ``UNRECORDED_OUTCOMES``: past them, a delivery is sent
        again, as before, rather than the gateway's memory growing without end."""
        for item in items:
            if item.outcome is None or item.outcome.status == "retry":
                continue
            if len(self._unrecorded) >= UNRECORDED_OUTCOMES and item.key not in self._unrecorded:
                log.warning("too many unrecorded outcomes; %s will be sent again", item.key)
                continue
            self._unrecorded[item.key] = item.outcome

    async def _attempt_chains(
        self, chains: list[_Chain], blocked: set[tuple[str, str, str]]
    ) -> None:
        """The fetch's first attempts, for ``FIRST_ATTEMPT_SECONDS`` at most. A chain still
        waiting for a slot then is stopped (its deliveries are recorded for the retry
        scheduler); one whose attempt is under way is handed over: the attempt goes on
        in the background and records its own outcome."""
        tasks = {asyncio.create_task(self._attempt_chain(c, blocked)): c for c in chains}
        if not tasks:
            return
        try:
            done, slow = await asyncio.wait(tasks, timeout=FIRST_ATTEMPT_SECONDS)
        except BaseException:  # the gateway stops: its attempts with it, as before
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        stopped = []
        for task in slow:
            chain = tasks[task]
            chain.handed_over = True
            if chain.current is None:
                task.cancel()
                stopped.append(task)
                continue
            route, key = chain.current.route, chain.current.key
            target = (route.tenant, route.connector_name)
            # Hidden from the retry scheduler until the attempt's deadline has passed: if
            # this process stops meanwhile, the delivery is retried then, under its key.
            deadline = attempt_deadline(self._connectors[target])
            chain.claim = self._clock() + timedelta(seconds=deadline + 30)
            self._keep_in_background(task)
            self._slow[target] += 1
            self._handed_over[key] = chain.claim
            task.add_done_callback(functools.partial(self._handover_ended, target, key))
        await asyncio.gather(*stopped, return_exceptions=True)
        for task in done:
            task.result()  # a failure of the attempts' own fails the fetch, as it did

    def _keep_in_background(self, task: asyncio.Task[None]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _handover_ended(self, target: tuple[str, str], key: str, _: object) -> None:
        self._slow[target] -= 1
        if not self._slow[target]:
            del self._slow[target]
        self._handed_over.pop(key, None)

    def _held_by_slow_attempts(self, route: Route) -> bool:
        """Whether ``route``'s target is slow now (an attempt of it was handed over and goes
        on) and has no free slot (its others held by attempts, or by its retries, that
        wait for it too): a fetch's delivery would only wait for a slot, so it is left to
        the retries at once."""
        target = (route.tenant, route.connector_name)
        return bool(self._slow.get(target)) and self._target_slots[target].locked()

    async def stop_background(self) -> None:
        """End the attempts handed over and the retries under way (at the gateway's stop):
        each comes back when its claim runs out, under the same key."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _broken_deliveries(
        self, attributes: Attributes, headers: dict[str, str], value: bytes, error: EnvelopeError
    ) -> list[DeliveryRecord]:
        """A routed record whose data breaks its contract (a service upgraded before the
        gateway, a field the gateway does not know yet) ends dead at once on each of its
        routes, and its service is told, instead of being skipped and its document left
        "sending" for ever."""
        routes = self._routing.routes_for(attributes.tenant, attributes.type)
        if not routes:
            if versions := self._other_versions(attributes.type, attributes.tenant):
                # Mostly "unknown event type": a version newer than this gateway. Failed at
                # once (``_unrouted``) when no route of its tenant takes any version.
                return self._version_not_routed(attributes, headers, value, versions)
            if attributes.type not in self._routing.event_types():
                return []  # not a request of the gateway's: the services keep theirs
            return [self._unrouted(attributes, headers, value)]
        # The error quotes the record (a key's name, a value): a NUL in it was refused by
        # PostgreSQL, the fetch read again and again and its other records re-sent.
        reason = clipped(
            plain_text(mask_national_numbers(f"the event breaks its contract: {error}")),
            REASON_LENGTH,
        )
        return [
            self._ended_unattempted(
                attributes, route.name, route.connector_type, "dead", reason, headers, value
            )
            for route in routes
        ]

    def _other_versions(self, event_type: str, tenant: str | None = None) -> list[str]:
        """The types routed here that are other versions of ``event_type``, which no route
        takes; none for a type routed here, or one of which no version is. With
        ``tenant``, those its routes take first: while tenants move to ``….v2`` one by one,
        one still on ``….v1`` ends dead on its ``….v1`` routes, replayable once they take
        ``….v2``, not failed for want of a route because another tenant routes ``….v2``."""
        stem = type_stem(event_type)
        if stem is None:
            return []
        if tenant is not None:
            theirs = {
                kind
                for (owner, kind), routes in self._routing.routes.items()
                if owner == tenant and routes
            }
            if event_type not in theirs and (
                versions := sorted(kind for kind in theirs if type_stem(kind) == stem)
            ):
                return versions
        routed = self._routing.event_types()
        if event_type in routed:
            return []
        return sorted(other for other in routed if type_stem(other) == stem)

    def _version_routes(self, tenant: str, versions: Iterable[str]) -> list[Route]:
        """The routes of ``tenant`` that take one of ``versions``."""
        return [
            route for version in versions for route in self._routing.routes_for(tenant, version)
        ]

    def _version_not_routed(
        self,
        event: CloudEvent | Attributes,
        headers: dict[str, str],
        value: bytes,
        versions: list[str],
    ) -> list[DeliveryRecord]:
        """A request in another version than the gateway routes (its service upgraded to
        ``….v2`` before the gateway): ended dead at once on each route of its tenant that
        takes a version of it, and its service told, as a routed record whose data breaks
        its contract (``_broken_deliveries``), rather than kept unseen by its service: its
        document is told it failed, with what to do, instead of "sending" for ever, and
        the receipt of its replay (``replay_delivery``) makes it sent once the route takes
        that version, or its connector delivers it (``_route_takes``). Failed at once
        (``_unrouted``) when no route of its tenant takes one."""
        routes = self._version_routes(event.tenant, versions)
        if not routes:
            return [self._unrouted(event, headers, value)]
        reason = _not_routed_reason(event.type, versions)
        return [
            self._ended_unattempted(
                event, route.name, route.connector_type, "dead", reason, headers, value
            )
            for route in routes
        ]

    def _unrouted(
        self, event: CloudEvent | Attributes, headers: dict[str, str], value: bytes
    ) -> DeliveryRecord:
        """A request of a type the gateway takes for other tenants, but no route of this
        tenant takes (its tenant file lacks one): failed at once, and its service told.
        Every such type is a request its service waits on: a mail stayed "sending" for
        ever. Not replayed (``NO_ROUTE``): there is no target to try again."""
        reason = (
            f"no route of tenant {event.tenant} takes {event.type}: the gateway's file of"
            " this tenant configures none"
        )
        return self._ended_unattempted(event, NO_ROUTE, NO_ROUTE, "failed", reason, headers, value)

    def _ended_unattempted(
        self,
        event: CloudEvent | Attributes,
        route: str,
        connector: str,
        status: str,
        reason: str,
        headers: dict[str, str],
        value: bytes,
    ) -> DeliveryRecord:
        """The record of a delivery that ended (``status``) at its reading, with no attempt."""
        now = self._clock()
        return DeliveryRecord(
            idempotency_key=idempotency_key(event.id, route),
            event_id=event.id,
            event_type=event.type,
            event_time=event.time,
            tenant=event.tenant,
            subject=event.subject,
            route=route,
            connector=connector,
            status=status,
            attempts=1,  # the reading that ended it
            next_attempt_at=None,
            last_error=reason,
            record_headers=headers,
            record_value=value,
            created_at=now,
            updated_at=now,
            finished_at=now,
        )

    def _record_dead(self, session: AsyncSession, record: DeliveryRecord) -> None:
        """Record a delivery that ended without an attempt (dead, or failed for want of a
        route), and announce it."""
        session.add(record)
        DELIVERIES.labels(record.connector, record.status).inc()
        self._announce(
            session, record, record.status, Outcome(record.status, reason=record.last_error)
        )

    async def _record_dead_alone(self, record: DeliveryRecord) -> None:
        async with self._sessions() as session:
            try:
                async with session.begin():
                    # A new object: the rolled-back transaction's is not reused.
                    columns = DeliveryRecord.__table__.columns.keys()
                    copy = {name: getattr(record, name) for name in columns if name != "id"}
                    self._record_dead(session, DeliveryRecord(**copy))
            except IntegrityError:
                log.info("delivery %s was recorded concurrently", record.idempotency_key)

    @staticmethod
    async def _not_kept_yet(
        session: AsyncSession, unreadable: list[_Unreadable]
    ) -> list[_Unreadable]:
        """The records to keep: each id once, as the services keep theirs (read again after
        a rebalance, or twice in a fetch). One without a usable id is kept at each reading:
        a repeat in the list is better than a different record lost as one."""
        ids = list({kept.event_id for kept in unreadable} - {None})
        seen = set(await session.scalars(_KEPT_IDS, {"ids": ids})) if ids else set()
        to_keep = []
        for kept in unreadable:
            if kept.event_id is not None:
                if kept.event_id in seen:
                    continue
                seen.add(kept.event_id)
            to_keep.append(kept)
        return to_keep

    async def _keep_alone(self, kept: _Unreadable) -> None:
        try:
            async with write_transaction(self._sessions) as session:
                session.add(kept.kept_row(self._clock(), self._routing.tenants()))
        except IntegrityError:
            # Kept by another member meanwhile (a rebalance): only that repeat is no error.
            if kept.event_id is None:
                raise
            async with self._sessions() as session:
                ids = {"ids": [kept.event_id]}
                if not set(await session.scalars(_KEPT_IDS, ids)):
                    raise
            log.info("record %s was kept concurrently", kept.event_id)

    async def _attempt_chain(self, chain: _Chain, blocked: set[tuple[str, str, str]]) -> None:
        """One document's deliveries on one route, in order; a retry holds the later ones."""
        for item in chain.items:
            if (given := self._unrecorded.get(item.key)) is not None:
                # The target answered a reading whose recording failed, in its order then:
                # recorded as it answered, whatever holds the chain now, never sent again.
                item.record, item.outcome = self._new_record(item), given
                continue
            if item.under_way_claim is not None:
                blocked.add(item.chain)  # under way already: the later ones wait behind it
                continue
            if item.chain in blocked:
                continue  # waits behind an earlier delivery that is being retried
            if self._held_by_slow_attempts(item.route):
                blocked.add(item.chain)  # left to the retries, in order
                continue
            item.record = self._new_record(item)

            def started(item: _Pending = item) -> None:
                chain.current = item

            outcome = await self._attempt(item.record, item.event, item.route, started=started)
            if chain.handed_over:
                await self._record_late(chain, item, outcome)
                return
            chain.current, item.outcome = None, outcome
            if outcome is None or outcome.status == "retry":
                blocked.add(item.chain)

    async def _record_late(self, chain: _Chain, item: _Pending, outcome: Outcome | None) -> None:
        """The outcome of an attempt its fetch handed over, once the fetch's transaction has
        ended: on its record as under way, unless another scheduler took it over when the
        claim ran out; recorded anew if the fetch could not record it."""
        await chain.recorded.wait()
        if outcome is None:
            return
        try:
            async with write_transaction(self._sessions) as session:
                under_way = await session.scalar(
                    select(DeliveryRecord)
                    .where(
                        DeliveryRecord.idempotency_key == item.key,
                        DeliveryRecord.status == "retrying",
                        DeliveryRecord.next_attempt_at == chain.claim,
                    )
                    .with_for_update()
                )
                if under_way is not None:
                    self._apply(session, under_way, item.event, item.route, outcome)
                elif await session.scalar(_RECORD_ID_OF_KEY, {"key": item.key}) is None:
                    # The fetch's recording failed, and it was not read again yet (or its
                    # reading failed too): this attempt records the delivery itself.
                    item.record, item.outcome = None, outcome
                    self._record(session, item, None)
                else:
                    return
        except IntegrityError:
            log.info("delivery %s was recorded concurrently; keeping the first record", item.key)
            return
        except Exception:
            log.exception("could not record the outcome of delivery %s; it comes back", item.key)
            return
        if outcome.status != "retry" and self._relay:
            self._relay.wake()

    def _new_record(self, item: _Pending) -> DeliveryRecord:
        return DeliveryRecord(
            idempotency_key=item.key,
            event_id=item.event.id,
            event_type=item.event.type,
            event_time=item.event.time,
            tenant=item.event.tenant,
            subject=item.event.subject,
            route=item.route.name,
            connector=item.route.connector_type,
            status="retrying",
            attempts=0,
            next_attempt_at=self._clock(),
            record_headers=item.headers,
            record_value=item.value,
            created_at=self._clock(),
            updated_at=self._clock(),
        )

    def _record(self, session: AsyncSession, item: _Pending, claim: datetime | None) -> None:
        """Record ``item`` with its outcome; without one, as retrying: due at once, or, for
        an attempt under way that its fetch handed over, hidden until its ``claim`` ends."""
        record = item.record = self._new_record(item) if item.record is None else item.record
        session.add(record)
        if item.outcome is not None:
            self._apply(session, record, item.event, item.route, item.outcome)
        elif claim is not None:
            record.next_attempt_at = claim
            record.last_error = (
                f"no answer yet after {FIRST_ATTEMPT_SECONDS:g} s; the attempt goes on"
            )

    async def _record_alone(self, item: _Pending, claim: datetime | None) -> None:
        item.record = None  # the rolled-back transaction's object is not reused
        async with self._sessions() as session:
            try:
                async with session.begin():
                    self._record(session, item, claim)
            except IntegrityError:
                log.info(
                    "delivery %s was recorded concurrently; keeping the first record", item.key
                )

    # -- attempting ----------------------------------------------------------------

    async def _attempt(
        self,
        record: DeliveryRecord,
        event: CloudEvent,
        route: Route,
        claim: datetime | None = None,
        started: Callable[[], None] | None = None,
    ) -> Outcome | None:
        """The attempt's outcome; None for a retry whose ``claim`` another scheduler took
        over while this one waited for a slot (it attempts it; this one must not).
        ``started`` is called once the attempt has its slots, as it begins."""
        connector = self._connectors[(route.tenant, route.connector_name)]
        async with self._slot(route, retry=claim is not None):
            deadline = attempt_deadline(connector)
            if claim is not None and not await self._renew_claim(record.id, claim, deadline):
                return None
            if started is not None:
                started()
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
                    # A deadline for the whole attempt: the connectors' timeouts bound each
                    # read, and a target sending a byte now and then held its slot, and
                    # every document of every tenant behind it, for ever.
                    async with asyncio.timeout(deadline):
                        result = await connector.deliver(delivery)
                    # Cut to what the delivery log, and the services after it, keep (200
                    # characters): a longer one from a target failed their writes on
                    # PostgreSQL, and the fetch with it, again and again. Inside the try: a
                    # result that is no text (a plugin's vendor number) is a connector bug,
                    # and it failed the whole fetch, re-read and re-sent every second.
                    reference = (
                        clipped(result.external_reference, REFERENCE_LENGTH)
                        if result.external_reference is not None
                        else None
                    )
                    return Outcome("delivered", external_reference=reference, answer=result.answer)
                except TimeoutError:
                    reason = f"{route.connector_type}: no answer within {deadline:g} s"
                    return Outcome("retry", reason=reason)
                except PermanentDeliveryError as exc:
                    return Outcome("failed", reason=exc.reason)
                except RetryableDeliveryError as exc:
                    return Outcome(
                        "retry", reason=exc.reason, retry_after_seconds=exc.retry_after_seconds
                    )
                except Exception as exc:
                    # A connector bug must not lose the event: keep retrying, visibly.
                    log.exception(
                        "connector %s crashed on %s", route.connector_type, record.idempotency_key
                    )
                    return Outcome("retry", reason=f"internal connector error: {exc!r}")

    @asynccontextmanager
    async def _slot(self, route: Route, *, retry: bool) -> AsyncIterator[None]:
        """A slot of ``route``'s target; for a retry, one of its retries' share first (a
        retry waiting for its share holds none of the target's slots)."""
        target = (route.tenant, route.connector_name)
        share = self._retry_slots[target] if retry else nullcontext()
        async with share, self._target_slots[target]:
            yield

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
                record.next_attempt_at = next_attempt_time(
                    now, record.attempts, policy, outcome.retry_after_seconds
                )
                DELIVERIES.labels(route.connector_type, "retry").inc()
                return
            status = "dead"
        record.status = status
        record.next_attempt_at = None
        record.finished_at = now
        record.external_reference = outcome.external_reference
        DELIVERIES.labels(route.connector_type, status).inc()
        DELIVERY_LATENCY.labels(route.connector_type).observe((now - event.time).total_seconds())
        self._announce(session, record, status, outcome)

    @staticmethod
    def _announce(
        session: AsyncSession, record: DeliveryRecord, status: str, outcome: Outcome
    ) -> None:
        """Stage the receipt of a delivery that ended (``status``), in the transaction that
        records its end; from the delivery log's record, which keeps the event's identity."""
        receipt = DeliveryReceipt(
            source_event_id=record.event_id,
            source_event_type=record.event_type,
            route=record.route,
            connector=record.connector,
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
                new_event(receipt, tenant=record.tenant, subject=record.subject, source=SOURCE),
            )

    # -- retrying ------------------------------------------------------------------

    async def run_retries(self, poll_seconds: float = 0.5) -> None:
        """Claim the deliveries whose retry time has come (``_claim_due``) and attempt each
        in a task of its own; claim again as soon as one ends, or every ``poll_seconds``.
        No retry waits for another's target, as a pass gathered at once did."""
        while True:
            self._retry_ended.clear()
            try:
                claimed = await self._claim_due(RETRIES_AT_ONCE, RETRY_BATCH_BYTES)
            except Exception:
                log.exception("gateway retry scheduler failed; trying again")
                claimed = []
            for retry in claimed:
                self._keep_in_background(self._start_retry(retry))
            if claimed:
                continue
            if self._claims_held_back:  # due ones wait for room: claim when a retry ends
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._retry_ended.wait(), poll_seconds)
            else:  # nothing due: a retry ending (a Stésud file not yet acknowledged) is no news
                await asyncio.sleep(poll_seconds)

    async def retry_due(
        self, limit: int = RETRIES_AT_ONCE, batch_bytes: int = RETRY_BATCH_BYTES
    ) -> int:
        """Claim the deliveries whose retry time has come and attempt them, all ended
        before this returns (one pass, as tests and operators' tools want it); how many."""
        claimed = await self._claim_due(limit, batch_bytes)
        await asyncio.gather(*(self._start_retry(retry) for retry in claimed))
        return len(claimed)

    async def _claim_due(self, limit: int, batch_bytes: int) -> list[_Claimed]:
        """Claim due retries: with those already claimed and not ended, at most ``limit``,
        as many as fit in ``batch_bytes`` of stored events (the first always), and
        ``_retries_per_target`` of one target. After a target's outage, 200 mails with
        their PDFs would be a gigabyte in memory at once; and the retries of a target
        that does not answer would take every place, waiting for its slots."""
        room = limit - sum(self._retrying.values())
        bytes_room = batch_bytes - self._retrying_bytes
        # Whether due retries may have been left for want of room (``run_retries``).
        self._claims_held_back = True
        if room <= 0 or bytes_room <= 0:
            return []
        full = [
            (target[0], route)
            for target, count in self._retrying.items()
            if count >= self._retries_per_target
            for route in self._routes_of(target)
        ]
        now = self._clock()
        earlier = aliased(DeliveryRecord)
        size = func.length(DeliveryRecord.record_value)
        in_order = (DeliveryRecord.next_attempt_at, DeliveryRecord.id)
        conditions = [
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
        ]
        if full:
            conditions.append(tuple_(DeliveryRecord.tenant, DeliveryRecord.route).not_in(full))
        due_first = (
            select(
                DeliveryRecord.id,
                (func.sum(size).over(order_by=in_order) - size).label("bytes_before"),
            )
            .where(*conditions)
            .order_by(*in_order)
            .limit(room)
            .subquery()
        )
        async with self._sessions() as session, session.begin():
            query = (
                select(DeliveryRecord)
                .join(due_first, due_first.c.id == DeliveryRecord.id)
                .where(due_first.c.bytes_before < bytes_room)
                .order_by(*in_order)
            )
            if session.bind.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True, of=DeliveryRecord)
            claim = now + self._retry_lease
            due: list[_Claimed] = []
            claimed_of = Counter(self._retrying)
            rows = (await session.scalars(query)).all()
            for record in rows:
                retry = _Claimed(record, claim, self._target_of(record), len(record.record_value))
                if claimed_of[retry.target] < self._retries_per_target:
                    claimed_of[retry.target] += 1
                    due.append(retry)
            # Left for want of room: rows of a target at its cap, or as many rows as room.
            # (A target excluded as full, or rows cut by bytes, wait for the next poll.)
            self._claims_held_back = len(due) < len(rows) or len(rows) >= room
            if due:
                await session.execute(
                    update(DeliveryRecord)
                    .where(DeliveryRecord.id.in_([retry.record.id for retry in due]))
                    .values(next_attempt_at=claim)
                )
        # Counted once the claim is committed (``_start_retry``): a claim that failed
        # leaves nothing counted, and its retries due.
        return due

    def _start_retry(self, retry: _Claimed) -> asyncio.Task[None]:
        """Attempt a claimed retry in a task of its own, counted until the task ends,
        however it ends (cancelled before its first step, too)."""
        self._retrying[retry.target] += 1
        self._retrying_bytes += retry.size
        task = asyncio.create_task(self._retry_claimed(retry))
        task.add_done_callback(functools.partial(self._retry_done, retry))
        return task

    def _routes_of(self, target: tuple[str, str]) -> list[str]:
        """The routes of a target; of a removed route's own target (``_target_of``), it."""
        connector = target[1]
        if connector.startswith(REMOVED_ROUTE):
            return [connector.removeprefix(REMOVED_ROUTE)]
        return self._routes_of_target.get(target, [])

    def _target_of(self, record: DeliveryRecord) -> tuple[str, str]:
        """The target (tenant, connector name) of a delivery; its route's name when the
        route is no longer configured (it is only looked at then, not attempted)."""
        route = self._routing.route(record.tenant, record.route)
        return (record.tenant, route.connector_name if route else REMOVED_ROUTE + record.route)

    def _retry_done(self, retry: _Claimed, _: object) -> None:
        self._retrying[retry.target] -= 1
        if not self._retrying[retry.target]:
            del self._retrying[retry.target]
        self._retrying_bytes -= retry.size
        self._retry_ended.set()

    async def _retry_claimed(self, retry: _Claimed) -> None:
        """One claimed retry; its failure (the database away) is its own: it comes back
        when its claim runs out, and the others go on."""
        try:
            await self._retry_one(retry.record, retry.claim)
        except Exception:
            log.exception(
                "retry of delivery %s failed; it comes back", retry.record.idempotency_key
            )

    async def _renew_claim(self, record_id: int, claim: datetime, deadline: float) -> bool:
        """Renew this scheduler's claim on a retry as its attempt starts, for the attempt's
        ``deadline``; False when the claim ran out meanwhile and another scheduler claimed
        the retry."""
        async with write_transaction(self._sessions) as session:
            renewed = await session.execute(
                update(DeliveryRecord)
                .where(
                    DeliveryRecord.id == record_id,
                    DeliveryRecord.status == "retrying",
                    DeliveryRecord.next_attempt_at == claim,
                )
                .values(next_attempt_at=self._clock() + timedelta(seconds=deadline + 30))
            )
        return bool(renewed.rowcount)  # type: ignore[attr-defined]

    async def _retry_one(self, record: DeliveryRecord, claim: datetime) -> None:
        try:
            event = from_record(record.record_headers, record.record_value)
        except EnvelopeError as exc:  # the contract changed under a stored event
            reason = f"unreadable event: {exc}"
            if event_class_for(record.event_type) is None and (
                versions := self._other_versions(record.event_type, record.tenant)
            ):  # a newer version replayed before the gateway's upgrade
                reason = _not_routed_reason(record.event_type, versions)
            outcome, event_for_receipt = Outcome("failed", reason=reason), None
        else:
            event_for_receipt = event
            route = self._routing.route(record.tenant, record.route)
            if route is None:
                outcome = Outcome("retry", reason=f"route {record.route!r} is no longer configured")
            elif not _route_takes(route, event.type):
                # Its route takes another version (it ended dead there, its type not routed
                # yet: ``_version_not_routed``), or was edited to, and its connector does not
                # deliver this one. Not moved to another route either: its key (event id,
                # route) is what keeps it from being sent twice.
                outcome, event_for_receipt = self._not_its_route(event, route), None
            else:
                attempted = await self._attempt(record, event, route, claim)
                if attempted is None:
                    return
                outcome = attempted
        async with self._sessions() as session, session.begin():
            fresh = await session.get(DeliveryRecord, record.id)
            if fresh is None or fresh.status in FINAL_STATUSES:
                return
            route = self._routing.route(record.tenant, record.route)
            if event_for_receipt is None:
                # Dead, and its document's service is told so like of any other dead
                # delivery (it was not: the delivery stayed "sending" there for ever).
                fresh.attempts += 1
                fresh.last_error = outcome.reason
                fresh.status, fresh.next_attempt_at = "dead", None
                fresh.updated_at = fresh.finished_at = self._clock()
                DELIVERIES.labels(fresh.connector, "dead").inc()
                self._announce(session, fresh, "dead", outcome)
            elif route is None:
                # Waits for the route to come back (a tenant file being edited), looked at
                # every 5 minutes, for ROUTE_GONE_FOR; then it is dead, and its service told,
                # instead of waiting unseen for ever. Its attempts are not counted: it was
                # not attempted. updated_at marks when the route was first found gone.
                now = self._clock()
                fresh.next_attempt_at = now + timedelta(minutes=5)
                if fresh.last_error != outcome.reason:
                    fresh.last_error, fresh.updated_at = outcome.reason, now
                    return
                if now - fresh.updated_at < ROUTE_GONE_FOR:
                    return
                # Dead, with the later deliveries of its document on that route: each
                # would otherwise wait its own two hours in turn behind it.
                later = await session.scalars(
                    select(DeliveryRecord).where(
                        DeliveryRecord.tenant == fresh.tenant,
                        DeliveryRecord.subject == fresh.subject,
                        DeliveryRecord.route == fresh.route,
                        DeliveryRecord.status == "retrying",
                        DeliveryRecord.id > fresh.id,
                    )
                )
                for gone in (fresh, *later):
                    gone.status, gone.next_attempt_at = "dead", None
                    gone.last_error = outcome.reason
                    gone.updated_at = gone.finished_at = now
                    gone.attempts = max(gone.attempts, 1)  # one waiting behind: none yet
                    DELIVERIES.labels(gone.connector, "dead").inc()
                    self._announce(session, gone, "dead", outcome)
            else:
                self._apply(session, fresh, event_for_receipt, route, outcome)
        if outcome.status != "retry" and self._relay:
            self._relay.wake()

    def _not_its_route(self, event: CloudEvent, route: Route) -> Outcome:
        """Why a delivery whose route takes another type than its event ends dead, its
        service told (``_retry_one``), rather than being sent on a route whose connector
        was checked for another type."""
        return Outcome(
            "failed",
            reason=(
                f"{event.type} is not sent on route {route.name!r}, which takes"
                f" {route.event_type} with a connector that does not deliver {event.type}:"
                f" make that route of tenant {event.tenant} take {event.type} (under the same"
                " name, the delivery's key), then replay the delivery"
            ),
        )

    async def replay_all(
        self, tenant: str, status: str, route: str | None = None, connector: str | None = None
    ) -> int:
        """Try again every ``status`` (failed or dead) delivery of ``tenant``, of ``route``
        or ``connector`` if given (a target back after an outage, a key fixed); how many."""
        conditions = [
            DeliveryRecord.tenant == tenant,
            DeliveryRecord.status == status,
            DeliveryRecord.route != NO_ROUTE,
        ]
        if route is not None:
            conditions.append(DeliveryRecord.route == route)
        if connector is not None:
            conditions.append(DeliveryRecord.connector == connector)
        now = self._clock()
        async with self._sessions() as session, session.begin():
            replayed = await session.execute(
                update(DeliveryRecord)
                .where(*conditions)
                .values(
                    status="retrying",
                    attempts=0,
                    next_attempt_at=now,
                    finished_at=None,
                    updated_at=now,
                )
            )
        count: int = replayed.rowcount  # type: ignore[attr-defined]
        return count

    async def replay(self, kept: RejectedEvent) -> str:
        """Hand a kept record to its routes again, its envelope corrected (its headers, as
        kept, edited by an operator): "handled" (delivered, or failed for want of a route
        of its tenant: ``_unrouted``), "duplicate" when its deliveries were recorded
        meanwhile, or "ignored" when it is no type the gateway routes; it is no longer kept
        then. Raises ``EnvelopeError`` when it still breaks its contract, ``NotHandledHere``
        when it is a version this gateway cannot read yet: it stays kept (``kernel.api``'s
        ``KeptEventReplayer``: 422, or 409 ``event-version-not-handled``)."""
        headers: dict[str, str] = dict(kept.headers)
        try:
            event = from_record(headers, kept.value)
        except EnvelopeError as exc:
            event_type = headers.get("ce_type", "")
            if event_class_for(event_type) is None and (
                versions := self._other_versions(event_type)
            ):  # not "breaks its contract": the same bytes replay once the gateway reads them
                raise NotHandledHere(_not_routed_reason(event_type, versions)) from exc
            raise
        routes = [route.name for route in self._routing.routes_for(event.tenant, event.type)]
        if not routes and (versions := self._other_versions(event.type, event.tenant)):
            ended = self._version_routes(event.tenant, versions)  # ended dead, or failed
            routes = [route.name for route in ended] or [NO_ROUTE]
        elif not routes and event.type in self._routing.event_types():
            routes = [NO_ROUTE]
        keys = [idempotency_key(event.id, route) for route in routes]
        async with self._sessions() as session:
            recorded = set(await session.scalars(_RECORDED_KEYS, {"keys": keys}))
        await self.handle_records([(headers, kept.value, kept.topic)])
        async with write_transaction(self._sessions) as session:
            await session.execute(delete(RejectedEvent).where(RejectedEvent.id == kept.id))
        outcome = "ignored" if not keys else "duplicate" if recorded >= set(keys) else "handled"
        log.info("gateway replayed kept event %s: %s", kept.event_id, outcome)
        return outcome

    async def replay_delivery(self, key: str, tenant: str) -> DeliveryRecord | None:
        """An operator asks for a failed or dead delivery to be tried again from scratch: the
        record, now retrying; None when ``tenant`` has no such delivery. Raises
        ``NotReplayable`` for one in another state, ``NoRouteToReplay`` for one without
        a route."""
        async with self._sessions() as session, session.begin():
            record = await session.scalar(
                select(DeliveryRecord)
                .options(*WITHOUT_STORED_EVENT)
                .where(DeliveryRecord.idempotency_key == key, DeliveryRecord.tenant == tenant)
            )
            if record is None:
                return None
            if record.status not in ("failed", "dead"):
                raise NotReplayable(record)
            if record.route == NO_ROUTE:
                raise NoRouteToReplay(key, record.tenant, record.event_type)
            record.status = "retrying"
            record.attempts = 0
            record.next_attempt_at = self._clock()
            record.finished_at = None
            record.updated_at = self._clock()
            return record
