"""The inbound log: one row per document fetched from outside, unique by its source's id.

A row is written in the transaction that stages the document's event in the
outbox, so a document is published once however often it is fetched. Status:

    published     its event is staged for the tenant's services
    unroutable    no tenant has its receiver; kept here for an operator, never published
    refused       too large to travel in an event; kept here, never published

``source_status`` is where the source (the Peppol access point) stands:

    pending ──► acknowledged   (published documents)
       └──────► rejected       (unroutable and refused ones, with ``reason``)

A crash after the commit and before the source is told leaves ``pending``:
the next poll sees the document again, finds the row, and only tells the
source.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ValidationError
from sqlalchemy import Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kernel.database import Base, BigId, UtcDateTime
from kernel.logs import mask_national_numbers

Status = Literal["published", "unroutable", "refused"]
SOURCE_LENGTH, MESSAGE_ID_LENGTH, SENDER_LENGTH, DOCUMENT_TYPE_LENGTH = 300, 200, 210, 500
SourceStatus = Literal["pending", "acknowledged", "rejected"]


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
    #: Which source of the channel: a Peppol access point's URL; empty where the
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
