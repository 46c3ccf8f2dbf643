"""The invoice service's tables and their migrations.

The received UBL is stored as bytes beside its invoice, as courrier stores its
scans: the document, its state and its events commit in one transaction, and
a rejected document is kept with its findings like any other. Amounts are
stored as decimal strings: exact on both SQLite (which has no decimal type)
and PostgreSQL, and only ever shown, never summed in SQL.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from kernel.consumer import InboxEntry, RejectedEvent, one_rejected_event_per_id
from kernel.database import Base, BigId, UtcDateTime, utcnow
from kernel.days import commune_day
from kernel.idempotency import IdempotentRequest
from kernel.migrations import Migration, add_columns, create_tables, table_of
from kernel.outbox import OutboxMessage


class DecimalText(TypeDecorator[Decimal]):
    """A Decimal stored as its exact text."""

    impl = String(64)
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Any) -> str | None:
        return None if value is None else str(value)

    def process_result_value(self, value: str | None, dialect: Any) -> Decimal | None:
        return None if value is None else Decimal(value)


class Invoice(Base):
    """One received invoice or credit note of one tenant (or a scanned one still to encode)."""

    __tablename__ = "factures_invoices"
    __table_args__ = (
        # Redelivery of one Peppol message, or one scan, gives one invoice.
        UniqueConstraint("tenant", "peppol_message_id", name="uq_factures_peppol_message"),
        UniqueConstraint("tenant", "scan_mail_id", name="uq_factures_scan_mail"),
        # Set only on invoices that count (not rejected): two concurrent receptions of
        # the same invoice cannot both pass the duplicate check.
        UniqueConstraint("tenant", "accepted_key", name="uq_factures_accepted_key"),
        Index("ix_factures_invoices_listing", "tenant", "state", "created_at"),
        Index("ix_factures_invoices_supplier", "tenant", "supplier_key", "number"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(5))
    #: "peppol", "upload" or "scan" (contracts.events.factures.Channel).
    channel: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    #: "Invoice" or "CreditNote"; None for a scan not yet encoded or an unreadable document.
    kind: Mapped[str | None] = mapped_column(String(16))
    #: BT-3 (UNCL 1001: 384 corrected invoice, 396 factored credit note…), echoed in the
    #: supplier's answers; None when unread, or not a code those answers may carry.
    type_code: Mapped[str | None] = mapped_column(String(3))
    number: Mapped[str | None] = mapped_column(String(200))
    issue_date: Mapped[date | None] = mapped_column(Date)
    due_date: Mapped[date | None] = mapped_column(Date)
    currency: Mapped[str | None] = mapped_column(String(3))
    supplier_name: Mapped[str | None] = mapped_column(Text)
    supplier_vat_id: Mapped[str | None] = mapped_column(String(64))
    supplier_legal_id: Mapped[str | None] = mapped_column(String(64))
    supplier_key: Mapped[str | None] = mapped_column(String(300))
    #: Peppol endpoints as "scheme:identifier"; the supplier's is who we answer.
    supplier_endpoint: Mapped[str | None] = mapped_column(String(220))
    buyer_endpoint: Mapped[str | None] = mapped_column(String(220))
    buyer_reference: Mapped[str | None] = mapped_column(String(200))
    order_reference: Mapped[str | None] = mapped_column(String(200))
    #: BT-25 numbers of a credit note, and the invoice it was linked to.
    preceding_invoices: Mapped[list[str]] = mapped_column(JSON)
    credited_invoice_id: Mapped[str | None] = mapped_column(String(36))
    tax_exclusive_amount: Mapped[Decimal | None] = mapped_column(DecimalText)
    tax_amount: Mapped[Decimal | None] = mapped_column(DecimalText)
    payable_amount: Mapped[Decimal | None] = mapped_column(DecimalText)
    assigned_service: Mapped[str | None] = mapped_column(String(200))
    #: The checks' findings (rule, flag, message, location) and the clerk-readable reasons.
    findings: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    rejection_reasons: Mapped[list[dict[str, str | None]]] = mapped_column(JSON)
    accepted_key: Mapped[str | None] = mapped_column(String(600))
    peppol_message_id: Mapped[str | None] = mapped_column(String(200))
    scan_mail_id: Mapped[str | None] = mapped_column(String(36))
    scan_registration_number: Mapped[str | None] = mapped_column(String(32))
    sha256: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int | None] = mapped_column(Integer)
    #: Loaded only when asked for: listings never read the bytes.
    ubl: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    approved_by: Mapped[str | None] = mapped_column(String(200))
    #: The InvoiceApproved event whose delivery receipt books the invoice.
    approval_event_id: Mapped[str | None] = mapped_column(String(64))
    accounting_reference: Mapped[str | None] = mapped_column(String(200))
    accounting_connector: Mapped[str | None] = mapped_column(String(64))
    booking_failure: Mapped[str | None] = mapped_column(Text)
    dispute_reason: Mapped[str | None] = mapped_column(Text)
    paid_on: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    #: Optimistic lock: two clerks acting on one invoice at once cannot both win.
    version: Mapped[int] = mapped_column(Integer)

    history: Mapped[list[InvoiceStep]] = relationship(
        lazy="selectin", order_by="InvoiceStep.id", cascade="all, delete-orphan"
    )

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 (SQLAlchemy reads it as is)


class InvoiceStep(Base):
    """One step of an invoice's history: the state it reached, when, by whom and why."""

    __tablename__ = "factures_history"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    invoice_id: Mapped[str] = mapped_column(
        ForeignKey("factures_invoices.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    state: Mapped[str] = mapped_column(String(16))
    #: The event announcing the step (its CloudEvent type), if any.
    event_type: Mapped[str | None] = mapped_column(String(128))
    #: The supplier's answer sent with the step (AB, IP…), if any.
    response_status: Mapped[str | None] = mapped_column(String(2))
    actor: Mapped[str | None] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)


def _credit_note_keys_apart(connection: Connection) -> None:
    """Credit notes' duplicate keys as ``domain.duplicate_key`` now makes them."""
    invoices = table_of(Invoice)
    connection.execute(
        update(invoices)
        .where(invoices.c.kind == "CreditNote", invoices.c.accepted_key.is_not(None))
        .values(accepted_key=literal("CreditNote|") + invoices.c.accepted_key)
    )


#: An accepted key as factures made it before migration 8: ``[CreditNote|]supplier|number|date``.
_KEY_WITH_KIND_AND_DATE = re.compile(r"(?:CreditNote\|)?(?P<key>.+)\|[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _keys_by_supplier_and_number(connection: Connection) -> None:
    """Accepted keys as ``domain.duplicate_key`` now makes them: supplier and number only.

    Documents accepted under the old rule may now share a key (one number with two issue
    dates; an invoice and a credit note). None is rejected or changed for it: each may have
    been approved, answered AP, or paid. The earliest keeps the key, so that a new copy of
    that number is refused; the later ones lose it (they block nothing) and their history
    asks the clerk to check them before they are paid twice.
    """
    invoices, history = table_of(Invoice), table_of(InvoiceStep)
    accepted = connection.execute(
        select(
            invoices.c.id,
            invoices.c.tenant,
            invoices.c.number,
            invoices.c.state,
            invoices.c.accepted_key,
            invoices.c.created_at,
        )
        .where(invoices.c.accepted_key.is_not(None))
        .order_by(invoices.c.created_at, invoices.c.id)
    ).all()
    if not accepted:
        return
    # Cleared first: a new key may equal another row's old one (a number holding a date).
    connection.execute(
        update(invoices).where(invoices.c.accepted_key.is_not(None)).values(accepted_key=None)
    )
    first: dict[tuple[str, str], Any] = {}
    keys: list[dict[str, str]] = []
    notes: list[dict[str, Any]] = []
    now = utcnow()
    for row in accepted:
        old_form = _KEY_WITH_KIND_AND_DATE.fullmatch(row.accepted_key)
        key = old_form["key"] if old_form else row.accepted_key
        earlier = first.setdefault((row.tenant, key), row)
        if earlier is row:
            keys.append({"row_id": row.id, "new_key": key})
            continue
        notes.append(
            {
                "invoice_id": row.id,
                "at": now,
                "state": row.state,
                "actor": "hub",
                "note": (
                    f"Possible duplicate: the supplier's number {row.number} was received "
                    f"before, on {commune_day(earlier.created_at).isoformat()} (document "
                    f"{earlier.id}). A supplier's number now counts once, whatever its "
                    "date or kind; check this is not the same document before paying it."
                ),
            }
        )
    if keys:
        connection.execute(
            update(invoices)
            .where(invoices.c.id == bindparam("row_id"))
            .values(accepted_key=bindparam("new_key")),
            keys,
        )
    if notes:
        connection.execute(insert(history), notes)


MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "invoices, their history, outbox and inbox",
        create_tables(
            *(table_of(model) for model in (Invoice, InvoiceStep, OutboxMessage, InboxEntry))
        ),
    ),
    Migration(
        2,
        "events that break their contract, kept for an operator",
        create_tables(table_of(RejectedEvent)),
    ),
    Migration(
        3,
        "requests' Idempotency-Keys and their kept answers",
        create_tables(table_of(IdempotentRequest)),
    ),
    Migration(
        4,
        "credit notes' duplicate keys apart from invoices'",
        _credit_note_keys_apart,
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
    # Invoices received before it have none: their answers name them by their kind.
    Migration(
        7,
        "each invoice's own type code (BT-3), for the supplier's answers",
        add_columns(table_of(Invoice), "type_code"),
    ),
    Migration(
        8,
        "duplicates by supplier and number, as the accounting software books them",
        _keys_by_supplier_and_number,
    ),
]
