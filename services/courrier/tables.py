"""The registry's tables and their migrations.

Files (scans, letters) are stored as bytes in the database, beside their
mail: the file, its registration and its event commit in one transaction, so
a failed request leaves no orphan file and a committed one never misses its
file; one backup holds everything, and tenant filtering applies to files as
to mail. The API caps bodies at 12 MiB and letters at 4 MiB, sizes both
SQLite and PostgreSQL store comfortably.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
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

from kernel.consumer import InboxEntry, RejectedEvent, one_rejected_event_per_id
from kernel.database import Base, UtcDateTime
from kernel.idempotency import IdempotentRequest
from kernel.migrations import Migration, add_columns, create_tables, table_of
from kernel.outbox import OutboxMessage


class Mail(Base):
    """One entry of the registry: an incoming or an outgoing mail of one tenant."""

    __tablename__ = "courrier_mails"
    __table_args__ = (
        UniqueConstraint("tenant", "registration_number", name="uq_courrier_mails_number"),
        UniqueConstraint("tenant", "external_id", name="uq_courrier_mails_external_id"),
        Index("ix_courrier_mails_listing", "tenant", "direction", "state", "mail_date"),
        # One mail per event that asked for one: a redelivered or replayed request finds it.
        Index(
            "uq_courrier_mails_requested_by",
            "tenant",
            "requested_by_event_id",
            unique=True,
        ),
        Index("ix_courrier_mails_about", "tenant", "about_service", "about_document_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(5))
    direction: Mapped[str] = mapped_column(String(16))
    registration_number: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    #: The registry's date: received_on for incoming mail, the creation day for outgoing mail.
    mail_date: Mapped[date] = mapped_column(Date)
    subject: Mapped[str] = mapped_column(Text)
    sender: Mapped[str | None] = mapped_column(Text)
    assigned_service: Mapped[str | None] = mapped_column(String(200))
    #: IMIO intake: the document type and the scanner's own id of the document.
    scan_type: Mapped[str | None] = mapped_column(String(16))
    external_id: Mapped[str | None] = mapped_column(String(64))
    recipient_kind: Mapped[str | None] = mapped_column(String(16))
    recipient_identifier: Mapped[str | None] = mapped_column(String(16))
    recipient_name: Mapped[str | None] = mapped_column(String(200))
    send_event_id: Mapped[str | None] = mapped_column(String(64))
    ebox_message_id: Mapped[str | None] = mapped_column(String(200))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    #: The other service's document the mail is about (``contracts.events.courrier.about``).
    about_service: Mapped[str | None] = mapped_column(String(32), nullable=True)
    about_document_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: The event that asked for the mail (e.g. ``meeting.item.decided.v1``); None when typed in.
    requested_by_event_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    #: Optimistic lock: a concurrent change of the same mail fails instead of being lost.
    version: Mapped[int] = mapped_column(Integer)

    files: Mapped[list[MailFile]] = relationship(
        lazy="selectin", order_by="MailFile.created_at", cascade="all, delete-orphan"
    )

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 (SQLAlchemy reads it as is)


class MailFile(Base):
    __tablename__ = "courrier_files"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    mail_id: Mapped[str] = mapped_column(
        ForeignKey("courrier_mails.id", ondelete="CASCADE"), index=True
    )
    tenant: Mapped[str] = mapped_column(String(5))
    #: "scan" (intake) or "letter" (the PDF of an outgoing mail).
    role: Mapped[str] = mapped_column(String(16))
    filename: Mapped[str] = mapped_column(String(255))
    media_type: Mapped[str] = mapped_column(String(127))
    size: Mapped[int] = mapped_column(Integer)
    md5: Mapped[str] = mapped_column(String(32))
    #: Loaded only when asked for: listings never read the bytes.
    content: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class RegistrationCounter(Base):
    """The last sequence handed out per tenant, year and direction (a row lock serialises them)."""

    __tablename__ = "courrier_registration_counters"

    tenant: Mapped[str] = mapped_column(String(5), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    direction: Mapped[str] = mapped_column(String(16), primary_key=True)
    last_sequence: Mapped[int] = mapped_column(Integer)


MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "registry, files, registration counters, outbox and inbox",
        create_tables(
            *(
                table_of(model)
                for model in (Mail, MailFile, RegistrationCounter, OutboxMessage, InboxEntry)
            )
        ),
    ),
    Migration(
        2,
        "outgoing mail asked for by another service's event (e.g. a decision's notification)",
        add_columns(table_of(Mail), "about_service", "about_document_id", "requested_by_event_id"),
    ),
    Migration(
        3,
        "events that break their contract, kept for an operator",
        create_tables(table_of(RejectedEvent)),
    ),
    Migration(
        4,
        "requests' Idempotency-Keys and their kept answers",
        create_tables(table_of(IdempotentRequest)),
    ),
    Migration(
        5,
        "the inbox's entries by age, to purge the old ones",
        add_columns(table_of(InboxEntry)),
    ),
    Migration(
        6,
        "one kept rejected event per event id",
        one_rejected_event_per_id,
    ),
]
