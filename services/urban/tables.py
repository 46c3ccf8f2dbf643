"""The urban service's tables and their migrations.

Documents of NOTICe notifications are stored as bytes beside their file, for
the reason courrier and meeting keep theirs in their database: the file, its
documents and its events commit in one transaction, and tenant filtering
applies to documents as to files.

Two dates on each file serve the deadline watcher: ``next_deadline_on`` (the
first open legal deadline, shown and sorted on) and ``next_warning_on`` (the
first day a warning is due); the watcher pages through the index of the
latter and never loads the files that have nothing to say.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from contracts.events.outside import METADATA_MISMATCH_LENGTH
from kernel.consumer import InboxEntry, RejectedEvent, one_rejected_event_per_id
from kernel.database import Base, BigId, UtcDateTime
from kernel.idempotency import IdempotentRequest
from kernel.migrations import Migration, add_columns, create_tables, table_of
from kernel.outbox import OutboxMessage


class PermitFile(Base):
    """One permit, certificate or declaration file of a tenant."""

    __tablename__ = "urban_files"
    __table_args__ = (
        UniqueConstraint("tenant", "reference", name="uq_urban_files_reference"),
        # One file per NOTICe notification: a redelivered notification finds it.
        UniqueConstraint("tenant", "notice_notification_id", name="uq_urban_files_notice"),
        Index("ix_urban_files_listing", "tenant", "state", "created_at"),
        Index("ix_urban_files_next_deadline", "tenant", "next_deadline_on"),
        Index("ix_urban_files_next_warning", "next_warning_on"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(5))
    reference: Mapped[str] = mapped_column(String(40))
    file_type: Mapped[str] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(24))
    subject: Mapped[str] = mapped_column(Text)
    received_on: Mapped[date] = mapped_column(Date)
    complete_on: Mapped[date | None] = mapped_column(Date)
    missing_documents: Mapped[list[str] | None] = mapped_column(JSON)
    #: The day the list of missing documents was sent (it answers the completeness check too).
    missing_asked_on: Mapped[date | None] = mapped_column(Date)
    #: The day the applicant's complements came: the completeness check starts over from it.
    complements_received_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    inquiry_starts_on: Mapped[date | None] = mapped_column(Date)
    decision_requested_event_id: Mapped[str | None] = mapped_column(String(64))
    #: The meeting configuration asked for the decision (the tenant's may change meanwhile).
    decision_meeting_config: Mapped[str | None] = mapped_column(String(64), nullable=True)
    decision: Mapped[str | None] = mapped_column(String(16))
    decision_number: Mapped[str | None] = mapped_column(String(40))
    decision_text: Mapped[str | None] = mapped_column(Text)
    decided_on: Mapped[date | None] = mapped_column(Date)
    #: The day the college extended its decision deadline by 30 days (once, CoDT D.IV.46).
    decision_extended_on: Mapped[date | None] = mapped_column(Date)
    notified_on: Mapped[date | None] = mapped_column(Date)
    notice_notification_id: Mapped[str | None] = mapped_column(String(100))
    notice_instance_code: Mapped[str | None] = mapped_column(String(100))
    #: None (not from NOTICe), open, partial_sent, closed (FINAL sent; partial_sent again
    #: when NOTICe refuses it for good, for a corrected one).
    notice_state: Mapped[str | None] = mapped_column(String(16))
    #: An applicant's declared identity differs from the National Register's.
    identity_flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    next_deadline: Mapped[str | None] = mapped_column(String(100))
    next_deadline_on: Mapped[date | None] = mapped_column(Date)
    next_warning_on: Mapped[date | None] = mapped_column(Date)
    origin: Mapped[str] = mapped_column(String(16))  # notice or rest
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    #: Optimistic lock: of two concurrent changes of one file, the second fails.
    version: Mapped[int] = mapped_column(Integer)

    applicants: Mapped[list[FileApplicant]] = relationship(
        lazy="selectin", order_by="FileApplicant.position", cascade="all, delete-orphan"
    )
    parcels: Mapped[list[FileParcel]] = relationship(
        lazy="selectin", order_by="FileParcel.position", cascade="all, delete-orphan"
    )
    opinions: Mapped[list[Opinion]] = relationship(
        lazy="selectin", order_by="Opinion.requested_at", cascade="all, delete-orphan"
    )
    documents: Mapped[list[FileDocument]] = relationship(
        lazy="selectin", order_by="FileDocument.id", cascade="all, delete-orphan"
    )

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 (SQLAlchemy reads it as is)


class FileApplicant(Base):
    __tablename__ = "urban_applicants"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    file_id: Mapped[str] = mapped_column(
        ForeignKey("urban_files.id", ondelete="CASCADE"), index=True
    )
    tenant: Mapped[str] = mapped_column(String(5))
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    identifier: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(300))
    address: Mapped[str | None] = mapped_column(Text)
    identity_status: Mapped[str] = mapped_column(String(16))
    #: The IdentificationRequested event whose receipt carries the register's answer.
    identification_event_id: Mapped[str | None] = mapped_column(String(64), index=True)
    registered_name: Mapped[str | None] = mapped_column(String(300))


class FileParcel(Base):
    __tablename__ = "urban_parcels"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    file_id: Mapped[str] = mapped_column(
        ForeignKey("urban_files.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    capakey: Mapped[str] = mapped_column(String(17))
    address: Mapped[str | None] = mapped_column(Text)


class FileDocument(Base):
    __tablename__ = "urban_documents"
    __table_args__ = (UniqueConstraint("file_id", "document_id", name="uq_urban_documents"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    file_id: Mapped[str] = mapped_column(
        ForeignKey("urban_files.id", ondelete="CASCADE"), index=True
    )
    document_id: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str] = mapped_column(String(255))
    media_type: Mapped[str] = mapped_column(String(127))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    #: Loaded only when asked for: file views never read the bytes.
    content: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    #: How the content differs from what NOTICe declared of it, or None (NoticeDocument).
    metadata_mismatch: Mapped[str | None] = mapped_column(
        String(METADATA_MISMATCH_LENGTH), nullable=True
    )


class Opinion(Base):
    __tablename__ = "urban_opinions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    file_id: Mapped[str] = mapped_column(
        ForeignKey("urban_files.id", ondelete="CASCADE"), index=True
    )
    tenant: Mapped[str] = mapped_column(String(5))
    body: Mapped[str] = mapped_column(String(50))
    subject: Mapped[str] = mapped_column(Text)
    due_on: Mapped[date] = mapped_column(Date)
    requested_at: Mapped[datetime] = mapped_column(UtcDateTime)
    verdict: Mapped[str | None] = mapped_column(String(32))
    text: Mapped[str | None] = mapped_column(Text)
    given_on: Mapped[date | None] = mapped_column(Date)
    received_on: Mapped[date | None] = mapped_column(Date)
    #: The OpinionRequested event, which the gateway's receipt names.
    request_event_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    #: pending, delivered, failed or dead (the gateway's receipt of the request); None for
    #: requests made before receipts were followed (migration 11).
    delivery: Mapped[str | None] = mapped_column(String(16), nullable=True)


class DeadlineWarningSent(Base):
    """A deadline warning already emitted: each (file, deadline, level) is announced once."""

    __tablename__ = "urban_deadline_warnings"

    file_id: Mapped[str] = mapped_column(
        ForeignKey("urban_files.id", ondelete="CASCADE"), primary_key=True
    )
    deadline: Mapped[str] = mapped_column(String(100), primary_key=True)
    level: Mapped[str] = mapped_column(String(16), primary_key=True)
    due_on: Mapped[date] = mapped_column(Date)
    emitted_at: Mapped[datetime] = mapped_column(UtcDateTime)


class NoticeResponse(Base):
    """A response to a NOTICe notification, and how far the gateway got delivering it."""

    __tablename__ = "urban_notice_responses"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    file_id: Mapped[str] = mapped_column(
        ForeignKey("urban_files.id", ondelete="CASCADE"), index=True
    )
    tenant: Mapped[str] = mapped_column(String(5))
    state: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    #: pending, delivered, failed or dead (the gateway's receipt).
    delivery: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ReferenceCounter(Base):
    """The last reference sequence per tenant, prefix and year (its row lock serialises)."""

    __tablename__ = "urban_reference_counters"

    tenant: Mapped[str] = mapped_column(String(5), primary_key=True)
    prefix: Mapped[str] = mapped_column(String(8), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_sequence: Mapped[int] = mapped_column(Integer)


class UnprocessedEvent(Base):
    """An inbound event that could not be applied (bad notification, unknown file…).

    Kept whole, rather than dropped or retried forever by the consumer, so
    operators see it (``GET /v1/unprocessed-notifications``) and can act on it.
    """

    __tablename__ = "urban_unprocessed_events"
    __table_args__ = (Index("ix_urban_unprocessed_tenant", "tenant", "received_at"),)

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(5))
    event_type: Mapped[str] = mapped_column(String(128))
    subject: Mapped[str] = mapped_column(String(200))
    problem: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    #: The event's data, its documents' bytes left out (``contents``): the listing reads it.
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: The documents' ``content_base64``, in the order of ``data["documents"]``; read only to
    #: replay the event. In ``data``, a page of kept notifications carrying plans was
    #: hundreds of megabytes to read for a listing.
    contents: Mapped[list[str | None] | None] = mapped_column(JSON, deferred=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)


MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "files, applicants, parcels, documents, opinions, deadline warnings, NOTICe responses, "
        "reference counters, unprocessed events, outbox and inbox",
        create_tables(
            *(
                table_of(model)
                for model in (
                    PermitFile,
                    FileApplicant,
                    FileParcel,
                    FileDocument,
                    Opinion,
                    DeadlineWarningSent,
                    NoticeResponse,
                    ReferenceCounter,
                    UnprocessedEvent,
                    OutboxMessage,
                    InboxEntry,
                )
            )
        ),
    ),
    Migration(
        2,
        "events that break their contract, kept for an operator",
        create_tables(table_of(RejectedEvent)),
    ),
    Migration(
        3,
        "the day the college extended a file's decision deadline",
        add_columns(table_of(PermitFile), "decision_extended_on"),
    ),
    Migration(
        4,
        "requests' Idempotency-Keys and their kept answers",
        create_tables(table_of(IdempotentRequest)),
    ),
    Migration(
        5,
        "the meeting configuration a file asked for its decision",
        add_columns(table_of(PermitFile), "decision_meeting_config"),
    ),
    Migration(
        6,
        "the inbox's entries by age, to purge the old ones",
        add_columns(table_of(InboxEntry)),
    ),
    Migration(
        7,
        "one kept rejected event per event id",
        one_rejected_event_per_id,
    ),
    Migration(
        8,
        "the day an incomplete file's complements came",
        add_columns(table_of(PermitFile), "complements_received_on"),
    ),
    Migration(
        9,
        "kept events' documents' bytes apart from their data",
        add_columns(table_of(UnprocessedEvent), "contents"),
    ),
    Migration(
        10,
        "how a NOTICe document differs from its declared metadata",
        add_columns(table_of(FileDocument), "metadata_mismatch"),
    ),
    Migration(
        11,
        "whether an opinion request reached its body, by the receipt of its event",
        add_columns(table_of(Opinion), "request_event_id", "delivery"),
    ),
]
