"""The delivery log: one row per (event, route), under its idempotency key.

The row keeps the event as it came from Kafka (headers and value), so a
retry or an operator's replay needs nothing but this table. Status:

    retrying ──► delivered        the target accepted it (external reference kept)
       │    └──► failed           the target refused it for good
       └──────► dead              retries exhausted; an operator may replay it

A row is written once per attempt outcome, in the same transaction as the
receipt that announces a final outcome (staged in the outbox).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import JSON, Connection, Index, Integer, LargeBinary, String, Text, update
from sqlalchemy.orm import Mapped, defer, mapped_column

from gateway.inbound.records import InboundDocument, WaitingItem
from gateway.routing import RetryPolicy
from kernel.consumer import RejectedEvent
from kernel.database import Base, BigId, UtcDateTime
from kernel.migrations import Migration, create_tables, rebuild_table, table_of
from kernel.outbox import OutboxMessage

Status = Literal["retrying", "delivered", "failed", "dead"]
FINAL_STATUSES: frozenset[str] = frozenset({"delivered", "failed", "dead"})


class DeliveryRecord(Base):
    __tablename__ = "gateway_deliveries"
    __table_args__ = (
        Index("ix_gateway_deliveries_due", "status", "next_attempt_at"),
        Index("ix_gateway_deliveries_document", "tenant", "subject", "route", "id"),
        Index("ix_gateway_deliveries_tenant_status", "tenant", "status", "updated_at"),
    )

    #: Arrival order, used to keep one document's deliveries in order on a route.
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(128))
    event_time: Mapped[datetime] = mapped_column(UtcDateTime)
    tenant: Mapped[str] = mapped_column(String(5))
    subject: Mapped[str] = mapped_column(String(200))
    route: Mapped[str] = mapped_column(String(64))
    connector: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    external_reference: Mapped[str | None] = mapped_column(String(200), nullable=True)
    record_headers: Mapped[dict[str, Any]] = mapped_column(JSON)
    record_value: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


#: For reads that show or change a delivery's state only: the stored event (a mail's PDF in
#: base64, some 5.6 MB) left in the database, or a page of 500 deliveries held gigabytes.
WITHOUT_STORED_EVENT = (defer(DeliveryRecord.record_value), defer(DeliveryRecord.record_headers))


def _opinions_within_their_tenant(connection: Connection) -> None:
    """Opinion answers recorded with no source take their tenant's, as the adapter now
    records and looks them up (``gateway.inbound.opinions.source_of``). Unique by the id
    alone until now, no two rows can collide. The channel's name is written out: a
    migration does what it did the day it was written."""
    inbound = table_of(InboundDocument)
    connection.execute(
        update(inbound)
        .where(
            inbound.c.channel == "opinion",
            inbound.c.source == "",
            inbound.c.tenant.is_not(None),
        )
        .values(source=inbound.c.tenant)
    )


MIGRATIONS = [
    Migration(
        1,
        "delivery log and outbox",
        create_tables(DeliveryRecord.__table__, OutboxMessage.__table__),  # type: ignore[arg-type]
    ),
    Migration(
        2,
        "inbound documents (Peppol access point)",
        create_tables(InboundDocument.__table__),  # type: ignore[arg-type]
    ),
    Migration(
        3,
        "inbound documents unique by channel, source and id (no longer by id alone)",
        rebuild_table(table_of(InboundDocument), {"source": "''"}),
    ),
    Migration(
        4,
        "inbound items waiting for a later poll",
        create_tables(WaitingItem.__table__),  # type: ignore[arg-type]
    ),
    Migration(
        5,
        "records of routed types whose envelope breaks the contract, kept for an operator",
        # Created at today's shape: one row per event id, under its unique index.
        create_tables(table_of(RejectedEvent)),
    ),
    Migration(
        6,
        "opinion answers unique within their tenant's account (no longer across tenants)",
        _opinions_within_their_tenant,
    ),
]


def idempotency_key(event_id: str, route: str) -> str:
    return f"{event_id}:{route}"


def backoff_delay(attempts: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": half the delay fixed, half random.

    The random half spreads the retries of many documents that failed together
    (a target that was down) so they do not return as one wave.
    """
    ceiling = min(policy.max_delay_seconds, policy.base_delay_seconds * 2 ** max(attempts - 1, 0))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


def next_attempt_time(
    now: datetime, attempts: int, policy: RetryPolicy, asked_seconds: float | None = None
) -> datetime:
    """When to try again: the backoff, or later if the target asked (its Retry-After)."""
    return now + timedelta(seconds=max(backoff_delay(attempts, policy), asked_seconds or 0.0))
