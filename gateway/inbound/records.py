"""The inbound log: one row per document fetched from outside, unique by its source's id.

A row is written in the transaction that stages the document's event in the
outbox, so a document is published once however often it is fetched. Status:

    published     its event is staged for the tenant's services
    unroutable    no tenant has its receiver; kept here for an operator, never published
    refused       too large to travel in an event; kept here, never published

An item a source lists but does not give whole yet (an error page, a timeout),
or whose row the database refused, is a ``WaitingItem`` until it is recorded:
tried again at later polls, further and further apart, and shown to operators
(``GET /v1/inbound/waiting``).

``source_status`` is where the source (the Peppol access point) stands:

    pending ──► acknowledged   (published documents)
       └──────► rejected       (unroutable and refused ones, with ``reason``)

A crash after the commit and before the source is told leaves ``pending``:
the next poll sees the document again, finds the row, and only tells the
source.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from urllib.parse import quote

from pydantic import ValidationError
from sqlalchemy import Index, Integer, LargeBinary, String, Text, UniqueConstraint, delete, select
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from contracts.envelope import CloudEvent
from kernel.database import Base, BigId, UtcDateTime, utcnow, write_transaction
from kernel.kafka import MAX_REQUEST_BYTES
from kernel.logs import mask_national_numbers
from kernel.outbox import fits_in_a_record
from kernel.texts import clipped, plain_text

log = logging.getLogger(__name__)

Status = Literal["published", "unroutable", "refused"]
SOURCE_LENGTH, MESSAGE_ID_LENGTH, SENDER_LENGTH, DOCUMENT_TYPE_LENGTH = 300, 200, 210, 500
SourceStatus = Literal["pending", "acknowledged", "rejected"]
#: What no id or listed field the inbound log keeps may hold: the C0 controls and DEL,
#: and what no text may hold (``kernel.texts.NOT_IN_TEXT``). PostgreSQL refuses a NUL in
#: a VARCHAR: a Peppol sender ending in one failed the batch's transaction, and the
#: listing, given first again at every poll, blocked the inbox for good.
NOT_IN_FIELD = re.compile("[\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


class SourceError(RuntimeError):
    """An outside source answered something unexpected, with its HTTP status if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def gone(self) -> bool:
        """The item is not there and will not be at the next poll (404, 410): it is
        recorded refused with the answer rather than asked for at every poll."""
        return self.status in (404, 410)


class InboundDocument(Base):
    __tablename__ = "gateway_inbound"
    __table_args__ = (
        Index("ix_gateway_inbound_tenant", "tenant", "id"),
        Index("ix_gateway_inbound_status", "status", "id"),
        Index("ix_gateway_inbound_pending", "source_status"),
        # Ids are the source's own: two access points, or NOTICe and an access point, may
        # use the same one. Unique by the id alone, a document of one was taken for
        # another's already recorded, and never published.
        UniqueConstraint("channel", "source", "source_message_id", name="uq_gateway_inbound_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(32))  # "peppol", "notice"…
    #: Which source of the channel: a Peppol access point's URL; the tenant whose
    #: account it is (opinions: ids unique within an account only); empty where the
    #: channel has one source (NOTICe) or its ids name the tenant.
    source: Mapped[str] = mapped_column(String(SOURCE_LENGTH), default="")
    #: The source's id of the document: a document polled twice is recorded once.
    source_message_id: Mapped[str] = mapped_column(String(MESSAGE_ID_LENGTH))
    tenant: Mapped[str | None] = mapped_column(String(5), nullable=True)
    sender: Mapped[str] = mapped_column(String(SENDER_LENGTH))
    receiver: Mapped[str] = mapped_column(String(SENDER_LENGTH))
    document_type: Mapped[str] = mapped_column(String(DOCUMENT_TYPE_LENGTH))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    document: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16))
    source_status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    event_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    received_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    fetched_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


def usable_id(source_id: str) -> bool:
    """Whether the inbound log can keep ``source_id`` as an item's id (and as a waiting
    item's): one it cannot is left alone at its source, and logged."""
    return 0 < len(source_id) <= MESSAGE_ID_LENGTH and not NOT_IN_FIELD.search(source_id)


def path_segment(source_id: str) -> str:
    """``source_id`` as one segment of a URL's path. Put in as it was, a Peppol message
    "INV/2026/1" was fetched at ``/inbox/INV/2026/1`` (404: refused for good), "a#b" at
    another message's URL, and ".." acknowledged ``/v1/acknowledge``. Quoting leaves "."
    and ".." as they are, which the URL's parser drops: their dots are quoted too."""
    segment = quote(source_id, safe="")
    return segment.replace(".", "%2E") if segment in (".", "..") else segment


def database_away(exc: BaseException) -> bool:
    """Whether ``exc`` says the database did not answer (connection lost, locked, a
    transaction rolled back for a conflict), rather than refused one item's row: the
    poll stops and the next one tries again, instead of making every item wait."""
    return isinstance(exc, OperationalError | InterfaceError | OSError | TimeoutError) or bool(
        getattr(exc, "connection_invalidated", False)
    )


def not_recorded_reason(exc: BaseException) -> str:
    """Why an item could not be recorded, for its waiting row: the database's words
    (without the statement and its parameters: the document), clipped."""
    cause = getattr(exc, "orig", None) or exc
    return clipped(plain_text(f"It could not be recorded: {type(cause).__name__}: {cause}"), 1000)


def too_large_problem(what: str, event: CloudEvent) -> str | None:
    """Why ``event`` (of a "notification", an "answer", an "outcome") cannot be published:
    larger than the producer sends; None when it fits. Staged, it failed the transaction
    that recorded it, and the item was read again at every poll, for ever."""
    if fits_in_a_record(event):
        return None
    return (
        f"The {what} makes an event larger than one Kafka record carries ({MAX_REQUEST_BYTES}"
        " bytes); kept here for an operator."
    )


def contract_problem(what: str, exc: Exception) -> str:
    """Why a document (a "notification", an "outcome") cannot be the hub's event, without
    the values it held (national numbers)."""
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False)
        )
    else:
        problems = f"{type(exc).__name__}: {exc}"
    return mask_national_numbers(
        f"The {what} breaks the hub's event contract ({problems}): kept here, not published."
    )


class WaitingItem(Base):
    """An item a source lists and did not give whole at its last try; deleted when it is
    recorded (``InboundDocument``)."""

    __tablename__ = "gateway_inbound_waiting"
    __table_args__ = (
        Index("ix_gateway_inbound_waiting_tenant", "tenant", "id"),
        UniqueConstraint(
            "channel", "source", "source_message_id", name="uq_gateway_inbound_waiting_id"
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(SOURCE_LENGTH), default="")
    source_message_id: Mapped[str] = mapped_column(String(MESSAGE_ID_LENGTH))
    #: Whose it is, where the listing tells (NOTICe's instance, a Peppol receiver); None:
    #: seen by the hub's operators only (scope ``gateway:unroutable``).
    tenant: Mapped[str | None] = mapped_column(String(5), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    tries: Mapped[int] = mapped_column(Integer)
    first_failed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_failed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    next_try_at: Mapped[datetime] = mapped_column(UtcDateTime)


#: The pause before a waiting item is tried again, doubled at each failure up to the most:
#: a notification whose document NOTICe answers with an error page for a week was tried,
#: and logged, at every poll (every 5 s by default).
WAITING_FIRST_PAUSE = timedelta(seconds=10)
WAITING_LONGEST_PAUSE = timedelta(minutes=30)
#: A waiting item not tried again this long after its next try was due is no longer
#: listed by its source (taken elsewhere, expired): it is forgotten.
WAITING_FORGOTTEN_AFTER = timedelta(days=1)


def waiting_pause(tries: int) -> timedelta:
    """The pause after an item's ``tries``-th failure: doubled each time, up to the longest
    (the exponent capped: a week of failures overflowed the doubling)."""
    return min(WAITING_FIRST_PAUSE * 2 ** min(tries - 1, 20), WAITING_LONGEST_PAUSE)


@dataclass(frozen=True)
class NotTaken:
    """An item that could not be taken at this poll, and why."""

    source_message_id: str
    tenant: str | None
    reason: str


class WaitingItems:
    """The items of one channel that wait for a later poll: which ones to leave out of this
    poll, and the record of each failure (reason masked, tries, next try)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        channel: str,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._channel = channel
        self._clock = clock

    async def not_due(self, source: str, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` that failed lately and wait for their next try."""
        if not ids:
            return set()
        async with self._sessions() as session:
            rows = await session.scalars(
                select(WaitingItem.source_message_id).where(
                    WaitingItem.channel == self._channel,
                    WaitingItem.source == source,
                    WaitingItem.source_message_id.in_(list(ids)),
                    WaitingItem.next_try_at > self._clock(),
                )
            )
            return set(rows.all())

    async def failed(self, source: str, failures: Sequence[NotTaken]) -> None:
        """Record that ``failures`` could not be taken at this poll; the items stay listed
        at the source and are tried again later. Never raises: the poll's other items
        are recorded whatever happens here."""
        if not failures:
            return
        now = self._clock()
        ids = [failure.source_message_id for failure in failures]
        try:
            async with write_transaction(self._sessions) as session:
                # An item no longer listed (taken elsewhere, expired at the source) is not
                # tried again: its row would be shown for ever. A listed one is tried at
                # least every WAITING_LONGEST_PAUSE.
                await session.execute(
                    delete(WaitingItem).where(
                        WaitingItem.channel == self._channel,
                        WaitingItem.next_try_at < now - WAITING_FORGOTTEN_AFTER,
                    )
                )
                # Recorded meanwhile by another replica: not waiting. Of this source only (or
                # "", from before sources were recorded): another opinions account's answer
                # "AV-1" hid this one's from the operators.
                recorded = set(
                    await session.scalars(
                        select(InboundDocument.source_message_id).where(
                            InboundDocument.channel == self._channel,
                            InboundDocument.source.in_([source, ""]),
                            InboundDocument.source_message_id.in_(ids),
                        )
                    )
                )
                known = {
                    row.source_message_id: row
                    for row in await session.scalars(
                        select(WaitingItem).where(
                            WaitingItem.channel == self._channel,
                            WaitingItem.source == source,
                            WaitingItem.source_message_id.in_(ids),
                        )
                    )
                }
                for failure in failures:
                    if failure.source_message_id in recorded:
                        continue
                    row = known.get(failure.source_message_id)
                    if row is None:
                        row = known[failure.source_message_id] = WaitingItem(
                            channel=self._channel,
                            source=source,
                            source_message_id=failure.source_message_id,
                            tries=0,
                            first_failed_at=now,
                        )
                        session.add(row)
                    row.tenant = failure.tenant
                    row.reason = mask_national_numbers(failure.reason)
                    row.tries += 1
                    row.last_failed_at = now
                    row.next_try_at = now + waiting_pause(row.tries)
        except IntegrityError:  # another replica recorded one meanwhile: its record stands
            log.info("%s: waiting items recorded concurrently", self._channel)
        except Exception:  # the database is away: the items are tried at the next poll
            log.exception("%s: could not record the items that wait", self._channel)

    async def forget(self, session: AsyncSession, source: str, ids: Sequence[str]) -> None:
        """In the transaction that records ``ids``: they no longer wait."""
        if ids:
            await session.execute(
                delete(WaitingItem).where(
                    WaitingItem.channel == self._channel,
                    WaitingItem.source == source,
                    WaitingItem.source_message_id.in_(list(ids)),
                )
            )
