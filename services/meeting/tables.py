"""The meeting service's tables and their migrations.

Annexes are stored as bytes beside their item, for the reason courrier keeps
its files in its database: the item, its annexes and its event commit in one
transaction, one backup holds everything, and tenant filtering applies to
annexes as to items.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, mapped_column, relationship

from kernel.consumer import InboxEntry, RejectedEvent, one_rejected_event_per_id
from kernel.database import Base, BigId, UtcDateTime
from kernel.idempotency import IdempotentRequest
from kernel.migrations import Migration, add_columns, create_tables, table_of
from kernel.outbox import OutboxMessage


class Meeting(Base):
    """One sitting of a tenant's college or council."""

    __tablename__ = "meeting_meetings"
    __table_args__ = (
        Index("ix_meeting_meetings_listing", "tenant", "meeting_config", "date"),
        Index("ix_meeting_meetings_published", "tenant", "first_published_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(5))
    meeting_config: Mapped[str] = mapped_column(String(64))
    date: Mapped[datetime] = mapped_column(UtcDateTime)
    place: Mapped[str] = mapped_column(String(500))
    state: Mapped[str] = mapped_column(String(16))
    #: ``[{"name", "role", "present"}]``: who sits, and who was there (taken with the minutes).
    attendees: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    #: When its first decision was published: where OParl's list of meetings places it. By
    #: its sitting day, a meeting published late came before the cursors already handed
    #: out, and a crawler's walk never saw it.
    first_published_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Item(Base):
    """An agenda item: what is proposed, and once decided, the decision."""

    __tablename__ = "meeting_items"
    __table_args__ = (
        # One item per document of another service and configuration: retries and
        # redelivered requests find the item instead of making a second one.
        UniqueConstraint(
            "tenant", "meeting_config", "external_identifier", name="uq_meeting_items_external"
        ),
        UniqueConstraint("tenant", "decision_number", name="uq_meeting_items_decision_number"),
        Index("ix_meeting_items_listing", "tenant", "meeting_config", "state"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(5))
    meeting_config: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(Text)
    proposing_service: Mapped[str] = mapped_column(String(200))
    category: Mapped[str | None] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    motivation: Mapped[str | None] = mapped_column(Text)
    #: The draft decision while proposed, the decision as taken once decided.
    decision_text: Mapped[str | None] = mapped_column(Text)
    external_identifier: Mapped[str | None] = mapped_column(String(200))
    preferred_meeting_id: Mapped[str | None] = mapped_column(String(36))
    meeting_id: Mapped[str | None] = mapped_column(
        ForeignKey("meeting_meetings.id"), index=True, nullable=True
    )
    decision: Mapped[str | None] = mapped_column(String(32))
    decision_number: Mapped[str | None] = mapped_column(String(40))
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    #: Taken from the configuration when decided, so a later change of the tenant file
    #: does not rewrite what applied to a past decision.
    oversight_applies: Mapped[bool | None] = mapped_column(Boolean)
    publication_required: Mapped[bool | None] = mapped_column(Boolean)
    published_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    #: What the regional oversight decided: approved, annulled or no_objection (None: not yet,
    #: or not subject to it). An annulled decision's oversight delivery is still "done".
    oversight_outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    concerned_party_kind: Mapped[str | None] = mapped_column(String(16))
    concerned_party_identifier: Mapped[str | None] = mapped_column(String(16))
    concerned_party_name: Mapped[str | None] = mapped_column(String(200))
    #: rest, ws4pm or event; ``creator`` is the token subject, WS4PM user or event source.
    origin: Mapped[str] = mapped_column(String(16))
    creator: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    #: Optimistic lock: of two concurrent decisions on one item, the second fails.
    version: Mapped[int] = mapped_column(Integer)

    annexes: Mapped[list[Annex]] = relationship(
        lazy="selectin", order_by="Annex.position", cascade="all, delete-orphan"
    )
    deliveries: Mapped[list[DecisionDelivery]] = relationship(
        lazy="selectin", order_by="DecisionDelivery.kind", cascade="all, delete-orphan"
    )

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 (SQLAlchemy reads it as is)


class Annex(Base):
    __tablename__ = "meeting_annexes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    item_id: Mapped[str] = mapped_column(
        ForeignKey("meeting_items.id", ondelete="CASCADE"), index=True
    )
    tenant: Mapped[str] = mapped_column(String(5))
    position: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(Text)
    filename: Mapped[str] = mapped_column(String(255))
    media_type: Mapped[str] = mapped_column(String(127))
    size: Mapped[int] = mapped_column(Integer)
    md5: Mapped[str] = mapped_column(String(32))
    #: Loaded only when asked for: item views never read the bytes.
    content: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    #: Published with the decision (OParl) only when a clerk says so: an annex's bytes are
    #: not pseudonymised, so nothing is public by default. NULL (older rows) is "no".
    publishable: Mapped[bool | None] = mapped_column(Boolean, default=False)


class DecisionDelivery(Base):
    """What a decision still owes the outside world, and how far each delivery got.

    A numbered decision gets one row per delivery the law or the item requires:
    ``oversight`` (transmission to the regional oversight, when its category is
    subject to it), ``publication`` (when its category must be published) and
    ``notification`` (when the item names the person or company concerned).
    ``status``: pending → in_progress → done, or failed (``detail`` says why).
    ``reference`` is the outside's id: the oversight's acknowledgement number, the
    e-Box message id of the notification.
    """

    __tablename__ = "meeting_decision_deliveries"
    __table_args__ = (UniqueConstraint("item_id", "kind", name="uq_meeting_deliveries_kind"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    item_id: Mapped[str] = mapped_column(
        ForeignKey("meeting_items.id", ondelete="CASCADE"), index=True
    )
    tenant: Mapped[str] = mapped_column(String(5))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    reference: Mapped[str | None] = mapped_column(String(200))
    detail: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class DecisionCounter(Base):
    """The last decision sequence per tenant, configuration and year (its row lock serialises)."""

    __tablename__ = "meeting_decision_counters"

    tenant: Mapped[str] = mapped_column(String(5), primary_key=True)
    meeting_config: Mapped[str] = mapped_column(String(64), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_sequence: Mapped[int] = mapped_column(Integer)


class UnplacedRequest(Base):
    """A request for an item that could not be placed (e.g. an unknown configuration).

    Kept, rather than retried forever by the consumer, so operators see it
    (``GET /v1/unplaced-requests``) and the requesting service can be told.
    """

    __tablename__ = "meeting_unplaced_requests"
    __table_args__ = (Index("ix_meeting_unplaced_tenant", "tenant", "received_at"),)

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(5))
    event_type: Mapped[str] = mapped_column(String(128))
    subject: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)


class PublishedDecision(Base):
    """A published decision as the public sees it (OParl), written once when it is published.

    A read model rather than columns of ``Item``: the title and decision are
    pseudonymised once (``pseudonymise.py``), not on every read, and the OParl
    lists page through this narrow row on one index. ``files`` repeats the
    ``PublishedFile`` rows of the decision so a page embeds them without a query.
    """

    __tablename__ = "meeting_published_decisions"
    __table_args__ = (
        Index("ix_meeting_published_listing", "tenant", "published_at", "item_id"),
        Index("ix_meeting_published_meeting", "tenant", "meeting_id", "position"),
    )

    item_id: Mapped[str] = mapped_column(
        ForeignKey("meeting_items.id", ondelete="CASCADE"), primary_key=True
    )
    tenant: Mapped[str] = mapped_column(String(5))
    meeting_id: Mapped[str] = mapped_column(String(36))
    meeting_config: Mapped[str] = mapped_column(String(64))
    meeting_date: Mapped[datetime] = mapped_column(UtcDateTime)
    #: 0-based rank of the decision among its meeting's decisions (by number): OParl ``order``.
    position: Mapped[int] = mapped_column(Integer)
    decision: Mapped[str] = mapped_column(String(32))
    decision_number: Mapped[str] = mapped_column(String(40))
    title: Mapped[str] = mapped_column(Text)
    resolution_text: Mapped[str] = mapped_column(Text)
    #: ``[{"annex_id", "name", "file_name", "mime_type", "size", "sha1"}]`` in annex order.
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    published_at: Mapped[datetime] = mapped_column(UtcDateTime)


class PublishedFile(Base):
    """An annex of a published decision, as published (its name pseudonymised)."""

    __tablename__ = "meeting_published_files"
    __table_args__ = (
        Index(
            "ix_meeting_published_files_listing", "tenant", "published_at", "item_id", "position"
        ),
    )

    annex_id: Mapped[str] = mapped_column(
        ForeignKey("meeting_annexes.id", ondelete="CASCADE"), primary_key=True
    )
    item_id: Mapped[str] = mapped_column(
        ForeignKey("meeting_published_decisions.item_id", ondelete="CASCADE"), index=True
    )
    tenant: Mapped[str] = mapped_column(String(5))
    meeting_id: Mapped[str] = mapped_column(String(36))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(Text)
    file_name: Mapped[str] = mapped_column(String(255))
    mime_type: Mapped[str] = mapped_column(String(127))
    size: Mapped[int] = mapped_column(Integer)
    sha1: Mapped[str] = mapped_column(String(40))
    published_at: Mapped[datetime] = mapped_column(UtcDateTime)


class PublicationGeneration(Base):
    """How many times a tenant's published decisions changed (one more at each publication).

    Everything OParl shows of a tenant comes from its publications (closed
    meetings no longer change), so this number says whether a page OParl
    rendered before is still true: it is part of the page cache's key and of
    the ``ETag``, in every meeting process alike.
    """

    __tablename__ = "meeting_publication_generations"

    tenant: Mapped[str] = mapped_column(String(5), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)


def meetings_by_first_publication(connection: Connection) -> None:
    """Migration: ``first_published_at`` of each meeting, from its decisions published."""
    add_columns(table_of(Meeting), "first_published_at")(connection)
    meetings, decisions = table_of(Meeting), table_of(PublishedDecision)
    first = (
        select(func.min(decisions.c.published_at))
        .where(decisions.c.meeting_id == meetings.c.id)
        .scalar_subquery()
    )
    connection.execute(
        update(meetings)
        .where(meetings.c.first_published_at.is_(None))
        .values(first_published_at=first)
    )


MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "meetings, items, annexes, decision counters, unplaced requests, outbox and inbox",
        create_tables(
            *(
                table_of(model)
                for model in (
                    Meeting,
                    Item,
                    Annex,
                    DecisionCounter,
                    UnplacedRequest,
                    OutboxMessage,
                    InboxEntry,
                )
            )
        ),
    ),
    Migration(
        2,
        "what each decision owes: oversight, publication, notification",
        create_tables(table_of(DecisionDelivery)),
    ),
    Migration(
        3,
        "the regional oversight's outcome of each decision",
        add_columns(table_of(Item), "oversight_outcome"),
    ),
    Migration(
        4,
        "published decisions and their files, pseudonymised (the OParl read model)",
        create_tables(table_of(PublishedDecision), table_of(PublishedFile)),
    ),
    Migration(
        5,
        "events that break their contract, kept for an operator",
        create_tables(table_of(RejectedEvent)),
    ),
    Migration(
        6,
        "each tenant's publication generation (OParl's page cache and ETags)",
        create_tables(table_of(PublicationGeneration)),
    ),
    Migration(
        7,
        "annexes are published only when marked publishable",
        add_columns(table_of(Annex), "publishable"),
    ),
    Migration(
        8,
        "requests' Idempotency-Keys and their kept answers",
        create_tables(table_of(IdempotentRequest)),
    ),
    Migration(
        9,
        "the inbox's entries by age, to purge the old ones",
        add_columns(table_of(InboxEntry)),
    ),
    Migration(
        10,
        "one kept rejected event per event id",
        one_rejected_event_per_id,
    ),
    Migration(
        11,
        "meetings placed in OParl's list by their first publication",
        meetings_by_first_publication,
    ),
]
