"""Events of the interop gateway, on topic ``gateway.receipts``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from contracts.events.base import EventData

TOPIC = "gateway.receipts"


class DeliveryReceipt(EventData):
    """The final outcome of delivering one event on one route.

    ``delivered``: the target accepted it (``external_reference`` is its id).
    ``failed``: the target refused it for good (``reason`` says why).
    ``dead``: retries were exhausted; an operator can replay it.
    The event's subject is the source document's id, so the receipt lands on
    the same partition key as the document's own events.
    """

    TYPE: ClassVar[str] = "gateway.delivery.receipt.v1"
    TOPIC: ClassVar[str] = TOPIC

    source_event_id: str
    source_event_type: str
    route: str
    connector: str
    idempotency_key: str
    outcome: Literal["delivered", "failed", "dead"]
    external_reference: str | None = None
    reason: str | None = None
    attempts: int = Field(ge=1)
    #: What the target answered, for a delivery that is a question (e.g. the identity
    #: the National Register holds for a NISS); None for plain deliveries.
    answer: dict[str, str | None] | None = None
