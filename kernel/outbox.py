"""The transactional outbox.

A service stages its outgoing event in the same database transaction as the
document change (``stage``), so an event exists if and only if the change was
committed. The relay publishes pending rows in id order, a key's next one only
once the broker has its previous one (``_waves``), waits for the broker's
``acks=all`` and only then marks them sent. A
crash between publishing and marking re-publishes: consumers deduplicate by
the CloudEvent id, which never changes. On PostgreSQL the replicas of a process
share its outbox, and one relays at a time (an advisory lock held to the
relay's commit): with each taking rows of its own, a later event of a key
could go out while another replica still held an earlier one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from time import monotonic
from typing import Any, Protocol

from aiokafka.errors import KafkaError, KafkaTimeoutError, UnknownTopicOrPartitionError
from sqlalchemy import (
    JSON,
    ColumnElement,
    LargeBinary,
    Select,
    String,
    bindparam,
    delete,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy import event as sqlalchemy_events
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, Session, aliased, mapped_column

from contracts.envelope import CloudEvent, KafkaRecord, to_record
from kernel.database import Base, BigId, UtcDateTime, utcnow, write_transaction, writer_turn
from kernel.errors import ProblemError
from kernel.kafka import MAX_REQUEST_BYTES
from kernel.metrics import (
    EVENTS_PUBLISHED,
    OUTBOX_HELD_BACK,
    OUTBOX_OLDEST_PENDING_AGE,
    OUTBOX_PENDING,
)
from kernel.migrations import table_of
from kernel.telemetry import inject_headers

log = logging.getLogger(__name__)


class OutboxMessage(Base):
    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    event_type: Mapped[str] = mapped_column(String(128))
    topic: Mapped[str] = mapped_column(String(128))
    key: Mapped[bytes] = mapped_column(LargeBinary)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    headers: Mapped[dict[str, str]] = mapped_column(JSON)
    created_at: Mapped[Any] = mapped_column(UtcDateTime)
    sent_at: Mapped[Any] = mapped_column(UtcDateTime, nullable=True, index=True)


#: Where a session keeps the rows of the events staged in its current transaction.
_STAGED = "kernel.outbox.staged"
#: What a record takes beside its key, value and headers (lengths, attributes), kept
#: free under the producer's ``MAX_REQUEST_BYTES``.
RECORD_OVERHEAD_BYTES = 1024


class EventTooLarge(ProblemError):
    def __init__(self, event: CloudEvent, size: int, advice: str) -> None:
        super().__init__(
            413,
            "event-too-large",
            "The change's event would be too large",
            f"The {event.type} event of {event.subject} would take {size} bytes, more than "
            f"the {MAX_REQUEST_BYTES} an event may; nothing was stored. {advice}".rstrip(),
            max_bytes=MAX_REQUEST_BYTES,
        )


def record_size(record: KafkaRecord) -> int:
    """The bytes of ``record`` that the producer counts against ``MAX_REQUEST_BYTES``,
    without the fixed overhead (``RECORD_OVERHEAD_BYTES``)."""
    return (
        len(record.key)
        + len(record.value)
        + sum(len(name) + len(value) for name, value in record.headers)
    )


def fits_in_a_record(event: CloudEvent) -> bool:
    """Whether the producer would send ``event``: for checks made before a change, so that
    a document whose later events could never be sent is refused while it still can be."""
    return record_size(to_record(event)) + RECORD_OVERHEAD_BYTES <= MAX_REQUEST_BYTES


def stage(session: AsyncSession, event: CloudEvent, advice: str = "") -> None:
    """Add ``event`` to the caller's transaction, with the current trace context; or refuse
    the change (``EventTooLarge``, 413) when the producer would refuse its record, ``advice``
    telling the caller what to shorten.

    The row is written when the transaction commits, together with the other
    events staged in it, by one INSERT (``_insert_staged``): an outbox row is
    never read back in the transaction that wrote it, and going through the
    ORM's unit of work cost a flush's bookkeeping for each event.

    A record over ``MAX_REQUEST_BYTES`` would never be sent: it stayed in the outbox,
    retried on every pass, and every later event of its document waited behind it (a
    decision nobody was told of, an invoice never booked). Refused here, the caller's
    transaction rolls back and nothing is stored; in a consumer's handler, the event is
    kept among the rejected ones after its attempts.
    """
    record = _traced_record(event)
    size = record_size(record)
    if size + RECORD_OVERHEAD_BYTES > MAX_REQUEST_BYTES:
        raise EventTooLarge(event, size, advice)
    _add_staged(session, event, record)


def _traced_record(event: CloudEvent) -> KafkaRecord:
    # The trace context only, not the caller's baggage (``kernel.telemetry._PROPAGATOR``).
    return to_record(event, extra_headers=inject_headers())


def _add_staged(session: AsyncSession, event: CloudEvent, record: KafkaRecord) -> None:
    session.info.setdefault(_STAGED, []).append(
        {
            "event_id": event.id,
            "event_type": event.type,
            "topic": record.topic,
            "key": record.key,
            "value": record.value,
            "headers": {name: value.decode() for name, value in record.headers},
            "created_at": utcnow(),
        }
    )


@sqlalchemy_events.listens_for(Session, "before_commit")
def _insert_staged(session: Session) -> None:
    # Runs inside the commit: a failure here rolls the document's change back too.
    rows = session.info.pop(_STAGED, None)
    if rows:
        # The document's changes first: on PostgreSQL an UPDATE of its row waits for
        # another transaction changing the same row, so the events' ids, taken after,
        # follow the order in which the two commit. Taken before, two such transactions
        # could commit in the opposite order to their ids, and the relay, which publishes
        # by id, would send the key's events out of order. (Where a transaction changes
        # no row of its key's document, its ids follow its INSERT, not its commit; the
        # relay's reading on leaves such a late row's key until the row is sent.)
        session.flush()
        session.execute(insert(table_of(OutboxMessage)), rows)


@sqlalchemy_events.listens_for(Session, "after_rollback")
def _forget_staged(session: Session) -> None:
    session.info.pop(_STAGED, None)


#: Marks published rows sent (parameters ``ids`` and ``sent_at``). Built once: a statement
#: built for each batch cost 0.1 ms more to run, as SQLAlchemy keys and looks it up again
#: (measured on a 2-vCPU AMD EPYC host), and at a steady rate a batch is one or two events.
#: On the table, not the ORM class: no object of the session needs to follow the change.
_MARK_SENT = update(table_of(OutboxMessage)).where(
    table_of(OutboxMessage).c.id.in_(bindparam("ids", expanding=True))
)


#: The outbox's backlog: events not published yet, and when the oldest was staged.
_BACKLOG = select(func.count(), func.min(OutboxMessage.created_at)).where(
    OutboxMessage.sent_at.is_(None)
)


def _waves(rows: list[OutboxMessage]) -> list[list[OutboxMessage]]:
    """``rows`` (in id order) in waves: the first event of each key, then the second…

    The relay waits for a wave's answers before it sends the next, so a key's later
    event never leaves before the broker has its earlier one. Sent together, the
    earlier could fail (a cluster rejects a record over its ``message.max.bytes``; its
    retries run out while the broker is away) and the later be written: out of order
    for good, and written again at each pass, as it was never marked sent. A wave costs
    one wait for the broker's acknowledgements: a batch of different documents is one
    wave; a transaction that stages three events of one document makes three.
    """
    waves: list[list[OutboxMessage]] = []
    seen: dict[bytes, int] = {}
    for row in rows:
        place = seen.get(row.key, 0)
        seen[row.key] = place + 1
        if place == len(waves):
            waves.append([])
        waves[place].append(row)
    return waves


def _topic_missing(error: BaseException) -> bool:
    """The cluster lacks the record's topic (not created, or deleted): aiokafka's ``send``
    waits for the topic's metadata for its ``request_timeout_ms`` (40 s by default), then
    raises this. (It does too when it could read no metadata at all, a broker away before
    it knew the topic; held back as a missing topic, its events are only tried less often.)"""
    return isinstance(error, UnknownTopicOrPartitionError)


def _broker_away(error: BaseException) -> bool:
    """A failure of the broker or of the way to it, which every key meets alike (aiokafka's
    retriable errors, its timeouts), not one of the record's own (too large).

    A missing topic is not: aiokafka calls it retriable, but only that topic's keys meet
    it. Counted as the broker away, the relay never read past that topic's rows, and the
    process's other topics got nothing once they filled the oldest batch."""
    if isinstance(error, KafkaError):
        if _topic_missing(error):
            return False
        return bool(error.retriable) or isinstance(error, KafkaTimeoutError)
    return isinstance(error, ConnectionError | TimeoutError)


@dataclass
class _HeldBack:
    """A key whose next record the cluster refused for good, or a topic it lacks: why, how
    many times in a row, and when the relay tries again (``OutboxRelay._hold_back``)."""

    error: BaseException
    failures: int
    retry_at: float


class RecordSender(Protocol):
    """What the relay needs of a producer (aiokafka's, or a fake in unit tests)."""

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[Any]: ...


class OutboxRelay:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        sender: RecordSender,
        *,
        component: str,
        batch_size: int = 500,
        batch_bytes: int = 16 * 1024 * 1024,
        idle_poll_seconds: float = 0.5,
        keep_sent_for: timedelta = timedelta(days=1),
        forgetful_broker_since: datetime | None = None,
        refused_retry_seconds: float = 1.0,
        refused_retry_max_seconds: float = 300.0,
    ) -> None:
        self._sessions = sessions
        #: When the embedded broker, which forgets its records when it stops, started: what
        #: was sent before went to an earlier one (``republish_forgotten``).
        self._forgetful_broker_since = forgetful_broker_since
        self._sender = sender
        self._component = component
        self._batch_size = batch_size
        self._batch_bytes = batch_bytes
        #: The last batch was full (by count or by bytes) and all of it went: more may wait.
        self._more_pending = False
        #: Reading on past keys that failed (``_read_on``): the last row id read; 0 when
        #: reading from the oldest.
        self._after_id = 0
        self._idle_poll_seconds = idle_poll_seconds
        self._keep_sent_for = keep_sent_for
        #: Keys whose next record the cluster refused for good (over its max.message.bytes,
        #: invalid) and topics it lacks, held back (``_hold_back``): after the first failure
        #: for ``refused_retry_seconds``, twice as long after each next, at most
        #: ``refused_retry_max_seconds``. Sent again at each pass, which every commit
        #: starts, the same record of up to 8 MiB went to the cluster and a warning to the
        #: log at each commit of the process; a missing topic cost each pass a metadata
        #: wait. In memory: a process started again tries once more at once.
        self._refused_keys: dict[bytes, _HeldBack] = {}
        self._missing_topics: dict[str, _HeldBack] = {}
        self._refused_retry_seconds = refused_retry_seconds
        self._refused_retry_max_seconds = refused_retry_max_seconds
        self._wakeup = asyncio.Event()
        self._pending = self._batch_query(OutboxMessage.sent_at.is_(None))
        # Reading on: the pending rows after ``after_id`` whose key has no pending row up to
        # it: neither a key that failed there nor one whose earlier row committed after the
        # read (on PostgreSQL an id is taken at the INSERT, before the commit). Either
        # would otherwise let a key's later event leave before its earlier one.
        earlier = aliased(OutboxMessage)
        self._pending_after = self._batch_query(
            OutboxMessage.sent_at.is_(None),
            OutboxMessage.id > bindparam("after_id"),
            ~exists().where(
                earlier.key == OutboxMessage.key,
                earlier.sent_at.is_(None),
                earlier.id <= bindparam("after_id"),
            ),
        )
        #: The replicas' lock (PostgreSQL): one number per process and schema, the same in
        #: each replica. Advisory locks are the database's, not the schema's: without the
        #: schema, a staging hub sharing the database (``HubSettings.database_schema_prefix``)
        #: took production's lock, and production published nothing while staging's relay
        #: waited for its broker.
        self._relay_lock = select(
            func.pg_try_advisory_xact_lock(
                func.hashtext(func.concat(func.current_schema(), f":hub-outbox:{component}"))
            )
        )

    def wake(self) -> None:
        """A transaction with events just committed: publish now, not at the next poll."""
        self._wakeup.set()

    async def run(self) -> None:
        purge_every, since_purge = 200, 0
        while True:
            try:
                if self._forgetful_broker_since is not None:
                    await self.republish_forgotten(self._forgetful_broker_since)
                    self._forgetful_broker_since = None
                await self.publish_pending()
                since_purge += 1
                if since_purge >= purge_every:
                    since_purge = 0
                    await self.purge_sent()
            except Exception:  # the broker or the database is away: keep the rows, try again
                log.exception("%s outbox relay failed; retrying", self._component)
                self._more_pending = False
                await asyncio.sleep(1.0)
            if not self._more_pending:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._idle_poll_seconds)
                self._wakeup.clear()

    async def publish_pending(self) -> int:
        """Publish one batch of pending events; return how many were marked sent."""
        self._more_pending = False
        async with self._sessions() as session:
            if session.bind.dialect.name == "postgresql" and not await session.scalar(
                self._relay_lock
            ):
                return 0  # another replica relays; it takes this replica's rows too
            reading_on = bool(self._after_id)
            if reading_on:
                batch = self._pending_after, {"after_id": self._after_id}
            else:
                batch = self._pending, {}
            rows = list((await session.scalars(*batch)).all())
            if not rows:  # nothing pending, or the end of a reading on
                if not reading_on:  # nothing at all: no key or topic waits any more
                    self._forget_settled(rows)
                self._after_id = 0
                return 0
            full = (
                len(rows) >= self._batch_size
                or sum(len(row.value) for row in rows) >= self._batch_bytes
            )
            sent_ids: list[int] = []
            failed_keys: dict[bytes, BaseException] = {}
            failed_topics: set[str] = set()
            now = monotonic()
            for wave in _waves(rows):
                await self._send_wave(wave, sent_ids, failed_keys, failed_topics, now)
            async with writer_turn(self._sessions):
                if sent_ids:
                    await session.execute(_MARK_SENT, {"ids": sent_ids, "sent_at": utcnow()})
                await session.commit()
            self._read_on(rows, full, failed_keys)
            if not reading_on and not full and (self._refused_keys or self._missing_topics):
                self._forget_settled(rows)
            # Keys held back were logged by ``_hold_back``, once each at WARNING.
            away = [error for error in failed_keys.values() if _broker_away(error)]
            if away:
                log.warning(
                    "%s outbox: %d keys not published yet: %s",
                    self._component,
                    len(away),
                    away[0],
                )
            return len(sent_ids)

    def _read_on(
        self, rows: list[OutboxMessage], full: bool, failed_keys: dict[bytes, BaseException]
    ) -> None:
        """Where the next pass reads, and whether at once.

        A full batch that all went: at once, from the oldest pending (where the rest
        now is). A full batch in which keys failed for a reason of their own (a record
        the cluster refuses as too large, a topic it lacks; not the broker away), or
        were held back for one: at once, past this batch (``_pending_after`` leaves
        those keys' later rows), so that a few stuck keys never fill every batch and
        stop the other documents' events; back to the oldest at the end. Anything
        else, a broker away included: the oldest, at the next wake or poll.
        """
        if full and any(not _broker_away(error) for error in failed_keys.values()):
            self._after_id = rows[-1].id
            self._more_pending = True
        else:
            self._after_id = 0
            self._more_pending = full and not failed_keys

    def _batch_query(self, *conditions: ColumnElement[bool]) -> Select[tuple[OutboxMessage]]:
        """The first pending rows that meet ``conditions``, in id order, as many as fit in
        ``batch_bytes`` (the first one always): after a broker outage, 500 outgoing mails
        with their PDFs would be gigabytes in memory at once. Summed by the database from
        the values' lengths, in one statement (35 µs more than the plain one on SQLite,
        measured on a 2-vCPU AMD EPYC host). Built once (see ``_MARK_SENT``)."""
        size = func.length(OutboxMessage.value)
        first = (
            select(
                OutboxMessage.id,
                (func.sum(size).over(order_by=OutboxMessage.id) - size).label("bytes_before"),
            )
            .where(*conditions)
            .order_by(OutboxMessage.id)
            .limit(self._batch_size)
            .subquery()
        )
        return (
            select(OutboxMessage)
            .join(first, first.c.id == OutboxMessage.id)
            .where(first.c.bytes_before < self._batch_bytes)
            .order_by(OutboxMessage.id)
        )

    async def _send_wave(
        self,
        wave: list[OutboxMessage],
        sent_ids: list[int],
        failed_keys: dict[bytes, BaseException],
        failed_topics: set[str],
        now: float,
    ) -> None:
        """Send ``wave`` (at most one row per key) and wait for the broker's answers.

        A row of a key that failed earlier in the batch is not sent: it waits for the
        next pass, behind its key's failed row. Nor is one of a key or a topic held back
        (``_hold_back``) at ``now``, the pass's start, or of a topic found missing earlier
        in the pass: each of its rows waited out a metadata timeout, one after another.
        Adds the rows sent to ``sent_ids``, the keys that failed or wait to
        ``failed_keys``, the topics found missing to ``failed_topics``.
        """
        # Per row, in id order: the broker's future, or None if it was not sent.
        futures: list[asyncio.Future[Any] | None] = []
        for row in wave:
            if row.key in failed_keys:
                futures.append(None)
                continue
            held = self._held_back(row, failed_topics, now)
            if held is not None:
                failed_keys[row.key] = held
                futures.append(None)
                continue
            try:
                futures.append(
                    await self._sender.send(
                        row.topic,
                        value=row.value,
                        key=row.key,
                        headers=[(name, value.encode()) for name, value in row.headers.items()],
                    )
                )
            except Exception as exc:  # refused before it left (no metadata, too large)
                self._failed(row, exc, failed_keys, failed_topics)
                futures.append(None)
        answers = iter(
            await asyncio.gather(*(f for f in futures if f is not None), return_exceptions=True)
        )
        for row, future in zip(wave, futures, strict=True):
            if future is None:
                continue
            answer = next(answers)
            if isinstance(answer, BaseException):
                self._failed(row, answer, failed_keys, failed_topics)
                continue
            sent_ids.append(row.id)
            EVENTS_PUBLISHED.labels(component=self._component, topic=row.topic).inc()
            if self._refused_keys or self._missing_topics:
                self._published(row)

    def _held_back(
        self, row: OutboxMessage, failed_topics: set[str], now: float
    ) -> BaseException | None:
        """Why ``row`` is not sent in this pass (``_send_wave``); None if it is."""
        topic = self._missing_topics.get(row.topic)
        if topic is not None and (row.topic in failed_topics or now < topic.retry_at):
            return topic.error
        key = self._refused_keys.get(row.key)
        if key is not None and now < key.retry_at:
            return key.error
        return None

    def _failed(
        self,
        row: OutboxMessage,
        error: BaseException,
        failed_keys: dict[bytes, BaseException],
        failed_topics: set[str],
    ) -> None:
        """``row`` was not published: its key waits for the next pass; held back, when the
        failure is its own or its topic's rather than the broker's."""
        failed_keys[row.key] = error
        if _topic_missing(error):
            if row.topic not in failed_topics:  # once a pass, however many of its rows said so
                failed_topics.add(row.topic)
                self._hold_back(self._missing_topics, row.topic, error, row, "topic-missing")
        elif not _broker_away(error):
            self._hold_back(self._refused_keys, row.key, error, row, "refused")

    def _hold_back(
        self,
        holds: dict[Any, _HeldBack],
        name: bytes | str,
        error: BaseException,
        row: OutboxMessage,
        reason: str,
    ) -> None:
        """Hold ``name`` (a key, or a topic) back from the next passes, for twice as long as
        last time; logged at WARNING the first time, then at DEBUG. The key's later events
        keep waiting behind it; the relay reads on past them to the other keys."""
        failures = holds[name].failures + 1 if name in holds else 1
        # The exponent capped: a float overflows past 2**1023, after years of failures.
        wait = min(
            self._refused_retry_seconds * 2 ** min(failures - 1, 32),
            self._refused_retry_max_seconds,
        )
        holds[name] = _HeldBack(error, failures, monotonic() + wait)
        OUTBOX_HELD_BACK.labels(self._component, row.topic, reason).inc()
        level = logging.WARNING if failures == 1 else logging.DEBUG
        if reason == "topic-missing":
            log.log(
                level,
                "%s outbox: topic %s does not exist on the cluster (%r); its events wait,"
                " tried again in %.0f s, then less and less often: create it (`hub topics`)",
                self._component,
                row.topic,
                error,
                wait,
            )
        else:
            log.log(
                level,
                "%s outbox: the cluster refuses event %s (%s, on %s) for good, attempt %d: %r;"
                " its document's later events wait behind it. Tried again in %.0f s, then"
                " less and less often, at most every %.0f s",
                self._component,
                row.event_id,
                row.event_type,
                row.topic,
                failures,
                error,
                wait,
                self._refused_retry_max_seconds,
            )

    def _published(self, row: OutboxMessage) -> None:
        """``row`` is on the broker: its key and its topic are no longer held back."""
        refused = self._refused_keys.pop(row.key, None)
        if refused is not None:
            log.info(
                "%s outbox: event %s published after %d refusals; its document's later"
                " events follow",
                self._component,
                row.event_id,
                refused.failures,
            )
        if self._missing_topics.pop(row.topic, None) is not None:
            log.info("%s outbox: topic %s is on the cluster now", self._component, row.topic)

    def _forget_settled(self, rows: list[OutboxMessage]) -> None:
        """After a pass that read every pending row (``rows``): keys and topics held back
        that have none left (sent by another replica, deleted by an operator) are no
        longer, so that a later event of theirs does not wait out its predecessor's time."""
        keys, topics = {row.key for row in rows}, {row.topic for row in rows}
        for key in [key for key in self._refused_keys if key not in keys]:
            del self._refused_keys[key]
        for topic in [topic for topic in self._missing_topics if topic not in topics]:
            del self._missing_topics[topic]

    async def republish_forgotten(self, broker_since: datetime) -> int:
        """Publish again the events sent before the embedded broker that started at
        ``broker_since``, all those the outbox still keeps (``keep_sent_for``); how many.

        The embedded broker keeps its records in memory: those its consumers had not
        read when ``hub up`` stopped were gone, while their rows here said sent (a mail
        delivered to the e-Box stayed "sending" for good). Sent to a new broker, each
        consumer drops what it handled already (its inbox keeps 14 days; the gateway's
        deliveries, by idempotency key, for good). All of them, not the last minutes':
        a consumer stuck behind a failing event, or waiting for its database, was
        further behind than any window. Once per broker: a process started again
        beside it finds events sent to it already and sends nothing twice.
        """
        async with write_transaction(self._sessions) as session:
            latest = await session.scalar(select(func.max(OutboxMessage.sent_at)))
            if latest is None or latest >= broker_since:
                return 0  # nothing sent before, or done at this broker's first start already
            reset = await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.sent_at < broker_since)
                .values(sent_at=None)
            )
        count: int = reset.rowcount  # type: ignore[attr-defined]
        log.warning(
            "%s outbox: the embedded broker forgot what it held when it stopped; the %d"
            " events sent before go again (consumers drop those they handled)",
            self._component,
            count,
        )
        return count

    async def purge_sent(self) -> None:
        async with self._sessions() as session:
            await session.execute(
                delete(OutboxMessage).where(
                    OutboxMessage.sent_at.is_not(None),
                    OutboxMessage.sent_at < utcnow() - self._keep_sent_for,
                )
            )
            await session.commit()

    async def report_backlog(self) -> None:
        """Set the outbox's gauges: how many events wait to be published, and for how long
        the oldest has. Run at each scrape of ``/metrics`` (``kernel.app``), not by the
        relay's loop: a broker away shows as both growing."""
        async with self._sessions() as session:
            count, oldest = (await session.execute(_BACKLOG)).one()
        OUTBOX_PENDING.labels(self._component).set(count)
        waited = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        OUTBOX_OLDEST_PENDING_AGE.labels(self._component).set(max(waited, 0.0))


@asynccontextmanager
async def transaction(
    sessions: async_sessionmaker[AsyncSession], relay: OutboxRelay | None
) -> AsyncIterator[AsyncSession]:
    """One unit of work: the document change and its staged events commit together.

    Then the relay is woken so the events leave at once rather than at its next poll.
    """
    async with write_transaction(sessions) as session:
        yield session
    if relay is not None:
        relay.wake()
