"""The one way a service consumes events: handlers run in a transaction, at most once per event.

Each event's handler runs in a database transaction that also records the
event id in the ``inbox`` table (and may stage outgoing events in the outbox),
so a redelivered event is recognised and skipped. The events of one fetch share
one transaction (``handle_batch``): one commit, one inbox lookup and one relay
wake-up for up to ``TRANSACTION_SIZE`` events instead of one each, which is
what lets a consumer keep up with an API writing to the same database. When
any handler of the batch fails, the transaction rolls back and the events are
handled one by one, each in its own transaction and retried, so a failing
event neither blocks nor undoes the others. Offsets are committed to Kafka
only after the batch's transactions committed.

An event whose handler keeps failing for another reason than the database
being away (a bug, a value its table refuses) would hold the consumer, and
every document behind it, for ever: after ``HANDLER_ATTEMPTS`` such failures
in a row it is kept in ``rejected_events`` with the error, and the consumer
goes on. The database being away is waited out, however long it lasts.

A record that breaks its contract must neither stop the partition (a poison
record) nor be lost: when its type is one this service handles, it is kept in
``rejected_events`` with the reason, for an operator (``kernel.api``'s
``/v1/rejected-events``); records of other types are counted and skipped
unparsed. A record of another version of a type this service handles is kept
too (a breaking change is a new ``.v2`` type, and its producer may be upgraded
first): skipped, it was lost, and what it asked for never done; kept, it is
replayed once this service is upgraded to handle it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer
from sqlalchemy import (
    JSON,
    Connection,
    Index,
    LargeBinary,
    String,
    Text,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from contracts.envelope import (
    TENANT_PATTERN,
    CloudEvent,
    EnvelopeError,
    from_record,
    headers_as_text,
    newer_than,
    type_stem,
    usable_event_id,
)
from kernel.database import Base, BigId, UtcDateTime, utcnow, write_transaction
from kernel.errors import failure_text
from kernel.kafka import (
    FETCH_MAX_WAIT_MS,
    LAST_COMMIT_SECONDS,
    FetchPacing,
    OffsetCommits,
    make_consumer,
)
from kernel.metrics import EVENTS_CONSUMED
from kernel.migrations import table_of
from kernel.outbox import OutboxRelay
from kernel.telemetry import continue_trace, tracer
from kernel.texts import plain_text

log = logging.getLogger(__name__)

EventHandler = Callable[[AsyncSession, CloudEvent], Awaitable[None]]

#: At most this many events share a transaction: on SQLite the batch holds the
#: database's write lock, and the service's API must not wait long behind it.
TRANSACTION_SIZE = 100


@dataclass(frozen=True)
class Incoming:
    """One Kafka record as the consumer reads it."""

    headers: dict[str, str]
    value: bytes
    topic: str


def merge_handlers(*parts: dict[str, EventHandler]) -> dict[str, EventHandler]:
    """The handlers of a service's parts; two parts handling one event type is an error
    (one would silently replace the other), so each type has exactly one handler."""
    merged: dict[str, EventHandler] = {}
    for part in parts:
        for event_type, handler in part.items():
            if event_type in merged:
                raise ValueError(f"two handlers for {event_type}: combine them into one")
            merged[event_type] = handler
    return merged


#: How long the inbox remembers a handled event. A record older than that comes again
#: only if a consumer group is moved back past it on purpose; Kafka keeps a topic's records
#: 7 days by default. Without a purge the inbox grew by every event for ever: some 8
#: million rows a day at 100 mails/s.
INBOX_KEEP = timedelta(days=14)
#: How often a consumer purges its inbox, and how many entries one statement deletes (the
#: writers' turn is held for one chunk at a time, not for an hour's worth at once).
INBOX_PURGE_SECONDS = 3600.0
INBOX_PURGE_CHUNK = 5000


class InboxEntry(Base):
    """An event this process has already handled (by CloudEvent id); purged after
    ``INBOX_KEEP`` (``EventConsumer.purge_inbox``)."""

    __tablename__ = "inbox"
    __table_args__ = (Index("ix_inbox_handled_at", "handled_at"),)
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(128))
    handled_at: Mapped[datetime] = mapped_column(UtcDateTime)


#: The unique index of ``rejected_events.event_id``; the index it replaced allowed repeats.
REJECTED_EVENT_ID_INDEX = "ux_rejected_events_event_id"
_REPEATABLE_EVENT_ID_INDEX = "ix_rejected_events_event_id"


class RejectedEvent(Base):
    """A record addressed to this service that breaks its contract, or that its handler
    kept failing on, kept with the reason."""

    __tablename__ = "rejected_events"
    # One row per event id: two consumers keeping the same record at once (replicas in a
    # rebalance) each looked it up, found nothing and inserted it. Records without an id
    # (NULL, never equal) are each kept.
    __table_args__ = (Index(REJECTED_EVENT_ID_INDEX, "event_id", unique=True),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str | None] = mapped_column(String(200))
    event_type: Mapped[str] = mapped_column(String(128))
    tenant: Mapped[str | None] = mapped_column(String(5), index=True)
    topic: Mapped[str] = mapped_column(String(249))
    headers: Mapped[dict[str, Any]] = mapped_column(JSON)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    reason: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)


def one_rejected_event_per_id(connection: Connection) -> None:
    """Migration: ``rejected_events`` keeps one row per event id (the earliest of any
    repeats, which were the same record kept twice), under a unique index."""
    table = table_of(RejectedEvent)
    if connection.dialect.name == "postgresql":
        # A replica of the earlier version, still running, must not keep a repeat between
        # the DELETE and the index (the index would fail, and this service with it), nor
        # hold a lock the DROP INDEX then waits for while it waits for ours (a deadlock):
        # the whole table, at once. On SQLite the migration's BEGIN IMMEDIATE holds every
        # writer off already.
        connection.execute(text("LOCK TABLE rejected_events IN ACCESS EXCLUSIVE MODE"))
    earliest = (
        select(func.min(table.c.id))
        .where(table.c.event_id.is_not(None))
        .group_by(table.c.event_id)
        .scalar_subquery()
    )
    connection.execute(
        delete(table).where(table.c.event_id.is_not(None), table.c.id.not_in(earliest))
    )
    # By its name: an ``Index`` built on the table's column would join the table's own.
    quoted = connection.dialect.identifier_preparer.quote(_REPEATABLE_EVENT_ID_INDEX)
    connection.execute(text(f"DROP INDEX IF EXISTS {quoted}"))
    for index in table.indexes:
        index.create(connection, checkfirst=True)


def rejected_event(
    headers: dict[str, str], value: bytes, topic: str, reason: str, received_at: datetime
) -> RejectedEvent:
    """The row keeping a record unhandled, with ``reason``; its attributes as the table can
    hold them: the record may be kept because they break the contract (a 300-character id,
    a NUL), and it must be kept all the same."""
    tenant = headers.get("ce_tenant")
    return RejectedEvent(
        event_id=usable_event_id(headers.get("ce_id")),
        event_type=_fitted(headers.get("ce_type"), 128) or "",
        tenant=tenant if tenant and re.fullmatch(TENANT_PATTERN, tenant) else None,
        topic=topic,
        headers=headers,
        value=value,
        reason=plain_text(reason),
        received_at=received_at,
    )


#: Which of a batch's events were handled before. Built once, the ids bound as an expanding
#: parameter: a statement built for each batch cost 0.1 ms more to run (SQLAlchemy keys
#: and looks it up again), measured on a 2-vCPU AMD EPYC host, where a batch is often
#: one or two events at a steady rate.
_ALREADY_HANDLED = select(InboxEntry.event_id).where(
    InboxEntry.event_id.in_(bindparam("ids", expanding=True))
)


#: Failures in a row of one event's handler, not for the database being away, after which
#: the event is kept in ``rejected_events`` and the consumer goes on.
HANDLER_ATTEMPTS = 5


class KeptUntilFixed(Exception):
    """Raised by a handler for an event it cannot take until an operator acts (its tenant
    not configured in this service yet): kept at once with this reason, for a replay once
    that is done. Tried again, it would only fail again; skipped, it was lost."""


class NotHandledHere(EnvelopeError):
    """A record of a type this service has no handler for, though it handles another version
    of it (a producer upgraded to ``….v2`` before this service): kept, not ignored, and
    refused when replayed until this service handles it."""


#: The pause between two attempts of a failing event.
RETRY_PAUSE_SECONDS = 1.0


#: PostgreSQL's errors that pass: by SQLSTATE class (its first two characters) the
#: connection lost (08), the server out of connections or memory (53), a transaction
#: rolled back by a deadlock or a serialization failure (40); and the server shut down or
#: starting up (57P01-57P03; not the rest of class 57, a statement cancelled by a timeout,
#: which would fail the same way again). asyncpg raises them as its own errors while
#: connecting, which SQLAlchemy does not translate into its own.
PASSING_SQLSTATE_CLASSES = ("08", "40", "53")
PASSING_SQLSTATES = ("57P01", "57P02", "57P03")


#: SQLite's primary result codes that pass: busy (5), locked (6), out of memory (7), the
#: database read-only (8: its disk remounted so), an I/O error (10), the disk full (13),
#: the file not openable (14), the lock protocol (15). Its other "operational" errors (no
#: such column, no such table: a migration not applied; a syntax error) fail the same way
#: at every attempt.
PASSING_SQLITE_CODES = frozenset({5, 6, 7, 8, 10, 13, 14, 15})

#: Errors of files, not of the way to a database: a handler's own, failing alike again.
_FILE_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


def database_away(error: BaseException) -> bool:
    """Whether ``error`` says the database (or the way to it) is away, for now."""
    sqlite_code = getattr(getattr(error, "orig", None), "sqlite_errorcode", None)
    if isinstance(sqlite_code, int):
        return sqlite_code & 0xFF in PASSING_SQLITE_CODES
    if isinstance(error, _FILE_ERRORS):
        return False
    if isinstance(error, OperationalError | InterfaceError | PoolTimeout | OSError | TimeoutError):
        return True  # disconnected, refused, the pool exhausted
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    sqlstate = _sqlstate(error) or ""
    return sqlstate[:2] in PASSING_SQLSTATE_CLASSES or sqlstate in PASSING_SQLSTATES


def _sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a PostgreSQL error: asyncpg's own, or the one SQLAlchemy wraps."""
    for candidate in (error, getattr(error, "orig", None), error.__cause__):
        code = getattr(candidate, "sqlstate", None)
        if isinstance(code, str) and len(code) == 5:
            return code
    return None


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
        # The versions this service handles of each type, by the name they share.
        self._versions: dict[str, list[str]] = {}
        for event_type in sorted(handlers):
            if (stem := type_stem(event_type)) is not None:
                self._versions.setdefault(stem, []).append(event_type)

    def not_handled_reason(self, event_type: str) -> str | None:
        """Why a record of ``event_type``, which no handler here takes, is kept: it is
        another version of a type this service handles; None for another type (a topic
        carries many that a service does not take), which is ignored."""
        stem = type_stem(event_type)
        versions = self._versions.get(stem) if stem is not None else None
        if not versions or event_type in self._handlers:
            return None
        what_to_do = (
            "upgrade this service, then replay"
            if newer_than(event_type, versions)
            else "have its sender send it again in a version handled here"
        )
        return (
            f"{event_type} is not handled here (this service handles"
            f" {', '.join(versions)}): {what_to_do}"
        )

    async def handle_batch(self, records: Sequence[Incoming]) -> list[str]:
        """Handle ``records`` in order, in one transaction; their outcome labels, in order.

        A record of another type is skipped before its body is even parsed (one of
        another version of a type handled here is kept: ``not_handled_reason``), so a
        new consumer group catching up on a topic's history reads the others'
        events cheaply. Raises when a handler fails: the transaction is rolled
        back and nothing is counted (broken records are kept already, and are
        recognised when kept again), so the caller can hand the records to
        ``handle`` one by one.
        """
        outcomes: list[str | None] = []
        ours: list[tuple[int, Incoming, CloudEvent, EventHandler]] = []
        for record in records:
            event_type = record.headers.get("ce_type", "")
            handler = self._handlers.get(event_type)
            if handler is None:
                if (reason := self.not_handled_reason(event_type)) is None:
                    outcomes.append("ignored")
                else:
                    # Kept, counted "kept" like every record in rejected_events, before the
                    # batch's offsets are committed.
                    outcomes.append(await self.keep_broken(record, NotHandledHere(reason)))
                continue
            try:
                event = from_record(record.headers, record.value)
            except EnvelopeError as exc:
                outcomes.append(await self.keep_broken(record, exc))
                continue
            ours.append((len(outcomes), record, event, handler))
            outcomes.append(None)
        if ours:
            async with write_transaction(self._sessions) as session:
                ids = {event.id for _, _, event, _ in ours}
                seen = set(await session.scalars(_ALREADY_HANDLED, {"ids": list(ids)}))
                handled: list[dict[str, Any]] = []
                for index, record, event, handler in ours:
                    if event.id in seen:
                        outcomes[index] = "duplicate"
                        continue
                    seen.add(event.id)
                    with (
                        continue_trace(record.headers),
                        tracer(self._component).start_as_current_span(f"handle {event.type}"),
                    ):
                        await handler(session, event)
                    handled.append(
                        {"event_id": event.id, "event_type": event.type, "handled_at": utcnow()}
                    )
                    outcomes[index] = "handled"
                if handled:  # one INSERT for the batch, not one ORM object each
                    await session.execute(insert(table_of(InboxEntry)), handled)
            if self._relay:
                self._relay.wake()
            for index, record, _, _ in ours:
                self._count(record.topic, str(outcomes[index]))
        for record, outcome in zip(records, outcomes, strict=True):
            if outcome == "ignored":
                self._count(record.topic, outcome)
        return [str(outcome) for outcome in outcomes]

    async def handle(self, headers: dict[str, str], value: bytes, topic: str) -> str:
        """Handle one record in its own transaction; its outcome label (handled, duplicate,
        ignored, kept)."""
        [outcome] = await self.handle_batch([Incoming(headers, value, topic)])
        return outcome

    async def keep_broken(self, record: Incoming, error: EnvelopeError) -> str:
        """Keep a record of ours that breaks its contract, or of a version of our types not
        handled here (``NotHandledHere``); a service may keep its own kinds its own way
        (urban keeps a NOTICe notification among its unprocessed ones)."""
        kept = await self.keep_rejected(record.headers, record.value, record.topic, str(error))
        return self._count(record.topic, "kept" if kept else "duplicate")

    async def keep_rejected(
        self, headers: dict[str, str], value: bytes, topic: str, reason: str
    ) -> bool:
        """Keep a record of ours that breaks its contract, or that its handler keeps failing
        on; False when it is kept already."""
        # A record without a usable id is kept at each reading: a repeat of it in the list
        # is better than a different record lost as one.
        event_id = usable_event_id(headers.get("ce_id"))
        try:
            async with self._sessions() as session, session.begin():
                if event_id is not None and await self._kept_already(session, event_id):
                    return False
                session.add(rejected_event(headers, value, topic, reason, utcnow()))
        except IntegrityError:
            # Another consumer kept it between the lookup and the commit, or the row broke
            # another constraint: only the first is no error.
            if event_id is None:
                raise
            async with self._sessions() as session:
                if not await self._kept_already(session, event_id):
                    raise
            return False
        log.warning(
            "%s kept event %s (%s) on %s, unhandled: %s",
            self._component,
            _fitted(headers.get("ce_id"), 200),
            headers.get("ce_type"),
            topic,
            reason,
        )
        return True

    async def _kept_before(self, record: Incoming) -> bool:
        """Whether this very record is kept already. Its id alone is not enough: a sender's
        corrected copy, sent again under the id of the broken one, was taken for it and
        committed past, unhandled."""
        event_id = usable_event_id(record.headers.get("ce_id"))
        if event_id is None:
            return False
        async with self._sessions() as session:
            kept = await session.scalar(
                select(RejectedEvent.value).where(RejectedEvent.event_id == event_id)
            )
        return kept is not None and bytes(kept) == record.value

    @staticmethod
    async def _kept_already(session: AsyncSession, event_id: str) -> bool:
        known = await session.scalar(
            select(RejectedEvent.id).where(RejectedEvent.event_id == event_id)
        )
        return known is not None

    async def replay(self, kept: RejectedEvent) -> str:
        """Hand a kept event to its handler again, its cause fixed (the sender corrected, the
        service upgraded); its outcome (handled, or duplicate when handled meanwhile), after
        which it is no longer kept. Raises ``EnvelopeError`` when it still breaks its
        contract, ``NotHandledHere`` while no handler here takes its type, and the handler's
        error when that fails again: it stays kept then."""
        headers: dict[str, str] = dict(kept.headers)
        event_type = headers.get("ce_type", "")
        if event_type not in self._handlers:
            # Not upgraded yet: handed to the batch, it was kept again (a duplicate) or
            # ignored, and no longer kept either way: lost.
            raise NotHandledHere(
                self.not_handled_reason(event_type) or f"{event_type} is not handled here"
            )
        from_record(headers, kept.value)  # broken still: raises before any handler runs
        [outcome] = await self.handle_batch([Incoming(headers, kept.value, kept.topic)])
        async with self._sessions() as session, session.begin():
            await session.execute(delete(RejectedEvent).where(RejectedEvent.id == kept.id))
        log.info("%s replayed kept event %s: %s", self._component, kept.event_id, outcome)
        return outcome

    def _count(self, topic: str, outcome: str) -> str:
        EVENTS_CONSUMED.labels(component=self._component, topic=topic, outcome=outcome).inc()
        return outcome

    async def run(
        self,
        bootstrap_servers: str,
        group_id: str,
        topics: Iterable[str],
        *,
        fetch_wait_ms: int = FETCH_MAX_WAIT_MS,
    ) -> None:
        consumer = make_consumer(
            bootstrap_servers,
            group_id,
            topics,
            client_id=self._component,
            fetch_max_wait_ms=fetch_wait_ms,
        )
        purging = asyncio.create_task(self._purge_inbox_now_and_then())
        try:
            # start() waits for the group join; a shutdown during it must still stop the client.
            await consumer.start()
            await self._consume(consumer, FetchPacing(consumer, fetch_wait_ms))
        finally:
            purging.cancel()
            await asyncio.gather(purging, return_exceptions=True)
            await consumer.stop()

    async def purge_inbox(self, keep: timedelta = INBOX_KEEP) -> int:
        """Forget the events handled more than ``keep`` ago, a chunk per transaction; how
        many."""
        purged, before = 0, utcnow() - keep
        while True:
            async with write_transaction(self._sessions) as session:
                chunk = (
                    select(InboxEntry.event_id)
                    .where(InboxEntry.handled_at < before)
                    .limit(INBOX_PURGE_CHUNK)
                )
                deleted = await session.execute(
                    delete(InboxEntry).where(InboxEntry.event_id.in_(chunk))
                )
            count: int = deleted.rowcount  # type: ignore[attr-defined]
            purged += count
            if count < INBOX_PURGE_CHUNK:
                return purged
            await asyncio.sleep(0.1)  # the loop's other work between two chunks

    async def _purge_inbox_now_and_then(self) -> None:
        while True:
            try:
                purged = await self.purge_inbox()
                if purged:
                    log.info("%s forgot %d events handled long ago", self._component, purged)
            except Exception:  # the database is away: the next purge tries again
                log.exception("%s could not purge its inbox", self._component)
            await asyncio.sleep(INBOX_PURGE_SECONDS)

    async def _consume(self, consumer: AIOKafkaConsumer, pacing: FetchPacing) -> None:
        commits = OffsetCommits(consumer, self._component)
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=500)
                pacing.note(bool(batches))
                records = [
                    Incoming(headers_as_text(record.headers), record.value or b"", partition.topic)
                    for partition, partition_records in batches.items()
                    for record in partition_records
                ]
                for start in range(0, len(records), TRANSACTION_SIZE):
                    chunk = records[start : start + TRANSACTION_SIZE]
                    try:
                        await self.handle_batch(chunk)
                    except Exception:
                        log.warning(
                            "%s could not handle a batch of %d events together; one by one now",
                            self._component,
                            len(chunk),
                            exc_info=True,
                        )
                        for record in chunk:
                            await self._handle_until_done(record)
                await commits.commit(batches)
        finally:
            await commits.drain(timeout=LAST_COMMIT_SECONDS)

    async def _handle_until_done(self, record: Incoming) -> None:
        failures = 0
        while True:
            try:
                if await self._kept_before(record):
                    # Read again (a rebalance, a restart before the commit): its handler failed
                    # HANDLER_ATTEMPTS times on it already. Failing as often again, a few dozen
                    # such events outlasted the poll interval, the consumer left its group
                    # before it committed, and read them all again: for ever.
                    self._count(record.topic, "duplicate")
                    return
                await self.handle(record.headers, record.value, record.topic)
                return
            except KeptUntilFixed as exc:
                reason = str(exc)
            except Exception as exc:
                # Do not skip the event, do not commit past it: try again shortly, or,
                # when its handler keeps failing on it, keep it (see the module's words).
                if not database_away(exc):
                    failures += 1
                if failures < HANDLER_ATTEMPTS:
                    log.exception(
                        "%s could not handle an event on %s; retrying",
                        self._component,
                        record.topic,
                    )
                    await asyncio.sleep(RETRY_PAUSE_SECONDS)
                    continue
                reason = f"its handler failed {failures} times: {failure_text(exc)}"
            try:
                kept = await self.keep_rejected(record.headers, record.value, record.topic, reason)
            except Exception:
                log.exception("%s could not keep an event it cannot handle", self._component)
                await asyncio.sleep(RETRY_PAUSE_SECONDS)
                continue
            self._count(record.topic, "kept" if kept else "duplicate")
            return


def _fitted(text: str | None, longest: int) -> str | None:
    if text is None:
        return None
    return plain_text(text)[:longest]
