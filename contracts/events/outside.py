"""What the gateway's inbound adapters bring from regional services, on ``gateway.inbound``.

Each is published once per outside item (the gateway records what it fetched),
for the tenant the outside service addressed.
"""

from __future__ import annotations

from datetime import date
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.events.base import EventData
from contracts.events.peppol import INBOUND_TOPIC
from contracts.events.urban import Applicant, FileType, Parcel

METADATA_MISMATCH_LENGTH = 500


class NoticeDocument(BaseModel):
    """A document of a NOTICe notification, fetched and checked against its metadata."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    document_id: str
    filename: str
    media_type: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    content_base64: str
    #: How the content (``size`` and ``sha256`` are the content's) differs from what
    #: NOTICe's metadata declared, when two fetches gave the same difference; absent
    #: otherwise. Urban keeps the document and shows the difference on the file. Added
    #: within v1: a consumer must know the field before the gateway sends it.
    metadata_mismatch: str | None = Field(default=None, max_length=METADATA_MISMATCH_LENGTH)


class NoticeNotificationReceived(EventData):
    """The SPW's NOTICe notified the commune of a request (a new file, or news of one)."""

    TYPE: ClassVar[str] = "gateway.notice.notification_received.v1"
    TOPIC: ClassVar[str] = INBOUND_TOPIC

    notification_id: str
    instance_code: str
    file_type: FileType
    received_on: date
    subject: str
    applicants: list[Applicant]
    parcels: list[Parcel]
    documents: list[NoticeDocument] = Field(default_factory=list)


class OpinionReceived(EventData):
    """A consulted body gave its opinion on a file."""

    TYPE: ClassVar[str] = "gateway.opinion.received.v1"
    TOPIC: ClassVar[str] = INBOUND_TOPIC

    opinion_id: str
    file_id: str
    body: str
    verdict: Literal["favourable", "favourable_with_conditions", "unfavourable"]
    text: str
    given_on: date
