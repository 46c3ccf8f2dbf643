"""The REST API's request and response documents.

Requests refuse unknown fields (``extra="forbid"``): a misspelt field is an
error the caller sees, not a value silently dropped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, cast

from pydantic import AwareDatetime, BaseModel, Field

from contracts.events.meeting import ConcernedParty, ItemOrigin
from contracts.events.oversight import OversightOutcome
from kernel.api import MEDIA_TYPE_PATTERN, RequestModel
from services.meeting.agenda import concerned_party_of
from services.meeting.configuration import MeetingConfig
from services.meeting.domain import (
    MAX_ANNEX_FILENAME,
    MAX_ANNEX_TITLE,
    MAX_EXTERNAL_IDENTIFIER,
    MAX_ITEM_TEXT,
    MAX_ITEM_TITLE,
    MAX_PROPOSING_SERVICE,
    Decision,
    DeliveryKind,
    DeliveryStatus,
    ItemState,
    MeetingState,
)
from services.meeting.tables import Annex, DecisionDelivery, Item, Meeting, UnplacedRequest


class AttendeeIn(RequestModel):
    name: str = Field(min_length=1, max_length=200)
    role: str | None = Field(default=None, max_length=200, examples=["bourgmestre", "échevin"])
    present: bool | None = Field(default=None, description="None until attendance is taken")


class MeetingCreate(RequestModel):
    meeting_config: str = Field(examples=["college"])
    date: AwareDatetime = Field(description="When the meeting sits (with its UTC offset)")
    place: str = Field(min_length=1, max_length=500)
    attendees: list[AttendeeIn] = Field(default_factory=list, max_length=200)


class AttendanceUpdate(RequestModel):
    attendees: list[AttendeeIn] = Field(max_length=200)


class AnnexIn(RequestModel):
    title: str = Field(min_length=1, max_length=MAX_ANNEX_TITLE)
    filename: str = Field(min_length=1, max_length=MAX_ANNEX_FILENAME)
    media_type: str = Field(default="application/pdf", pattern=MEDIA_TYPE_PATTERN)
    content_base64: str = Field(description="The file, base64 (RFC 4648); at most 4 MiB decoded")
    md5: str | None = Field(
        default=None, pattern=r"^[0-9a-fA-F]{32}$", description="Checked when given"
    )
    publishable: bool = Field(
        default=False,
        description="Published with the decision (OParl). Its bytes are published as they "
        "are, not pseudonymised: mark only what may be public.",
    )


class AnnexUpdate(RequestModel):
    publishable: bool = Field(description="Published with the decision (OParl)")


class ItemCreate(RequestModel):
    meeting_config: str = Field(examples=["college"])
    title: str = Field(min_length=1, max_length=MAX_ITEM_TITLE)
    proposing_service: str = Field(
        min_length=1, max_length=MAX_PROPOSING_SERVICE, examples=["urbanisme"]
    )
    category: str | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=MAX_ITEM_TEXT)
    motivation: str | None = Field(default=None, max_length=MAX_ITEM_TEXT)
    decision_text: str | None = Field(
        default=None, max_length=MAX_ITEM_TEXT, description="The draft decision"
    )
    external_identifier: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_EXTERNAL_IDENTIFIER,
        description="The document of another service the item is about (one item per "
        "configuration and external identifier)",
    )
    preferred_meeting_id: str | None = None
    concerned_party: ConcernedParty | None = Field(
        default=None, description="Who the decision concerns and is notified to"
    )
    annexes: list[AnnexIn] = Field(default_factory=list)


class PresentBody(RequestModel):
    meeting_id: str


class DecideBody(RequestModel):
    decision: Decision
    decision_text: str | None = Field(
        default=None,
        max_length=MAX_ITEM_TEXT,
        description="The decision as taken; None keeps the draft",
    )


class MeetingView(BaseModel):
    id: str
    meeting_config: str
    date: datetime
    place: str
    state: MeetingState
    attendees: list[dict[str, Any]]
    closed_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, meeting: Meeting) -> MeetingView:
        return cls(
            id=meeting.id,
            meeting_config=meeting.meeting_config,
            date=meeting.date,
            place=meeting.place,
            state=MeetingState(meeting.state),
            attendees=meeting.attendees,
            closed_at=meeting.closed_at,
            created_at=meeting.created_at,
        )


class AnnexView(BaseModel):
    annex_id: str
    title: str
    filename: str
    media_type: str
    size: int
    md5: str
    publishable: bool

    @classmethod
    def of(cls, annex: Annex) -> AnnexView:
        return cls(
            annex_id=annex.id,
            title=annex.title,
            filename=annex.filename,
            media_type=annex.media_type,
            size=annex.size,
            md5=annex.md5,
            publishable=bool(annex.publishable),
        )


class DeliveryView(BaseModel):
    kind: DeliveryKind
    status: DeliveryStatus
    reference: str | None
    detail: str | None
    updated_at: datetime

    @classmethod
    def of(cls, delivery: DecisionDelivery) -> DeliveryView:
        return cls(
            kind=cast(DeliveryKind, delivery.kind),
            status=cast(DeliveryStatus, delivery.status),
            reference=delivery.reference,
            detail=delivery.detail,
            updated_at=delivery.updated_at,
        )


class ItemView(BaseModel):
    id: str
    meeting_config: str
    state: ItemState
    title: str
    proposing_service: str
    category: str | None
    description: str | None
    motivation: str | None
    decision_text: str | None
    external_identifier: str | None
    preferred_meeting_id: str | None
    meeting_id: str | None
    decision: Decision | None
    decision_number: str | None = Field(examples=["COL/2026/0042"])
    decided_at: datetime | None
    oversight_applies: bool | None = Field(description="Set when decided")
    oversight_outcome: OversightOutcome | None = Field(
        default=None,
        description="What the regional oversight (tutelle) decided; annulled: the decision "
        "is void. None until it decides, or when the decision is not subject to it",
    )
    publication_required: bool | None = Field(description="Set when decided")
    published_at: datetime | None
    concerned_party: ConcernedParty | None
    origin: ItemOrigin
    annexes: list[AnnexView]
    deliveries: list[DeliveryView] = Field(
        description="What the decision owes the outside world (oversight, publication, "
        "notification) and how far each got"
    )
    deliveries_complete: bool | None = Field(
        description="Decided and every required delivery done; None before the decision"
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, item: Item) -> ItemView:
        return cls(
            id=item.id,
            meeting_config=item.meeting_config,
            state=ItemState(item.state),
            title=item.title,
            proposing_service=item.proposing_service,
            category=item.category,
            description=item.description,
            motivation=item.motivation,
            decision_text=item.decision_text,
            external_identifier=item.external_identifier,
            preferred_meeting_id=item.preferred_meeting_id,
            meeting_id=item.meeting_id,
            decision=Decision(item.decision) if item.decision else None,
            decision_number=item.decision_number,
            decided_at=item.decided_at,
            oversight_applies=item.oversight_applies,
            oversight_outcome=cast(OversightOutcome | None, item.oversight_outcome),
            publication_required=item.publication_required,
            published_at=item.published_at,
            concerned_party=concerned_party_of(item),
            origin=cast(ItemOrigin, item.origin),
            annexes=[AnnexView.of(annex) for annex in item.annexes],
            deliveries=[
                DeliveryView.of(delivery)
                for delivery in sorted(item.deliveries, key=lambda delivery: delivery.kind)
            ],
            deliveries_complete=(
                None
                if item.decided_at is None
                else all(delivery.status == "done" for delivery in item.deliveries)
            ),
            created_at=item.created_at,
            updated_at=item.updated_at,
        )


class MeetingConfigView(BaseModel):
    id: str
    kind: Literal["college", "council"]
    title: str
    description: str
    decision_prefix: str
    categories: list[dict[str, Any]] = Field(
        description="id, title, oversight (tutelle) and publication of each category"
    )
    proposing_services: list[str]

    @classmethod
    def of(cls, config: MeetingConfig) -> MeetingConfigView:
        return cls(
            id=config.id,
            kind=config.kind,
            title=config.title,
            description=config.description,
            decision_prefix=config.decision_prefix,
            categories=[category.model_dump() for category in config.categories],
            proposing_services=list(config.proposing_services),
        )


class UnplacedRequestView(BaseModel):
    event_id: str
    event_type: str
    subject: str
    reason: str
    data: dict[str, Any]
    received_at: datetime

    @classmethod
    def of(cls, row: UnplacedRequest) -> UnplacedRequestView:
        return cls(
            event_id=row.event_id,
            event_type=row.event_type,
            subject=row.subject,
            reason=row.reason,
            data=row.data,
            received_at=row.received_at,
        )
